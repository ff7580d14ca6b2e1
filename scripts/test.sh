#!/usr/bin/env bash
# The whole test suite. Installs what it needs on a fresh machine. Run from anywhere:
#
#   ./scripts/test.sh          # what CI runs: fmt, clippy, docs, Rust tests (unit, integration,
#                              # parity, faults), C/C++/Go, CUDA kernel checks, fuzz smoke runs
#                              # (which also build the crate without default features), numpy
#                              # differential tests, the S3 and Python suites
#   ./scripts/test.sh --full   # also the slow nets: the MSRV toolchain, clippy and tests without
#                              # default features (no CUDA, no cloud stores), Miri on the parsers
#                              # and the FFI, and long fuzz runs (ISOCLIP_FUZZ_SECONDS, default 600)
#
# Every step prints its name and, when done, its wall time, so a slow step is visible in CI logs.
set -euo pipefail
cd "$(dirname "$0")/.."

FULL=0
for arg in "$@"; do
  case "$arg" in
    --full) FULL=1 ;;
    -h | --help)
      sed -n '2,10p' "$0"
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done
export ISOCLIP_TEST_FULL=$FULL
if [ "$FULL" = 1 ]; then
  export ISOCLIP_FUZZ_SECONDS=${ISOCLIP_FUZZ_SECONDS:-600}
fi

SUITE_START=$(date +%s)
STEP_NAME=""
STEP_START=0
step() {
  step_done
  STEP_NAME="$*"
  STEP_START=$(date +%s)
  printf '\n==> %s\n' "$STEP_NAME"
}
step_done() {
  if [ -n "$STEP_NAME" ]; then
    printf '<== %s: %ss\n' "$STEP_NAME" "$(($(date +%s) - STEP_START))"
  fi
  STEP_NAME=""
}

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo doc --no-deps with warnings denied"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

step "cargo test (unit, integration, parity, fault injection)"
cargo test

for extra in scripts/test-*.sh; do
  [ -e "$extra" ] || continue
  step "$extra"
  bash "$extra"
done

if [ "$FULL" = 1 ]; then
  MSRV=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
  step "MSRV: cargo +$MSRV test (the declared rust-version)"
  rustup toolchain install "$MSRV" --profile minimal >/dev/null
  cargo "+$MSRV" test --quiet

  step "cargo clippy --no-default-features (the build without CUDA and cloud stores)"
  cargo clippy --lib --bins --no-default-features -- -D warnings

  step "cargo test --no-default-features"
  cargo test --quiet --no-default-features

  step "Miri on the FFI and the file parsers (nightly)"
  rustup toolchain install nightly --profile minimal --component miri >/dev/null
  cargo +nightly miri setup >/dev/null
  # Tree Borrows: rayon's crossbeam-epoch breaks Stacked Borrows' rules but not Tree Borrows'
  # (crossbeam-rs/crossbeam#545, #996; rayon-rs/rayon#1185), and the FFI tests start pools.
  # Leaks are ignored: those pools' threads and epoch bags live until the process ends.
  MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-tree-borrows -Zmiri-ignore-leaks" cargo +nightly miri test --lib --no-default-features -- \
    ffi:: formats::npy formats::checkpoint formats::read error::
fi

step_done
echo
echo "all test suites passed in $(($(date +%s) - SUITE_START))s"
