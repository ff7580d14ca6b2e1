//! Shards in a store: their headers read and checked concurrently ([`Store::inspect_shards`]),
//! and their rows streamed with ranged GETs ([`RemoteShardReader`]).
//!
//! The checks and their wording are the local reader's (`engine::reader`), through the same
//! functions: the header is sized from its length field and capped at
//! [`MAX_HEADER_BYTES`](crate::formats::rows::MAX_HEADER_BYTES), parsed by `npy::parse_header` and checked by `npy::check_matrix`
//! against the object's size, with the URL where the reader puts the path. Every GET names the
//! ETag seen at listing (`If-Match`) and its response's size and ETag are compared with it: an
//! object replaced or rewritten since is an error, never mixed data.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::{ObjectInfo, RemoteMatrix, Store};
use crate::error::{Error, Result};
use crate::formats::npy;
use crate::formats::rows::{announced_header_end, check_header_size, AlignedBuffer, RowChunk};

/// Bytes of the first GET of a header: enough for any header numpy writes.
const HEADER_PROBE_BYTES: u64 = 4096;
/// Header inspections in flight.
const INSPECTIONS_IN_FLIGHT: usize = 64;
/// Ranged GETs in flight while streaming a shard.
const READS_IN_FLIGHT: usize = 3;

impl Store {
    /// Reads and checks the headers of `objects` concurrently (many requests in flight), in
    /// the order given. The first bad header is an error naming its URL.
    pub fn inspect_shards(&self, objects: &[ObjectInfo]) -> Result<Vec<RemoteMatrix>> {
        let inspections = objects.iter().map(|object| self.inspect_shard(object));
        self.block_on(
            futures_util::stream::iter(inspections)
                .buffered(INSPECTIONS_IN_FLIGHT)
                .try_collect(),
        )
    }

    /// A streaming reader of a shard's rows.
    pub fn reader(&self, shard: &RemoteMatrix) -> RemoteShardReader {
        RemoteShardReader {
            object: self.object_ref(&shard.object),
            shard: shard.clone(),
            runtime: Arc::clone(&self.runtime),
        }
    }

    /// What a GET of `object` needs, owned (it goes into spawned tasks).
    fn object_ref(&self, object: &ObjectInfo) -> Arc<ObjectRef> {
        let url = self.url_of(&object.name);
        // Names reach here from `inspect_shards`, which refuses any that is not a valid key.
        let path = self.path_of(&object.name).unwrap_or_default();
        Arc::new(ObjectRef {
            inner: Arc::clone(&self.inner),
            path,
            url,
            expected: object.clone(),
        })
    }

    async fn inspect_shard(&self, object: &ObjectInfo) -> Result<RemoteMatrix> {
        self.path_of(&object.name)?; // a valid key, checked before any request
        let object_ref = self.object_ref(object);
        let header = read_header(&object_ref).await?;
        let shown = Path::new(&object_ref.url);
        let (rows, cols, dtype) =
            npy::check_matrix(&header, shown, object.size, npy::Accept::Embeddings)?;
        Ok(RemoteMatrix {
            object: object.clone(),
            rows,
            cols,
            dtype,
            data_offset: header.data_offset as u64,
        })
    }
}

/// Reads the `.npy` header at the start of the object: a first GET of [`HEADER_PROBE_BYTES`],
/// and a second one when its length field announces more (at most [`MAX_HEADER_BYTES`](crate::formats::rows::MAX_HEADER_BYTES)).
async fn read_header(object: &ObjectRef) -> Result<npy::NpyHeader> {
    let shown = Path::new(&object.url);
    let len = object.expected.size;
    if len == 0 {
        return Err(Error::format(shown, "file is empty, not a .npy array"));
    }
    let first = object.fetch(0..len.min(HEADER_PROBE_BYTES), None).await?;
    let Some(header_end) = announced_header_end(&first) else {
        // Not a header we can size: parse_header says why (magic, version, truncation).
        return npy::parse_header(&first[..first.len().min(npy::PREFIX_LEN_MAX)], shown);
    };
    check_header_size(header_end, shown)?;
    let want = (header_end as u64).min(len);
    if want <= first.len() as u64 {
        return npy::parse_header(&first[..want as usize], shown);
    }
    let bytes = object.fetch(0..want, None).await?;
    npy::parse_header(&bytes, shown)
}

