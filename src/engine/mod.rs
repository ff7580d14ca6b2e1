//! The streaming projection engine: shards in, projected shards out, resumable.
//!
//! - [`shards`]: which input files a run covers (a shard, a directory, or a shard list);
//! - [`outdir`]: the output directory — refused when it would overwrite an input, then locked;
//! - [`manifest`]: the output directory's record of finished shards, for resume;
//! - [`reader`]: input shards read with `pread` by a read-ahead thread into a small ring of
//!   reused aligned buffers (a truncated or rewritten input is an error, never SIGBUS);
//! - [`commit`]: how a finished shard and its record are put in place (and verified on resume),
//!   so a kill at any step never leaves an output under a record it does not match;
//! - [`job`]: the run itself — validate everything first, then per shard: row chunks from the
//!   reader -> backend -> a writer thread -> temporary file -> fsync -> commit.

pub mod commit;
pub mod distributed;
pub mod gallery;
pub mod job;
pub mod manifest;
pub mod outdir;
pub mod reader;
pub mod records;
pub mod selection;
pub mod shards;
pub mod status;

pub use job::{run_job, JobSpec, JobSummary, ProgressSink, SilentProgress};
pub use selection::ShardSelection;
