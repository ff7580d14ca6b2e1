#!/usr/bin/env bash
# Times `isoclip eval` on a one-set retrieval of N = 100,000 rows (each row ranked against the
# other 99,999: 10^10 scored pairs, done twice, for plain CLIP and for IsoCLIP) and reports the
# wall time and peak memory (max RSS) with /usr/bin/time -v.
#
# Data: N synthetic 512-d CLIP-like embeddings in ~1000 classes (class centre + isotropic noise),
# stored as float16 like a LAION shard. The noise is strong on purpose: almost every gallery item
# then outranks some relevant item, the expensive case for the ranking step (easy data is
# faster). IsoCLIP goes through the embedding route of the built-in synthetic projector
# (d = 512, compact m = 262). Needs python3 with numpy to generate the data.
#
#   benches/eval_100k.sh                      # N=100000 CLASSES=1000
#   N=20000 benches/eval_100k.sh              # a quicker run
#   WORK=/tmp/evalbench KEEP=1 benches/eval_100k.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
CLASSES=${CLASSES:-1000}
D=512
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
cleanup() { if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

cargo build --release --quiet
BIN=target/release/isoclip

python3 benches/_common.py make-eval-data "$WORK" "$N" "$D" "$CLASSES"  # also used by eval_peers.py
$BIN fit -o "$WORK/synthetic.safetensors" >/dev/null 2>&1

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "command: $BIN eval --projector $WORK/synthetic.safetensors --input-kind embeddings --features $WORK/emb_$N.npy --labels $WORK/labels_$N.npy"
/usr/bin/time -v "$BIN" eval --projector "$WORK/synthetic.safetensors" --input-kind embeddings \
    --features "$WORK/emb_$N.npy" --labels "$WORK/labels_$N.npy" 2> "$WORK/time.txt"
grep -E "Elapsed \(wall clock\)|Maximum resident set size|User time|System time|Percent of CPU" "$WORK/time.txt"
