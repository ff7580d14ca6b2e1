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
VENV=target/bench-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c "import numpy, threadpoolctl, faiss" 2>/dev/null || "$PY" -m pip install -q numpy threadpoolctl faiss-cpu
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null ||
    "$PY" -m pip install -q torch
fi
cargo build --release --quiet
exec "$PY" benches/peers.py "$@"
