#!/usr/bin/env bash
# The scale-out tests (tests/scale_out.rs) against a real S3 server on loopback:
#
#   ./scripts/test-s3.sh                 # every scale-out test
#   ./scripts/test-s3.sh end_to_end      # extra arguments go to the test binary (a name filter)
#
# Creates or reuses a venv in target/s3-venv with moto[server] pinned (and PyYAML, for reading
# the Kubernetes example), starts ONE moto server on a free port of 127.0.0.1 and the fault
# proxy (tests/s3/fault_proxy.py) in front of it, checks that the server honours create-only
# writes, builds the CLI and runs the tests. The servers are stopped on exit, whatever happens.
# Offline once the venv exists; every step prints its wall time.
#
#   ISOCLIP_TEST_SLURM=1 ./scripts/test-s3.sh   # also submits examples/slurm/project-array.sh
#                                               # to a single-node Slurm cluster started here
#                                               # (installs Debian's slurm-wlm when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MOTO_PIN="moto[server]==5.2.5"
PYYAML_PIN="PyYAML==6.0.3"
VENV=$ROOT/target/s3-venv
LOGS=$ROOT/target/s3-logs

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

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something answers HTTP on 127.0.0.1:$1 (any status), or fails after 30 s.
wait_http() {
  local port=$1 what=$2 pid=$3
  for _ in $(seq 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$what exited before answering; its log:" >&2
      cat "$LOGS/$what.log" >&2
      return 1
    fi
    if "$VENV/bin/python" - "$port" <<'EOF' 2>/dev/null; then
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1)
except urllib.error.HTTPError:
    pass
EOF
      return 0
    fi
    sleep 0.1
  done
  echo "$what did not answer on 127.0.0.1:$port within 30 s" >&2
  return 1
}

SUITE_START=$(date +%s)

step "python venv with $MOTO_PIN, $PYYAML_PIN ($VENV)"
STAMP="$VENV/.installed $MOTO_PIN $PYYAML_PIN"
if [ ! -e "$STAMP" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$MOTO_PIN" "$PYYAML_PIN"
  touch "$STAMP"
fi

step "start moto_server and the fault proxy on 127.0.0.1"
mkdir -p "$LOGS"
MOTO_PORT=$(free_port)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$LOGS/moto.log" 2>&1 &
PIDS+=($!)
wait_http "$MOTO_PORT" moto "${PIDS[-1]}"
rm -f "$LOGS/proxy.port"
"$VENV/bin/python" tests/s3/fault_proxy.py --upstream "127.0.0.1:$MOTO_PORT" \
  --port-file "$LOGS/proxy.port" >"$LOGS/proxy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do
  [ -e "$LOGS/proxy.port" ] && break
  sleep 0.1
done
PROXY_PORT=$(cat "$LOGS/proxy.port")
wait_http "$PROXY_PORT" proxy "${PIDS[-1]}"
echo "moto on 127.0.0.1:$MOTO_PORT, fault proxy on 127.0.0.1:$PROXY_PORT (logs in $LOGS)"

# object_store's from_env (and boto3) read these; the credentials are moto's dummies.
export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
export AWS_ALLOW_HTTP=true
export AWS_ACCESS_KEY_ID=isoclip-test
export AWS_SECRET_ACCESS_KEY=isoclip-test
export AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export ISOCLIP_TEST_S3_ENDPOINT="$AWS_ENDPOINT_URL"
export ISOCLIP_TEST_S3_PROXY="http://127.0.0.1:$PROXY_PORT"
export ISOCLIP_TEST_MOTO_SERVER="$VENV/bin/moto_server"
export ISOCLIP_TEST_PYTHON="$VENV/bin/python"

SKIP=()
if [ "${ISOCLIP_TEST_SLURM:-0}" = 1 ]; then
  step "single-node Slurm cluster (Debian's slurm-wlm: munge, slurmctld, slurmd)"
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge
  fi
  rm -rf "$LOGS/slurm"
  # The daemons' pids are registered as soon as the file has them, even if the start fails.
  tests/s3/slurm_cluster.sh "$LOGS/slurm" || { PIDS+=($(cat "$LOGS/slurm/pids")); exit 1; }
  PIDS+=($(cat "$LOGS/slurm/pids"))
  export ISOCLIP_TEST_SLURM_CONF="$LOGS/slurm/slurm.conf"
else
  echo "(the test that submits the Slurm example to a real cluster is skipped: ISOCLIP_TEST_SLURM=1 runs it)"
  SKIP=(--skip slurm_cluster)
fi

step "the server honours create-only writes (If-None-Match: *)"
"$VENV/bin/python" tests/s3/check_conditional_writes.py

step "cargo build --bin isoclip"
cargo build --bin isoclip

step "cargo test --test scale_out (against the servers above)"
cargo test --test scale_out -- --include-ignored --test-threads=1 "${SKIP[@]}" "$@"

step_done
printf '\nscale-out tests passed in %ss\n' "$(($(date +%s) - SUITE_START))"
