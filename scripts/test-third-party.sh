#!/usr/bin/env bash
# docs/THIRD-PARTY.md lists exactly the crates of Cargo.lock (run by scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/third-party.sh --check
