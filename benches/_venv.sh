# Sourced by benches/peers.sh and benches/eval_peers.sh: makes target/bench-venv (it sees the
# system's numpy and faiss-cpu) with PyTorch in it, and sets PY to its python. PyTorch comes from
# its CPU wheel index when that is reachable, else from PyPI (which pulls the CUDA runtime
# packages too: about 4 GB; only the CPU is used).
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
