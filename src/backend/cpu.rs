//! The CPU backend: rayon over fixed row blocks; per block, in cache: f16→f32 conversion (F16C
//! via `half`'s runtime-dispatched slice conversion), a GEMM (faer's SIMD kernels, sequential
//! inside a block), bias, row normalisation, and conversion of the output.
//!
//! Block boundaries are fixed multiples of [`BLOCK_ROWS`] from the start of each call, so a row's
//! result never depends on the thread count: reruns are byte-identical.

use faer::{Accum, MatMut, MatRef, Par};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::{
    check_shapes, Backend, BlockStats, ElemType, NonFinitePolicy, PreparedMap, ProjectionOptions,
    RowsIn, RowsOut,
};
use crate::error::{Error, Result};

/// Rows per block: the f32 input block (128 x 768 x 4 = 384 KiB) and output block stay in L2.
pub const BLOCK_ROWS: usize = 128;

pub struct CpuBackend {
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

impl CpuBackend {
    /// `threads = None` uses every core (rayon's global pool).
    pub fn new(threads: Option<usize>) -> Result<Self> {
        match threads {
            None | Some(0) => Ok(CpuBackend {
                pool: None,
                threads: rayon::current_num_threads(),
            }),
            Some(n) => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("isoclip-cpu-{i}"))
                    .build()
                    .map_err(|e| Error::invalid(format!("cannot start {n} threads: {e}")))?;
                Ok(CpuBackend {
                    pool: Some(pool),
                    threads: n,
                })
            }
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

fn simd_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "AVX2";
        }
    }
    "portable SIMD"
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({} threads, {})", self.threads, simd_name())
    }

    fn project(
        &self,
        map: &PreparedMap,
        opts: &ProjectionOptions,
        input: RowsIn<'_>,
        output: RowsOut<'_>,
    ) -> Result<BlockStats> {
        check_shapes(map, &input, &output)?;
        if input.rows == 0 {
            return Ok(BlockStats::default());
        }
        let run = || project_blocks(map, opts, input, output);
        match &self.pool {
            Some(p) => p.install(run),
            None => run(),
        }
    }
}

struct Scratch {
    x: Vec<f32>,
    y: Vec<f32>,
}

/// Outcome of one block: stats, or the index of the first row with NaN/Inf.
type BlockOutcome = std::result::Result<BlockStats, usize>;

fn project_blocks(
    map: &PreparedMap,
    opts: &ProjectionOptions,
    input: RowsIn<'_>,
    output: RowsOut<'_>,
) -> Result<BlockStats> {
    let (d_in, d_out) = (map.d_in(), map.d_out());
    let out_stride = output.row_stride;
    let out_elem = output.elem;
    let rows = input.rows;
    let outcome = output
        .bytes
        .par_chunks_mut(BLOCK_ROWS * out_stride)
        .take(rows.div_ceil(BLOCK_ROWS))
        .enumerate()
        .map_init(
            || Scratch {
                x: vec![0.0; BLOCK_ROWS * d_in],
                y: vec![0.0; BLOCK_ROWS * d_out],
            },
            |scratch, (block, out_bytes)| -> BlockOutcome {
                let start = block * BLOCK_ROWS;
                let n = BLOCK_ROWS.min(rows - start);
                project_one_block(
                    map, opts, &input, start, n, out_bytes, out_stride, out_elem, scratch,
                )
            },
        )
        .reduce(
            || Ok(BlockStats::default()),
            |a, b| match (a, b) {
                (Ok(mut x), Ok(y)) => {
                    x += y;
                    Ok(x)
                }
                (Err(i), Err(j)) => Err(i.min(j)),
                (Err(i), _) | (_, Err(i)) => Err(i),
            },
        );
    outcome.map_err(|row| Error::NonFiniteRow { row })
}

