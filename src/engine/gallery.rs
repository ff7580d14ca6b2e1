//! Synthetic galleries: shards of random features, for the demo, tests and benchmarks.
//! Streamed to disk in chunks (a 4 GB shard needs no 4 GB of memory) and deterministic: row `i`
//! of a shard depends only on (seed, i).
//!
//! Before writing, the free space of the target file system is checked (`statvfs`), so a
//! mistyped `--rows` is refused with the numbers instead of filling the disk. A run polls its
//! cancel flag between chunks; a cancelled run removes its temporary file and keeps the shards
//! it finished.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use half::f16;
use rayon::prelude::*;

use crate::align::synthetic::Rng;
use crate::error::{Error, Result};
use crate::formats::npy::{header_bytes, NpyDtype};
use crate::formats::{create_temporary, sync_parent_dir, temporary_path};

/// Rows generated per chunk (the unit of work, I/O and cancellation).
const CHUNK_ROWS: usize = 8192;

/// What to write: `shards` shards of `rows_per_shard` x `cols` values uniform in [-1, 1).
#[derive(Clone, Copy, Debug)]
pub struct GallerySpec {
    pub shards: usize,
    pub rows_per_shard: usize,
    pub cols: usize,
    /// F16 or F32.
    pub dtype: NpyDtype,
    pub seed: u64,
}

impl GallerySpec {
    /// Bytes of one shard file (header included), or None when it does not fit in a u64.
    pub fn shard_bytes(&self) -> Option<u64> {
        let header = header_bytes(self.dtype, &[self.rows_per_shard, self.cols]).len() as u64;
        (self.rows_per_shard as u64)
            .checked_mul(self.cols as u64)?
            .checked_mul(self.dtype.size() as u64)?
            .checked_add(header)
    }

    /// Bytes of the whole gallery, or None when it does not fit in a u64.
    pub fn total_bytes(&self) -> Option<u64> {
        self.shard_bytes()?.checked_mul(self.shards as u64)
    }

    /// The path of shard `i` in `dir` (the clip-retrieval naming: `img_emb_0000.npy`, ...).
    pub fn shard_path(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("img_emb_{i:04}.npy"))
    }
}

