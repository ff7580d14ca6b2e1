//! Object stores behind blocking calls: what the engine needs of S3, GCS, Azure, HTTP and local
//! files, and nothing else.
//!
//! CONTRACT (the engine codes against these signatures): every error names the full URL of the
//! object or prefix (`Error::Storage` for client errors, `Error::Format` with the URL as path for
//! bad content); nothing here panics on any server reply; memory is bounded whatever the object
//! size.
//!
//! - [`StorageContext`]: the job's options and its own tokio runtime (two `isoclip-io` worker
//!   threads; no global runtime, so a forked process never inherits one); opens locations as
//!   [`Store`]s (`open.rs`: local directories, cloud clients from the environment).
//! - [`Store`]: listing, HEAD, bounded GET, PUT, create-only PUT, DELETE, here; header
//!   inspection and ranged streaming reads in `shards.rs`; atomic multipart uploads in
//!   `upload.rs`.
//!
//! The blocking methods must be called from the engine's own threads, never from inside an
//! async runtime (they drive the context's runtime with `block_on`).

mod open;
mod shards;
mod upload;

use std::future::Future;
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use super::Location;
use crate::error::{Error, Result};
use crate::formats::npy::NpyDtype;

pub use shards::RemoteShardReader;
pub use upload::ObjectUpload;

/// Worker threads of a job's I/O runtime: enough to drive many requests (they only wait on
/// sockets); compute stays on the engine's threads.
const IO_WORKER_THREADS: usize = 2;
/// Threads for the local store's file calls (`LocalFileSystem` runs each on the blocking pool):
/// as many as header inspections in flight.
const MAX_BLOCKING_THREADS: usize = 64;

