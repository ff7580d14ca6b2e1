#!/usr/bin/env bash
# The Python package (bindings/python), tested through pytest against a freshly built wheel:
#   - a virtual environment in target/python-venv (reused when present) with pinned maturin,
#     numpy, pytest and tqdm, plus bindings/python/requirements-engines.txt when it exists
#     (the PySpark/Ray pins);
#   - clippy on the extension crate (-D warnings);
#   - the abi3 wheel, built by maturin with the dev profile into target/wheels (it reuses the
#     root build's artifacts: same workspace, same target/), checked to be abi3, and installed;
#   - pytest over bindings/python/tests with ISOCLIP_BIN=target/debug/isoclip (built first; or
#     the caller's ISOCLIP_BIN) for the byte-parity tests against the CLI.
# Every step prints its wall time. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/target/python-venv
PY=$VENV/bin/python

step_start=0
step() {
  echo "== $1"
  step_start=$(date +%s)
}
step_done() {
  echo "   ($(($(date +%s) - step_start)) s)"
}

step "python venv and pinned tools"
if [ ! -x "$PY" ]; then
  command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-venv; }
  python3 -m venv "$VENV" || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$VENV"; }
fi
"$PY" -m pip install -q --disable-pip-version-check \
  "maturin==1.9.6" "numpy==2.2.6" "pytest==8.4.2" "pytest-timeout==2.4.0" "tqdm==4.67.1"
if [ -f bindings/python/requirements-engines.txt ]; then
  "$PY" -m pip install -q --disable-pip-version-check -r bindings/python/requirements-engines.txt
fi
if ! command -v java >/dev/null && [ -z "${JAVA_HOME:-}" ]; then
  # PySpark's JVM (Java 17 or 21).
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless
fi
step_done

step "clippy on the extension crate"
# --no-deps: the root crate is linted by scripts/test.sh itself.
cargo clippy -q -p isoclip-python --all-targets --no-deps -- -D warnings
step_done

step "the abi3 wheel (maturin, dev profile)"
rm -f target/wheels/isoclip-*.whl
"$VENV/bin/maturin" build -q --profile dev -m bindings/python/Cargo.toml -o target/wheels \
  --interpreter "$PY"
wheel=$(ls target/wheels/isoclip-*.whl)
case "$wheel" in
  *-abi3-*) ;;
  *)
    echo "the wheel is not abi3: $wheel" >&2
    exit 1
    ;;
esac
"$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
echo "   $wheel"
step_done

step "the CLI the parity tests compare with"
# Built (a no-op when fresh) unless the caller names one: a stale binary would compare with old
# behaviour.
if [ -z "${ISOCLIP_BIN:-}" ]; then
  cargo build -q --bin isoclip
  ISOCLIP_BIN=$ROOT/target/debug/isoclip
fi
step_done

step "pytest bindings/python/tests"
# Run from outside the source tree so that `import isoclip` is the installed wheel.
(cd "$ROOT/target" && ISOCLIP_BIN="$ISOCLIP_BIN" "$PY" -m pytest -q --timeout=600 "$ROOT/bindings/python/tests")
step_done
