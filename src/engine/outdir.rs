//! The output directory: refused before anything is created when it would overwrite an input,
//! then created and locked for the run.
//!
//! - "Inside the input" and "the input's own folder" are decided on canonical directories (and,
//!   for directories that exist, on device + inode), so every spelling — `""`, `.`, `./`,
//!   `sub/..`, a symlink, an absolute path, a bind mount — is caught. An empty path is refused.
//! - The lock is `flock(LOCK_EX|LOCK_NB)` on a descriptor of the directory itself (opened
//!   `O_DIRECTORY|O_RDONLY`): nothing can unlink it from under a run, no lock file is left
//!   behind, and the kernel drops it when the process ends, however it ends.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Where `out` is or would be once created, canonically: the deepest existing ancestor
/// canonicalised (symlinks resolved), then the missing components applied lexically (a missing
/// directory cannot be a symlink).
pub fn prospective_canonical(out: &Path) -> Result<PathBuf> {
    if out.as_os_str().is_empty() {
        return Err(Error::invalid(
            "the output directory is an empty path; name a directory",
        ));
    }
    let components: Vec<Component<'_>> = out.components().collect();
    for existing in (0..=components.len()).rev() {
        let prefix: PathBuf = components[..existing].iter().collect();
        let prefix = if prefix.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            prefix
        };
        match std::fs::canonicalize(&prefix) {
            Ok(mut resolved) => {
                for c in &components[existing..] {
                    match c {
                        Component::ParentDir => {
                            resolved.pop();
                        }
                        Component::Normal(n) => resolved.push(n),
                        _ => {}
                    }
                }
                return Ok(resolved);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && existing > 0 => continue,
            Err(e) => return Err(Error::io(out, e)),
        }
    }
    unreachable!("the loop returns at prefix 0")
}

/// Device and inode of an existing directory.
fn dir_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `a` (canonical, maybe not yet existing) and `b` (existing) are the same directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    let b_canon = std::fs::canonicalize(b).unwrap_or_else(|_| b.to_path_buf());
    a == b_canon || matches!((dir_id(a), dir_id(b)), (Some(x), Some(y)) if x == y)
}

/// Refuses an output directory that is inside (or equal to) a directory input, or that is the
/// folder of any input shard (as listed, or where a symlinked shard really lives). Creates
/// nothing: called before the directory exists.
pub fn check_output_dir(out: &Path, input: &Path, shards: &[PathBuf]) -> Result<()> {
    let out_canon = prospective_canonical(out)?;
    if std::fs::metadata(input).is_ok_and(|m| m.is_dir()) {
        let in_canon = std::fs::canonicalize(input).map_err(|e| Error::io(input, e))?;
        if out_canon.starts_with(&in_canon) || same_dir(&out_canon, input) {
            return Err(Error::invalid(format!(
                "output directory {} is inside (or equal to) the input directory {}; choose a directory outside the input",
                out.display(),
                input.display()
            )));
        }
    }
    for shard in shards {
        let listed_dir = parent_or_dot(shard);
        let real = std::fs::canonicalize(shard).unwrap_or_else(|_| shard.clone());
        let real_dir = parent_or_dot(&real);
        if same_dir(&out_canon, listed_dir) || same_dir(&out_canon, real_dir) {
            return Err(Error::invalid(format!(
                "output directory {} is the folder of input shard {}, which its output would replace; choose another output directory",
                out.display(),
                shard.display()
            )));
        }
    }
    Ok(())
}

fn parent_or_dot(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// An exclusive lock on an output directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct OutputDirLock {
    _dir: File,
}

impl OutputDirLock {
    /// Locks `dir` (which must exist) or says that another run holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| Error::io(dir, e))?;
        // SAFETY: flock on a descriptor we own and keep open for the lock's lifetime.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(Error::invalid(format!(
                    "another isoclip run is writing to {} (it holds the directory's lock); wait for it to finish or choose another output directory",
                    dir.display()
                )));
            }
            return Err(Error::io(dir, e));
        }
        Ok(OutputDirLock { _dir: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prospective_paths_resolve_like_the_directory_they_will_be() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir(root.join("g")).unwrap();
        std::os::unix::fs::symlink(root.join("g"), root.join("link")).unwrap();
        let cases = [
            (root.join("g/new/deeper"), root.join("g/new/deeper")),
            (root.join("link/new"), root.join("g/new")),
            (root.join("g/new/.."), root.join("g")),
            (root.join("g/./"), root.join("g")),
        ];
        for (input, want) in cases {
            assert_eq!(prospective_canonical(&input).unwrap(), want, "{input:?}");
        }
        assert!(prospective_canonical(Path::new(""))
            .unwrap_err()
            .to_string()
            .contains("empty path"));
    }

    #[test]
    fn the_lock_is_exclusive_and_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let first = OutputDirLock::acquire(d.path()).unwrap();
        let e = OutputDirLock::acquire(d.path()).unwrap_err().to_string();
        assert!(e.contains("another isoclip run is writing to"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        drop(first);
        OutputDirLock::acquire(d.path()).unwrap();
    }
}
