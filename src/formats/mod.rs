//! File formats: `.npy` arrays, safetensors checkpoints, and the projector file; the rows of an
//! input shard in memory, as both shard readers yield them (`rows`); and how every file we
//! produce is written ([`atomic_write`], [`create_temporary`]).
//!
//! Writing rules, shared by every writer in the crate:
//! - bytes go to a temporary name next to the destination ([`temporary_path`]), created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW` after unlinking any stale temporary of ours (`unlink` never
//!   follows a symlink), so a symlink planted at the temporary name is never written through;
//! - the temporary file is fsynced, renamed over the destination, and the directory fsynced;
//! - a destination that is a symlink is replaced by the rename (the link itself; its target is
//!   never touched); a destination that is a directory, device node, FIFO or socket is refused;
//! - on any error the temporary file is removed and the destination is untouched.

pub mod checkpoint;
pub mod npy;
pub mod projector_file;
pub mod read;
pub mod rows;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The temporary name a file is written under before it is renamed into place.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.isoclip-tmp"))
}

/// Creates `tmp` for writing, exclusively: a stale file (or symlink) of that name is unlinked
/// first, then the file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`, so nothing planted at the
/// name is ever written through. `extra_flags` are added to the open flags (e.g. `O_DIRECT`).
pub fn create_temporary(tmp: &Path, extra_flags: i32) -> std::io::Result<File> {
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | extra_flags)
        .open(tmp)
}

/// Refuses a destination that a rename must not replace: a directory, device node, FIFO or
/// socket. A missing destination, a regular file and a symlink (replaced, never followed) pass.
pub fn check_destination(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let ft = meta.file_type();
    let kind = if ft.is_file() || ft.is_symlink() {
        return Ok(());
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(Error::invalid(format!(
        "{}: is {kind}; refusing to replace it with an output file (name a regular file)",
        path.display()
    )))
}

/// Writes `bytes` to `path` atomically (see the module doc for the rules). On failure the
/// temporary file is removed and `path` is untouched.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    check_destination(path)?;
    let tmp = temporary_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = create_temporary(&tmp, 0)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_parent_dir(path);
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Best-effort fsync of the directory holding `path`, so a rename survives a power cut.
pub fn sync_parent_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_refuses_special_files_by_name() {
        let e = atomic_write(Path::new("/dev/full"), b"x")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/dev/full: is a character device; refusing to replace it with an output file (name a regular file)"
        );
        assert!(std::fs::symlink_metadata("/dev/full")
            .unwrap()
            .file_type()
            .is_char_device());
        let d = tempfile::tempdir().unwrap();
        let e = atomic_write(d.path(), b"x").unwrap_err().to_string();
        assert!(
            e.ends_with(
                "is a directory; refusing to replace it with an output file (name a regular file)"
            ),
            "{e}"
        );
        let fifo = d.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = atomic_write(&fifo, b"x").unwrap_err().to_string();
        assert!(e.contains("pipe: is a FIFO"), "{e}");
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_replaces_symlinks_and_never_writes_through_them() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        // A symlink at the destination is replaced, its target untouched.
        let dest = d.path().join("out.svg");
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        atomic_write(&dest, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&dest).unwrap().is_file());
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A symlink planted at the temporary name is removed, never written through.
        let dest2 = d.path().join("b.json");
        std::os::unix::fs::symlink(&victim, temporary_path(&dest2)).unwrap();
        atomic_write(&dest2, b"json").unwrap();
        assert_eq!(std::fs::read(&dest2).unwrap(), b"json");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!temporary_path(&dest2).exists());
    }
}
