//! The CUDA kernels compile with NVRTC for every architecture the backend targets.
//!
//! Needs libnvrtc but no GPU: `scripts/test-cuda-kernels.sh` installs NVRTC from the CUDA 13.0
//! wheels and runs this with `--ignored` (plain `cargo test` skips it on machines without CUDA).
#![cfg(feature = "cuda")]

use isoclip::backend::cuda::compile_ptx_for_arch;
use isoclip::backend::cuda::plan::KERNEL_NAMES;

#[test]
#[ignore = "needs libnvrtc: run scripts/test-cuda-kernels.sh"]
fn every_kernel_compiles_to_ptx_for_sm80_and_sm90() {
    for arch in ["sm_80", "sm_90"] {
        let ptx = compile_ptx_for_arch(arch).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            ptx.contains(&format!(".target {arch}")),
            "{arch}: wrong target"
        );
        for name in KERNEL_NAMES {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{arch}: kernel {name} missing"
            );
        }
        // Tensor cores and the async copy pipeline are really used (not a scalar fallback).
        assert!(ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"));
        assert!(ptx.contains("cp.async.cg.shared.global"));
        assert!(ptx.contains("cp.async.wait_group"));
        // No local-memory arrays: the accumulators stayed in registers at the PTX level.
        assert!(!ptx.contains(".local"), "{arch}: PTX uses local memory");
        eprintln!("{arch}: {} bytes of PTX", ptx.len());
    }
}
