//! Object stores behind blocking calls: what the engine needs of S3, GCS, Azure, HTTP and local
//! files, and nothing else.
//!
//! CONTRACT (implemented by the storage work; the engine codes against these signatures):
//! every error names the full URL of the object or prefix (`Error::Storage` for client errors,
//! `Error::Format` with the URL as path for bad content); nothing here panics on any server
//! reply; memory is bounded whatever the object size.

#![allow(dead_code)] // placeholder bodies until the storage work lands

use std::sync::Arc;

use object_store::ObjectStore;

use super::Location;
use crate::engine::reader::RowChunk;
use crate::error::Result;
use crate::formats::npy::NpyDtype;

/// Options and the runtime shared by the stores of one job.
pub struct StorageContext {
    /// `--storage-option KEY=VALUE` pairs, passed to `object_store::parse_url_opts` over the
    /// environment's (`AWS_ENDPOINT_URL`, `AWS_REGION`, `GOOGLE_*`, `AZURE_*`, ...).
    pub options: Vec<(String, String)>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl StorageContext {
    /// A context with its own small multi-thread runtime (I/O only; compute stays on the
    /// engine's threads).
    pub fn new(options: Vec<(String, String)>) -> Result<Self> {
        let _ = options;
        todo!("storage")
    }

    /// Opens `location` as a store rooted at it (a "directory" prefix). Plain paths and
    /// `file://` use `object_store::local::LocalFileSystem`; other schemes their cloud client
    /// (an error naming the URL and the missing `cloud` feature when built without it).
    pub fn open(&self, location: &Location) -> Result<Store> {
        let _ = location;
        todo!("storage")
    }

    /// Opens the parent of `location` as a store and returns it with the object's name: for
    /// single objects (`--projector s3://b/p.safetensors`, `--input s3://b/one.npy`).
    pub fn open_object(&self, location: &Location) -> Result<(Store, String)> {
        let _ = location;
        todo!("storage")
    }
}

/// What a listing or HEAD says of an object: its identity for resume.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectInfo {
    /// Key relative to the store's root.
    pub name: String,
    pub size: u64,
    pub e_tag: Option<String>,
    pub version: Option<String>,
    /// Last-modified time, nanoseconds since the Unix epoch.
    pub last_modified_ns: i64,
}

/// A `.npy` shard in a store, its header read and checked (`npy::check_matrix`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteMatrix {
    pub object: ObjectInfo,
    pub rows: usize,
    pub cols: usize,
    pub dtype: NpyDtype,
    /// Byte offset of row 0.
    pub data_offset: u64,
}

/// What a create-only PUT found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    AlreadyExists,
}

/// An object store rooted at a prefix, with blocking methods.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<dyn ObjectStore>,
    pub(crate) root: object_store::path::Path,
    pub(crate) url: String,
    pub(crate) runtime: Arc<tokio::runtime::Runtime>,
    /// True for `LocalFileSystem` (plain paths, `file://`).
    pub(crate) local: bool,
}

impl Store {
    /// The full URL (or path) of `name`, for messages and records.
    pub fn url_of(&self, name: &str) -> String {
        let _ = name;
        todo!("storage")
    }

    /// The store's root URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True when the store is the local file system.
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// The `.npy` objects directly under the root (not recursive; names starting with `.` or
    /// `_` skipped), sorted by name. Errors when there is none.
    pub fn list_npy(&self) -> Result<Vec<ObjectInfo>> {
        todo!("storage")
    }

    /// Every object under `sub` (recursive), sorted by name; empty when there is none.
    pub fn list_under(&self, sub: &str) -> Result<Vec<ObjectInfo>> {
        let _ = sub;
        todo!("storage")
    }

    /// HEAD: `None` when the object does not exist.
    pub fn head(&self, name: &str) -> Result<Option<ObjectInfo>> {
        let _ = name;
        todo!("storage")
    }

    /// GET of a whole small object, refused (Format error naming the URL and `what`) when it is
    /// larger than `max` bytes; `None` when it does not exist.
    pub fn get_bounded(&self, name: &str, max: u64, what: &str) -> Result<Option<Vec<u8>>> {
        let _ = (name, max, what);
        todo!("storage")
    }

    /// PUT that replaces whatever is there (small objects: job descriptions, manifests).
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> Result<ObjectInfo> {
        let _ = (name, bytes);
        todo!("storage")
    }

    /// Create-only PUT (`PutMode::Create`): never replaces an existing object.
    pub fn put_create(&self, name: &str, bytes: Vec<u8>) -> Result<PutOutcome> {
        let _ = (name, bytes);
        todo!("storage")
    }

    /// DELETE; a missing object is not an error.
    pub fn delete(&self, name: &str) -> Result<()> {
        let _ = name;
        todo!("storage")
    }

    /// Reads and checks the headers of `objects` concurrently (many requests in flight), in
    /// the order given. The first bad header is an error naming its URL.
    pub fn inspect_shards(&self, objects: &[ObjectInfo]) -> Result<Vec<RemoteMatrix>> {
        let _ = objects;
        todo!("storage")
    }

    /// A streaming reader of a shard's rows.
    pub fn reader(&self, shard: &RemoteMatrix) -> RemoteShardReader {
        let _ = shard;
        todo!("storage")
    }

    /// Starts an atomic upload to `name`: nothing is visible under `name` until
    /// [`ObjectUpload::finish`] returns.
    pub fn upload(&self, name: &str) -> Result<ObjectUpload> {
        let _ = name;
        todo!("storage")
    }
}

/// Streams a shard's rows with ranged GETs, several in flight, bounded memory; every response
/// must come from the object identified at inspection (same ETag and size), else an error
/// naming the URL and the row where the change was seen.
pub struct RemoteShardReader {
    _private: (),
}

impl RemoteShardReader {
    /// Calls `consume` with consecutive chunks of at most `chunk_rows` rows, in order, until the
    /// shard ends or `consume` returns `Ok(false)` or an error (returned as is).
    pub fn stream(
        self,
        chunk_rows: usize,
        consume: impl FnMut(RowChunk<'_>) -> Result<bool>,
    ) -> Result<()> {
        let _ = (chunk_rows, consume);
        todo!("storage")
    }
}

/// An atomic upload in progress (multipart on object stores; a staging file renamed on
/// completion locally). Dropped without `finish`: aborted (best effort).
pub struct ObjectUpload {
    _private: (),
}

impl ObjectUpload {
    /// Appends bytes; parts go out as they fill, a bounded number in flight.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let _ = bytes;
        todo!("storage")
    }

    /// Completes the upload; the object is visible, whole, from now on. Returns its identity.
    pub fn finish(self) -> Result<ObjectInfo> {
        todo!("storage")
    }

    /// Aborts the upload and removes its parts (best effort; errors ignored).
    pub fn abort(self) {
        todo!("storage")
    }
}
