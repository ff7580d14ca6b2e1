//! The CPU block kernel: rows/s for the shapes of ViT-B and ViT-L, compact and full forms,
//! f16 and f32 input, f16 output, normalised — everything `isoclip project` does per chunk except
//! file I/O. GFLOP/s = rows/s x 2 x d_in x d_out / 1e9 (printed after each group).
//!
//!     cargo bench --bench block_kernel

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use isoclip::align::synthetic::Rng;
use std::sync::Arc;

use isoclip::align::{LinearMap, MatrixF32};
use isoclip::backend::cpu::CpuBackend;
use isoclip::backend::{Backend, ElemType, ProjectionOptions, RowsIn, RowsOut};

const ROWS: usize = 32768;

fn map(d_in: usize, d_out: usize) -> Arc<LinearMap> {
    let mut rng = Rng::new(1);
    Arc::new(LinearMap {
        weight: MatrixF32 {
            rows: d_in,
            cols: d_out,
            data: (0..d_in * d_out)
                .map(|_| rng.normal() as f32 * 0.05)
                .collect(),
        },
        bias: None,
    })
}

fn input(d_in: usize, elem: ElemType) -> Vec<u8> {
    let mut rng = Rng::new(2);
    (0..ROWS * d_in)
        .flat_map(|_| {
            let v = rng.normal() as f32;
            match elem {
                ElemType::F16 => f16::from_f32(v).to_le_bytes().to_vec(),
                ElemType::F32 => v.to_le_bytes().to_vec(),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let backend = CpuBackend::new(None).unwrap();
    // (model, d_in, compact width, full width): ViT-B/16 image 768 -> 262 | 512, ViT-L/14 1024 -> 318 | 768.
    let shapes = [("vit-b16", 768, 262, 512), ("vit-l14", 1024, 318, 768)];
    let mut g = c.benchmark_group(format!("cpu_block/{}", backend.describe()));
    g.sample_size(10);
    g.throughput(Throughput::Elements(ROWS as u64));
    for (model, d_in, compact, full) in shapes {
        for (form, d_out) in [("compact", compact), ("full", full)] {
            let m = backend.prepare(map(d_in, d_out)).unwrap();
            for elem in [ElemType::F16, ElemType::F32] {
                let x = input(d_in, elem);
                let mut out = vec![0u8; ROWS * d_out * 2];
                let id = BenchmarkId::new(
                    format!("{model}_{form}_{d_in}x{d_out}"),
                    format!("in_{}", elem.name()),
                );
                g.bench_with_input(id, &x, |b, x| {
                    b.iter(|| {
                        backend
                            .project(
                                &m,
                                &ProjectionOptions::default(),
                                RowsIn::dense(x, ROWS, d_in, elem),
                                RowsOut::dense(&mut out, ROWS, d_out, ElemType::F16),
                            )
                            .unwrap()
                    })
                });
                println!("  (FLOPs per row for this shape: {})", 2 * d_in * d_out);
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
