//! The streaming projection engine: shards in, projected shards out, resumable.
//!
//! - [`shards`]: which input files a run covers (a shard, a directory, or a manifest list);
//! - [`manifest`]: the output directory's record of finished shards, for resume;
//! - [`job`]: the run itself — validate everything first, then per shard: memory-mapped
//!   row chunks -> backend -> a writer thread -> temporary file -> fsync -> rename -> manifest.

pub mod gallery;
pub mod job;
pub mod manifest;
pub mod shards;

pub use job::{run_job, JobSpec, JobSummary, ProgressSink, SilentProgress};
