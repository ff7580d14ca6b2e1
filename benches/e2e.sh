#!/usr/bin/env bash
# End-to-end benchmark of `isoclip project` against numpy on this machine (see e2e_vs_numpy.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import numpy, threadpoolctl" 2>/dev/null || python3 -m pip install -q numpy threadpoolctl
cargo build --release
exec python3 benches/e2e_vs_numpy.py "$@"
