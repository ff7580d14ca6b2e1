//! Finding the shards of a gallery: a `.npy` file, a directory of them, or a text file listing
//! them ([`parse_shard_list`] is the pure parser of such a list, for tests and fuzzing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::formats::read::{check_regular, read_text_bounded};

/// The largest shard list we read: room for about 10 million paths of 100 bytes.
pub const MAX_SHARD_LIST_BYTES: u64 = 1 << 30;

/// Resolves `input` to an ordered list of `.npy` shards:
/// - a `.npy` file: that shard;
/// - a directory: its `.npy` files (not recursive, hidden files skipped), sorted by name;
/// - any other file: a list with one shard path per line (see [`parse_shard_list`]).
///
/// Every shard must be a regular file (a directory, FIFO or device is refused by name). Output
/// shards keep their input file names, so two shards with the same name are refused.
pub fn discover(input: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
    let shards = if meta.is_dir() {
        list_directory(input)?
    } else if input.extension().is_some_and(|x| x == "npy") {
        vec![input.to_path_buf()]
    } else {
        let text = read_text_bounded(input, MAX_SHARD_LIST_BYTES, "a shard list")?;
        let base = input.parent().unwrap_or(Path::new("."));
        parse_shard_list(&text, base).map_err(|e| e.in_file(input))?
    };
    for s in &shards {
        check_regular(s)?;
    }
    refuse_duplicate_names(&shards)?;
    Ok(shards)
}

/// The `.npy` files of a directory (not hidden, not recursive), sorted by name.
fn list_directory(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
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
            dir.display()
        )));
    }
    Ok(v)
}

/// Parses a shard list: one path per line, in order; blank lines and lines starting with `#`
/// are ignored, surrounding whitespace is trimmed, relative paths are relative to `base` (the
/// list's directory). Pure: touches no file.
pub fn parse_shard_list(text: &str, base: &Path) -> Result<Vec<PathBuf>> {
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
        return Err(Error::invalid("shard list names no shard"));
    }
    Ok(v)
}

fn refuse_duplicate_names(shards: &[PathBuf]) -> Result<()> {
    let mut names: BTreeMap<String, &PathBuf> = BTreeMap::new();
    for s in shards {
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
    Ok(())
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

    #[test]
    fn parse_shard_list_is_pure_and_ordered() {
        let base = Path::new("/data");
        let v = parse_shard_list("  # c\n\n b.npy \n/abs/a.npy\r\n", base).unwrap();
        assert_eq!(
            v,
            [PathBuf::from("/data/b.npy"), PathBuf::from("/abs/a.npy")]
        );
        let e = parse_shard_list("# only\n\n", base).unwrap_err();
        assert_eq!(e.to_string(), "shard list names no shard");
    }

    #[test]
    fn list_entries_that_are_not_regular_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("dir.npy")).unwrap();
        std::fs::write(d.path().join("list.txt"), "dir.npy\n").unwrap();
        let e = discover(&d.path().join("list.txt"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: is a directory, not a regular file",
                d.path().join("dir.npy").display()
            )
        );
        std::fs::write(d.path().join("empty.txt"), "# nothing\n").unwrap();
        let e = discover(&d.path().join("empty.txt"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: shard list names no shard",
                d.path().join("empty.txt").display()
            )
        );
    }
}
