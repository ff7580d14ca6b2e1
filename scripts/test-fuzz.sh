#!/usr/bin/env bash
# Fuzzes every parser of files isoclip reads (fuzz/: cargo-fuzz targets) for a bounded time each,
# starting from the committed seed corpora. Installs the nightly toolchain and a pinned cargo-fuzz
# when missing. Fails on any crash, leak or timeout; prints executions per target.
#   ISOCLIP_FUZZ_SECONDS   seconds per target (default 10)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

CARGO_FUZZ_VERSION=0.13.1
SECONDS_PER_TARGET="${ISOCLIP_FUZZ_SECONDS:-10}"

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi

# Overflow and debug assertions on (an arithmetic overflow on hostile sizes is a finding). The
# default run skips AddressSanitizer (the parsers are safe Rust; it roughly doubles the build on 2
# cores); `scripts/test.sh --full` (ISOCLIP_TEST_FULL=1) builds with it.
if [ "${ISOCLIP_TEST_FULL:-0}" = 1 ]; then
  FLAGS=(--debug-assertions)
else
  FLAGS=(--debug-assertions --sanitizer none)
fi
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build "${FLAGS[@]}"

status=0
for t in $targets; do
  # Work on a scratch copy of the seeds, so runs never add files to the committed corpus.
  work=$(mktemp -d)
  cp -r "corpus/$t/." "$work/" 2>/dev/null || true
  log="$work.log"
  if cargo +nightly fuzz run "${FLAGS[@]}" "$t" "$work" -- -max_total_time="$SECONDS_PER_TARGET" \
       -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "fuzz $t: ok, ${execs:-?} executions in ${SECONDS_PER_TARGET} s"
  else
    echo "fuzz $t: FAILED (crash input under fuzz/artifacts/$t/)"
    tail -40 "$log"
    status=1
  fi
  rm -rf "$work" "$log"
done
exit $status
