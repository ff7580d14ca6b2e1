//! Opening files we did not write, safely: every reader in the crate goes through here.
//!
//! - The file type is checked before any read, on a descriptor opened without blocking, so a
//!   FIFO, socket, device node or directory given where a file belongs is refused by name instead
//!   of hanging (a FIFO) or reading without end (`/dev/zero`).
//! - Whole-file reads are bounded by the size the format allows, checked against the size at
//!   open and again while reading (a file that grows is refused, not followed).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// What a non-regular file is, in the words `ls -l` users know.
fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading and checks that it is a regular file (symlinks are followed).
/// Returns the file and its size. Never blocks on a FIFO.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(Error::format(
            path,
            format!("is {}, not a regular file", kind_of(&ft)),
        ));
    }
    // O_NONBLOCK has no effect on regular files, but clear it so later reads are plainly blocking.
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok((file, meta.len()))
}

/// Checks, without opening it, that `path` is a regular file (for inputs validated before use).
pub fn check_regular(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::format(
            path,
            format!("is {}, not a regular file", kind_of(&meta.file_type())),
        ));
    }
    Ok(meta.len())
}

/// Reads a whole regular file of at most `max` bytes; `what` names the format in the refusal
/// ("a shard list", "a projector file").
pub fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    let too_big = |n: u64| {
        Error::format(
            path,
            format!("is {n} bytes, more than {what} can be ({max} bytes at most)"),
        )
    };
    if len > max {
        return Err(too_big(len));
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(too_big(buf.len() as u64));
    }
    Ok(buf)
}

/// [`read_bounded`] for text files: also refuses bytes that are not UTF-8.
pub fn read_text_bounded(path: &Path, max: u64, what: &str) -> Result<String> {
    let bytes = read_bounded(path, max, what)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::format(
            path,
            format!(
                "{what} must be UTF-8 text; byte {} is not",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Caps on a safetensors header, so a hostile file cannot make us parse or allocate without end
/// (a header listing a million zero-size tensors is a few dozen MB of JSON).
#[derive(Clone, Copy, Debug)]
pub struct SafetensorsLimits {
    /// The format, for messages ("a checkpoint", "a projector file").
    pub what: &'static str,
    /// Largest JSON header accepted, in bytes.
    pub max_header_bytes: u64,
    /// Most tensors accepted.
    pub max_tensors: usize,
}

/// Checks the 8-byte header length of a safetensors file of `len` bytes against the cap and
/// the file size, before anything else is read. Returns the JSON header's length.
pub fn safetensors_header_len(
    first8: &[u8],
    len: u64,
    path: &Path,
    limits: SafetensorsLimits,
) -> Result<usize> {
    let Some(n) = first8.get(..8) else {
        return Err(Error::format(
            path,
            format!(
                "not {}: {len} bytes is too short for a safetensors header",
                limits.what
            ),
        ));
    };
    let n = u64::from_le_bytes([n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]]);
    if n > limits.max_header_bytes {
        return Err(Error::format(
            path,
            format!(
                "not {}: its safetensors header claims {n} bytes, more than {} bytes allowed",
                limits.what, limits.max_header_bytes
            ),
        ));
    }
    if 8 + n > len {
        return Err(Error::format(
            path,
            format!(
                "not {}: its safetensors header claims {n} bytes but the file has {len} bytes",
                limits.what
            ),
        ));
    }
    Ok(n as usize)
}

/// One tensor entry of a safetensors header: only where its data ends matters here.
#[derive(serde::Deserialize)]
struct TensorExtent {
    data_offsets: (u64, u64),
}

/// Scans a safetensors JSON header without building it: counts tensors (refusing more than the
/// cap as soon as it is passed) and returns the number of data bytes the header claims.
pub fn scan_safetensors_header(
    header: &[u8],
    path: &Path,
    limits: SafetensorsLimits,
) -> Result<u64> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Scan(SafetensorsLimits);
    impl<'de> Visitor<'de> for Scan {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object of tensors")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
            let (mut count, mut end) = (0usize, 0u64);
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "__metadata__" {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                count += 1;
                if count > self.0.max_tensors {
                    return Err(serde::de::Error::custom(format!(
                        "more than {} tensors, the most {} may hold",
                        self.0.max_tensors, self.0.what
                    )));
                }
                end = end.max(map.next_value::<TensorExtent>()?.data_offsets.1);
            }
            Ok(end)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(header);
    let data_len = de
        .deserialize_map(Scan(limits))
        .and_then(|end| de.end().map(|_| end))
        .map_err(|e| {
            Error::format(
                path,
                format!("not {}: bad safetensors header: {e}", limits.what),
            )
        })?;
    Ok(data_len)
}

/// Reads and checks the header of a safetensors file (length, caps, tensor count) without
/// reading its data; returns the JSON header and the size the whole file must have.
pub fn read_safetensors_header(
    file: &File,
    len: u64,
    path: &Path,
    limits: SafetensorsLimits,
) -> Result<(Vec<u8>, u64)> {
    use std::os::unix::fs::FileExt;
    let mut first8 = vec![0u8; len.min(8) as usize];
    file.read_exact_at(&mut first8, 0)
        .map_err(|e| Error::io(path, e))?;
    let n = safetensors_header_len(&first8, len, path, limits)?;
    let mut header = vec![0u8; n];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| Error::io(path, e))?;
    let data_len = scan_safetensors_header(&header, path, limits)?;
    Ok((header, (8 + n as u64).saturating_add(data_len)))
}

/// The same checks as [`read_safetensors_header`] on a file already in memory.
pub fn check_safetensors_bytes(bytes: &[u8], path: &Path, limits: SafetensorsLimits) -> Result<()> {
    let n = safetensors_header_len(bytes, bytes.len() as u64, path, limits)?;
    scan_safetensors_header(&bytes[8..8 + n], path, limits)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // Miri cannot open files with O_NONBLOCK | O_NOCTTY (nor make FIFOs): real-system test.
    #[cfg_attr(miri, ignore)]
    fn refuses_fifos_directories_and_devices_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe.npy");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_regular(&fifo).unwrap_err().to_string();
        assert!(e.contains("pipe.npy") && e.contains("FIFO"), "{e}");
        let e = open_regular(d.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = read_bounded(Path::new("/dev/zero"), 1 << 20, "a projector file")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("character device"),
            "{e}"
        );
        assert!(check_regular(&fifo).is_err());
    }

    #[test]
    // Miri cannot open files with O_NONBLOCK | O_NOCTTY (nor make FIFOs): real-system test.
    #[cfg_attr(miri, ignore)]
    fn bounds_whole_file_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("list.txt");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_bounded(&p, 10, "a list").unwrap().len(), 10);
        let e = read_bounded(&p, 9, "a shard list").unwrap_err().to_string();
        assert!(e.contains("more than a shard list can be"), "{e}");
        std::fs::write(&p, b"ok\xff").unwrap();
        let e = read_text_bounded(&p, 10, "a shard list")
            .unwrap_err()
            .to_string();
        assert!(e.contains("UTF-8") && e.contains("byte 2"), "{e}");
    }
}