/// Options and the runtime shared by the stores of one job.
pub struct StorageContext {
    /// `--storage-option KEY=VALUE` pairs, applied over the environment's configuration
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `GOOGLE_*`, `AZURE_*`, ...); a key the store's client
    /// does not know is an error when a store is opened.
    pub options: Vec<(String, String)>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl StorageContext {
    /// A context with its own small multi-thread runtime (I/O only; compute stays on the
    /// engine's threads).
    pub fn new(options: Vec<(String, String)>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_WORKER_THREADS)
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .thread_name("isoclip-io")
            .enable_all()
            .build()
            .map_err(|e| {
                Error::ResourceExhausted(format!("cannot start the storage I/O threads: {e}"))
            })?;
        Ok(StorageContext {
            options,
            runtime: Arc::new(runtime),
        })
    }

    /// Opens `location` as a store rooted at it (a "directory" prefix). Plain paths and
    /// `file://` use `object_store::local::LocalFileSystem`; other schemes their cloud client
    /// (an error naming the URL and the missing `cloud` feature when built without it).
    ///
    /// For inputs: a local directory that does not exist is an error naming it (see
    /// [`StorageContext::open_output`] for outputs).
    pub fn open(&self, location: &Location) -> Result<Store> {
        self.open_dir(location, open::MissingDir::Refuse)
    }

    /// [`StorageContext::open`] for an output: a local directory that does not exist is created
    /// (with its parents). Object stores have no directories: the same as `open`.
    pub fn open_output(&self, location: &Location) -> Result<Store> {
        self.open_dir(location, open::MissingDir::Create)
    }

    /// Opens the parent of `location` as a store and returns it with the object's name: for
    /// single objects (`--projector s3://b/p.safetensors`, `--input s3://b/one.npy`).
    pub fn open_object(&self, location: &Location) -> Result<(Store, String)> {
        let opened = open::open_parent(location, &self.options)?;
        Ok((self.store(opened.store), opened.name))
    }

    fn open_dir(&self, location: &Location, missing: open::MissingDir) -> Result<Store> {
        Ok(self.store(open::open_dir(location, &self.options, missing)?))
    }

    fn store(&self, opened: open::Opened) -> Store {
        Store {
            inner: opened.inner,
            root: opened.root,
            url: opened.url,
            runtime: Arc::clone(&self.runtime),
            local: opened.local,
        }
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
        if name.is_empty() {
            self.url.clone()
        } else if self.url.ends_with('/') {
            format!("{}{name}", self.url)
        } else {
            format!("{}/{name}", self.url)
        }
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
    ///
    /// Local staging files of uploads in progress (`name#N`) are never listed.
    pub fn list_npy(&self) -> Result<Vec<ObjectInfo>> {
        let listing = self
            .block_on(self.inner.list_with_delimiter(self.root_prefix()))
            .map_err(|e| Error::storage(&self.url, e))?;
        let mut shards: Vec<ObjectInfo> = listing
            .objects
            .iter()
            .map(|meta| self.info(meta))
            .filter(|info| is_shard_name(&info.name))
            .collect();
        shards.sort_by(|a, b| a.name.cmp(&b.name));
        if shards.is_empty() {
            return Err(Error::invalid(format!(
                "{}: holds no .npy shards",
                self.url
            )));
        }
        Ok(shards)
    }

    /// Every object under `sub` (recursive), sorted by name; empty when there is none.
    pub fn list_under(&self, sub: &str) -> Result<Vec<ObjectInfo>> {
        let prefix = self.path_of(sub)?;
        let metas: Vec<ObjectMeta> = self
            .block_on(self.inner.list(Some(&prefix)).try_collect())
            .map_err(|e| Error::storage(self.url_of(sub), e))?;
        let mut objects: Vec<ObjectInfo> = metas.iter().map(|meta| self.info(meta)).collect();
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    /// HEAD: `None` when the object does not exist.
    pub fn head(&self, name: &str) -> Result<Option<ObjectInfo>> {
        let path = self.path_of(name)?;
        match self.block_on(self.inner.head(&path)) {
            Ok(meta) => Ok(Some(self.info(&meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::storage(self.url_of(name), e)),
        }
    }

    /// GET of a whole small object, refused (Format error naming the URL and `what`) when it is
    /// larger than `max` bytes; `None` when it does not exist.
    ///
    /// One GET: its response announces the size before the body is read, so an oversized
    /// object is refused without downloading it; the body is then read with the same cap (a
    /// server that sends more than it announced is refused too).
    pub fn get_bounded(&self, name: &str, max: u64, what: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(name)?;
        let url = self.url_of(name);
        let too_big = |n: u64| {
            Error::format(
                &url,
                format!("is {n} bytes, more than {what} can be ({max} bytes at most)"),
            )
        };
        self.block_on(async {
            let response = match self.inner.get(&path).await {
                Ok(response) => response,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(Error::storage(&url, e)),
            };
            if response.meta.size > max {
                return Err(too_big(response.meta.size));
            }
            let mut body = response.into_stream();
            let mut bytes = Vec::new();
            while let Some(piece) = body.try_next().await.map_err(|e| Error::storage(&url, e))? {
                if (bytes.len() + piece.len()) as u64 > max {
                    return Err(too_big((bytes.len() + piece.len()) as u64));
                }
                bytes.extend_from_slice(&piece);
            }
            Ok(Some(bytes))
        })
    }

    /// Streams the object `name` into `file` (from its current position) and returns its size;
    /// an object that changes while it is read (another entity tag) is an error. Memory stays
    /// bounded: the body is written piece by piece as it arrives.
    pub fn download_to(&self, name: &str, file: &mut std::fs::File) -> Result<u64> {
        use std::io::Write;
        let path = self.path_of(name)?;
        let url = self.url_of(name);
        self.block_on(async {
            let response = match self.inner.get(&path).await {
                Ok(response) => response,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(Error::format(&url, "no such object"))
                }
                Err(e) => return Err(Error::storage(&url, e)),
            };
            let expected = response.meta.size;
            let mut body = response.into_stream();
            let mut written = 0u64;
            while let Some(piece) = body.try_next().await.map_err(|e| Error::storage(&url, e))? {
                file.write_all(&piece)
                    .map_err(|e| Error::io(std::path::Path::new(&url), e))?;
                written += piece.len() as u64;
            }
            if written != expected {
                return Err(Error::format(
                    &url,
                    format!("the store announced {expected} bytes but sent {written}"),
                ));
            }
            Ok(written)
        })
    }

    /// PUT that replaces whatever is there (small objects: job descriptions, manifests).
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> Result<ObjectInfo> {
        let path = self.path_of(name)?;
        let size = bytes.len() as u64;
        let put = self
            .block_on(self.inner.put(&path, PutPayload::from(bytes)))
            .map_err(|e| Error::storage(self.url_of(name), e))?;
        let mut info = self.head_after_write(name)?;
        info.size = size;
        info.e_tag = put.e_tag.or(info.e_tag);
        info.version = put.version.or(info.version);
        Ok(info)
    }

    /// Create-only PUT (`PutMode::Create`): never replaces an existing object.
    pub fn put_create(&self, name: &str, bytes: Vec<u8>) -> Result<PutOutcome> {
        let path = self.path_of(name)?;
        let put = self
            .inner
            .put_opts(&path, PutPayload::from(bytes), PutMode::Create.into());
        match self.block_on(put) {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(Error::storage(self.url_of(name), e)),
        }
    }

    /// DELETE; a missing object is not an error.
    pub fn delete(&self, name: &str) -> Result<()> {
        let path = self.path_of(name)?;
        match self.block_on(self.inner.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::storage(self.url_of(name), e)),
        }
    }

    /// Runs `future` to completion on the job's I/O runtime, from the calling (engine) thread.
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The root as a listing prefix (`None` for the store's own root).
    fn root_prefix(&self) -> Option<&ObjectPath> {
        (!self.root.is_root()).then_some(&self.root)
    }

    /// The store key of `name` (relative to the root; `/`-separated).
    fn path_of(&self, name: &str) -> Result<ObjectPath> {
        let joined = if self.root.is_root() {
            name.to_string()
        } else {
            format!("{}/{name}", self.root)
        };
        ObjectPath::parse(joined).map_err(|e| Error::storage(self.url_of(name), e.into()))
    }

    /// The name of a key under the root, relative to it.
    fn name_of(&self, location: &ObjectPath) -> String {
        match location.prefix_match(&self.root) {
            Some(parts) => parts
                .map(|part| part.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/"),
            None => location.to_string(),
        }
    }

    fn info(&self, meta: &ObjectMeta) -> ObjectInfo {
        let modified = meta.last_modified;
        let last_modified_ns = modified.timestamp_nanos_opt().unwrap_or_else(|| {
            // Beyond the years 1677..2262: saturate rather than fail.
            modified.timestamp().saturating_mul(1_000_000_000)
        });
        ObjectInfo {
            name: self.name_of(&meta.location),
            size: meta.size,
            e_tag: meta.e_tag.clone(),
            version: meta.version.clone(),
            last_modified_ns,
        }
    }

    /// HEAD of an object this process has just written (it must be there).
    fn head_after_write(&self, name: &str) -> Result<ObjectInfo> {
        self.head(name)?.ok_or_else(|| {
            Error::format(
                self.url_of(name),
                "is missing right after it was written (removed by another writer?)",
            )
        })
    }
}

/// A shard name [`Store::list_npy`] keeps: `.npy`, not hidden, not `_`-prefixed (our own
/// bookkeeping), and no local staging file (`name#N`, which does not end in `.npy` either).
fn is_shard_name(name: &str) -> bool {
    name.ends_with(".npy") && !name.starts_with('.') && !name.starts_with('_')
}

#[cfg(test)]
mod tests;
