//! From stored rows (pre-projection features or CLIP embeddings) to L2-normalised embeddings, for
//! plain CLIP and for IsoCLIP.
//!
//! * features: plain = `x · P` (+ bias), IsoCLIP = `x · U_m Rᵀ` (the compact map: the same cosines
//!   as the paper's full map in fewer dimensions);
//! * embeddings (already `x · P`, possibly normalised): plain = the rows themselves, IsoCLIP =
//!   `e · E_img` (the exact embedding route, docs/METHOD.md §5).
//!
//! Rows are normalised as torch's `F.normalize` does: `v / max(‖v‖, 1e-12)`, so an all-zero row
//! stays zero instead of becoming NaN.

use std::path::Path;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::retrieval::Embeddings;
use crate::align::{MatrixF32, ModalityMaps};
use crate::error::{Error, Result};
use crate::formats::npy::{Accept, NpyDtype, NpyMatrix};

const CHUNK_ROWS: usize = 2048;
const NORM_EPS: f32 = 1e-12;

/// What the input rows are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InputKind {
    /// Pre-projection encoder features (d_in dims): the paper's setting, exact for every model.
    #[default]
    Features,
    /// Already-projected CLIP embeddings (d dims), e.g. a LAION shard: IsoCLIP through the
    /// embedding route (exact only for bias-free projectors).
    Embeddings,
}

impl InputKind {
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Features => "features",
            InputKind::Embeddings => "embeddings",
        }
    }
}

/// A linear map applied before normalisation (None: identity).
#[derive(Clone, Copy, Debug)]
pub struct Projection<'a> {
    pub weight: Option<&'a MatrixF32>,
    pub bias: Option<&'a [f32]>,
}

impl<'a> Projection<'a> {
    pub const IDENTITY: Projection<'static> = Projection {
        weight: None,
        bias: None,
    };

    /// Plain CLIP and IsoCLIP projections of `maps` for `kind` inputs.
    pub fn pair(
        maps: &'a ModalityMaps,
        kind: InputKind,
    ) -> Result<(Projection<'a>, Projection<'a>)> {
        match kind {
            InputKind::Features => Ok((
                Projection {
                    weight: Some(&maps.plain.weight),
                    bias: maps.plain.bias.as_deref(),
                },
                Projection {
                    weight: Some(&maps.compact.weight),
                    bias: maps.compact.bias.as_deref(),
                },
            )),
            InputKind::Embeddings => match &maps.embedding_compact {
                Ok(m) => Ok((
                    Projection::IDENTITY,
                    Projection {
                        weight: Some(&m.weight),
                        bias: None,
                    },
                )),
                Err(reason) => Err(Error::invalid(format!(
                    "the embedding route (input kind 'embeddings'): {reason}"
                ))),
            },
        }
    }

    /// The input width this projection expects, if it fixes one.
    pub fn d_in(&self) -> Option<usize> {
        self.weight.map(|w| w.rows)
    }
}

/// Rows to embed: a memory-mapped `.npy` file or rows in memory (synthetic data).
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    Npy(&'a NpyMatrix),
    Memory {
        data: &'a [f32],
        rows: usize,
        cols: usize,
        name: &'a str,
    },
}

impl Rows<'_> {
    pub fn rows(&self) -> usize {
        match self {
            Rows::Npy(m) => m.rows,
            Rows::Memory { rows, .. } => *rows,
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Rows::Npy(m) => m.cols,
            Rows::Memory { cols, .. } => *cols,
        }
    }
    pub fn name(&self) -> String {
        match self {
            Rows::Npy(m) => m.path().display().to_string(),
            Rows::Memory { name, .. } => name.to_string(),
        }
    }
    /// Rows `[start, end)` as f32, appended to `out`.
    pub fn read_f32(&self, start: usize, end: usize, out: &mut Vec<f32>) {
        match self {
            Rows::Npy(m) => {
                let bytes = m.row_bytes(start, end);
                match m.dtype {
                    NpyDtype::F32 => out.extend(
                        bytes
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                    ),
                    NpyDtype::F16 => out.extend(
                        bytes
                            .chunks_exact(2)
                            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
                    ),
                    other => unreachable!("opened with Accept::Embeddings, got {other:?}"),
                }
                m.release_rows(start, end);
            }
            Rows::Memory { data, cols, .. } => {
                out.extend_from_slice(&data[start * cols..end * cols])
            }
        }
    }
}

/// Opens a feature/embedding matrix for evaluation: f16/f32, 2-D, at least one row.
pub fn open_rows(path: &Path) -> Result<NpyMatrix> {
    let (file, len) = crate::formats::read::open_regular(path)?;
    open_rows_from(file, len, path)
}

/// [`open_rows`] on a file already opened (of `len` bytes); `path` is the name errors give.
pub fn open_rows_from(file: std::fs::File, len: u64, path: &Path) -> Result<NpyMatrix> {
    let m = NpyMatrix::from_file(file, len, path, Accept::Embeddings)?;
    if m.rows == 0 {
        return Err(Error::format(
            path,
            "the array has 0 rows (an empty set cannot be evaluated)",
        ));
    }
    if m.cols == 0 {
        return Err(Error::format(path, "the array has 0 columns"));
    }
    Ok(m)
}

