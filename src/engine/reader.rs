//! Reading input shards: `pread` into a small ring of reused, 64-byte-aligned buffers, filled by
//! a read-ahead thread while the compute thread projects the chunk before.
//!
//! Why not a memory map: a mapped file that is truncated or replaced while it is read kills the
//! process with SIGBUS (no message, temporary files left), and page faults on the compute threads
//! take CPU time from the GEMM. Here every read is an explicit `pread` whose failure is an error:
//! - a short read (the file was truncated during the run) names the shard and the row;
//! - after every read the file's identity ([`InputIdentity`]: device, inode, size, mtime, ctime)
//!   is compared with the one recorded when the shard was first checked, so a file modified in
//!   place is an error too, naming the row where it was noticed; data read before a change was
//!   read from the file as it was checked.
//!
//! Memory is bounded whatever the shard size: [`READ_BUFFERS`] chunks of at most
//! [`READ_CHUNK_BYTES`] (48 MiB), allocated once per shard and reused; the pages read are dropped
//! from the page cache (`POSIX_FADV_DONTNEED`) as soon as they are copied, after
//! `POSIX_FADV_SEQUENTIAL` has asked the kernel for aggressive read-ahead.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::manifest::FileIdentity;
use crate::error::{Error, Result};
use crate::formats::npy::{self, NpyDtype, NpyHeader};
use crate::formats::read::open_regular;
use crate::formats::rows::{announced_header_end, check_header_size, AlignedBuffer, RowChunk};

/// Buffers in the ring: one being projected, one being filled, one spare so that a slow read
/// (cold cache) and a slow chunk (a busy core) can overlap.
pub const READ_BUFFERS: usize = 3;
/// Input bytes per chunk at most (unless one row alone is larger): with [`READ_BUFFERS`], the
/// reader never holds more than 48 MiB.
pub const READ_CHUNK_BYTES: usize = 16 << 20;
/// The page size page-cache advice is rounded to (4 KiB, or a multiple of it).
const PAGE_BYTES: u64 = 4096;

/// What identifies the content of an input file without reading it (the same identity the
/// manifest records for resume): if none of its fields changed, the file was not written to
/// (`ctime` changes on every write, truncation and rename).
pub type InputIdentity = FileIdentity;

impl FileIdentity {
    /// The fields that differ from `earlier`, in words (empty when none does).
    pub(crate) fn differences(&self, earlier: &InputIdentity) -> Vec<String> {
        let mut out = Vec::new();
        if (self.dev, self.ino) != (earlier.dev, earlier.ino) {
            out.push("it was replaced by another file".to_string());
        }
        if self.size != earlier.size {
            out.push(format!(
                "its size went from {} to {} bytes",
                earlier.size, self.size
            ));
        }
        if self.mtime_ns != earlier.mtime_ns || self.ctime_ns != earlier.ctime_ns {
            out.push("it was written to".to_string());
        }
        out
    }
}

/// The 2-D array an input shard holds, as its header describes it, and the file's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputMatrix {
    pub rows: usize,
    pub cols: usize,
    /// f16 or f32.
    pub dtype: NpyDtype,
    /// Byte offset of row 0.
    pub data_offset: u64,
    pub identity: InputIdentity,
}

impl InputMatrix {
    pub fn row_bytes(&self) -> usize {
        self.cols * self.dtype.size()
    }

    /// Input bytes of the whole array (header excluded).
    pub fn data_bytes(&self) -> u64 {
        (self.rows * self.row_bytes()) as u64
    }
}

/// An open input shard, validated: 2-D, C order, f16 or f32, and long enough for its shape.
pub struct ShardReader {
    path: PathBuf,
    file: File,
    matrix: InputMatrix,
}

