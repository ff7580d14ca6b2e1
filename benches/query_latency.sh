#!/usr/bin/env bash
# Query-path latency: `isoclip_project` from C for 1 and 64 rows (p50/p90/p99), against numpy's
# single-thread sgemm and FAISS's LinearTransform on the same projector and shapes, in one run.
# The projector is the built-in SYNTHETIC ViT-B/16-shaped one (768 -> 262 compact, fp16 in/out).
#
#   benches/query_latency.sh [calls]      (default 20000 calls per line)
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-20000}
python3 -c "import numpy, threadpoolctl, faiss" 2>/dev/null ||
  python3 -m pip install -q numpy threadpoolctl faiss-cpu
cargo build --release --quiet --lib --bin isoclip
WORK=target/query-latency
mkdir -p "$WORK"
./target/release/isoclip fit -o "$WORK/b16.safetensors" >/dev/null
ln -sf libisoclip.so target/release/libisoclip.so.1  # the soname programs load
cc -O2 -std=c11 -Wall -Wextra -Werror -Iinclude -o "$WORK/query_latency" benches/query_latency.c \
  -Ltarget/release -lisoclip -Wl,-rpath,"$PWD/target/release"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
"$WORK/query_latency" "$WORK/b16.safetensors" "$CALLS"
python3 benches/query_latency_peers.py "$WORK/b16.safetensors" "$CALLS"
