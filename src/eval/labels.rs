//! Integer class labels from `.npy` files (any integer dtype, shape `(n,)` or `(n, 1)`).
//!
//! Floats are rejected rather than rounded: a float label file is almost always a mistake (a
//! feature array passed by accident, or labels that went through pandas), and silently
//! truncating 2.7 to 2 would give wrong metrics.

use std::path::Path;

use crate::error::{Error, Result};
use crate::formats::npy::{parse_header, NpyDtype};

/// Reads the labels of `path` as i64. The error names the file and what was wrong.
pub fn load_labels(path: &Path) -> Result<Vec<i64>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::format(path, "file is empty, not a .npy array"));
    }
    let header = parse_header(&bytes, path)?;
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
    if bytes.len() < need {
        return Err(Error::format(
            path,
            format!(
                "file is truncated: header promises {n} labels of '{}' ({need} bytes) but the file has {} bytes",
                header.descr,
                bytes.len()
            ),
        ));
    }
    let data = &bytes[header.data_offset..need];
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
