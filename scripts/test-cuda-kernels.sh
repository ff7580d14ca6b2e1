#!/usr/bin/env bash
# CUDA kernel checks that need no GPU (run by scripts/test.sh, so by CI):
#  1. kernels/project.cu compiled as C++ under the host emulator (kernels/emu/) runs every kernel
#     variant on row/column tails, odd widths, bias, f16/f32 in and out, NaN/Inf and zero rows,
#     extreme f32 magnitudes and both pipeline depths, against an f64 reference;
#  2. NVRTC from the CUDA 13.0 wheels (pinned: see docs/CUDA.md) compiles every kernel
#     to PTX for sm_80 and sm_90 (the ignored test in tests/cuda_kernels.rs).
# The venv lives in .cuda-venv (git-ignored) and is reused when present.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "CUDA kernels under the host emulator"
mkdir -p target/cuda-emu
g++ -std=c++20 -O2 -pthread -Wall -Wextra -Werror -Wno-unknown-pragmas \
  -o target/cuda-emu/emu_test kernels/emu/emu_test.cpp
target/cuda-emu/emu_test

step "CUDA kernels compile with NVRTC 13.0 for sm_80 and sm_90"
VENV=.cuda-venv
PINS=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88)
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${PINS[@]}"
PURELIB=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CU="$PURELIB/nvidia/cu13"
if ! ls "$CU"/lib/libnvrtc.so* >/dev/null 2>&1; then
  echo "libnvrtc not found under $CU/lib after installing ${PINS[*]}" >&2
  exit 1
fi
LD_LIBRARY_PATH="$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
ISOCLIP_CUDA_INCLUDE="$CU/include" \
  cargo test --test cuda_kernels -- --ignored --nocapture
