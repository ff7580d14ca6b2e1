//! Helpers shared by the fuzz targets.

use std::path::{Path, PathBuf};

/// Writes `data` to a per-process scratch file and calls `f` with its path, for loaders that
/// only take paths. The file is reused across iterations (and removed at exit by the OS tmp
/// cleaner; it is one small file).
pub fn with_file(data: &[u8], f: impl FnOnce(&Path)) {
    let path: PathBuf =
        std::env::temp_dir().join(format!("isoclip-fuzz-{}.bin", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        f(&path);
    }
}
