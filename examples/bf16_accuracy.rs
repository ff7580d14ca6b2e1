//! What the AVX-512 BF16 GEMM costs in accuracy, measured on the SYNTHETIC ViT-B/16-shaped model.
//!
//! Data: `SyntheticModel::vit_b()` fitted with its image band (200/50), exactly what
//! `isoclip fit` / `isoclip demo` do without a checkpoint; N labelled image features (768 f32
//! per row, 60 classes, data seed 7) from `labelled_image_features`, the set `isoclip eval`
//! evaluates without data files. Each form (compact 768 -> 262, full 768 -> 512) is projected
//! twice and normalised:
//! - f32: the CPU backend (`CpuBackend::project`, f32 in and out, normalised), as shipped;
//! - bf16: the same rows and weights rounded to bf16 (`Bf16Kernel::gemm_rows`, f32 sums), then
//!   the bias and the f64 normalisation the CPU backend applies.
//!
//! Reports max and mean |Δcos| between the two paths over the pairs (first 1000 rows) x (all N
//! rows), each path's max |Δcos| against an f64 projection of the first 1000 rows, and one-set
//! retrieval over all N rows (every row queries the others: recall@10, mAP, precision@10).
//!
//!     cargo run --release --example bf16_accuracy [N]      # N defaults to 20000

use isoclip::align::synthetic::{SyntheticModel, SYNTHETIC_IMAGE_BAND};
use isoclip::align::{fit, BandSpec, LinearMap, Modality};
use isoclip::backend::bf16::{Bf16Kernel, PackedBf16Weights};
use isoclip::backend::cpu::CpuBackend;
use isoclip::backend::{Backend, ElemType, ProjectionOptions, RowsIn, RowsOut};
use isoclip::eval::retrieval::{evaluate, Embeddings, Layout, RetrievalOptions};

const CLASSES: usize = 60;
const DATA_SEED: u64 = 7;
const PAIR_ROWS: usize = 1000;

fn main() -> isoclip::Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|_| isoclip::Error::invalid(format!("N: `{a}` is not a row count")))?,
        None => 20_000,
    };
    if n < PAIR_ROWS {
        return Err(isoclip::Error::invalid(format!(
            "N: at least {PAIR_ROWS} rows are needed, got {n}"
        )));
    }
    let Some(kernel) = Bf16Kernel::new() else {
        return Err(isoclip::Error::invalid(
            "this CPU lacks AVX-512 BF16: the bf16 kernel cannot run here",
        ));
    };
    let model = SyntheticModel::vit_b()?;
    let band = BandSpec::new(SYNTHETIC_IMAGE_BAND.0, SYNTHETIC_IMAGE_BAND.1);
    let projector = fit(&model.weights, &[(Modality::Image, band)], None)?;
    let maps = projector.image.as_ref().expect("fitted for images");
    let (x, labels) = model.labelled_image_features(n, CLASSES, DATA_SEED);
    let d_in = maps.d_in;
    println!(
        "SYNTHETIC ViT-B/16-shaped model, image band {}/{}; {n} labelled image features \
         ({d_in} f32, {CLASSES} classes, seed {DATA_SEED})",
        band.k_top, band.k_bottom
    );
    for (form, map) in [("compact", &maps.compact), ("full", &maps.full)] {
        let d_out = map.d_out();
        let f32_rows = project_f32(map, &x, n)?;
        let bf16_rows = project_bf16(&kernel, map, &x, n)?;
        println!("\n{form} form ({d_in} -> {d_out}):");
        let (max_d, mean_d) = delta_cos(&f32_rows, &bf16_rows, n, d_out);
        println!(
            "  |Δcos| f32 vs bf16 over {PAIR_ROWS} x {n} pairs: max {max_d:.2e}, mean {mean_d:.2e}"
        );
        let exact = project_f64(map, &x[..PAIR_ROWS * d_in]);
        for (name, rows) in [("f32", &f32_rows), ("bf16", &bf16_rows)] {
            let worst = max_delta_vs_exact(rows, &exact, d_out);
            println!(
                "  |Δcos| {name:<4} vs f64 over {PAIR_ROWS} x {PAIR_ROWS} pairs: max {worst:.2e}"
            );
        }
        let mut summaries = Vec::new();
        for (name, rows) in [("f32", f32_rows), ("bf16", bf16_rows)] {
            let items = Embeddings::new(n, d_out, rows);
            let out = evaluate(
                Layout::OneSet {
                    items: &items,
                    labels: &labels,
                },
                RetrievalOptions {
                    curve_max_k: 10,
                    histogram_bins: 0,
                },
            )?;
            let s = out.summary;
            println!(
                "  retrieval {name:<4} ({n} queries, one set): recall@10 {:.3}  mAP {:.3}  \
                 precision@10 {:.3}",
                s.r_at_10, s.map, s.precision_at_k[9]
            );
            summaries.push(s);
        }
        println!(
            "  bf16 - f32: recall@10 {:+.3}  mAP {:+.3}  precision@10 {:+.3} (points)",
            summaries[1].r_at_10 - summaries[0].r_at_10,
            summaries[1].map - summaries[0].map,
            summaries[1].precision_at_k[9] - summaries[0].precision_at_k[9]
        );
    }
    Ok(())
}

