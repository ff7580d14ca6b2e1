//! The C ABI: every `extern "C"` item of the crate lives here, and this module only translates —
//! C pointers and integers in, core calls, statuses and copies out. `include/isoclip.h` is
//! generated from these files by cbindgen (`scripts/regen-header.sh`); the doc comments below are
//! the C reference, so they speak C.
//!
//! - [`status`]: status codes, the thread-local last-error message, the panic boundary;
//! - [`version`]: the library version (Cargo.toml) and the ABI version (defined there: the soname,
//!   the header macros and scripts/install.sh take it from that file);
//! - [`projector`]: the shared, immutable projector handle (load, fit, queries);
//! - [`project`]: backends (the fork-safe default one included), projection options, projection
//!   of caller buffers, cancel tokens;
//! - [`job`]: the streaming engine over files (`isoclip project`), progress and cancellation.
//!
//! Conventions (see the header's preamble): opaque typed handles, one `*_free` per
//! `*_new`/`*_load`, `free(NULL)` is a no-op, results through out-parameters that are written only
//! on success, every export behind `catch_unwind`.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![allow(non_camel_case_types)]

pub mod job;
pub mod project;
pub mod projector;
pub mod status;
pub mod version;