impl ShardReader {
    /// Opens `path` (a regular file only: never blocks on a FIFO) and validates its header.
    /// Only the header is read.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_expecting(path, None)
    }

    /// Opens, validates and closes `path`: what a run checks of every shard before any work.
    pub fn inspect(path: &Path) -> Result<InputMatrix> {
        Ok(Self::open(path)?.matrix)
    }

    /// Opens `path` again for reading, first checking that it is still the file `expected`
    /// describes (nothing wrote to it since it was inspected).
    pub fn reopen(path: &Path, expected: &InputIdentity) -> Result<Self> {
        Self::open_expecting(path, Some(expected))
    }

    fn open_expecting(path: &Path, expected: Option<&InputIdentity>) -> Result<Self> {
        let (file, _) = open_regular(path)?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        let identity = InputIdentity::of(&meta);
        if let Some(expected) = expected {
            let changes = identity.differences(expected);
            if !changes.is_empty() {
                return Err(Error::format(
                    path,
                    format!(
                        "changed since the run started ({}); rerun to process it as it is now",
                        changes.join(", ")
                    ),
                ));
            }
        }
        let header = read_header(&file, path, identity.size)?;
        let matrix = validate_header(&header, path, identity)?;
        Ok(ShardReader {
            path: path.to_path_buf(),
            file,
            matrix,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn matrix(&self) -> &InputMatrix {
        &self.matrix
    }

    /// Calls `consume` on every chunk of at most `chunk_rows` rows, in order, while a read-ahead
    /// thread reads the next ones. `consume` returns `Ok(false)` to stop early. The bytes of a
    /// chunk are valid only during its call (the buffer is then refilled).
    pub fn stream(
        &self,
        chunk_rows: usize,
        mut consume: impl FnMut(RowChunk<'_>) -> Result<bool>,
    ) -> Result<()> {
        let rows = self.matrix.rows;
        let row_bytes = self.matrix.row_bytes();
        let chunk_rows = chunk_rows.max(1);
        if rows == 0 {
            return Ok(());
        }
        let buffer_bytes = chunk_rows.min(rows) * row_bytes;
        let (full_tx, full_rx) = mpsc::sync_channel::<Result<FilledBuffer>>(READ_BUFFERS);
        let (free_tx, free_rx) = mpsc::sync_channel::<AlignedBuffer>(READ_BUFFERS);
        for _ in 0..READ_BUFFERS {
            let buffer = AlignedBuffer::new(buffer_bytes, &self.path)?;
            free_tx.send(buffer).expect("the receiver is alive");
        }
        self.advise(0, 0, libc::POSIX_FADV_SEQUENTIAL);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || self.read_ahead(chunk_rows, free_rx, full_tx));
            let consumed = (|| -> Result<()> {
                for filled in full_rx {
                    let filled = filled?;
                    let chunk = RowChunk {
                        start: filled.start,
                        rows: filled.rows,
                        bytes: &filled.buffer.bytes()[..filled.rows * row_bytes],
                    };
                    if !consume(chunk)? {
                        return Ok(());
                    }
                    // A reader that stopped has sent its reason (or nothing, at the end) into
                    // `full_rx`, which the loop goes on to receive.
                    let _ = free_tx.send(filled.buffer);
                }
                Ok(())
            })();
            drop(free_tx); // unblocks a reader waiting for a buffer after an early stop
            reader.join().expect("the read-ahead thread does not panic");
            consumed
        })
    }

    /// The read-ahead thread: fills free buffers with the next chunks until the end, an error
    /// (sent in place of a chunk) or the consumer going away.
    fn read_ahead(
        &self,
        chunk_rows: usize,
        free: mpsc::Receiver<AlignedBuffer>,
        filled: mpsc::SyncSender<Result<FilledBuffer>>,
    ) {
        let rows = self.matrix.rows;
        let mut start = 0;
        while start < rows {
            let Ok(mut buffer) = free.recv() else {
                return; // the consumer stopped early
            };
            let n = chunk_rows.min(rows - start);
            let result = self
                .read_rows(start, n, buffer.bytes_mut())
                .map(|()| FilledBuffer {
                    start,
                    rows: n,
                    buffer,
                });
            let failed = result.is_err();
            if filled.send(result).is_err() || failed {
                return;
            }
            start += n;
        }
    }

    /// Reads rows `[start, start + n)` into the front of `out`, then checks that the file is
    /// still the one inspected, and drops the pages read from the page cache.
    fn read_rows(&self, start: usize, n: usize, out: &mut [u8]) -> Result<()> {
        let row_bytes = self.matrix.row_bytes();
        let offset = self.matrix.data_offset + (start * row_bytes) as u64;
        let len = n * row_bytes;
        if let Err(e) = self.file.read_exact_at(&mut out[..len], offset) {
            return Err(self.read_failure(start, e));
        }
        self.check_unchanged(start)?;
        // From the start of the page holding `offset`: the kernel drops only whole pages, and
        // that page's earlier bytes belong to the chunk before, already consumed.
        let page_start = offset / PAGE_BYTES * PAGE_BYTES;
        self.advise(
            page_start,
            offset + len as u64 - page_start,
            libc::POSIX_FADV_DONTNEED,
        );
        Ok(())
    }

    /// The error for a failed read at row `start`: a short read is a truncation.
    fn read_failure(&self, start: usize, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            let now = self
                .file
                .metadata()
                .map(|m| format!("{} bytes", m.len()))
                .unwrap_or_else(|_| "fewer bytes".to_string());
            return Error::format(
                &self.path,
                format!(
                    "truncated while it was being read: row {start} is past its end (it had {} bytes, it now has {now})",
                    self.matrix.identity.size
                ),
            );
        }
        Error::io(
            &self.path,
            std::io::Error::new(e.kind(), format!("reading row {start}: {e}")),
        )
    }

    /// Compares the open file's identity with the one inspected; `row` is where the reader is.
    fn check_unchanged(&self, row: usize) -> Result<()> {
        let meta = self.file.metadata().map_err(|e| Error::io(&self.path, e))?;
        let changes = InputIdentity::of(&meta).differences(&self.matrix.identity);
        if changes.is_empty() {
            return Ok(());
        }
        Err(Error::format(
            &self.path,
            format!(
                "changed while it was being read, noticed at row {row} ({})",
                changes.join(", ")
            ),
        ))
    }

    /// Page-cache advice on a byte range (`len` 0: to the end). Advice only: failure is harmless.
    fn advise(&self, offset: u64, len: u64, advice: libc::c_int) {
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return;
        };
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is owned by
        // `self.file`, open for the whole call.
        let _ = unsafe { libc::posix_fadvise(self.file.as_raw_fd(), offset, len, advice) };
    }
}

