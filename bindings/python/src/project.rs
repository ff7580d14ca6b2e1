//! `Projector.project`: NumPy rows through the backend, with the GIL released.
//!
//! Inputs are borrowed, never copied, when each row is contiguous (C-contiguous arrays, and row
//! slices or row-strided views: `RowsIn` takes a row stride); other layouts (column-strided,
//! negative strides, Fortran order) are copied once into C order. The output is a new C-order
//! array, or `out=` after checking its dtype, shape, layout and writeability. rust-numpy's
//! borrow tracking refuses an `out` that overlaps `x`.

use std::sync::Arc;

use isoclip::backend::{
    Backend, ElemType, InputKind, NonFinitePolicy, OutputForm, Precision, PreparedMap,
    ProjectionOptions, RowsIn, RowsOut,
};
use isoclip::Modality;
use numpy::{Element, PyArray2, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::IntoPy;
use crate::options;
use crate::projector::Projector;

/// The options of one call, parsed.
pub struct Request {
    pub form: OutputForm,
    pub kind: InputKind,
    pub modality: Option<Modality>,
    pub nonfinite: NonFinitePolicy,
    pub normalize: bool,
    pub precision: Precision,
}

/// Input rows as the backend reads them: address, shape and row stride in bytes.
#[derive(Clone, Copy)]
struct RawIn {
    addr: usize,
    len: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    elem: ElemType,
}

/// Output rows: a C-contiguous, writeable buffer.
#[derive(Clone, Copy)]
struct RawOut {
    addr: usize,
    rows: usize,
    cols: usize,
    elem: ElemType,
}

/// A shape as Python spells it: `(768,)`, `(8, 262)`.
fn shape_text(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn type_name(x: &Bound<'_, PyAny>) -> String {
    x.get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// `x` as a 2-D float16/float32 NumPy array, or the TypeError/ValueError saying what it is.
fn input_array<'py>(x: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyUntypedArray>, ElemType)> {
    let py = x.py();
    let array = x.cast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "x must be a numpy.ndarray of float16 or float32 rows, got {}",
            type_name(x)
        ))
    })?;
    let descr = array.dtype();
    let elem = options::elem_of_descr(py, &descr).ok_or_else(|| {
        PyTypeError::new_err(format!(
            "x has dtype {}; project accepts float16 or float32 (convert with x.astype(numpy.float32))",
            descr.str().map_or_else(|_| "?".into(), |s| s.to_string())
        ))
    })?;
    if array.ndim() != 2 {
        return Err(PyValueError::new_err(format!(
            "x must be 2-D (rows x columns), got an array of shape {}",
            shape_text(array.shape())
        )));
    }
    Ok((array.clone(), elem))
}

/// Whether every row is contiguous with a non-negative row stride (what `RowsIn` reads).
fn rows_are_contiguous(a: &Bound<'_, PyUntypedArray>, elem: ElemType) -> bool {
    let (shape, strides) = (a.shape(), a.strides());
    let cols_ok = shape[1] <= 1 || strides[1] == elem.size() as isize;
    let rows_ok = shape[0] <= 1 || strides[0] >= (shape[1] * elem.size()) as isize;
    cols_ok && rows_ok
}

fn raw_in<T: Element>(a: &Bound<'_, PyArray2<T>>, elem: ElemType) -> RawIn {
    let (shape, strides) = (a.shape(), a.strides());
    let (rows, cols) = (shape[0], shape[1]);
    let row_stride = if rows <= 1 {
        cols * elem.size()
    } else {
        strides[0] as usize
    };
    let len = if rows == 0 {
        0
    } else {
        (rows - 1) * row_stride + cols * elem.size()
    };
    RawIn {
        addr: a.data() as usize,
        len,
        rows,
        cols,
        row_stride,
        elem,
    }
}

/// Checks `out=` and returns it with its element type.
fn check_out<'py>(
    out: &Bound<'py, PyAny>,
    rows: usize,
    cols: usize,
    want: Option<ElemType>,
) -> PyResult<(Bound<'py, PyUntypedArray>, ElemType)> {
    let py = out.py();
    let array = out.cast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "out must be a numpy.ndarray, got {}",
            type_name(out)
        ))
    })?;
    let descr = array.dtype();
    let elem = options::elem_of_descr(py, &descr).ok_or_else(|| {
        PyTypeError::new_err(format!(
            "out has dtype {}; it must be float16 or float32",
            descr.str().map_or_else(|_| "?".into(), |s| s.to_string())
        ))
    })?;
    if let Some(w) = want.filter(|w| *w != elem) {
        return Err(PyTypeError::new_err(format!(
            "out has dtype {} but dtype={} was asked for",
            elem.name(),
            w.name()
        )));
    }
    if array.shape() != [rows, cols] {
        return Err(PyValueError::new_err(format!(
            "out has shape {} but the result is ({rows}, {cols})",
            shape_text(array.shape())
        )));
    }
    if !array.is_c_contiguous() {
        return Err(PyValueError::new_err("out must be C-contiguous"));
    }
    Ok((array.clone(), elem))
}

