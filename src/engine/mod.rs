//! The streaming projection engine: shards in, projected shards out, resumable.
//!
//! - [`shards`]: which input files a run covers (a shard, a directory, or a manifest list);
//! - [`manifest`]: the output directory's record of finished shards, for resume;
//! - [`reader`]: input shards read with `pread` by a read-ahead thread into a small ring of
//!   reused aligned buffers (a truncated or rewritten input is an error, never SIGBUS);
//! - [`job`]: the run itself — validate everything first, then per shard: row chunks from the
//!   reader -> backend -> a writer thread -> temporary file -> fsync -> rename -> manifest.

pub mod gallery;
pub mod job;
pub mod manifest;
pub mod reader;
pub mod shards;

pub use job::{run_job, JobSpec, JobSummary, ProgressSink, SilentProgress};