/// A chunk read by the read-ahead thread, on its way to the consumer.
struct FilledBuffer {
    start: usize,
    rows: usize,
    buffer: AlignedBuffer,
}

/// Reads the `.npy` header at the start of `file` (`len` bytes long): only the bytes its length
/// field announces, at most [`MAX_HEADER_BYTES`](crate::formats::rows::MAX_HEADER_BYTES).
fn read_header(file: &File, path: &Path, len: u64) -> Result<NpyHeader> {
    if len == 0 {
        return Err(Error::format(path, "file is empty, not a .npy array"));
    }
    // Magic (6), version (2), header length (2 in version 1, 4 in versions 2 and 3).
    let mut prefix = [0u8; 12];
    let prefix_len = (len as usize).min(prefix.len());
    file.read_exact_at(&mut prefix[..prefix_len], 0)
        .map_err(|e| Error::io(path, e))?;
    let Some(header_end) = announced_header_end(&prefix[..prefix_len]) else {
        // Not a header we can size: parse_header says why (magic, version, truncation).
        return npy::parse_header(&prefix[..prefix_len], path);
    };
    check_header_size(header_end, path)?;
    let mut bytes = vec![0u8; header_end.min(len as usize)];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io(path, e))?;
    npy::parse_header(&bytes, path)
}

