//! Runs kept by per-shard completion records: URLs, or several workers on one output.

use std::sync::atomic::AtomicBool;

use super::job::{JobSpec, JobSummary, ProgressSink};
use crate::align::AlignedProjector;
use crate::backend::Backend;
use crate::error::Result;

pub fn run_job(
    spec: &JobSpec,
    projector: &AlignedProjector,
    backend: &dyn Backend,
    progress: &dyn ProgressSink,
    cancel: &AtomicBool,
) -> Result<JobSummary> {
    let _ = (spec, projector, backend, progress, cancel);
    todo!("distributed")
}
