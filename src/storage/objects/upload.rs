//! Atomic uploads: `put_multipart` driven by `object_store::WriteMultipart` in 16 MiB parts, at
//! most [`PARTS_IN_FLIGHT`] in flight, so the memory of an upload is bounded (5 parts: 4 in
//! flight and the one filling) whatever the object's size.
//!
//! Nothing is visible under the name before [`ObjectUpload::finish`]: on object stores the parts
//! become an object only when the multipart upload completes; locally `LocalFileSystem` writes a
//! staging file `name#N` next to the target and renames it on completion (listings never show
//! staging files). An upload dropped without `finish` is aborted: its parts (or staging file)
//! are removed. A killed process cannot abort: locally its `name#N` file stays (hidden from
//! listings); on S3 and GCS its parts stay, billed, until the bucket's lifecycle rule
//! `AbortIncompleteMultipartUpload` removes them; Azure drops uncommitted blocks after 7 days.

use object_store::WriteMultipart;

use super::{ObjectInfo, Store};
use crate::error::{Error, Result};

/// Bytes of an upload part (S3 allows 5 MiB to 5 GiB, and 10,000 parts: 156 GiB at this size).
const PART_BYTES: usize = 16 << 20;
/// Parts uploaded at once, at most.
const PARTS_IN_FLIGHT: usize = 4;

impl Store {
    /// Starts an atomic upload to `name`: nothing is visible under `name` until
    /// [`ObjectUpload::finish`] returns.
    pub fn upload(&self, name: &str) -> Result<ObjectUpload> {
        let path = self.path_of(name)?;
        let upload = self
            .block_on(object_store::ObjectStoreExt::put_multipart(
                &self.inner,
                &path,
            ))
            .map_err(|e| Error::storage(self.url_of(name), e))?;
        Ok(ObjectUpload {
            writer: Some(WriteMultipart::new_with_chunk_size(upload, PART_BYTES)),
            store: self.clone(),
            name: name.to_string(),
        })
    }
}

/// An atomic upload in progress (multipart on object stores; a staging file renamed on
/// completion locally). Dropped without `finish`: aborted (best effort).
pub struct ObjectUpload {
    /// `None` once finished or aborted.
    writer: Option<WriteMultipart>,
    store: Store,
    name: String,
}

impl ObjectUpload {
    /// Appends bytes; parts go out as they fill, a bounded number in flight (this call waits
    /// while `PARTS_IN_FLIGHT` are).
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let url = self.store.url_of(&self.name);
        let Some(writer) = self.writer.as_mut() else {
            return Err(Error::invalid(format!("{url}: upload already ended")));
        };
        // At most one part fills per piece, so capacity is checked before each part starts.
        let written = self.store.block_on(async {
            for piece in bytes.chunks(PART_BYTES) {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(piece);
            }
            Ok(())
        });
        written.map_err(|e| Error::storage(url, e))
    }

    /// Completes the upload; the object is visible, whole, from now on. Returns its identity
    /// (ETag and version from the completion, size and time from a HEAD).
    pub fn finish(mut self) -> Result<ObjectInfo> {
        let url = self.store.url_of(&self.name);
        let Some(writer) = self.writer.take() else {
            return Err(Error::invalid(format!("{url}: upload already ended")));
        };
        // On failure, WriteMultipart aborts the upload itself.
        let put = self
            .store
            .block_on(writer.finish())
            .map_err(|e| Error::storage(&url, e))?;
        let mut info = self.store.head_after_write(&self.name)?;
        info.e_tag = put.e_tag.or(info.e_tag);
        info.version = put.version.or(info.version);
        Ok(info)
    }

    /// Aborts the upload and removes its parts (best effort; errors ignored).
    pub fn abort(mut self) {
        self.abort_quietly();
    }

    fn abort_quietly(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Dropped inside an async context, where blocking is not allowed: abort in the
            // background.
            drop(self.store.runtime.spawn(async move {
                let _ = writer.abort().await;
            }));
        } else {
            let _ = self.store.block_on(writer.abort());
        }
    }
}

impl Drop for ObjectUpload {
    fn drop(&mut self) {
        self.abort_quietly();
    }
}
