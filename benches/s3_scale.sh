#!/usr/bin/env bash
# The object-store path against local files, on a loopback S3 server (the pinned moto of
# scripts/test-s3.sh): manual, not CI. Prints a markdown table of:
#
#   1. rows/s of `isoclip project` on the same gallery from local files and from S3 (S3 to S3),
#      the ratio (the goal: S3 within 80% of local on loopback);
#   2. peak RSS (/usr/bin/time -v) projecting ONE 1.5 GB fp16 shard from S3 (and from a local
#      file, for comparison): memory must stay flat, not grow with the shard;
#   3. the time to list 2,000 shards on S3 and read and check their headers
#      (`isoclip status --input ... --output ...`, which inspects every input header).
#
#   benches/s3_scale.sh                       # builds target/release/isoclip
#   ISOCLIP=path/to/isoclip SHARDS=8 ROWS=100000 HEADERS=2000 BIG_ROWS=1000000 benches/s3_scale.sh
#
# moto keeps objects in memory (and spills large ones to temporary files): the gallery, the
# 1.5 GB shard and their outputs must fit this machine. WORK (default: a temporary directory)
# holds the local copies; KEEP=1 keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."

SHARDS=${SHARDS:-8}
ROWS=${ROWS:-100000}
HEADERS=${HEADERS:-2000}
BIG_ROWS=${BIG_ROWS:-1000000} # x 768 fp16 = 1.54 GB
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"

# shellcheck source=../tests/s3/servers.sh
source tests/s3/servers.sh
finish() {
  s3_cleanup
  if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; fi
}
trap finish EXIT

if [ -z "${ISOCLIP:-}" ]; then
  cargo build --release --quiet --bin isoclip
  ISOCLIP=$PWD/target/release/isoclip
fi
s3_venv
s3_start_servers >&2
PY=$S3_VENV/bin/python
BUCKET=isoclip-bench

# Uploads every .npy of a local folder to s3://$BUCKET/PREFIX/ (boto3, 16 threads).
upload() {
  "$PY" - "$1" "$BUCKET" "$2" <<'PY'
import concurrent.futures, os, sys, boto3
from boto3.s3.transfer import TransferConfig
folder, bucket, prefix = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
names = sorted(n for n in os.listdir(folder) if n.endswith(".npy"))
config = TransferConfig(multipart_chunksize=64 << 20, max_concurrency=4)
def put(name):
    s3.upload_file(os.path.join(folder, name), bucket, f"{prefix}/{name}", Config=config)
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    list(pool.map(put, names))
PY
}

# Runs a command under /usr/bin/time -v; prints "SECONDS PEAK_RSS_KB".
timed() {
  local report=$WORK/time.txt
  /usr/bin/time -v -o "$report" "$@" >/dev/null
  awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i] }
              /Maximum resident set size/ { rss = $2 }
              END { printf "%.2f %d\n", s, rss }' "$report"
}

rate() { awk -v r="$1" -v s="$2" 'BEGIN { printf "%.0f", r / s }'; }

"$PY" -c "import boto3, os; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).create_bucket(Bucket='$BUCKET')"
"$ISOCLIP" fit -o "$WORK/p.st" >/dev/null
"$PY" -c "import boto3, os; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).upload_file('$WORK/p.st', '$BUCKET', 'p.st')"
PROJECT=("$ISOCLIP" project --projector "$WORK/p.st" --device cpu --quiet)

echo "1. gallery: $SHARDS shards x $ROWS rows x 768 fp16" >&2
"$ISOCLIP" gallery --out "$WORK/g" --shards "$SHARDS" --rows "$ROWS" --dim 768 --dtype f16 >/dev/null
upload "$WORK/g" g
# The server's own ceiling: GET every object of g/ with boto3 (16 MiB ranges, 3 in flight per
# object as isoclip reads them, 4 objects at a time) into a sink that keeps nothing.
MOTO_GET_S=$("$PY" - "$BUCKET" <<'PY'
import concurrent.futures, io, os, sys, time, boto3
from boto3.s3.transfer import TransferConfig
bucket = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="g/")["Contents"]]
config = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=3)
class Sink(io.RawIOBase):
    def writable(self): return True
    def write(self, b): return len(b)
