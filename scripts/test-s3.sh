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
# It also submits examples/slurm/project-array.sh to a single-node Slurm cluster started here
# (Debian's slurm-wlm: munge, slurmctld, slurmd; installed with apt when missing, a few MB of packages;
# the cluster starts in seconds and is stopped on exit):
#
#   ISOCLIP_TEST_SLURM=0 ./scripts/test-s3.sh   # everything but the real Slurm cluster
set -euo pipefail
cd "$(dirname "$0")/.."

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

SUITE_START=$(date +%s)

# Built before the servers' environment (AWS_*, the venv's PATH) is set: some build scripts
# (aws-lc-sys) rerun when their environment changes, which would rebuild the TLS stack.
step "cargo build --bin isoclip; cargo test --test scale_out --no-run"
cargo build --bin isoclip
cargo test --test scale_out --no-run

# shellcheck source=tests/s3/servers.sh
source tests/s3/servers.sh
trap s3_cleanup EXIT

step "python venv with $S3_MOTO_PIN, $S3_PYYAML_PIN ($S3_VENV)"
s3_venv

step "start moto_server and the fault proxy on 127.0.0.1"
s3_start_servers
export ISOCLIP_TEST_S3_ENDPOINT="$AWS_ENDPOINT_URL"
export ISOCLIP_TEST_S3_PROXY="http://127.0.0.1:$PROXY_PORT"
export ISOCLIP_TEST_MOTO_SERVER="$S3_VENV/bin/moto_server"
export ISOCLIP_TEST_PYTHON="$S3_VENV/bin/python"

SKIP=()
if [ "${ISOCLIP_TEST_SLURM:-1}" = 1 ]; then
  step "single-node Slurm cluster (Debian's slurm-wlm: munge, slurmctld, slurmd)"
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge
  fi
  rm -rf "$S3_LOGS/slurm"
  # The daemons' pids are registered as soon as the file has them, even if the start fails.
  tests/s3/slurm_cluster.sh "$S3_LOGS/slurm" || { S3_PIDS+=($(cat "$S3_LOGS/slurm/pids")); exit 1; }
  S3_PIDS+=($(cat "$S3_LOGS/slurm/pids"))
  export ISOCLIP_TEST_SLURM_CONF="$S3_LOGS/slurm/slurm.conf"
else
  echo "(the test that submits the Slurm example to a real cluster is skipped: ISOCLIP_TEST_SLURM=0)"
  SKIP=(--skip slurm_cluster)
fi

step "the server honours create-only writes (If-None-Match: *)"
"$S3_VENV/bin/python" tests/s3/check_conditional_writes.py

step "cargo test --test scale_out (against the servers above)"
cargo test --test scale_out -- --include-ignored --test-threads=1 "${SKIP[@]}" "$@"

step_done
printf '\nscale-out tests passed in %ss\n' "$(($(date +%s) - SUITE_START))"
