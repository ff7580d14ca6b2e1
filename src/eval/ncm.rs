//! Nearest class mean (NCM) classification, the reference's IsoNCM protocol (docs/METHOD.md §8):
//! class means of the **unnormalised** rows (pre-projection features, or embeddings as stored),
//! projected, L2-normalised; each test row, projected and normalised, takes the class of the
//! mean with the highest cosine. Ties go to the smallest label. A test label absent from the
//! training set can never be predicted and counts as an error.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use serde::Serialize;

use super::embed::{embed, Projection, Rows};
use super::retrieval::Embeddings;
use crate::backend::{Backend, InputKind};
use crate::error::{Error, Result};

/// Per-class means of unnormalised rows.
#[derive(Clone, Debug)]
pub struct ClassMeans {
    /// Distinct training labels, ascending; row c of `means` belongs to `labels[c]`.
    pub labels: Vec<i64>,
    pub counts: Vec<usize>,
    pub dim: usize,
    pub means: Vec<f32>,
}

impl ClassMeans {
    /// Means accumulated in f64, streaming through the rows.
    pub fn compute(rows: Rows<'_>, labels: &[i64]) -> Result<Self> {
        if rows.rows() != labels.len() {
            return Err(Error::Shape(format!(
                "{} has {} rows but {} labels were given",
                rows.name(),
                rows.rows(),
                labels.len()
            )));
        }
        let mut distinct = labels.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let d = rows.cols();
        let mut sums = vec![0.0f64; distinct.len() * d];
        let mut counts = vec![0usize; distinct.len()];
        let mut buf = Vec::new();
        let chunk = 4096;
        for start in (0..rows.rows()).step_by(chunk) {
            let end = (start + chunk).min(rows.rows());
            buf.clear();
            rows.read_f32(start, end, &mut buf);
            for (i, x) in buf.chunks_exact(d).enumerate() {
                let c = distinct
                    .binary_search(&labels[start + i])
                    .expect("label is in the list");
                counts[c] += 1;
                for (s, &v) in sums[c * d..(c + 1) * d].iter_mut().zip(x) {
                    *s += v as f64;
                }
            }
        }
        let means = sums
            .chunks_exact(d)
            .zip(&counts)
            .flat_map(|(s, &n)| s.iter().map(move |v| (v / n as f64) as f32))
            .collect();
        Ok(ClassMeans {
            labels: distinct,
            counts,
            dim: d,
            means,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NcmResult {
    pub classes: usize,
    pub test_rows: usize,
    /// Top-1 accuracy, x100.
    pub accuracy: f64,
    /// Test rows whose label has no training example.
    pub unseen_test_labels: usize,
    /// Predicted label per test row.
    #[serde(skip)]
    pub predictions: Vec<i64>,
}

/// NCM with one projection: means and test rows through `proj` on `backend`, normalised,
/// nearest by cosine.
pub fn ncm(
    backend: &dyn Backend,
    means: &ClassMeans,
    test: Rows<'_>,
    test_labels: &[i64],
    proj: &Projection,
    kind: InputKind,
) -> Result<NcmResult> {
    if test.rows() != test_labels.len() {
        return Err(Error::Shape(format!(
            "{} has {} rows but {} labels were given",
            test.name(),
            test.rows(),
            test_labels.len()
        )));
    }
    if test.cols() != means.dim {
        return Err(Error::Shape(format!(
            "{}: test rows have {} dims but the training rows have {}",
            test.name(),
            test.cols(),
            means.dim
        )));
    }
    let centres = embed(
        backend,
        Rows::Memory {
            data: &means.means,
            rows: means.labels.len(),
            cols: means.dim,
            name: "class means",
        },
        proj,
        kind,
    )?;
    let t = embed(backend, test, proj, kind)?;
    let predictions = nearest(&t, &centres)
        .into_iter()
        .map(|c| means.labels[c])
        .collect::<Vec<_>>();
    let correct = predictions
        .iter()
        .zip(test_labels)
        .filter(|(p, l)| p == l)
        .count();
    let unseen = test_labels
        .iter()
        .filter(|l| means.labels.binary_search(l).is_err())
        .count();
    Ok(NcmResult {
        classes: means.labels.len(),
        test_rows: t.rows,
        accuracy: 100.0 * correct as f64 / t.rows as f64,
        unseen_test_labels: unseen,
        predictions,
    })
}

/// For each row of `x`, the index of the centre with the largest dot product (first on ties).
fn nearest(x: &Embeddings, centres: &Embeddings) -> Vec<usize> {
    let (c, d) = (centres.rows, centres.dim);
    let block = 1024;
    x.data
        .par_chunks(block * d)
        .flat_map_iter(|chunk| {
            let n = chunk.len() / d;
            let mut s = vec![0.0f32; n * c];
            matmul(
                MatMut::from_row_major_slice_mut(&mut s, n, c),
                Accum::Replace,
                MatRef::from_row_major_slice(chunk, n, d),
                MatRef::from_row_major_slice(&centres.data, c, d).transpose(),
                1.0f32,
                Par::Seq,
            );
            (0..n)
                .map(|i| {
                    let row = &s[i * c..(i + 1) * c];
                    let mut best = 0;
                    for (j, &v) in row.iter().enumerate() {
                        if v > row[best] {
                            best = j;
                        }
                    }
                    best
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    #[test]
    fn means_are_of_unnormalised_rows() {
        // Class 7: (10, 0) and (0, 1): mean (5, 0.5). Normalising first would give (0.5, 0.5).
        let x = [10.0f32, 0.0, 0.0, 1.0, -1.0, 0.0];
        let rows = Rows::Memory {
            data: &x,
            rows: 3,
            cols: 2,
            name: "train",
        };
        let m = ClassMeans::compute(rows, &[7, 7, 3]).unwrap();
        assert_eq!(m.labels, vec![3, 7]);
        assert_eq!(m.counts, vec![1, 2]);
        assert_eq!(&m.means[2..], &[5.0, 0.5]);
        let t = [1.0f32, 0.6, -1.0, 0.1, 0.0, 0.0];
        let cpu = CpuBackend::new(Some(1)).unwrap();
        let r = ncm(
            &cpu,
            &m,
            Rows::Memory {
                data: &t,
                rows: 3,
                cols: 2,
                name: "test",
            },
            &[7, 3, 9],
            &Projection::IDENTITY,
            InputKind::Embeddings,
        )
        .unwrap();
        assert_eq!(r.predictions, vec![7, 3, 3]); // zero row: all cosines 0, tie -> smallest label
        assert!((r.accuracy - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.unseen_test_labels, 1);
    }

    #[test]
    fn unnormalised_mean_changes_the_decision() {
        // Class 0: (10, 0) and (0, 1) -> mean (5, 0.5). Class 1: (1, 0.8).
        // Test (1, 0.1): cos 1.00 to (5, 0.5) and 0.84 to (1, 0.8) -> class 0. Averaging
        // normalised rows instead would give class 0 the direction (1, 1), cos 0.77 -> class 1.
        // Test (1, 0.9): cos 0.81 to (5, 0.5), 0.998 to (1, 0.8) -> class 1.
        let x = [10.0f32, 0.0, 0.0, 1.0, 1.0, 0.8];
        let train = Rows::Memory {
            data: &x,
            rows: 3,
            cols: 2,
            name: "train",
        };
        let m = ClassMeans::compute(train, &[0, 0, 1]).unwrap();
        let t = [1.0f32, 0.1, 1.0, 0.9];
        let cpu = CpuBackend::new(Some(1)).unwrap();
        let r = ncm(
            &cpu,
            &m,
            Rows::Memory {
                data: &t,
                rows: 2,
                cols: 2,
                name: "test",
            },
            &[0, 1],
            &Projection::IDENTITY,
            InputKind::Embeddings,
        )
        .unwrap();
        assert_eq!(r.predictions, vec![0, 1]);
        assert_eq!(r.accuracy, 100.0);
    }
}
