#!/usr/bin/env bash
# Times `isoclip eval` on a one-set retrieval of N = 100,000 rows (each row ranked against the
# other 99,999: 10^10 scored pairs, done twice, for plain CLIP and for IsoCLIP) and reports the
# wall time and peak memory (max RSS) with /usr/bin/time -v.
#
# Data: N synthetic 512-d CLIP-like embeddings in ~1000 classes (class centre + isotropic noise),
# stored as float16 like a LAION shard. The noise is strong on purpose: almost every gallery item
# then outranks some relevant item, the expensive case for the ranking step (easy data is
# faster). IsoCLIP goes through the embedding route of the built-in synthetic projector
# (d = 512, compact m = 262). Needs python3 with numpy to generate the data.
#
#   benches/eval_100k.sh                      # N=100000 CLASSES=1000
#   N=20000 benches/eval_100k.sh              # a quicker run
#   WORK=/tmp/evalbench KEEP=1 benches/eval_100k.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
CLASSES=${CLASSES:-1000}
D=512
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
cleanup() { if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

cargo build --release --quiet
BIN=target/release/isoclip

if [ ! -f "$WORK/emb_$N.npy" ]; then
python3 - "$WORK" "$N" "$D" "$CLASSES" <<'PY'
import sys
import numpy as np
work, n, d, classes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(12345)
centres = rng.normal(size=(classes, d)).astype(np.float32)
labels = rng.integers(0, classes, size=n).astype(np.int64)
x = np.empty((n, d), dtype=np.float16)
for a in range(0, n, 10000):
    b = min(a + 10000, n)
    x[a:b] = (centres[labels[a:b]] + 4.0 * rng.normal(size=(b - a, d))).astype(np.float16)
np.save(f"{work}/emb_{n}.npy", x)
np.save(f"{work}/labels_{n}.npy", labels)
PY
fi
$BIN fit -o "$WORK/synthetic.safetensors" >/dev/null 2>&1

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "command: $BIN eval --projector $WORK/synthetic.safetensors --input-kind embeddings --features $WORK/emb_$N.npy --labels $WORK/labels_$N.npy"
/usr/bin/time -v "$BIN" eval --projector "$WORK/synthetic.safetensors" --input-kind embeddings \
    --features "$WORK/emb_$N.npy" --labels "$WORK/labels_$N.npy" 2> "$WORK/time.txt"
grep -E "Elapsed \(wall clock\)|Maximum resident set size|User time|System time|Percent of CPU" "$WORK/time.txt"