/// Checks what a shard must be: f16 or f32, C order, 2-D, and a file long enough for its shape.
fn validate_header(
    header: &NpyHeader,
    path: &Path,
    identity: InputIdentity,
) -> Result<InputMatrix> {
    let (rows, cols, dtype) =
        npy::check_matrix(header, path, identity.size, npy::Accept::Embeddings)?;
    Ok(InputMatrix {
        rows,
        cols,
        dtype,
        data_offset: header.data_offset as u64,
        identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::npy::header_bytes;
    use crate::formats::rows::BUFFER_ALIGN;

    /// A shard of `rows` x `cols` f16 whose element i is the f16 with bits `i % 65536`, so every
    /// byte read can be checked against its position.
    fn numbered_shard(dir: &Path, rows: usize, cols: usize) -> (PathBuf, Vec<u8>) {
        let mut bytes = header_bytes(NpyDtype::F16, &[rows, cols]);
        let data: Vec<u8> = (0..rows * cols)
            .flat_map(|i| ((i % 65536) as u16).to_le_bytes())
            .collect();
        bytes.extend_from_slice(&data);
        let path = dir.join("numbered.npy");
        std::fs::write(&path, &bytes).unwrap();
        set_old_mtime(&path);
        (path, data)
    }

    /// Dates the file back, so that a write in the same clock tick still changes its mtime.
    fn set_old_mtime(path: &Path) {
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn streams_every_row_in_order_through_reused_aligned_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let (path, data) = numbered_shard(dir.path(), 1000, 24);
        let reader = ShardReader::open(&path).unwrap();
        assert_eq!((reader.matrix().rows, reader.matrix().cols), (1000, 24));
        let mut seen = Vec::new();
        let mut starts = Vec::new();
        let mut addresses = std::collections::BTreeSet::new();
        reader
            .stream(128, |chunk| {
                assert_eq!(chunk.bytes.as_ptr() as usize % BUFFER_ALIGN, 0);
                assert_eq!(chunk.bytes.len(), chunk.rows * 48);
                addresses.insert(chunk.bytes.as_ptr() as usize);
                starts.push((chunk.start, chunk.rows));
                seen.extend_from_slice(chunk.bytes);
                Ok(true)
            })
            .unwrap();
        assert!(seen == data, "the bytes streamed differ from the file's");
        let mut expected: Vec<(usize, usize)> = (0..7).map(|k| (k * 128, 128)).collect();
        expected.push((896, 104));
        assert_eq!(starts, expected);
        assert!(addresses.len() <= READ_BUFFERS, "{addresses:?}");
    }

    #[test]
    fn stopping_early_returns_without_reading_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = numbered_shard(dir.path(), 1000, 8);
        let reader = ShardReader::open(&path).unwrap();
        let mut calls = 0;
        reader
            .stream(100, |_| {
                calls += 1;
                Ok(calls < 2)
            })
            .unwrap();
        assert_eq!(calls, 2);
    }

    #[test]
    fn truncation_during_the_read_is_an_error_naming_the_shard_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = numbered_shard(dir.path(), 1000, 8);
        let reader = ShardReader::open(&path).unwrap();
        let offset = reader.matrix().data_offset;
        let err = reader
            .stream(100, |chunk| {
                if chunk.start == 0 {
                    // Keep 250 of 1000 rows. Chunk 0's buffer is still held here, so the reader
                    // can have filled only chunks 1 and 2; chunk 3 is read after the truncation.
                    File::options()
                        .write(true)
                        .open(&path)
                        .unwrap()
                        .set_len(offset + 250 * 16)
                        .unwrap();
                }
                Ok(true)
            })
            .unwrap_err()
            .to_string();
        let (p, had, has) = (path.display(), offset + 16000, offset + 4000);
        // A stat racing the truncation may see the new size before the new mtime.
        let changed = |written: &str| {
            format!("{p}: changed while it was being read, noticed at row 100 (its size went from {had} to {has} bytes{written})")
        };
        let truncated = |row: usize| {
            format!("{p}: truncated while it was being read: row {row} is past its end (it had {had} bytes, it now has {has} bytes)")
        };
        // Which chunk notices depends on how far the read-ahead got: one of these, nothing else.
        let allowed = [
            changed(", it was written to"),
            changed(""),
            truncated(200),
            truncated(300),
        ];
        assert!(allowed.contains(&err), "{err}");
    }

    #[test]
    fn a_file_written_since_inspection_is_refused_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = numbered_shard(dir.path(), 10, 8);
        let before = ShardReader::inspect(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0; 16]);
        std::fs::write(&path, &bytes).unwrap();
        let err = ShardReader::reopen(&path, &before.identity)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: changed since the run started (its size went from {} to {} bytes, it was written to); rerun to process it as it is now",
                path.display(),
                before.identity.size,
                before.identity.size + 16
            )
        );
    }

    #[test]
    fn reads_only_the_announced_header_and_bounds_it() {
        let dir = tempfile::tempdir().unwrap();
        // Version 2 header claiming 2 GiB: refused without reading or allocating it.
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        bytes.extend_from_slice(&(2u32 << 30).to_le_bytes());
        bytes.extend_from_slice(b"{'descr': '<f2', ");
        let path = dir.path().join("huge_header.npy");
        std::fs::write(&path, &bytes).unwrap();
        let err = ShardReader::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("huge_header.npy") && err.contains("more than the 1048576"),
            "{err}"
        );
        let path = dir.path().join("tiny.npy");
        std::fs::write(&path, b"\x93NU").unwrap();
        let err = ShardReader::open(&path).err().unwrap().to_string();
        assert!(err.contains("tiny.npy") && err.contains("magic"), "{err}");
        let path = dir.path().join("empty.npy");
        std::fs::write(&path, b"").unwrap();
        let err = ShardReader::open(&path).err().unwrap().to_string();
        assert!(
            err.ends_with("empty.npy: file is empty, not a .npy array"),
            "{err}"
        );
    }

    /// The local reader's message for `path`, with the URL in place of the path.
    fn local_reader_error(path: &Path, url: &str) -> String {
        let err = ShardReader::inspect(path).err().unwrap().to_string();
        err.replace(&path.display().to_string(), url)
    }

    #[test]
    fn a_store_checks_headers_as_this_reader_does() {
        use crate::storage::objects::{RemoteMatrix, StorageContext};
        use crate::storage::Location;

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (numbered, _) = numbered_shard(d, 10, 8);
        std::fs::rename(numbered, d.join("good.npy")).unwrap();
        let bytes = std::fs::read(d.join("good.npy")).unwrap();
        std::fs::write(d.join("truncated.npy"), &bytes[..bytes.len() - 1]).unwrap();
        std::fs::write(d.join("garbage.npy"), b"not numpy at all").unwrap();
        let mut huge = b"\x93NUMPY\x02\x00".to_vec();
        huge.extend_from_slice(&(2u32 << 30).to_le_bytes());
        std::fs::write(d.join("huge_header.npy"), &huge).unwrap();
        std::fs::write(d.join("empty.npy"), b"").unwrap();
        let mut f64_shard = header_bytes(NpyDtype::F64, &[2, 2]);
        f64_shard.extend_from_slice(&[0; 32]);
        std::fs::write(d.join("f64.npy"), &f64_shard).unwrap();
        let mut three_d = header_bytes(NpyDtype::F32, &[2, 2, 2]);
        three_d.extend_from_slice(&[0; 32]);
        std::fs::write(d.join("three_d.npy"), &three_d).unwrap();

        let location = Location::Url(url::Url::from_file_path(d).unwrap());
        let store = StorageContext::new(Vec::new())
            .unwrap()
            .open(&location)
            .unwrap();
        let listed = store.list_npy().unwrap();
        let by_name = |n: &str| listed.iter().find(|o| o.name == n).unwrap().clone();
        let good = store.inspect_shards(&[by_name("good.npy")]).unwrap();
        let header_len = header_bytes(NpyDtype::F16, &[10, 8]).len() as u64;
        assert_eq!(
            good,
            [RemoteMatrix {
                object: by_name("good.npy"),
                rows: 10,
                cols: 8,
                dtype: NpyDtype::F16,
                data_offset: header_len,
            }]
        );
        let url = |n: &str| format!("file://{}/{n}", d.display());
        let truncated = store
            .inspect_shards(&[by_name("good.npy"), by_name("truncated.npy")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            truncated,
            format!(
                "{}: file is truncated: header promises 10 x 8 <f2 ({} bytes) but the file has {} bytes",
                url("truncated.npy"),
                header_len + 160,
                header_len + 159
            )
        );
        for bad in [
            "truncated.npy",
            "garbage.npy",
            "huge_header.npy",
            "empty.npy",
            "f64.npy",
            "three_d.npy",
        ] {
            let err = store
                .inspect_shards(&[by_name("good.npy"), by_name(bad)])
                .unwrap_err()
                .to_string();
            assert_eq!(err, local_reader_error(&d.join(bad), &url(bad)), "{bad}");
        }
    }
}
