#!/usr/bin/env bash
# One prepared check of the CUDA backend on a GPU host (H200, CUDA 13.0 driver + toolkit, Python
# with numpy and PyTorch, no Rust toolchain, no network). Prints one table:
#   - parity with the CPU path on real-shaped data (200k x 768 -> 262 compact and -> 512 full,
#     f16 and f32 in/out): max |Δcos| over random pairs must be <= 2e-3, flags and NaN errors equal;
#   - kernel throughput from device memory vs cuBLAS HGEMM (PyTorch, CUDA events) alone and
#     followed by a separate L2 normalisation, on the same shapes;
#   - end-to-end rows/s from a .npy file vs the measured pinned host-to-device copy rate.
#
# Build on a Rust machine, then copy the binaries (they need glibc >= 2.34):
#     cargo build --release --examples            # target/release/examples/gpu_bench
#     cargo test --release --no-run               # prints the test executables' paths
#     mkdir -p .device && cp target/release/examples/gpu_bench .device/
#     cp target/release/deps/cuda_kernels-<hash> .device/cuda_kernels        # optional
#     cp target/release/deps/isoclip-<hash> .device/isoclip_unit_tests        # optional (lib tests)
# and copy this repository's scripts/ and .device/ to the GPU host; run from the repository root:
#     bash scripts/gpu-check.sh            # about 3-5 minutes; writes .device/work (several GB)
# Exit status is non-zero when a parity check fails or a binary fails.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=.device
WORK=${GPU_CHECK_WORK:-$BIN/work}
ROWS_PARITY=${ROWS_PARITY:-200000}
ROWS_KERNEL=${ROWS_KERNEL:-2097152}
ROWS_E2E=${ROWS_E2E:-4000000}
mkdir -p "$WORK"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
status=0

if [ ! -x "$BIN/gpu_bench" ]; then
  echo "missing $BIN/gpu_bench: build it with 'cargo build --release --examples' and copy it (see the header)" >&2
  exit 2
fi

