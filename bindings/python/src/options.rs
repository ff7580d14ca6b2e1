//! Keyword values shared by the functions: `form`, `kind`, `modality`, `nonfinite`,
//! `precision`, `dtype`, `storage_options`. Unknown values are `ValueError`s naming what is accepted.

use isoclip::backend::{ElemType, InputKind, NonFinitePolicy, OutputForm, Precision};
use isoclip::Modality;
use numpy::{dtype, PyArrayDescr, PyArrayDescrMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn unknown(what: &str, got: &str, accepted: &str) -> PyErr {
    PyValueError::new_err(format!("unknown {what} {got:?} (expected {accepted})"))
}

pub fn form(s: &str) -> PyResult<OutputForm> {
    match s {
        "compact" => Ok(OutputForm::Compact),
        "full" => Ok(OutputForm::Full),
        _ => Err(unknown("form", s, "\"compact\" or \"full\"")),
    }
}

pub fn kind(s: &str) -> PyResult<InputKind> {
    match s {
        "features" => Ok(InputKind::Features),
        "embeddings" => Ok(InputKind::Embeddings),
        _ => Err(unknown("kind", s, "\"features\" or \"embeddings\"")),
    }
}

pub fn modality(s: Option<&str>) -> PyResult<Option<Modality>> {
    match s {
        None => Ok(None),
        Some(m) => Modality::parse(m)
            .map(Some)
            .ok_or_else(|| unknown("modality", m, "\"image\" or \"text\"")),
    }
}

pub fn nonfinite(s: &str) -> PyResult<NonFinitePolicy> {
    match s {
        "error" => Ok(NonFinitePolicy::Error),
        "zero" => Ok(NonFinitePolicy::Zero),
        _ => Err(unknown("nonfinite policy", s, "\"error\" or \"zero\"")),
    }
}

/// `precision=`: the arithmetic of the projection's GEMM.
pub fn precision(s: &str) -> PyResult<Precision> {
    match s {
        "f32" => Ok(Precision::F32),
        "bf16" => Ok(Precision::Bf16),
        _ => Err(unknown("precision", s, "\"f32\" or \"bf16\"")),
    }
}

/// The element type of a NumPy dtype, if it is one the engine computes in.
pub fn elem_of_descr(py: Python<'_>, d: &Bound<'_, PyArrayDescr>) -> Option<ElemType> {
    if d.is_equiv_to(&dtype::<f32>(py)) {
        Some(ElemType::F32)
    } else if d.is_equiv_to(&dtype::<half::f16>(py)) {
        Some(ElemType::F16)
    } else {
        None
    }
}

/// `dtype=`: "f16"/"f32", or anything `numpy.dtype()` accepts that means float16 or float32.
pub fn output_dtype(py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<ElemType> {
    if let Ok(s) = v.extract::<String>() {
        match s.as_str() {
            "f16" => return Ok(ElemType::F16),
            "f32" => return Ok(ElemType::F32),
            _ => {}
        }
    }
    let descr = PyArrayDescr::new(py, v).map_err(|_| {
        PyTypeError::new_err(format!(
            "dtype {} is not a NumPy dtype (expected \"f16\", \"f32\", numpy.float16 or numpy.float32)",
            v.repr().map_or_else(|_| "?".into(), |r| r.to_string())
        ))
    })?;
    elem_of_descr(py, &descr).ok_or_else(|| {
        PyTypeError::new_err(format!(
            "dtype {} is not supported for outputs (expected \"f16\", \"f32\", numpy.float16 or numpy.float32)",
            descr.repr().map_or_else(|_| "?".into(), |r| r.to_string())
        ))
    })
}

/// `storage_options=`: a dict of object_store option names to values (as strings).
pub fn storage_options(d: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, String)>> {
    let Some(d) = d else { return Ok(Vec::new()) };
    d.iter()
        .map(|(k, v)| Ok((k.str()?.to_string(), v.str()?.to_string())))
        .collect()
}
