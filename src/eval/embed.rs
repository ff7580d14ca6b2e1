//! From stored rows (pre-projection features or CLIP embeddings) to L2-normalised embeddings, for
//! plain CLIP and for IsoCLIP, projected through a [`Backend`] like every other projection.
//!
//! * features: plain = `x · P` (+ bias), IsoCLIP = `x · U_m Rᵀ` (the compact map: the same cosines
//!   as the paper's full map in fewer dimensions);
//! * embeddings (already `x · P`, possibly normalised): plain = the rows themselves (an identity
//!   map: the GEMM multiplies by 1 and adds exact zeros, so the rows pass unchanged), IsoCLIP =
//!   `e · E_img` (the exact embedding route, docs/METHOD.md §5).
//!
//! Rows are normalised by the backend: a zero row stays zero (as torch's
//! `F.normalize(eps=1e-12)` leaves it), any other finite row gets unit norm (its squares summed
//! in f64). Unlike `F.normalize`, a row whose norm is below 1e-12 is scaled to unit norm too
//! rather than divided by 1e-12: no CLIP feature or embedding is that small.

use std::path::Path;

use super::retrieval::Embeddings;
use std::sync::Arc;

use crate::align::{LinearMap, MatrixF32, ModalityMaps};
use crate::backend::{
    Backend, ElemType, InputKind, NonFinitePolicy, OutputForm, Precision, PreparedMap,
    ProjectionOptions, RowsIn, RowsOut,
};
use crate::error::{Error, Result};
use crate::formats::npy::{Accept, NpyDtype, NpyMatrix};

/// Rows handed to the backend per call: bounds the f32 copy of in-memory rows, and lets a
/// memory-mapped file release the pages of each chunk once it is projected.
const CHUNK_ROWS: usize = 16 * 1024;

/// The linear map applied before normalisation.
#[derive(Clone, Debug)]
pub enum Projection {
    /// The rows as they are (plain CLIP on stored embeddings).
    Identity,
    /// `x · weight (+ bias)`, prepared on the backend by each [`embed`] call.
    Map(Arc<LinearMap>),
}

impl Projection {
    pub const IDENTITY: Projection = Projection::Identity;

    /// Plain CLIP and IsoCLIP projections of `maps` for `kind` inputs.
    pub fn pair(maps: &ModalityMaps, kind: InputKind) -> Result<(Projection, Projection)> {
        if let (InputKind::Embeddings, Err(reason)) = (kind, &maps.embedding_compact) {
            return Err(Error::invalid(format!(
                "the embedding route (input kind 'embeddings'): {reason}"
            )));
        }
        let (plain, iso) = prepare_maps(maps, kind)?;
        Ok((
            plain.map_or(Projection::Identity, Projection::Map),
            Projection::Map(iso),
        ))
    }

    /// The input width this projection expects, if it fixes one.
    pub fn d_in(&self) -> Option<usize> {
        match self {
            Projection::Identity => None,
            Projection::Map(m) => Some(m.d_in()),
        }
    }
}

/// The backend maps of plain CLIP (None: the rows themselves) and IsoCLIP (the compact form).
/// The one place eval turns a modality's maps into what the backend applies.
fn prepare_maps(
    maps: &ModalityMaps,
    kind: InputKind,
) -> Result<(Option<Arc<LinearMap>>, Arc<LinearMap>)> {
    let plain = match kind {
        InputKind::Features => Some(maps.plain.clone()),
        InputKind::Embeddings => None,
    };
    Ok((plain, maps.select(kind, OutputForm::Compact)?))
}

