//! Human-facing output: SVG plots.

pub mod svg;
