#!/usr/bin/env bash
# Differential test of the .npy header parser against numpy (tests/npy_differential.rs):
# installs numpy if it is missing, then runs the test with numpy required (no skipping).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import numpy' 2>/dev/null; then
  python3 -m pip install --quiet numpy
fi
ISOCLIP_REQUIRE_NUMPY=1 cargo test --test npy_differential -- --nocapture
