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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
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
