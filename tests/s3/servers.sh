# Sourced by scripts/test-s3.sh and benches/s3_scale.sh (bash, from the repository root): the
# pinned moto venv, a moto server and the fault proxy on free ports of 127.0.0.1, stopped on
# exit. After s3_start_servers: MOTO_PORT, PROXY_PORT, and the environment object_store's
# from_env and boto3 read (AWS_ENDPOINT_URL=moto, dummy credentials, us-east-1).

S3_MOTO_PIN="moto[server]==5.2.5"
S3_PYYAML_PIN="PyYAML==6.0.3"
S3_VENV=$PWD/target/s3-venv
S3_LOGS=$PWD/target/s3-logs
S3_PIDS=()

s3_cleanup() {
  local pid
  for pid in "${S3_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${S3_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}

s3_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Creates target/s3-venv with the pinned packages, unless it has them already.
s3_venv() {
  local stamp="$S3_VENV/.installed $S3_MOTO_PIN $S3_PYYAML_PIN"
  if [ ! -e "$stamp" ]; then
    rm -rf "$S3_VENV"
    python3 -m venv "$S3_VENV"
    "$S3_VENV/bin/pip" install --quiet --disable-pip-version-check "$S3_MOTO_PIN" "$S3_PYYAML_PIN"
    touch "$stamp"
  fi
}

# Waits until something answers HTTP on 127.0.0.1:PORT (any status), or fails after 30 s.
s3_wait_http() {
  local port=$1 what=$2 pid=$3
  for _ in $(seq 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$what exited before answering; its log:" >&2
      cat "$S3_LOGS/$what.log" >&2
      return 1
    fi
    if "$S3_VENV/bin/python" - "$port" <<'PY' 2>/dev/null; then
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1)
except urllib.error.HTTPError:
    pass
PY
      return 0
    fi
    sleep 0.1
  done
  echo "$what did not answer on 127.0.0.1:$port within 30 s" >&2
  return 1
}

# Starts moto and the fault proxy in front of it; the caller traps s3_cleanup on EXIT.
s3_start_servers() {
  mkdir -p "$S3_LOGS"
  MOTO_PORT=$(s3_free_port)
  "$S3_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$S3_LOGS/moto.log" 2>&1 &
  S3_PIDS+=($!)
  s3_wait_http "$MOTO_PORT" moto "${S3_PIDS[-1]}"
  rm -f "$S3_LOGS/proxy.port"
  "$S3_VENV/bin/python" tests/s3/fault_proxy.py --upstream "127.0.0.1:$MOTO_PORT" \
    --port-file "$S3_LOGS/proxy.port" >"$S3_LOGS/proxy.log" 2>&1 &
  S3_PIDS+=($!)
  for _ in $(seq 300); do
    [ -e "$S3_LOGS/proxy.port" ] && break
    sleep 0.1
  done
  PROXY_PORT=$(cat "$S3_LOGS/proxy.port")
  s3_wait_http "$PROXY_PORT" proxy "${S3_PIDS[-1]}"
  echo "moto on 127.0.0.1:$MOTO_PORT, fault proxy on 127.0.0.1:$PROXY_PORT (logs in $S3_LOGS)"
  export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
  export AWS_ALLOW_HTTP=true
  export AWS_ACCESS_KEY_ID=isoclip-test
  export AWS_SECRET_ACCESS_KEY=isoclip-test
  export AWS_REGION=us-east-1
  export AWS_EC2_METADATA_DISABLED=true
}
