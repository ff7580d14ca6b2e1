//! `isoclip._native`: the Python extension module of the isoclip engine. It translates, and
//! nothing more: NumPy arrays and Python values in, calls into the `isoclip` crate (the same
//! core as the CLI and the C ABI), arrays, dicts and exceptions out. The Python package
//! (`python/isoclip/`) re-exports it with the exception classes and the pure-Python helpers.
//!
//! - [`errors`]: core errors to `isoclip.Error` subclasses, with the C ABI's status;
//! - [`backend`]: the process's CPU backend, created again in the child of a `fork`;
//! - [`projector`]: the `Projector` class (fit, load, save, properties, pickling);
//! - [`project`]: `Projector.project` on NumPy arrays, with the GIL released;
//! - [`gallery`]: `project_gallery`, the resumable job on a Rust thread with progress and Ctrl-C;
//! - [`evaluate`]: the retrieval metrics of `isoclip eval`.

use pyo3::prelude::*;

mod backend;
mod errors;
mod evaluate;
mod gallery;
mod options;
mod project;
mod projector;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<projector::Projector>()?;
    m.add_function(wrap_pyfunction!(projector::fit, m)?)?;
    m.add_function(wrap_pyfunction!(projector::fit_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(gallery::project_gallery, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate::evaluate, m)?)?;
    Ok(())
}
