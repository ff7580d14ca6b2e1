//! Completion records: how many workers sharing one output prefix (on an object store or a
//! shared file system) agree on which shards are finished, with no lock and no shared manifest.

/// The folder (prefix) under the output that holds the engine's records.
pub const RECORDS_DIR: &str = "_isoclip";
