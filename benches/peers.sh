#!/usr/bin/env bash
# Peer benchmark of `isoclip project` against numpy, PyTorch (CPU) and FAISS pipelines on the same
# shard, file to file, plus numpy sgemm as the ceiling (see benches/peers.py for the rules).
#
#   benches/peers.sh                      # 524,288 x 768 fp16, idle machine
#   benches/peers.sh --load 1             # with one busy background process
#   benches/peers.sh --rows 65536         # a quick run
#
# PyTorch and torchmetrics go into a venv, target/bench-venv (it sees the system's numpy and
# faiss-cpu): PyTorch's CPU wheel index when it is reachable, else PyPI's wheel (which pulls the
# CUDA runtime packages too: about 4 GB; only the CPU is used).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/_venv.sh
. benches/_venv.sh
cargo build --release --quiet
exec "$PY" benches/peers.py "$@"
