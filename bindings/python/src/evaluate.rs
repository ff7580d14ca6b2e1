//! `isoclip.evaluate`: plain CLIP vs IsoCLIP retrieval metrics on labelled arrays, computed by
//! the same `eval` code as `isoclip eval` (mAP, mAP@R, P@R, R@1/5/10, x100), as a dict.
//! Runs on a thread pool of its own (fork-safe) with the GIL released.

use isoclip::eval::{self, Projection, RetrievalOptions, RetrievalSummary, Rows, Sets};
use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::IntoPy;
use crate::options;
use crate::projector::Projector;

/// Row-major f32 rows held for the duration of the call.
struct Matrix {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    name: &'static str,
}

impl Matrix {
    fn of(a: &PyReadonlyArray2<'_, f32>, name: &'static str) -> Self {
        let shape = a.shape();
        Matrix {
            data: a.as_array().iter().copied().collect(),
            rows: shape[0],
            cols: shape[1],
            name,
        }
    }
    fn rows(&self) -> Rows<'_> {
        Rows::Memory {
            data: &self.data,
            rows: self.rows,
            cols: self.cols,
            name: self.name,
        }
    }
}

fn labels(a: &PyReadonlyArray1<'_, i64>) -> Vec<i64> {
    a.as_array().to_vec()
}

fn summary_dict<'py>(py: Python<'py>, s: &RetrievalSummary) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(s).expect("serialises");
    py.import("json")?.call_method1("loads", (text,))
}

#[pyfunction]
#[pyo3(signature = (projector, features=None, labels_=None, *, query_features=None, query_labels=None, gallery_features=None, gallery_labels=None, kind="features", modality=None, curve_k=100))]
#[allow(clippy::too_many_arguments)]
pub fn evaluate<'py>(
    py: Python<'py>,
    projector: &Projector,
    features: Option<PyReadonlyArray2<'py, f32>>,
    labels_: Option<PyReadonlyArray1<'py, i64>>,
    query_features: Option<PyReadonlyArray2<'py, f32>>,
    query_labels: Option<PyReadonlyArray1<'py, i64>>,
    gallery_features: Option<PyReadonlyArray2<'py, f32>>,
    gallery_labels: Option<PyReadonlyArray1<'py, i64>>,
    kind: &str,
    modality: Option<&str>,
    curve_k: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let kind = options::kind(kind)?;
    if curve_k == 0 {
        return Err(PyValueError::new_err("curve_k must be at least 1"));
    }
    enum Data {
        One(Matrix, Vec<i64>),
        QueryGallery(Matrix, Vec<i64>, Matrix, Vec<i64>),
    }
    let data = match (
        features,
        labels_,
        query_features,
        query_labels,
        gallery_features,
        gallery_labels,
    ) {
        (Some(f), Some(l), None, None, None, None) => {
            Data::One(Matrix::of(&f, "features"), labels(&l))
        }
        (None, None, Some(q), Some(ql), Some(g), Some(gl)) => Data::QueryGallery(
            Matrix::of(&q, "query_features"),
            labels(&ql),
            Matrix::of(&g, "gallery_features"),
            labels(&gl),
        ),
        _ => {
            return Err(PyValueError::new_err(
                "give features and labels (one set), or all of query_features, query_labels, \
                 gallery_features and gallery_labels",
            ))
        }
    };
    let maps = projector.maps(options::modality(modality)?).py(py)?;
    let opts = RetrievalOptions {
        curve_max_k: curve_k,
        histogram_bins: 0,
    };
    let (clip, iso) = py
        .detach(|| {
            let sets = match &data {
                Data::One(m, l) => Sets::One {
                    rows: m.rows(),
                    labels: l,
                },
                Data::QueryGallery(q, ql, g, gl) => Sets::QueryGallery {
                    queries: q.rows(),
                    query_labels: ql,
                    gallery: g.rows(),
                    gallery_labels: gl,
                },
            };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(crate::backend::default_threads())
                .build()
                .map_err(|e| {
                    isoclip::Error::ResourceExhausted(format!("cannot start compute threads: {e}"))
                })?;
            pool.install(|| {
                let (plain, iso) = Projection::pair(maps, kind)?;
                // No thread count: the backend runs on the pool installed here.
                let cpu = isoclip::backend::cpu::CpuBackend::new(None)?;
                let clip = eval::evaluate_sets(&cpu, sets, &plain, kind, opts)?;
                let isoclip = eval::evaluate_sets(&cpu, sets, &iso, kind, opts)?;
                Ok((clip.summary, isoclip.summary))
            })
        })
        .py(py)?;
    let out = PyDict::new(py);
    out.set_item("modality", maps.modality.name())?;
    out.set_item("k_top", maps.band.k_top)?;
    out.set_item("k_bottom", maps.band.k_bottom)?;
    out.set_item("m", maps.m)?;
    out.set_item("input_kind", kind.name())?;
    out.set_item("task", "retrieval")?;
    let table = |s: &RetrievalSummary| -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, v) in s.rows() {
            d.set_item(name, v)?;
        }
        Ok(d)
    };
    out.set_item("clip", table(&clip)?)?;
    out.set_item("isoclip", table(&iso)?)?;
    out.set_item("clip_details", summary_dict(py, &clip)?)?;
    out.set_item("isoclip_details", summary_dict(py, &iso)?)?;
    let delta = PyDict::new(py);
    for ((name, a), (_, b)) in clip.rows().iter().zip(iso.rows().iter()) {
        delta.set_item(*name, b - a)?;
    }
    out.set_item("delta", delta)?;
    Ok(out)
}
