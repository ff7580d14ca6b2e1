//! Finding the shards of a gallery.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Resolves `input` to an ordered list of `.npy` shards:
/// - a `.npy` file: that shard;
/// - a directory: its `.npy` files (not recursive, hidden files skipped), sorted by name;
/// - any other file: a manifest with one shard path per line (relative paths are relative to the
///   manifest's directory; blank lines and `#` comments are ignored), in the listed order.
///
/// Output shards keep their input file names, so two shards with the same name are refused.
pub fn discover(input: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
    let shards = if meta.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(input)
            .map_err(|e| Error::io(input, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "npy")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    && p.is_file()
            })
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(Error::invalid(format!(
                "{}: directory holds no .npy shards",
                input.display()
            )));
        }
        v
    } else if input.extension().is_some_and(|x| x == "npy") {
        vec![input.to_path_buf()]
    } else {
        let text = std::fs::read_to_string(input).map_err(|e| Error::io(input, e))?;
        let base = input.parent().unwrap_or(Path::new("."));
        let v: Vec<PathBuf> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let p = PathBuf::from(l);
                if p.is_absolute() {
                    p
                } else {
                    base.join(p)
                }
            })
            .collect();
        if v.is_empty() {
            return Err(Error::format(input, "shard list names no shard"));
        }
        v
    };
    let mut names: BTreeMap<String, &PathBuf> = BTreeMap::new();
    for s in &shards {
        let name = s
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(prev) = names.insert(name.clone(), s) {
            return Err(Error::invalid(format!(
                "two shards share the file name '{name}' ({} and {}); outputs keep input names, so rename one",
                prev.display(),
                s.display()
            )));
        }
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_manifest_and_file_inputs() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b.npy", "a.npy", ".hidden.npy", "notes.txt"] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        let v = discover(d.path()).unwrap();
        let names: Vec<_> = v
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.npy", "b.npy"]);
        std::fs::write(d.path().join("list.txt"), "# gallery\nb.npy\n\na.npy\n").unwrap();
        let v = discover(&d.path().join("list.txt")).unwrap();
        assert_eq!(v, vec![d.path().join("b.npy"), d.path().join("a.npy")]);
        assert_eq!(discover(&d.path().join("a.npy")).unwrap().len(), 1);
        let e = tempfile::tempdir().unwrap();
        assert!(discover(e.path())
            .unwrap_err()
            .to_string()
            .contains("no .npy shards"));
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a.npy"), b"x").unwrap();
        std::fs::write(d.path().join("dup.txt"), "a.npy\nsub/a.npy\n").unwrap();
        assert!(discover(&d.path().join("dup.txt"))
            .unwrap_err()
            .to_string()
            .contains("share the file name"));
    }
}