/// The shipped f32 path: the CPU backend, f32 in and out, normalised.
fn project_f32(map: &LinearMap, x: &[f32], n: usize) -> isoclip::Result<Vec<f32>> {
    let (d_in, d_out) = (map.d_in(), map.d_out());
    let cpu = CpuBackend::new(None)?;
    let prepared = cpu.prepare(std::sync::Arc::new(map.clone()))?;
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = vec![0u8; n * d_out * 4];
    cpu.project(
        &prepared,
        &ProjectionOptions {
            output: ElemType::F32,
            ..Default::default()
        },
        RowsIn::dense(&bytes, n, d_in, ElemType::F32),
        RowsOut::dense(&mut out, n, d_out, ElemType::F32),
    )?;
    Ok(out
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The bf16 path: blocks of 128 rows through the kernel, then bias and f64 normalisation.
fn project_bf16(
    kernel: &Bf16Kernel,
    map: &LinearMap,
    x: &[f32],
    n: usize,
) -> isoclip::Result<Vec<f32>> {
    let (d_in, d_out) = (map.d_in(), map.d_out());
    let packed = PackedBf16Weights::pack(&map.weight.data, d_in, d_out)?;
    let mut y = vec![0.0f32; n * d_out];
    for (xb, yb) in x.chunks(128 * d_in).zip(y.chunks_mut(128 * d_out)) {
        kernel.gemm_rows(xb, &packed, yb, xb.len() / d_in, d_in, d_out);
    }
    for row in y.chunks_exact_mut(d_out) {
        if let Some(b) = &map.bias {
            row.iter_mut().zip(b).for_each(|(v, bv)| *v += bv);
        }
        let norm = row
            .iter()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            row.iter_mut()
                .for_each(|v| *v = (f64::from(*v) / norm) as f32);
        }
    }
    Ok(y)
}

/// The f64 projection of the rows, normalised.
fn project_f64(map: &LinearMap, x: &[f32]) -> Vec<Vec<f64>> {
    x.chunks_exact(map.d_in())
        .map(|row| {
            let y = map.apply_row(row);
            let norm = y.iter().map(|v| v * v).sum::<f64>().sqrt();
            y.iter().map(|v| v / norm).collect()
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// Max and mean |cos_a - cos_b| over pairs (i < PAIR_ROWS, j < n, i ≠ j).
fn delta_cos(a: &[f32], b: &[f32], n: usize, d: usize) -> (f64, f64) {
    let (mut max, mut sum, mut count) = (0.0f64, 0.0f64, 0usize);
    for i in 0..PAIR_ROWS {
        let (ai, bi) = (&a[i * d..(i + 1) * d], &b[i * d..(i + 1) * d]);
        for j in 0..n {
            if i == j {
                continue;
            }
            let da = dot(ai, &a[j * d..(j + 1) * d]);
            let db = dot(bi, &b[j * d..(j + 1) * d]);
            let e = (da - db).abs();
            max = max.max(e);
            sum += e;
            count += 1;
        }
    }
    (max, sum / count as f64)
}

/// Max |cos - cos_exact| over the pairs of the first PAIR_ROWS rows.
fn max_delta_vs_exact(rows: &[f32], exact: &[Vec<f64>], d: usize) -> f64 {
    let mut max = 0.0f64;
    for i in 0..exact.len() {
        for j in (i + 1)..exact.len() {
            let got = dot(&rows[i * d..(i + 1) * d], &rows[j * d..(j + 1) * d]);
            let want: f64 = exact[i].iter().zip(&exact[j]).map(|(x, y)| x * y).sum();
            max = max.max((got - want).abs());
        }
    }
    max
}
