#!/usr/bin/env bash
# Rows/s and peak memory of `isoclip project` on one large fp16 shard, the case the shard reader
# (src/engine/reader.rs) is about: N x 768 fp16 features (default N = 524,288: 768 MiB of input)
# projected to the compact fp16 form (262 dims) with the built-in synthetic projector.
#
# Each binary runs RUNS times (default 3) on the same files; the best and worst rows/s are
# reported, with the largest peak RSS (/usr/bin/time -v) over the runs.
#
#   benches/project_read.sh                              # target/release/isoclip
#   benches/project_read.sh /tmp/isoclip-before target/release/isoclip   # compare binaries
#   N=131072 RUNS=1 WORK=/tmp/pr KEEP=1 benches/project_read.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-524288}
RUNS=${RUNS:-3}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
cleanup() { if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

if [ $# -eq 0 ]; then
  cargo build --release --quiet
  set -- target/release/isoclip
fi
FIRST=$1

if [ ! -f "$WORK/p.st" ]; then
  "$FIRST" fit -o "$WORK/p.st" >/dev/null
fi
if [ ! -f "$WORK/g/img_emb_0000.npy" ]; then
  "$FIRST" gallery --out "$WORK/g" --shards 1 --rows "$N" --dim 768 --dtype f16 >/dev/null
fi

# CACHE=warm (default): the input is read into the page cache before each run (cat), so runs
# compare CPU cost. CACHE=cold: only this input's pages are evicted before each run (dd
# iflag=nocache; nothing else on the machine is touched), so every run reads from the disk.
# (The reader drops the pages it has read, so without this a second run would start colder.)
prepare_cache() {
  local f
  for f in "$WORK"/g/*.npy; do
    if [ "${CACHE:-warm}" = cold ]; then
      dd if="$f" iflag=nocache count=0 status=none
    else
      cat "$f" >/dev/null
    fi
  done
}

printf '%-40s %12s %12s %14s\n' binary "best rows/s" "worst rows/s" "max RSS (MiB)"
for bin in "$@"; do
  best=0
  worst=0
  rss=0
  for _ in $(seq "$RUNS"); do
    rm -rf "$WORK/out"
    prepare_cache
    /usr/bin/time -v -o "$WORK/time.txt" "$bin" project --projector "$WORK/p.st" \
      --input "$WORK/g" --output "$WORK/out" --device cpu --form compact --dtype f16 \
      --quiet --json >"$WORK/summary.json"
    rate=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["rows_per_second"]))' "$WORK/summary.json")
    kib=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$WORK/time.txt")
    if [ "$rate" -gt "$best" ]; then best=$rate; fi
    if [ "$worst" -eq 0 ] || [ "$rate" -lt "$worst" ]; then worst=$rate; fi
    if [ "$kib" -gt "$rss" ]; then rss=$kib; fi
  done
  printf '%-40s %12s %12s %14s\n' "$bin" "$best" "$worst" "$((rss / 1024))"
done