# libnvrtc compiles the kernels at first use (the binaries were built without nvcc): make the
# toolkit's copy, or PyTorch's bundled one, loadable.
for d in /usr/local/cuda/lib64 /usr/local/cuda-13.0/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
torch_libs=$(python3 - <<'EOF' 2>/dev/null
import glob, os, sysconfig
root = os.path.join(sysconfig.get_paths()["purelib"], "nvidia")
print(":".join(sorted({os.path.dirname(p) for p in glob.glob(root + "/**/libnvrtc.so*", recursive=True)})))
EOF
)
[ -n "$torch_libs" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$torch_libs"
export LD_LIBRARY_PATH

run() { # run a command, keep its tab-separated result lines, report failures
  local out rc=0
  out=$("$@" 2>"$WORK/last.err") || rc=$?
  [ -n "$out" ] && printf '%s\n' "$out" | tee -a "$RESULTS"
  if [ "$rc" -ne 0 ]; then
    echo "FAILED (exit $rc): $* -- $(tail -n 3 "$WORK/last.err" | tr '\n' ' ')" | tee -a "$RESULTS"
    status=1
  fi
}

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

if [ -x "$BIN/cuda_kernels" ]; then
  echo "== NVRTC compile test (this host's libnvrtc)"
  "$BIN/cuda_kernels" --ignored --nocapture || status=1
fi
if [ -x "$BIN/isoclip_unit_tests" ]; then
  echo "== library unit tests (device selection sees the GPU here)"
  "$BIN/isoclip_unit_tests" --test-threads 4 -q || status=1
fi

echo "== parity with the CPU path"
run "$BIN/gpu_bench" parity --rows "$ROWS_PARITY" --form compact
run "$BIN/gpu_bench" parity --rows "$ROWS_PARITY" --form full
run "$BIN/gpu_bench" parity --rows "$ROWS_PARITY" --form compact --input f32 --output f32
run "$BIN/gpu_bench" parity --rows "$ROWS_PARITY" --form full --output f32

SHAPES="768:262 768:512 1024:768 768:1024"
echo "== kernel throughput from device memory"
for s in $SHAPES; do
  run "$BIN/gpu_bench" kernel --d-in "${s%%:*}" --d-out "${s##*:}" --rows "$ROWS_KERNEL" --iters 20
done
run "$BIN/gpu_bench" kernel --d-in 768 --d-out 262 --rows "$ROWS_KERNEL" --iters 20 --input f32

echo "== cuBLAS HGEMM (+ separate normalisation) on the same shapes"
python3 - "$ROWS_KERNEL" $SHAPES <<'EOF' | tee -a "$RESULTS" || status=1
import sys, torch
rows = int(sys.argv[1])
for s in sys.argv[2:]:
    d_in, d_out = map(int, s.split(":"))
    x = torch.randn(rows, d_in, device="cuda", dtype=torch.float16)
    w = torch.randn(d_in, d_out, device="cuda", dtype=torch.float16) / d_in ** 0.5
    def gemm():
        return x @ w
    def gemm_norm():
        y = x @ w
        return y / torch.linalg.vector_norm(y, dim=1, keepdim=True, dtype=torch.float32).to(y.dtype)
    for name, f in (("cublas_hgemm", gemm), ("cublas_hgemm+normalize", gemm_norm)):
        for _ in range(3):
            f()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        iters = 20
        a.record()
        for _ in range(iters):
            f()
        b.record()
        torch.cuda.synchronize()
        sec = a.elapsed_time(b) / 1e3 / iters
        rps = rows / sec
        print(f"{name}\tshape={d_in}->{d_out}\tin=f16\tout=f16\trows={rows}\tms={sec*1e3:.3f}\t"
              f"rows_per_s={rps:.3e}\tGB_per_s={rps*(2*d_in+2*d_out)/1e9:.1f}\t"
              f"TFLOP_per_s={rps*2*d_in*d_out/1e12:.1f}")
    del x, w
    torch.cuda.empty_cache()
EOF

echo "== end to end from a file"
NPY="$WORK/gallery_${ROWS_E2E}x768_f16.npy"
if [ ! -f "$NPY" ]; then
  python3 - "$NPY" "$ROWS_E2E" <<'EOF' || status=1
import sys, numpy as np
path, rows = sys.argv[1], int(sys.argv[2])
a = np.lib.format.open_memmap(path, mode="w+", dtype="<f2", shape=(rows, 768))
rng = np.random.default_rng(0)
step = 1 << 18
for i in range(0, rows, step):
    n = min(step, rows - i)
    a[i:i + n] = rng.standard_normal((n, 768), dtype=np.float32).astype(np.float16)
a.flush()
EOF
fi
run "$BIN/gpu_bench" h2d --mb 2048
run "$BIN/gpu_bench" e2e --npy "$NPY" --form compact
run "$BIN/gpu_bench" e2e --npy "$NPY" --form full
run "$BIN/gpu_bench" e2e --npy "$NPY" --form compact --device cpu
echo "(the .npy was just written, so it is read from the page cache: this measures the pipeline, not the disk)"

echo
echo "== summary"
python3 - "$RESULTS" <<'EOF'
import sys
rows = []
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    if not line or line.startswith("FAILED"):
        if line: rows.append((line, {}))
        continue
    what, *kv = line.split("\t")
    rows.append((what, dict(p.split("=", 1) for p in kv if "=" in p)))
def get(d, k): return d.get(k, "")
print(f"{'check':24} {'shape':11} {'in/out':8} {'rows/s':>10} {'GB/s':>7} {'TFLOP/s':>8}  notes")
kernel = {}
for what, d in rows:
    if not d:
        print(what); continue
    shape, io = get(d, "shape"), f"{get(d,'in')}/{get(d,'out')}".strip("/")
    note = ""
    if what == "parity":
        note = (f"max|dcos|={d['max_abs_dcos']} min self cos={d['min_self_cos']} "
                f"same NaN error={d['same_nan_error']} pass={d['pass']}")
    if what == "kernel" and get(d, "in") == "f16":
        kernel[shape] = float(d["rows_per_s"])
    if what.startswith("cublas") and shape in kernel:
        note = f"isoclip kernel / this = {kernel[shape] / float(d['rows_per_s']):.2f}x"
    if what == "h2d":
        note = f"pinned H2D {d['GB_per_s']} GB/s = {float(d['GB_per_s'])*1e9/1536:.3e} rows/s of 768 f16"
    if what == "e2e":
        note = f"{d['device']}  input {d['input_GB_per_s']} GB/s"
    print(f"{what:24} {shape:11} {io:8} {get(d,'rows_per_s'):>10} {get(d,'GB_per_s'):>7} "
          f"{get(d,'TFLOP_per_s'):>8}  {note}")
EOF
rm -f "$WORK/last.err"
exit $status
