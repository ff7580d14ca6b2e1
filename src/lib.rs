//! isoclip: the production engine for IsoCLIP (Magistri et al., CVPR 2026).
//!
//! Layers, from the bottom up:
//! - [`formats`]: `.npy` arrays, safetensors checkpoints, the projector file;
//! - [`align`]: the pure math — Ψ, its SVD, the band, the full/compact/embedding maps;
//! - [`eval`]: retrieval metrics (reference semantics), NCM, CLIP vs IsoCLIP comparisons;
//! - [`report`]: SVG plots for people;
//! - [`storage`]: plain paths, `file://` and object stores (S3, GCS, Azure, HTTP) behind one
//!   interface;
//! - [`engine`]: the streaming, resumable projection of galleries (one worker or many);
//! - [`ffi`]: the C ABI (`include/isoclip.h`), a translation layer over the rest;
//!
//! The `isoclip` command line (`src/cli/`) is part of the binary, not of the library's API.

pub mod align;
pub mod backend;
pub mod engine;
pub mod error;
pub mod eval;
pub mod ffi;
pub mod formats;
pub mod report;
pub mod storage;

pub use align::{fit, AlignedProjector, BandSpec, Modality, ProjectorWeights};
pub use error::{Error, Result};
