//! Where galleries live: plain paths, `file://` URLs and object stores (`s3://`, `gs://`,
//! `az://`, `http(s)://` read only), behind one interface built on the `object_store` crate
//! (its clients, credential chains, environment variables and retry policy with backoff).
//!
//! - [`Location`]: what a user typed (`--input`, `--output`, `--projector`), parsed once;
//! - [`StorageContext`]: the options (`--storage-option KEY=VALUE`, environment) and the tokio
//!   runtime that drives the async clients; created per job, so a forked process (Spark's Python
//!   workers) never inherits a runtime's threads;
//! - [`Store`]: an object store rooted at a prefix, with blocking methods the engine calls from
//!   its own threads: listing, bounded GETs, create-only PUTs, ranged streaming reads
//!   ([`objects::RemoteShardReader`]) and atomic multipart uploads ([`objects::ObjectUpload`]).
//!
//! Names inside a store are `/`-separated keys relative to its root prefix ("a.npy",
//! "_isoclip/records/a.npy.json"); messages name the full URL ([`Store::url_of`]).

pub mod location;
pub mod objects;

pub use location::Location;
pub use objects::{
    ObjectInfo, ObjectUpload, PutOutcome, RemoteMatrix, RemoteShardReader, StorageContext, Store,
};

use std::path::Path;

use crate::align::AlignedProjector;
use crate::error::{Error, Result};
use crate::formats::projector_file;

/// The largest projector file read from a store (a ViT-L/14 projector with both modalities and
/// full maps is a few tens of MB).
pub const MAX_PROJECTOR_BYTES: u64 = 1 << 30;

/// Loads and verifies a projector file from a path or a URL (`options` as for a job).
pub fn load_projector(
    location: &Location,
    options: &[(String, String)],
) -> Result<AlignedProjector> {
    if let Some(path) = location.as_plain_path() {
        return projector_file::load(path);
    }
    let url = location.to_string();
    let context = StorageContext::new(options.to_vec())?;
    let (store, name) = context.open_object(location)?;
    let bytes = store
        .get_bounded(&name, MAX_PROJECTOR_BYTES, "a projector file")?
        .ok_or_else(|| Error::format(&url, "no such object"))?;
    projector_file::from_bytes(&bytes, Path::new(&url))
}