/// Projects every row, then L2-normalises it. Fails (naming the input) on a width mismatch or a
/// non-finite result.
pub fn embed(rows: Rows<'_>, proj: Projection<'_>, kind: InputKind) -> Result<Embeddings> {
    let (n, d_in) = (rows.rows(), rows.cols());
    if let Some(want) = proj.d_in() {
        if want != d_in {
            let hint = match kind {
                InputKind::Features => " (if these are already-projected CLIP embeddings, use the embedding route: input kind 'embeddings')",
                InputKind::Embeddings => " (if these are pre-projection encoder features, use input kind 'features')",
            };
            return Err(Error::Shape(format!(
                "{}: rows have {d_in} dims, but the projector expects {} of {want} dims{hint}",
                rows.name(),
                kind.name(),
            )));
        }
    }
    let d_out = proj.weight.map_or(d_in, |w| w.cols);
    let mut data = vec![0.0f32; n * d_out];
    let bad: Vec<usize> = data
        .par_chunks_mut(CHUNK_ROWS * d_out)
        .enumerate()
        .filter_map(|(ci, out)| {
            let start = ci * CHUNK_ROWS;
            let end = start + out.len() / d_out;
            let mut x = Vec::with_capacity((end - start) * d_in);
            rows.read_f32(start, end, &mut x);
            match proj.weight {
                Some(w) => {
                    let rows_here = end - start;
                    if let Some(b) = proj.bias {
                        for r in out.chunks_exact_mut(d_out) {
                            r.copy_from_slice(b);
                        }
                    }
                    matmul(
                        MatMut::from_row_major_slice_mut(out, rows_here, d_out),
                        if proj.bias.is_some() {
                            Accum::Add
                        } else {
                            Accum::Replace
                        },
                        MatRef::from_row_major_slice(&x, rows_here, d_in),
                        MatRef::from_row_major_slice(&w.data, w.rows, w.cols),
                        1.0f32,
                        Par::Seq,
                    );
                }
                None => out.copy_from_slice(&x),
            }
            let mut first_bad = None;
            for (i, r) in out.chunks_exact_mut(d_out).enumerate() {
                let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
                if !norm.is_finite() {
                    first_bad.get_or_insert(start + i);
                    continue;
                }
                let inv = 1.0 / norm.max(NORM_EPS);
                r.iter_mut().for_each(|v| *v *= inv);
            }
            first_bad
        })
        .collect();
    if let Some(&row) = bad.iter().min() {
        return Err(Error::NonFinite(format!(
            "{}: row {row} holds NaN or Inf (or overflows once projected)",
            rows.name()
        )));
    }
    Ok(Embeddings::new(n, d_out, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_and_normalises_like_f_normalize() {
        let w = MatrixF32 {
            rows: 2,
            cols: 2,
            data: vec![2.0, 0.0, 0.0, 1.0],
        };
        let x = [1.0f32, 1.0, 0.0, 0.0, 3.0, 0.0];
        let e = embed(
            Rows::Memory {
                data: &x,
                rows: 3,
                cols: 2,
                name: "x",
            },
            Projection {
                weight: Some(&w),
                bias: None,
            },
            InputKind::Features,
        )
        .unwrap();
        let s = 5f32.sqrt();
        assert!((e.row(0)[0] - 2.0 / s).abs() < 1e-6 && (e.row(0)[1] - 1.0 / s).abs() < 1e-6);
        assert_eq!(e.row(1), &[0.0, 0.0]); // zero stays zero, as F.normalize(eps=1e-12)
        assert_eq!(e.row(2), &[1.0, 0.0]);
        let bias = [0.0f32, 1.0];
        let e = embed(
            Rows::Memory {
                data: &x,
                rows: 3,
                cols: 2,
                name: "x",
            },
            Projection {
                weight: Some(&w),
                bias: Some(&bias),
            },
            InputKind::Features,
        )
        .unwrap();
        assert_eq!(e.row(1), &[0.0, 1.0]);
    }

    #[test]
    fn names_the_input_on_errors() {
        let w = MatrixF32 {
            rows: 3,
            cols: 2,
            data: vec![0.0; 6],
        };
        let x = [1.0f32, f32::NAN, 0.0, 0.0];
        let err = embed(
            Rows::Memory {
                data: &x,
                rows: 2,
                cols: 2,
                name: "feats.npy",
            },
            Projection {
                weight: Some(&w),
                bias: None,
            },
            InputKind::Features,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("feats.npy") && err.contains("3"), "{err}");
        let err = embed(
            Rows::Memory {
                data: &x,
                rows: 2,
                cols: 2,
                name: "feats.npy",
            },
            Projection::IDENTITY,
            InputKind::Embeddings,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("feats.npy") && err.contains("row 0"), "{err}");
    }
}
