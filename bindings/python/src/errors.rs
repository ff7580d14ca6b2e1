//! Core errors become instances of the `isoclip.Error` subclasses defined in
//! `python/isoclip/_errors.py`, chosen by the C ABI's status (`Failure::status`, the one mapping
//! from errors to statuses) and carrying the library's message. Python-side hints are keyed on
//! the variant, as the CLI and the C ABI add theirs.

use isoclip::backend::cpu::BF16_UNAVAILABLE;
use isoclip::ffi::status::Failure;
use isoclip::Error;
use pyo3::prelude::*;

/// The message a Python caller reads: the library's, plus the keyword that applies.
fn message(e: &Error) -> String {
    match e.root() {
        Error::NonFiniteRow { .. } | Error::Unrepresentable { .. } => {
            format!("{e} (pass nonfinite=\"zero\" to write zeros for such rows instead)")
        }
        // bf16 on a CPU without AVX-512 BF16: no other device helps, f32 does.
        Error::DeviceUnavailable(m) if m == BF16_UNAVAILABLE => {
            format!("{e} (pass precision=\"f32\")")
        }
        Error::DeviceUnavailable(_) => format!("{e} (device=\"auto\" falls back to the CPU)"),
        _ => e.to_string(),
    }
}

/// The Python exception for a core error: `isoclip._errors.error_for(name, code, message)`.
pub fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let text = message(&e);
    let status = Failure::Core(e).status();
    let name = status.name().to_string_lossy().into_owned();
    let code = status as i32;
    let made = py
        .import("isoclip._errors")
        .and_then(|m| m.call_method1("error_for", (name, code, text.clone())));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        // The package is incomplete (the module imported alone): still a clear error.
        Err(_) => pyo3::exceptions::PyRuntimeError::new_err(text),
    }
}

/// Extension trait: `result.py(py)?` turns a core result into a Python one.
pub trait IntoPy<T> {
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for isoclip::Result<T> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}