/// Bytes available to this user on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("{}: path contains a NUL byte", dir.display())))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs that lives across
    // the call; statvfs only writes into it.
    let (rc, st) = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st), st)
    };
    if rc != 0 {
        return Err(Error::io(dir, std::io::Error::last_os_error()));
    }
    // The field types differ between platforms (u64 on Linux x86_64, u32 elsewhere).
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Refuses, with the numbers, a gallery that will not fit in the free space of `dir` (shards
/// already there under the same names count as space, since they are replaced).
pub fn check_free_space(dir: &Path, spec: &GallerySpec) -> Result<()> {
    let too_big = || {
        Error::ResourceExhausted(format!(
            "{} shards of {} rows x {} columns do not fit in a 64-bit byte count",
            spec.shards, spec.rows_per_shard, spec.cols
        ))
        .in_file(dir)
    };
    let shard = spec.shard_bytes().ok_or_else(too_big)?;
    let total = spec.total_bytes().ok_or_else(too_big)?;
    let replaced: u64 = (0..spec.shards)
        .filter_map(|i| std::fs::metadata(GallerySpec::shard_path(dir, i)).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let needed = total.saturating_sub(replaced);
    let free = free_bytes(dir)?;
    if needed > free {
        return Err(Error::ResourceExhausted(format!(
            "the gallery needs {} ({} x {} bytes) but the file system has {} free",
            human_bytes(needed),
            spec.shards,
            shard,
            human_bytes(free)
        ))
        .in_file(dir));
    }
    Ok(())
}

/// "1.50 TB", "320.0 MB": decimal units, as `df -H` prints them.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Writes one shard of `rows` x `cols` values uniform in [-1, 1) as f16 or f32, through a
/// temporary file. Stops with `Error::Cancelled` (temporary file removed) when `cancel` is set.
pub fn write_random_shard(
    path: &Path,
    rows: usize,
    cols: usize,
    dtype: NpyDtype,
    seed: u64,
    cancel: &AtomicBool,
) -> Result<()> {
    assert!(matches!(dtype, NpyDtype::F16 | NpyDtype::F32));
    let tmp = temporary_path(path);
    let io = |e: std::io::Error| Error::io(path, e);
    let result = (|| -> Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, create_temporary(&tmp, 0).map_err(io)?);
        w.write_all(&header_bytes(dtype, &[rows, cols]))
            .map_err(io)?;
        let esize = dtype.size();
        let mut buf = vec![0u8; CHUNK_ROWS.min(rows.max(1)) * cols * esize];
        let mut start = 0;
        while start < rows {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let n = CHUNK_ROWS.min(rows - start);
            fill_rows(&mut buf[..n * cols * esize], cols, esize, seed, start);
            w.write_all(&buf[..n * cols * esize]).map_err(io)?;
            start += n;
        }
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        sync_parent_dir(path);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fills `buf` with rows `first..` of the shard seeded by `seed` (row `i` from (seed, i) only).
fn fill_rows(buf: &mut [u8], cols: usize, esize: usize, seed: u64, first: usize) {
    buf.par_chunks_mut(cols * esize)
        .enumerate()
        .for_each(|(r, row)| {
            let mut rng = Rng::new(seed ^ ((first + r) as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            for c in row.chunks_exact_mut(esize) {
                let v = (rng.uniform() * 2.0 - 1.0) as f32;
                if esize == 2 {
                    c.copy_from_slice(&f16::from_f32(v).to_le_bytes());
                } else {
                    c.copy_from_slice(&v.to_le_bytes());
                }
            }
        });
}

/// Writes the gallery into `dir` after checking it fits; `on_shard` is called after each
/// finished shard with its path. On cancellation the finished shards stay.
pub fn write_random_gallery(
    dir: &Path,
    spec: &GallerySpec,
    cancel: &AtomicBool,
    on_shard: &mut dyn FnMut(&Path),
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    check_free_space(dir, spec)?;
    let mut paths = Vec::with_capacity(spec.shards);
    for i in 0..spec.shards {
        let p = GallerySpec::shard_path(dir, i);
        write_random_shard(
            &p,
            spec.rows_per_shard,
            spec.cols,
            spec.dtype,
            spec.seed.wrapping_add(i as u64 * 7919),
            cancel,
        )?;
        on_shard(&p);
        paths.push(p);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_count_the_header_and_overflow_is_none() {
        let spec = GallerySpec {
            shards: 3,
            rows_per_shard: 10,
            cols: 4,
            dtype: NpyDtype::F16,
            seed: 1,
        };
        // .npy v1 headers are padded to a multiple of 64 bytes: 128 here.
        assert_eq!(spec.shard_bytes(), Some(128 + 10 * 4 * 2));
        assert_eq!(spec.total_bytes(), Some(3 * (128 + 80)));
        let huge = GallerySpec {
            rows_per_shard: usize::MAX / 2,
            ..spec
        };
        assert_eq!(huge.shard_bytes(), None);
    }

    #[test]
    fn refuses_a_gallery_larger_than_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let spec = GallerySpec {
            shards: 1000,
            rows_per_shard: 100_000_000,
            cols: 768,
            dtype: NpyDtype::F16,
            seed: 1,
        };
        let e = write_random_gallery(dir.path(), &spec, &AtomicBool::new(false), &mut |_| {})
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e.root(), Error::ResourceExhausted(_)));
        assert!(
            msg.starts_with(&format!(
                "{}: the gallery needs 153.60 TB (1000 x 153600000128 bytes) but the file system has ",
                dir.path().display()
            )),
            "{msg}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_cancelled_shard_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let e = write_random_shard(&p, 100, 4, NpyDtype::F32, 1, &AtomicBool::new(true));
        assert!(matches!(e, Err(Error::Cancelled)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn human_bytes_uses_decimal_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.50 MB");
        assert_eq!(human_bytes(153_600_000_128_000), "153.60 TB");
    }
}