/// One object as inspected: where it is and what it was.
struct ObjectRef {
    inner: Arc<dyn ObjectStore>,
    path: ObjectPath,
    url: String,
    expected: ObjectInfo,
}

impl ObjectRef {
    /// GET of `range`, from the object as inspected (`If-Match` its ETag; size and ETag of the
    /// response compared): exactly `range.len()` bytes, or an error naming the URL (and `row`,
    /// where the reader was).
    async fn fetch(&self, range: Range<u64>, row: Option<usize>) -> Result<Bytes> {
        let want = range.end - range.start;
        if want == 0 {
            return Ok(Bytes::new());
        }
        let options = GetOptions {
            range: Some(range.clone().into()),
            if_match: self.expected.e_tag.clone(),
            ..GetOptions::default()
        };
        let response = match self.inner.get_opts(&self.path, options).await {
            Ok(response) => response,
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => return Err(self.changed_now(row).await),
            Err(e) => return Err(Error::storage(&self.url, e)),
        };
        let changes = differences(&self.expected, &response.meta);
        if !changes.is_empty() {
            return Err(self.changed(changes, row));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::storage(&self.url, e))?;
        if bytes.len() as u64 != want {
            let at = row.map_or_else(|| format!("byte {}", range.start), |r| format!("row {r}"));
            return Err(Error::format(
                &self.url,
                format!(
                    "short read at {at}: the store sent {} of the {want} bytes asked for",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }

    /// The error for a GET refused because the object changed (or went away): a HEAD says how.
    async fn changed_now(&self, row: Option<usize>) -> Error {
        let changes = match self.inner.head(&self.path).await {
            Ok(meta) => differences(&self.expected, &meta),
            Err(object_store::Error::NotFound { .. }) => vec!["it was deleted".to_string()],
            Err(_) => Vec::new(),
        };
        if changes.is_empty() {
            let etag = self.expected.e_tag.as_deref().unwrap_or("none");
            return self.changed(vec![format!("its ETag no longer matches {etag}")], row);
        }
        self.changed(changes, row)
    }

    fn changed(&self, changes: Vec<String>, row: Option<usize>) -> Error {
        let noticed = row.map_or_else(String::new, |r| format!("; noticed at row {r}"));
        Error::format(
            &self.url,
            format!(
                "changed since the run started ({}{noticed}); rerun to process it as it is now",
                changes.join(", ")
            ),
        )
    }
}

/// How `now` differs from the object as inspected, in words (empty when it does not).
fn differences(expected: &ObjectInfo, now: &ObjectMeta) -> Vec<String> {
    let mut out = Vec::new();
    if now.size != expected.size {
        out.push(format!(
            "its size went from {} to {} bytes",
            expected.size, now.size
        ));
    }
    if let Some(before) = &expected.e_tag {
        if now.e_tag.as_ref() != Some(before) {
            let after = now.e_tag.as_deref().unwrap_or("none");
            out.push(format!("its ETag went from {before} to {after}"));
        }
    }
    out
}

/// Streams a shard's rows with ranged GETs, several in flight, bounded memory; every response
/// must come from the object identified at inspection (same ETag and size), else an error
/// naming the URL and the row where the change was seen.
///
/// Memory: at most 5 chunks of `chunk_rows` rows: 3 GETs in flight, 1 fetched chunk queued for
/// (or being copied by) the consumer, and the consumer's 64-byte-aligned buffer. Callers keep a
/// chunk at most `engine::reader::READ_CHUNK_BYTES` (16 MiB): 80 MiB at most per shard.
pub struct RemoteShardReader {
    object: Arc<ObjectRef>,
    shard: RemoteMatrix,
    runtime: Arc<tokio::runtime::Runtime>,
}

/// A chunk fetched, on its way to the consumer.
struct Fetched {
    start: usize,
    rows: usize,
    bytes: Bytes,
}

/// The geometry of a stream: which byte ranges hold which rows.
#[derive(Clone, Copy)]
struct ChunkPlan {
    rows: usize,
    chunk_rows: usize,
    row_bytes: usize,
    data_offset: u64,
}

impl ChunkPlan {
    fn byte_range(&self, start: usize, rows: usize) -> Range<u64> {
        let offset = self.data_offset + (start * self.row_bytes) as u64;
        offset..offset + (rows * self.row_bytes) as u64
    }
}

impl RemoteShardReader {
    /// Calls `consume` with consecutive chunks of at most `chunk_rows` rows, in order, until the
    /// shard ends or `consume` returns `Ok(false)` or an error (returned as is). The bytes of a
    /// chunk are valid only during its call (the aligned buffer is then refilled). Stopping
    /// early cancels the requests in flight.
    pub fn stream(
        self,
        chunk_rows: usize,
        mut consume: impl FnMut(RowChunk<'_>) -> Result<bool>,
    ) -> Result<()> {
        let rows = self.shard.rows;
        if rows == 0 {
            return Ok(());
        }
        let plan = ChunkPlan {
            rows,
            chunk_rows: chunk_rows.clamp(1, rows),
            row_bytes: self.shard.cols * self.shard.dtype.size(),
            data_offset: self.shard.data_offset,
        };
        let mut buffer = AlignedBuffer::new(
            plan.chunk_rows * plan.row_bytes,
            Path::new(&self.object.url),
        )?;
        // One permit: a fetched chunk leaves the producer only when the previous one has been
        // copied, so at most one waits outside the GETs in flight.
        let slot = Arc::new(Semaphore::new(1));
        let (sender, mut receiver) = mpsc::channel(1);
        let _producer =
            AbortOnDrop(
                self.runtime
                    .spawn(produce(Arc::clone(&self.object), plan, slot, sender)),
            );
        let mut delivered = 0;
        while let Some((fetched, permit)) = receiver.blocking_recv() {
            let Fetched { start, rows, bytes } = fetched?;
            delivered = start + rows;
            let len = bytes.len();
            buffer.bytes_mut()[..len].copy_from_slice(&bytes);
            drop((bytes, permit));
            let chunk = RowChunk {
                start,
                rows,
                bytes: &buffer.bytes()[..len],
            };
            if !consume(chunk)? {
                return Ok(()); // dropping the producer cancels what is still in flight
            }
        }
        if delivered < self.shard.rows {
            // The producer ended without an error: only if its task was cancelled or panicked.
            return Err(Error::format(
                &self.object.url,
                format!("reading stopped at row {delivered} for no reason given (I/O task ended)"),
            ));
        }
        Ok(())
    }
}

/// The producer task: keeps [`READS_IN_FLIGHT`] GETs going (each its own task, so all make
/// progress while the consumer works) and hands their results over in order; stops after an
/// error or when the consumer goes away.
async fn produce(
    object: Arc<ObjectRef>,
    plan: ChunkPlan,
    slot: Arc<Semaphore>,
    sender: mpsc::Sender<(Result<Fetched>, OwnedSemaphorePermit)>,
) {
    let mut in_flight: VecDeque<AbortOnDrop<Result<Fetched>>> = VecDeque::new();
    let mut next = 0;
    loop {
        while in_flight.len() < READS_IN_FLIGHT && next < plan.rows {
            let rows = plan.chunk_rows.min(plan.rows - next);
            let task = fetch_chunk(Arc::clone(&object), plan, next, rows);
            in_flight.push_back(AbortOnDrop(tokio::spawn(task)));
            next += rows;
        }
        let Some(mut oldest) = in_flight.pop_front() else {
            return; // the whole shard was handed over
        };
        let Ok(permit) = Arc::clone(&slot).acquire_owned().await else {
            return;
        };
        let fetched = match (&mut oldest.0).await {
            Ok(fetched) => fetched,
            Err(e) => Err(Error::storage(&object.url, e.into())),
        };
        let failed = fetched.is_err();
        if sender.send((fetched, permit)).await.is_err() || failed {
            return;
        }
    }
}

async fn fetch_chunk(
    object: Arc<ObjectRef>,
    plan: ChunkPlan,
    start: usize,
    rows: usize,
) -> Result<Fetched> {
    let bytes = object
        .fetch(plan.byte_range(start, rows), Some(start))
        .await?;
    Ok(Fetched { start, rows, bytes })
}

/// A task cancelled when its handle is dropped (its request with it).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
