#!/usr/bin/env bash
# `isoclip eval` against FAISS (IndexFlatIP, full ranking) and torchmetrics 1.4.0.post0 pipelines
# on the synthetic data of benches/eval_100k.sh, in one run (see benches/eval_peers.py).
#
#   benches/eval_peers.sh                                  # N = 20000 and 50000
#   benches/eval_peers.sh --rows 5000,20000,100000 --torchmetrics-max 5000
#
# torch and torchmetrics go into the venv benches/peers.sh makes (target/bench-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/_venv.sh
. benches/_venv.sh
"$PY" -c "import torchmetrics; assert torchmetrics.__version__ == '1.4.0.post0'" 2>/dev/null ||
  "$PY" -m pip install -q torchmetrics==1.4.0.post0
cargo build --release --quiet
exec "$PY" benches/eval_peers.py "$@"