#[allow(clippy::too_many_arguments)]
fn project_one_block(
    map: &PreparedMap,
    opts: &ProjectionOptions,
    input: &RowsIn<'_>,
    start: usize,
    n: usize,
    out_bytes: &mut [u8],
    out_stride: usize,
    out_elem: ElemType,
    scratch: &mut Scratch,
) -> BlockOutcome {
    let (d_in, d_out) = (map.d_in(), map.d_out());
    let mut stats = BlockStats::default();
    let x = &mut scratch.x[..n * d_in];
    let mut bad_rows: Vec<usize> = Vec::new();
    for r in 0..n {
        let dst = &mut x[r * d_in..(r + 1) * d_in];
        read_row(input.row(start + r), input.elem, dst);
        if !dst.iter().all(|v| v.is_finite()) {
            if opts.nonfinite == NonFinitePolicy::Error {
                return Err(start + r);
            }
            dst.fill(0.0);
            bad_rows.push(r);
        }
    }
    let y = &mut scratch.y[..n * d_out];
    let lhs = MatRef::from_row_major_slice(x, n, d_in);
    let rhs = MatRef::from_row_major_slice(&map.weight.data, d_in, d_out);
    let dst = MatMut::from_row_major_slice_mut(y, n, d_out);
    faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
    for r in 0..n {
        let row = &mut y[r * d_out..(r + 1) * d_out];
        if bad_rows.contains(&r) {
            row.fill(0.0);
            stats.nonfinite_rows += 1;
        } else {
            if let Some(b) = &map.bias {
                for (v, bv) in row.iter_mut().zip(b) {
                    *v += bv;
                }
            }
            let norm = norm_f32(row);
            if norm == 0.0 || !norm.is_finite() {
                stats.zero_norm_rows += u64::from(norm == 0.0);
                if norm == 0.0 {
                    row.fill(0.0);
                }
            } else if opts.normalize {
                let inv = 1.0 / norm;
                row.iter_mut().for_each(|v| *v *= inv);
            }
        }
        write_row(
            row,
            out_elem,
            &mut out_bytes[r * out_stride..r * out_stride + d_out * out_elem.size()],
        );
    }
    Ok(stats)
}

/// Euclidean norm: eight f32 partial sums (vectorisable), combined in f64; cheap next to the GEMM.
fn norm_f32(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k] * c[k];
        }
    }
    let mut s: f64 = acc.iter().map(|a| *a as f64).sum();
    for r in rem {
        s += (*r as f64) * (*r as f64);
    }
    s.sqrt() as f32
}

/// Converts one little-endian row to f32.
pub fn read_row(bytes: &[u8], elem: ElemType, dst: &mut [f32]) {
    match elem {
        ElemType::F16 => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            Ok(h) => h.convert_to_f32_slice(dst),
            Err(_) => {
                for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        },
        ElemType::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(f) => dst.copy_from_slice(f),
            Err(_) => {
                for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        },
    }
}

