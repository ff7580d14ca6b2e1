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

/// A file to read whole, wherever it lives (`isoclip eval`'s data files): a plain path is opened
/// as it is (through [`crate::formats::read::open_regular`]); an object is downloaded into an
/// unnamed temporary file (gone when closed, never visible to others), because evaluation reads
/// its rows many times and in any order. Returns the open file, its size and the name errors
/// should give (the path or the URL).
pub fn open_whole(
    location: &Location,
    options: &[(String, String)],
) -> Result<(std::fs::File, u64, std::path::PathBuf)> {
    use std::io::{Seek, SeekFrom};
    if let Some(path) = location.as_plain_path() {
        let (file, len) = crate::formats::read::open_regular(path)?;
        return Ok((file, len, path.to_path_buf()));
    }
    let name = std::path::PathBuf::from(location.to_string());
    let context = StorageContext::new(options.to_vec())?;
    let (store, object) = context.open_object(location)?;
    let mut file = unnamed_temporary_file()?;
    let len = store.download_to(&object, &mut file)?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(&name, e))?;
    Ok((file, len, name))
}

/// A read-write file with no name in the temporary directory (`O_TMPFILE`; where the file
/// system lacks it, a fresh exclusive name removed at once).
fn unnamed_temporary_file() -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let unnamed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(&dir);
    match unnamed {
        Ok(file) => Ok(file),
        Err(_) => {
            let path = dir.join(format!(
                ".isoclip-download-{}-{:x}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            Ok(file)
        }
    }
}
