//! Checks on where a command will write, done before any work: an output given as `-o`, `--svg`
//! or `--out` that is a device node, FIFO, socket or (for a file) a directory is refused by name,
//! instead of being replaced by a regular file after minutes of work (`fit -o /dev/full`).

use std::path::Path;

use isoclip::error::{Error, Result};
use isoclip::formats::read::check_regular;

/// `path` will be written as a file: it must be absent or a regular file.
pub fn check_output_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // Not a regular file (or unreadable metadata): the reader's check names what it is.
        _ => check_regular(path).map(|_| ()),
    }
}

/// `path` will hold output files: it must be absent or a directory.
pub fn check_output_dir(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::format(
            path,
            "exists and is not a directory; give a directory for the output",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_and_directories_as_output_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_output_file(&dir.path().join("new.safetensors")).is_ok());
        let file = dir.path().join("old.safetensors");
        std::fs::write(&file, b"x").unwrap();
        assert!(check_output_file(&file).is_ok());
        let e = check_output_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory, not a regular file"), "{e}");
        let e = check_output_file(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/dev/null: is a character device, not a regular file");
        let e = check_output_dir(&file).unwrap_err().to_string();
        assert!(e.starts_with(&format!(
            "{}: exists and is not a directory",
            file.display()
        )));
        assert!(check_output_dir(dir.path()).is_ok());
    }
}
