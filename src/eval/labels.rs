//! Integer class labels from `.npy` files (any integer dtype, shape `(n,)` or `(n, 1)`).
//!
//! Floats are rejected rather than rounded: a float label file is almost always a mistake (a
//! feature array passed by accident, or labels that went through pandas), and silently
//! truncating 2.7 to 2 would give wrong metrics.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::formats::npy::{read_header, NpyDtype};
use crate::formats::read::open_regular;

/// Reads the labels of `path` as i64. The error names the file and what was wrong. Only a
/// regular file is opened (a FIFO or `/dev/zero` is refused by name), and only the bytes its
/// header promises are read.
pub fn load_labels(path: &Path) -> Result<Vec<i64>> {
    let (file, len) = open_regular(path)?;
    labels_from_file(file, len, path)
}

/// [`load_labels`] on a file already opened (a regular file of `len` bytes); `path` is the name
/// errors give (a path or a URL).
pub fn labels_from_file(file: std::fs::File, len: u64, path: &Path) -> Result<Vec<i64>> {
    if len == 0 {
        return Err(Error::format(path, "file is empty, not a .npy array"));
    }
    let header = read_header(&file, len, path)?;
    let dtype = match header.dtype {
        Some(d) if d.is_float() => {
            return Err(Error::unsupported(
                path,
                format!(
                    "labels must be integers, but the array has float dtype '{}'; convert them \
                     (e.g. np.save(path, labels.astype(np.int64))) if they are whole numbers",
                    header.descr
                ),
            ))
        }
        Some(NpyDtype::Bool) => {
            return Err(Error::unsupported(
                path,
                "labels must be integers, but the array is boolean",
            ))
        }
        Some(d) => d,
        None => {
            return Err(Error::unsupported(
                path,
                format!(
                    "labels must be a little-endian integer array; dtype '{}' is not supported",
                    header.descr
                ),
            ))
        }
    };
    let n = match header.shape.as_slice() {
        [n] => *n,
        [n, 1] => *n,
        other => {
            return Err(Error::unsupported(
                path,
                format!("labels must be 1-D (n,) or (n, 1); the array has shape {other:?}"),
            ))
        }
    };
    if n == 0 {
        return Err(Error::format(path, "the label array is empty (0 labels)"));
    }
    let size = dtype.size();
    let need = n
        .checked_mul(size)
        .and_then(|b| b.checked_add(header.data_offset))
        .ok_or_else(|| Error::format(path, "shape overflows"))?;
    if len < need as u64 {
        return Err(Error::format(
            path,
            format!(
                "file is truncated: header promises {n} labels of '{}' ({need} bytes) but the file has {len} bytes",
                header.descr,
            ),
        ));
    }
    let mut data = crate::backend::try_zeroed::<u8>(need - header.data_offset)?;
    file.read_exact_at(&mut data, header.data_offset as u64)
        .map_err(|e| Error::io(path, e))?;
    let mut out = Vec::with_capacity(n);
    for (i, c) in data.chunks_exact(size).enumerate() {
        let v: i64 = match dtype {
            NpyDtype::I8 => c[0] as i8 as i64,
            NpyDtype::U8 => c[0] as i64,
            NpyDtype::I16 => i16::from_le_bytes([c[0], c[1]]) as i64,
            NpyDtype::U16 => u16::from_le_bytes([c[0], c[1]]) as i64,
            NpyDtype::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
            NpyDtype::U32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
            NpyDtype::I64 => i64::from_le_bytes(c.try_into().expect("8 bytes")),
            NpyDtype::U64 => {
                let u = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                i64::try_from(u).map_err(|_| {
                    Error::format(
                        path,
                        format!("label {u} at index {i} does not fit in a signed 64-bit integer"),
                    )
                })?
            }
            _ => unreachable!("float and bool dtypes were rejected above"),
        };
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::npy::header_bytes;

    #[test]
    fn labels_from_a_fifo_or_a_device_are_refused_by_name_without_reading() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("labels.npy");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = load_labels(&fifo).unwrap_err().to_string();
        assert!(e.contains("labels.npy") && e.contains("FIFO"), "{e}");
        let e = load_labels(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("/dev/zero: is a character device"), "{e}");
    }

    fn write(
        dir: &Path,
        name: &str,
        dtype: NpyDtype,
        shape: &[usize],
        data: &[u8],
    ) -> std::path::PathBuf {
        let p = dir.join(name);
        let mut b = header_bytes(dtype, shape);
        b.extend_from_slice(data);
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn reads_every_integer_width() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.npy", NpyDtype::I8, &[3], &[1, 255, 7]);
        assert_eq!(load_labels(&p).unwrap(), vec![1, -1, 7]);
        let p = write(dir.path(), "b.npy", NpyDtype::U8, &[2], &[200, 3]);
        assert_eq!(load_labels(&p).unwrap(), vec![200, 3]);
        let d: Vec<u8> = [-5i32, 70000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let p = write(dir.path(), "c.npy", NpyDtype::I32, &[2, 1], &d);
        assert_eq!(load_labels(&p).unwrap(), vec![-5, 70000]);
        let d: Vec<u8> = [1u16, 65535].iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = write(dir.path(), "d.npy", NpyDtype::U16, &[2], &d);
        assert_eq!(load_labels(&p).unwrap(), vec![1, 65535]);
    }

    #[test]
    fn rejects_floats_bools_2d_and_empty() {
        let dir = tempfile::tempdir().unwrap();
        let d: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = write(dir.path(), "f.npy", NpyDtype::F32, &[2], &d);
        let e = load_labels(&p).unwrap_err().to_string();
        assert!(e.contains("f.npy") && e.contains("must be integers"), "{e}");
        let p = write(dir.path(), "b.npy", NpyDtype::Bool, &[2], &[0, 1]);
        assert!(load_labels(&p).unwrap_err().to_string().contains("boolean"));
        let p = write(dir.path(), "m.npy", NpyDtype::U8, &[2, 2], &[0, 1, 2, 3]);
        assert!(load_labels(&p).unwrap_err().to_string().contains("shape"));
        let p = write(dir.path(), "e.npy", NpyDtype::I64, &[0], &[]);
        assert!(load_labels(&p).unwrap_err().to_string().contains("empty"));
        let p = write(dir.path(), "t.npy", NpyDtype::I64, &[4], &[0; 9]);
        assert!(load_labels(&p)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }
}