/// Runs the projection with the GIL released.
fn compute(
    py: Python<'_>,
    backend: Arc<dyn Backend>,
    map: Arc<PreparedMap>,
    opts: ProjectionOptions,
    input: RawIn,
    output: RawOut,
) -> PyResult<()> {
    py.detach(move || {
        // SAFETY: `input` describes the data of a live array that the caller holds a
        // rust-numpy read borrow of until this returns; `len` bytes from `addr` lie inside it
        // (rows - 1 strides plus one row, strides checked non-negative).
        let bytes = unsafe { std::slice::from_raw_parts(input.addr as *const u8, input.len) };
        let out_len = output.rows * output.cols * output.elem.size();
        // SAFETY: `output` is a C-contiguous, writeable array of rows x cols elements that the
        // caller holds a rust-numpy write borrow of (so no other Rust view overlaps it).
        let out = unsafe { std::slice::from_raw_parts_mut(output.addr as *mut u8, out_len) };
        let rows_in = RowsIn {
            bytes,
            rows: input.rows,
            cols: input.cols,
            row_stride: input.row_stride,
            elem: input.elem,
        };
        let rows_out = RowsOut::dense(out, output.rows, output.cols, output.elem);
        backend.project(&map, &opts, rows_in, rows_out).map(|_| ())
    })
    .py(py)
}

/// Borrows `x` (read) and `out` (write) with their element types and computes.
fn borrow_and_compute<I: Element, O: Element>(
    x: &Bound<'_, PyUntypedArray>,
    out: &Bound<'_, PyUntypedArray>,
    run: impl FnOnce(RawIn, RawOut) -> PyResult<()>,
    in_elem: ElemType,
    out_elem: ElemType,
) -> PyResult<()> {
    let x = x.cast::<PyArray2<I>>()?;
    let out = out.cast::<PyArray2<O>>()?;
    let read = x
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("x: {e}")))?;
    let write = out.try_readwrite().map_err(|e| {
        PyValueError::new_err(format!(
            "out cannot be written ({e}): it must be writeable and must not overlap x"
        ))
    })?;
    let raw_out = RawOut {
        addr: out.data() as usize,
        rows: out.shape()[0],
        cols: out.shape()[1],
        elem: out_elem,
    };
    let result = run(raw_in(x, in_elem), raw_out);
    drop((read, write));
    result
}

pub fn project<'py>(
    projector: &Projector,
    x: &Bound<'py, PyAny>,
    dtype: Option<&Bound<'py, PyAny>>,
    request: Request,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = x.py();
    let (mut array, in_elem) = input_array(x)?;
    if !rows_are_contiguous(&array, in_elem) {
        let numpy = py.import("numpy")?;
        array = numpy
            .call_method1("ascontiguousarray", (&array,))?
            .cast_into::<PyUntypedArray>()?;
    }
    let want = dtype.map(|d| options::output_dtype(py, d)).transpose()?;
    let backend = crate::backend::shared_cpu().py(py)?;
    let map = projector
        .prepared(&backend, request.modality, request.kind, request.form)
        .py(py)?;
    let rows = array.shape()[0];
    let d_out = map.d_out();
    let (out_array, out_elem) = match out {
        Some(o) => check_out(o, rows, d_out, want)?,
        None => {
            let elem = want.unwrap_or(in_elem);
            let fresh = match elem {
                ElemType::F16 => PyArray2::<f16>::zeros(py, [rows, d_out], false).into_any(),
                ElemType::F32 => PyArray2::<f32>::zeros(py, [rows, d_out], false).into_any(),
            };
            (fresh.cast_into::<PyUntypedArray>()?, elem)
        }
    };
    let opts = ProjectionOptions {
        input_kind: request.kind,
        form: request.form,
        output: out_elem,
        normalize: request.normalize,
        nonfinite: request.nonfinite,
        precision: request.precision,
    };
    let run = |i: RawIn, o: RawOut| compute(py, backend, map, opts, i, o);
    use half::f16;
    match (in_elem, out_elem) {
        (ElemType::F16, ElemType::F16) => {
            borrow_and_compute::<f16, f16>(&array, &out_array, run, in_elem, out_elem)
        }
        (ElemType::F16, ElemType::F32) => {
            borrow_and_compute::<f16, f32>(&array, &out_array, run, in_elem, out_elem)
        }
        (ElemType::F32, ElemType::F16) => {
            borrow_and_compute::<f32, f16>(&array, &out_array, run, in_elem, out_elem)
        }
        (ElemType::F32, ElemType::F32) => {
            borrow_and_compute::<f32, f32>(&array, &out_array, run, in_elem, out_elem)
        }
    }?;
    Ok(out_array.into_any())
}
