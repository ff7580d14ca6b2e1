#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit/integration/parity tests, and (as the
# project grows) the C, C++ and Go binding tests and the CUDA kernel compilation check.
# Installs what it needs on a fresh machine. Run from anywhere: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit, integration, parity)"
cargo test

for extra in scripts/test-*.sh; do
  [ -e "$extra" ] || continue
  step "$extra"
  bash "$extra"
done

echo
echo "all test suites passed"