t = time.time()
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    list(pool.map(lambda k: s3.download_fileobj(bucket, k, Sink(), Config=config), keys))
print(f"{time.time() - t:.2f}")
PY
)
read -r LOCAL_S LOCAL_RSS < <(timed "${PROJECT[@]}" --input "$WORK/g" --output "$WORK/g_out")
read -r S3_S S3_RSS < <(timed "${PROJECT[@]}" --input "s3://$BUCKET/g/" --output "s3://$BUCKET/g_out/")
TOTAL=$((SHARDS * ROWS))

echo "2. one shard of $BIG_ROWS rows x 768 fp16" >&2
"$ISOCLIP" gallery --out "$WORK/big" --shards 1 --rows "$BIG_ROWS" --dim 768 --dtype f16 --seed 2 >/dev/null
BIG_BYTES=$(du -b "$WORK"/big/*.npy | awk '{ print $1 }')
upload "$WORK/big" big
read -r BIG_LOCAL_S BIG_LOCAL_RSS < <(timed "${PROJECT[@]}" --input "$WORK/big" --output "$WORK/big_out")
read -r BIG_S3_S BIG_S3_RSS < <(timed "${PROJECT[@]}" --input "s3://$BUCKET/big/" --output "s3://$BUCKET/big_out/")
rm -rf "$WORK/big" "$WORK/big_out"

echo "3. $HEADERS shard headers" >&2
"$ISOCLIP" gallery --out "$WORK/hdr" --shards "$HEADERS" --rows 4 --dim 768 --dtype f16 >/dev/null
upload "$WORK/hdr" hdr
STATUS_START=$(date +%s.%N)
set +e
"$ISOCLIP" status --input "s3://$BUCKET/hdr/" --output "s3://$BUCKET/hdr_out/" --json >"$WORK/status.json"
STATUS_CODE=$?
set -e
STATUS_S=$(awk -v a="$STATUS_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
if [ "$STATUS_CODE" != 3 ]; then
  echo "isoclip status exited $STATUS_CODE (expected 3: nothing projected)" >&2
  exit 1
fi

cat <<TABLE

machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); moto $S3_MOTO_PIN on 127.0.0.1; isoclip $("$ISOCLIP" --version 2>/dev/null | head -1)

| measure | local files | S3 (loopback moto) | S3 / local |
| --- | --- | --- | --- |
| rows/s, $SHARDS x $ROWS x 768 fp16 | $(rate $TOTAL "$LOCAL_S") ($LOCAL_S s) | $(rate $TOTAL "$S3_S") ($S3_S s) | $(awk -v a="$LOCAL_S" -v b="$S3_S" 'BEGIN { printf "%.0f%%", 100 * a / b }') |
| the server alone: GET every input object (boto3, no compute) | | $(rate $TOTAL "$MOTO_GET_S") rows/s ($MOTO_GET_S s) | isoclip S3 = $(awk -v a="$MOTO_GET_S" -v b="$S3_S" 'BEGIN { printf "%.0f%%", 100 * a / b }') of it |
| peak RSS, that gallery | $((LOCAL_RSS / 1024)) MiB | $((S3_RSS / 1024)) MiB | |
| peak RSS, one $((BIG_BYTES / 1000000)) MB shard | $((BIG_LOCAL_RSS / 1024)) MiB ($BIG_LOCAL_S s) | $((BIG_S3_RSS / 1024)) MiB ($BIG_S3_S s) | |
| list + read $HEADERS headers (isoclip status) | | $STATUS_S s | |
TABLE