/// The `d x d` identity, the backend's map for [`Projection::Identity`].
fn identity_map(d: usize) -> Arc<LinearMap> {
    let mut data = vec![0.0f32; d * d];
    data.iter_mut().step_by(d + 1).for_each(|v| *v = 1.0);
    Arc::new(LinearMap::unbiased(MatrixF32 {
        rows: d,
        cols: d,
        data,
    }))
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
    /// Projects rows `[start, end)` through `map` into `out` (`end - start` rows of
    /// `map.d_out()` f32), normalised. Row errors count from `start`.
    fn project_into(
        &self,
        backend: &dyn Backend,
        map: &PreparedMap,
        opts: &ProjectionOptions,
        (start, end): (usize, usize),
        out: &mut [f32],
    ) -> Result<()> {
        let (n, cols) = (end - start, self.cols());
        let output = RowsOut::dense(bytemuck::cast_slice_mut(out), n, map.d_out(), ElemType::F32);
        match self {
            Rows::Npy(m) => {
                let elem = match m.dtype {
                    NpyDtype::F32 => ElemType::F32,
                    NpyDtype::F16 => ElemType::F16,
                    other => unreachable!("opened with Accept::Embeddings, got {other:?}"),
                };
                let input = RowsIn::dense(m.row_bytes(start, end), n, cols, elem);
                let result = backend.project(map, opts, input, output);
                m.release_rows(start, end);
                result?;
            }
            Rows::Memory { data, .. } => {
                let rows = &data[start * cols..end * cols];
                let input = RowsIn::dense(bytemuck::cast_slice(rows), n, cols, ElemType::F32);
                backend.project(map, opts, input, output)?;
            }
        }
        Ok(())
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

/// Projects every row through `backend`, then L2-normalises it. Fails (naming the input) on a
/// width mismatch, a row holding NaN or Inf, or a row whose projection overflows.
pub fn embed(
    backend: &dyn Backend,
    rows: Rows<'_>,
    proj: &Projection,
    kind: InputKind,
) -> Result<Embeddings> {
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
    let map = backend.prepare(match proj {
        Projection::Map(m) => m.clone(),
        Projection::Identity => identity_map(d_in),
    })?;
    let opts = ProjectionOptions {
        input_kind: kind,
        form: OutputForm::Compact,
        output: ElemType::F32,
        normalize: true,
        nonfinite: NonFinitePolicy::Error,
        precision: Precision::F32,
    };
    let d_out = map.d_out();
    let mut data = crate::backend::try_zeroed::<f32>(n * d_out)?;
    for start in (0..n).step_by(CHUNK_ROWS) {
        let end = (start + CHUNK_ROWS).min(n);
        rows.project_into(
            backend,
            &map,
            &opts,
            (start, end),
            &mut data[start * d_out..end * d_out],
        )
        .map_err(|e| e.offset_rows(start).in_file(rows.name()))?;
    }
    Ok(Embeddings::new(n, d_out, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    fn map(rows: usize, cols: usize, data: Vec<f32>, bias: Option<Vec<f32>>) -> Projection {
        Projection::Map(Arc::new(LinearMap {
            weight: MatrixF32 { rows, cols, data },
            bias,
        }))
    }

    fn memory<'a>(data: &'a [f32], cols: usize, name: &'a str) -> Rows<'a> {
        Rows::Memory {
            data,
            rows: data.len() / cols,
            cols,
            name,
        }
    }

    #[test]
    fn projects_and_normalises_like_f_normalize() {
        let cpu = CpuBackend::new(Some(1)).unwrap();
        let x = [1.0f32, 1.0, 0.0, 0.0, 3.0, 0.0];
        let w = || vec![2.0, 0.0, 0.0, 1.0];
        let p = map(2, 2, w(), None);
        let e = embed(&cpu, memory(&x, 2, "x"), &p, InputKind::Features).unwrap();
        // Row 0: (2, 1) / sqrt(5).
        let s = 5f32.sqrt();
        assert!((e.row(0)[0] - 2.0 / s).abs() < 1e-6 && (e.row(0)[1] - 1.0 / s).abs() < 1e-6);
        assert_eq!(e.row(1), &[0.0, 0.0]); // zero stays zero, as F.normalize(eps=1e-12)
        assert_eq!(e.row(2), &[1.0, 0.0]);
        let p = map(2, 2, w(), Some(vec![0.0, 1.0]));
        let e = embed(&cpu, memory(&x, 2, "x"), &p, InputKind::Features).unwrap();
        assert_eq!(e.row(1), &[0.0, 1.0]);
    }

    #[test]
    fn identity_passes_stored_embeddings_through_normalised() {
        let cpu = CpuBackend::new(Some(1)).unwrap();
        // (3, 4, 0) has norm 5; (0, 0, -2) norm 2; 300 rows span several backend blocks.
        let mut x = Vec::new();
        for i in 0..300 {
            x.extend(if i % 2 == 0 {
                [3.0f32, 4.0, 0.0]
            } else {
                [0.0, 0.0, -2.0]
            });
        }
        let e = embed(
            &cpu,
            memory(&x, 3, "emb"),
            &Projection::IDENTITY,
            InputKind::Embeddings,
        )
        .unwrap();
        for i in 0..300 {
            let want: [f32; 3] = if i % 2 == 0 {
                [0.6, 0.8, 0.0]
            } else {
                [0.0, 0.0, -1.0]
            };
            for (a, b) in e.row(i).iter().zip(want) {
                assert!((a - b).abs() < 1e-7, "row {i}: {:?}", e.row(i));
            }
        }
    }

    #[test]
    fn names_the_input_on_errors() {
        let cpu = CpuBackend::new(Some(1)).unwrap();
        let p = map(3, 2, vec![0.0; 6], None);
        let x = [1.0f32, f32::NAN, 0.0, 0.0];
        let err = embed(&cpu, memory(&x, 2, "feats.npy"), &p, InputKind::Features)
            .unwrap_err()
            .to_string();
        assert!(err.contains("feats.npy") && err.contains("3"), "{err}");
        let err = embed(
            &cpu,
            memory(&x, 2, "feats.npy"),
            &Projection::IDENTITY,
            InputKind::Embeddings,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "feats.npy: row 0 contains NaN or Inf");
        // Row numbers count from the start of the whole input, across backend calls.
        let mut big = vec![1.0f32; 2 * (CHUNK_ROWS + 10)];
        big[2 * (CHUNK_ROWS + 3)] = f32::INFINITY;
        let err = embed(
            &cpu,
            memory(&big, 2, "big.npy"),
            &Projection::IDENTITY,
            InputKind::Embeddings,
        )
        .unwrap_err();
        assert!(
            matches!(err.root(), Error::NonFiniteRow { row } if *row == CHUNK_ROWS + 3),
            "{err}"
        );
    }
}
