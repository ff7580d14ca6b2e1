//! The AVX-512 BF16 GEMM (`backend::bf16`) and the AVX-512F f32 GEMM over pre-packed weights
//! (`backend::packed_f32`) against the f32 GEMM the CPU backend runs today (the `gemm` crate,
//! `Parallelism::None`, exactly the call `cpu::gemm_rows` makes), one thread, on
//! the shapes that matter: a block of 128 rows of ViT-B/16 features (768) to the compact (262)
//! and full (512) forms, and one row (a query). Prints the median time per call over many
//! samples, rows/s, GFLOP/s (2 x d_in x d_out per row) and the bytes of weights each path reads.
//!
//!     cargo bench --bench bf16_kernel
//!     taskset -c 1 cargo bench --bench bf16_kernel     # pinned to one core
//!
//! On a CPU without AVX-512 BF16 (or AVX-512F) it says which kernel is absent and skips it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use isoclip::align::synthetic::Rng;
use isoclip::backend::bf16::{Bf16Kernel, PackedBf16Weights};
use isoclip::backend::packed_f32::{F32Kernel, PackedF32Weights};

/// Samples per measurement; the median is reported.
const SAMPLES: usize = 301;
/// Each sample runs the call this many times or for at least this long, whichever is more.
const MIN_SAMPLE: Duration = Duration::from_micros(200);

/// The f32 GEMM exactly as `cpu::gemm_rows` calls it: y = x · w, row-major.
fn gemm_f32(x: &[f32], w: &[f32], y: &mut [f32], n: usize, d_in: usize, d_out: usize) {
    assert!(x.len() == n * d_in && w.len() == d_in * d_out && y.len() == n * d_out);
    // SAFETY: the assertion shows every index the GEMM touches is inside its slice (row-major,
    // column stride 1, row strides d_in / d_out); `y` is a unique borrow aliasing neither input;
    // with `read_dst = false` only `y` is written.
    unsafe {
        gemm::gemm(
            n,
            d_out,
            d_in,
            y.as_mut_ptr(),
            1,
            d_out as isize,
            false,
            x.as_ptr(),
            1,
            d_in as isize,
            w.as_ptr(),
            1,
            d_out as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Median seconds per call of `f`.
fn median_secs(mut f: impl FnMut()) -> f64 {
    // Warm up and size a sample: enough calls to last MIN_SAMPLE.
    let t = Instant::now();
    let mut calls = 0usize;
    while t.elapsed() < MIN_SAMPLE * 5 || calls < 10 {
        f();
        calls += 1;
    }
    let per_sample = (calls / 5).max(1);
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_sample {
                f();
            }
            t.elapsed().as_secs_f64() / per_sample as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[SAMPLES / 2]
}

fn report(path: &str, secs: f64, n: usize, d_in: usize, d_out: usize, weight_bytes: usize) {
    let rows_per_s = n as f64 / secs;
    let gflops = rows_per_s * 2.0 * (d_in * d_out) as f64 / 1e9;
    println!(
        "  {path:<10} {:>10.2} µs/call  {:>12.0} rows/s  {gflops:>7.1} GFLOP/s  weights {weight_bytes} B",
        secs * 1e6,
        rows_per_s,
    );
}

fn main() {
    let kernel = Bf16Kernel::new();
    let f32_kernel = F32Kernel::new();
    println!(
        "bf16_kernel: one thread; median of {SAMPLES} samples; bf16 kernel {}; f32 packed kernel {}",
        if kernel.is_some() {
            "present (AVX-512 BF16)"
        } else {
            "ABSENT (this CPU lacks AVX-512 BF16)"
        },
        if f32_kernel.is_some() {
            "present (AVX-512F)"
        } else {
            "ABSENT (this CPU lacks AVX-512F)"
        }
    );
    // (rows, d_in, d_out): a block of ViT-B/16 features to compact and full; one query row.
    let shapes = [
        (128, 768, 262),
        (128, 768, 512),
        (1, 768, 262),
        (1, 768, 512),
        (128, 1024, 768),
    ];
    let mut rng = Rng::new(1);
    for (n, d_in, d_out) in shapes {
        let x: Vec<f32> = (0..n * d_in).map(|_| rng.normal() as f32).collect();
        let w: Vec<f32> = (0..d_in * d_out)
            .map(|_| rng.normal() as f32 * 0.05)
            .collect();
        let mut y = vec![0.0f32; n * d_out];
        println!("{n} x {d_in} -> {d_out}:");
        let f32_secs = median_secs(|| {
            gemm_f32(black_box(&x), black_box(&w), &mut y, n, d_in, d_out);
            black_box(&mut y);
        });
        report("f32", f32_secs, n, d_in, d_out, w.len() * 4);
        if let Some(k) = f32_kernel {
            let pw = PackedF32Weights::pack(&w, d_in, d_out).expect("finite weights");
            let packed_secs = median_secs(|| {
                k.gemm_rows(black_box(&x), black_box(&pw), &mut y, n, d_in, d_out);
                black_box(&mut y);
            });
            report("f32 packed", packed_secs, n, d_in, d_out, pw.bytes());
            println!("  f32 packed / f32 rows/s: {:.2}x", f32_secs / packed_secs);
        }
        if let Some(k) = kernel {
            let pw = PackedBf16Weights::pack(&w, d_in, d_out).expect("finite weights");
            let bf16_secs = median_secs(|| {
                k.gemm_rows(black_box(&x), black_box(&pw), &mut y, n, d_in, d_out);
                black_box(&mut y);
            });
            report("bf16", bf16_secs, n, d_in, d_out, pw.bytes());
            println!("  bf16 / f32 rows/s: {:.2}x", f32_secs / bf16_secs);
        }
    }
}