/// Converts one f32 row to little-endian output bytes.
pub fn write_row(row: &[f32], elem: ElemType, out: &mut [u8]) {
    match elem {
        ElemType::F16 => match bytemuck::try_cast_slice_mut::<u8, f16>(out) {
            Ok(h) => h.convert_from_f32_slice(row),
            Err(_) => {
                for (c, v) in out.chunks_exact_mut(2).zip(row) {
                    c.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
                }
            }
        },
        ElemType::F32 => match bytemuck::try_cast_slice_mut::<u8, f32>(out) {
            Ok(f) => f.copy_from_slice(row),
            Err(_) => {
                for (c, v) in out.chunks_exact_mut(4).zip(row) {
                    c.copy_from_slice(&v.to_le_bytes());
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::synthetic::Rng;
    use crate::align::MatrixF32;

    fn map(d_in: usize, d_out: usize, bias: bool) -> PreparedMap {
        let mut rng = Rng::new(9);
        PreparedMap {
            weight: MatrixF32 {
                rows: d_in,
                cols: d_out,
                data: (0..d_in * d_out).map(|_| rng.normal() as f32).collect(),
            },
            bias: bias.then(|| (0..d_out).map(|_| rng.normal() as f32).collect()),
        }
    }

    fn reference(map: &PreparedMap, x: &[f32], normalize: bool) -> Vec<f64> {
        let lm = crate::align::LinearMap {
            weight: map.weight.clone(),
            bias: map.bias.clone(),
        };
        let y = lm.apply_row(x);
        let n = y.iter().map(|v| v * v).sum::<f64>().sqrt();
        if normalize && n > 0.0 {
            y.iter().map(|v| v / n).collect()
        } else {
            y
        }
    }

    #[test]
    fn matches_the_f64_reference_with_tails_bias_and_strides() {
        for &(rows, d_in, d_out, bias) in
            &[(1, 7, 3, false), (129, 33, 17, true), (300, 64, 40, false)]
        {
            let m = map(d_in, d_out, bias);
            let mut rng = Rng::new(rows as u64);
            let x: Vec<f32> = (0..rows * d_in).map(|_| rng.normal() as f32).collect();
            // Input with padding between rows (stride > row), f32.
            let stride_in = (d_in + 3) * 4;
            let mut inb = vec![0u8; rows * stride_in];
            for r in 0..rows {
                for c in 0..d_in {
                    inb[r * stride_in + c * 4..r * stride_in + c * 4 + 4]
                        .copy_from_slice(&x[r * d_in + c].to_le_bytes());
                }
            }
            let mut out = vec![0u8; rows * d_out * 4];
            let opts = ProjectionOptions {
                output: ElemType::F32,
                ..Default::default()
            };
            let be = CpuBackend::new(Some(2)).unwrap();
            be.project(
                &m,
                &opts,
                RowsIn {
                    bytes: &inb,
                    rows,
                    cols: d_in,
                    row_stride: stride_in,
                    elem: ElemType::F32,
                },
                RowsOut::dense(&mut out, rows, d_out, ElemType::F32),
            )
            .unwrap();
            for r in 0..rows {
                let want = reference(&m, &x[r * d_in..(r + 1) * d_in], true);
                for c in 0..d_out {
                    let got = f32::from_le_bytes(
                        out[(r * d_out + c) * 4..(r * d_out + c) * 4 + 4]
                            .try_into()
                            .unwrap(),
                    );
                    assert!(
                        (got as f64 - want[c]).abs() < 1e-5,
                        "row {r} col {c}: {got} vs {}",
                        want[c]
                    );
                }
            }
        }
    }

    #[test]
    fn nonfinite_rows_error_or_zero_and_zero_rows_are_counted() {
        let m = map(8, 4, false);
        let rows = 300;
        let mut x = vec![1.0f32; rows * 8];
        x[250 * 8 + 3] = f32::NAN;
        x[140 * 8..141 * 8].fill(0.0);
        let xb: Vec<u8> = x
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let mut out = vec![0u8; rows * 4 * 2];
        let be = CpuBackend::new(None).unwrap();
        let opts = ProjectionOptions::default();
        let e = be
            .project(
                &m,
                &opts,
                RowsIn::dense(&xb, rows, 8, ElemType::F16),
                RowsOut::dense(&mut out, rows, 4, ElemType::F16),
            )
            .unwrap_err();
        assert!(e.to_string().contains("row 250"), "{e}");
        let opts = ProjectionOptions {
            nonfinite: NonFinitePolicy::Zero,
            ..opts
        };
        let s = be
            .project(
                &m,
                &opts,
                RowsIn::dense(&xb, rows, 8, ElemType::F16),
                RowsOut::dense(&mut out, rows, 4, ElemType::F16),
            )
            .unwrap();
        assert_eq!(
            s,
            BlockStats {
                zero_norm_rows: 1,
                nonfinite_rows: 1
            }
        );
        assert!(out[250 * 8..251 * 8].iter().all(|b| *b == 0));
        assert!(out[140 * 8..141 * 8].iter().all(|b| *b == 0));
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let m = map(48, 20, true);
        let rows = 1000;
        let mut rng = Rng::new(1);
        let xb: Vec<u8> = (0..rows * 48)
            .flat_map(|_| f16::from_f32(rng.normal() as f32).to_le_bytes())
            .collect();
        let run = |t| {
            let mut out = vec![0u8; rows * 20 * 2];
            CpuBackend::new(Some(t))
                .unwrap()
                .project(
                    &m,
                    &ProjectionOptions::default(),
                    RowsIn::dense(&xb, rows, 48, ElemType::F16),
                    RowsOut::dense(&mut out, rows, 20, ElemType::F16),
                )
                .unwrap();
            out
        };
        assert!(run(1) == run(3));
    }
}
