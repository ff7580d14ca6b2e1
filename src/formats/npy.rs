//! NumPy `.npy` files (format versions 1, 2 and 3): header parsing, memory-mapped 2-D arrays,
//! and header writing. Shards of clip-retrieval / LAION galleries are exactly this format.
//!
//! Only little-endian (or byte-order-free) dtypes are accepted; we never guess at big-endian data.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Element types we know how to read. Floats are used for embeddings and weights, integers for
/// labels (evaluation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NpyDtype {
    F16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl NpyDtype {
    pub fn size(self) -> usize {
        match self {
            NpyDtype::F16 | NpyDtype::I16 | NpyDtype::U16 => 2,
            NpyDtype::F32 | NpyDtype::I32 | NpyDtype::U32 => 4,
            NpyDtype::F64 | NpyDtype::I64 | NpyDtype::U64 => 8,
            NpyDtype::I8 | NpyDtype::U8 | NpyDtype::Bool => 1,
        }
    }
    /// The numpy `descr` string we write for this dtype.
    pub fn descr(self) -> &'static str {
        match self {
            NpyDtype::F16 => "<f2",
            NpyDtype::F32 => "<f4",
            NpyDtype::F64 => "<f8",
            NpyDtype::I8 => "|i1",
            NpyDtype::I16 => "<i2",
            NpyDtype::I32 => "<i4",
            NpyDtype::I64 => "<i8",
            NpyDtype::U8 => "|u1",
            NpyDtype::U16 => "<u2",
            NpyDtype::U32 => "<u4",
            NpyDtype::U64 => "<u8",
            NpyDtype::Bool => "|b1",
        }
    }
    fn from_descr(descr: &str) -> Option<Self> {
        let native_le = cfg!(target_endian = "little");
        let (order, code) = descr.split_at(1.min(descr.len()));
        let order_ok = match order {
            "<" => true,
            "|" => true,
            "=" => native_le,
            _ => false,
        };
        if !order_ok {
            return None;
        }
        Some(match code {
            "f2" | "e" => NpyDtype::F16,
            "f4" | "f" => NpyDtype::F32,
            "f8" | "d" => NpyDtype::F64,
            "i1" | "b" => NpyDtype::I8,
            "i2" | "h" => NpyDtype::I16,
            "i4" | "i" => NpyDtype::I32,
            "i8" | "q" | "l" => NpyDtype::I64,
            "u1" | "B" => NpyDtype::U8,
            "u2" | "H" => NpyDtype::U16,
            "u4" | "I" => NpyDtype::U32,
            "u8" | "Q" | "L" => NpyDtype::U64,
            "b1" | "?" => NpyDtype::Bool,
            _ => return None,
        })
    }
    pub fn is_float(self) -> bool {
        matches!(self, NpyDtype::F16 | NpyDtype::F32 | NpyDtype::F64)
    }
}

/// A parsed `.npy` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    pub descr: String,
    /// `None` when `descr` is a dtype we cannot read (it is still reported by name).
    pub dtype: Option<NpyDtype>,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Byte offset of the first element.
    pub data_offset: usize,
}

impl NpyHeader {
    pub fn element_count(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

/// Parses the header at the start of `bytes`. `path` is only used in error messages.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<NpyHeader> {
    let bad = |msg: &str| Error::format(path, format!("not a valid .npy file: {msg}"));
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => {
            return Err(Error::unsupported(
                path,
                format!(".npy format version {v} is not supported (1, 2 and 3 are)"),
            ))
        }
    };
    let end = start
        .checked_add(header_len)
        .ok_or_else(|| bad("header length overflows"))?;
    if bytes.len() < end {
        return Err(bad("file is shorter than its header"));
    }
    let text = std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("header is not text"))?;
    let dict = parse_header_dict(text).map_err(|m| bad(&m))?;
    let dtype = NpyDtype::from_descr(&dict.descr);
    Ok(NpyHeader {
        descr: dict.descr,
        dtype,
        fortran_order: dict.fortran_order,
        shape: dict.shape,
        data_offset: end,
    })
}

struct HeaderDict {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of a `.npy` header, e.g.
/// `{'descr': '<f2', 'fortran_order': False, 'shape': (1000, 768), }`.
fn parse_header_dict(text: &str) -> std::result::Result<HeaderDict, String> {
    let t = text.trim().trim_end_matches('\n').trim();
    let inner = t
        .strip_prefix('{')
        .and_then(|s| s.trim_end().strip_suffix('}'))
        .ok_or("header is not a dict")?;
    let value_after = |key: &str| -> std::result::Result<&str, String> {
        let pat_single = format!("'{key}'");
        let pat_double = format!("\"{key}\"");
        let pos = inner
            .find(&pat_single)
            .map(|p| p + pat_single.len())
            .or_else(|| inner.find(&pat_double).map(|p| p + pat_double.len()))
            .ok_or(format!("header has no '{key}'"))?;
        let rest = inner[pos..].trim_start();
        let rest = rest
            .strip_prefix(':')
            .ok_or(format!("malformed '{key}' entry"))?;
        Ok(rest.trim_start())
    };
    let descr_raw = value_after("descr")?;
    let quote = descr_raw.chars().next().ok_or("empty descr")?;
    if quote != '\'' && quote != '"' {
        return Err("descr is not a simple string (structured dtypes are not supported)".into());
    }
    let descr_end = descr_raw[1..].find(quote).ok_or("unterminated descr")?;
    let descr = descr_raw[1..1 + descr_end].to_string();

    let fo = value_after("fortran_order")?;
    let fortran_order = if fo.starts_with("True") {
        true
    } else if fo.starts_with("False") {
        false
    } else {
        return Err("fortran_order is neither True nor False".into());
    };

    let sh = value_after("shape")?;
    let sh = sh.strip_prefix('(').ok_or("shape is not a tuple")?;
    let close = sh.find(')').ok_or("unterminated shape tuple")?;
    let mut shape = Vec::new();
    for part in sh[..close].split(',') {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        let p = p.trim_end_matches('L');
        shape.push(
            p.parse::<usize>()
                .map_err(|_| format!("shape entry '{p}' is not a non-negative integer"))?,
        );
    }
    Ok(HeaderDict {
        descr,
        fortran_order,
        shape,
    })
}

/// Builds a version-1 header (or version 2 when the dict is too long) for a C-order array.
/// The total header length is padded to a multiple of 64 so the data is aligned.
pub fn header_bytes(dtype: NpyDtype, shape: &[usize]) -> Vec<u8> {
    let shape_str = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        dtype.descr(),
        shape_str
    );
    let mut out = Vec::with_capacity(128);
    for (version, prefix_len) in [(1u8, 10usize), (2u8, 12usize)] {
        let unpadded = prefix_len + dict.len() + 1;
        let total = unpadded.div_ceil(64) * 64;
        let header_len = total - prefix_len;
        if version == 1 && header_len > u16::MAX as usize {
            continue;
        }
        out.extend_from_slice(MAGIC);
        out.push(version);
        out.push(0);
        if version == 1 {
            out.extend_from_slice(&(header_len as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header_len as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        return out;
    }
    unreachable!("a version-2 header always fits")
}

/// A memory-mapped, validated 2-D C-order array of floats (f16 or f32, optionally f64).
pub struct NpyMatrix {
    path: PathBuf,
    mmap: Option<Mmap>,
    header: NpyHeader,
    pub rows: usize,
    pub cols: usize,
    pub dtype: NpyDtype,
}

impl std::fmt::Debug for NpyMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpyMatrix")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// Which element types a caller accepts when opening a matrix.
#[derive(Clone, Copy, Debug)]
pub enum Accept {
    /// f16 or f32: embedding shards.
    Embeddings,
    /// f16, f32 or f64: weights, where precision matters more than size.
    Weights,
}

impl NpyMatrix {
    /// Opens and validates `path`: 2-D, C order, a supported dtype, and a file long enough for
    /// the shape its header promises. Nothing but the header is read.
    pub fn open(path: &Path, accept: Accept) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len() as usize;
        if len == 0 {
            return Err(Error::format(path, "file is empty, not a .npy array"));
        }
        // SAFETY: the file is opened read-only; we never write through the map. A concurrent
        // writer truncating the file could make reads fault (SIGBUS); shards are inputs that
        // the user promises not to modify during a run, as with any mmap-based reader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = parse_header(&mmap, path)?;
        let dtype = match header.dtype {
            Some(d) => d,
            None => {
                return Err(Error::unsupported(
                    path,
                    format!(
                        "dtype '{}' is not supported (expected {})",
                        header.descr,
                        accept.describe()
                    ),
                ))
            }
        };
        if !accept.allows(dtype) {
            return Err(Error::unsupported(
                path,
                format!(
                    "dtype '{}' is not supported (expected {})",
                    header.descr,
                    accept.describe()
                ),
            ));
        }
        if header.fortran_order {
            return Err(Error::unsupported(
                path,
                "array is in Fortran order; save it in C order (np.ascontiguousarray)",
            ));
        }
        if header.shape.len() != 2 {
            return Err(Error::unsupported(
                path,
                format!(
                    "array is {}-D with shape {:?}; a 2-D (rows x dims) array is required",
                    header.shape.len(),
                    header.shape
                ),
            ));
        }
        let (rows, cols) = (header.shape[0], header.shape[1]);
        let need = header
            .element_count()
            .and_then(|n| n.checked_mul(dtype.size()))
            .and_then(|n| n.checked_add(header.data_offset))
            .ok_or_else(|| Error::format(path, "shape overflows"))?;
        if len < need {
            return Err(Error::format(
                path,
                format!(
                    "file is truncated: header promises {rows} x {cols} {} ({need} bytes) but the file has {len} bytes",
                    header.descr
                ),
            ));
        }
        Ok(NpyMatrix {
            path: path.to_path_buf(),
            mmap: Some(mmap),
            header,
            rows,
            cols,
            dtype,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw little-endian bytes of rows `[start, end)`.
    pub fn row_bytes(&self, start: usize, end: usize) -> &[u8] {
        let row = self.cols * self.dtype.size();
        let off = self.header.data_offset;
        &self.mmap.as_ref().expect("mapped")[off + start * row..off + end * row]
    }

    /// Tells the kernel that rows `[start, end)` will not be needed again, so their pages can be
    /// dropped from this process (memory stays bounded on shards larger than RAM).
    pub fn release_rows(&self, start: usize, end: usize) {
        let row = self.cols * self.dtype.size();
        let mmap = self.mmap.as_ref().expect("mapped");
        let page = 4096usize;
        let abs_start = self.header.data_offset + start * row;
        let abs_end = self.header.data_offset + end * row;
        let a = abs_start.div_ceil(page) * page;
        let b = (abs_end / page) * page;
        if b > a {
            // Advice only; failure is harmless.
            // SAFETY: DontNeed on a read-only private file mapping only drops clean pages; later
            // reads fault them back in from the file, so no data visible to us changes.
            let _ = unsafe {
                mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a)
            };
        }
    }

    /// Advises sequential access for the whole file (read-ahead).
    pub fn advise_sequential(&self) {
        let _ = self
            .mmap
            .as_ref()
            .expect("mapped")
            .advise(memmap2::Advice::Sequential);
    }

    /// Reads the whole matrix as f64 (for weights).
    pub fn to_f64(&self) -> Vec<f64> {
        let bytes = self.row_bytes(0, self.rows);
        bytes_to_f64(bytes, self.dtype)
    }
}

impl Accept {
    fn allows(self, d: NpyDtype) -> bool {
        match self {
            Accept::Embeddings => matches!(d, NpyDtype::F16 | NpyDtype::F32),
            Accept::Weights => d.is_float(),
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Accept::Embeddings => "'<f2' (float16) or '<f4' (float32)",
            Accept::Weights => "'<f2', '<f4' or '<f8'",
        }
    }
}

/// Converts little-endian float bytes of `dtype` to f64.
pub fn bytes_to_f64(bytes: &[u8], dtype: NpyDtype) -> Vec<f64> {
    match dtype {
        NpyDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        NpyDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        NpyDtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        _ => panic!("bytes_to_f64 called on a non-float dtype"),
    }
}

/// Writes a whole 2-D f32 or f16 array to `path` (small files: fixtures, synthetic data).
/// Written to a temporary name and renamed, so a crash never leaves a partial file.
pub fn write_matrix_f32(
    path: &Path,
    rows: usize,
    cols: usize,
    data: &[f32],
    dtype: NpyDtype,
) -> Result<()> {
    assert_eq!(data.len(), rows * cols);
    let mut buf = header_bytes(dtype, &[rows, cols]);
    match dtype {
        NpyDtype::F32 => buf.extend_from_slice(bytemuck::cast_slice(data)),
        NpyDtype::F16 => {
            for v in data {
                buf.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        other => panic!("write_matrix_f32: unsupported output dtype {other:?}"),
    }
    crate::formats::atomic_write(path, &buf)
}

/// Writes a 1-D i64 array (labels).
pub fn write_vector_i64(path: &Path, data: &[i64]) -> Result<()> {
    let mut buf = header_bytes(NpyDtype::I64, &[data.len()]);
    for v in data {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    crate::formats::atomic_write(path, &buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_is_aligned() {
        let h = header_bytes(NpyDtype::F16, &[1000, 768]);
        assert_eq!(h.len() % 64, 0);
        let p = parse_header(&h, Path::new("x.npy")).unwrap();
        assert_eq!(p.dtype, Some(NpyDtype::F16));
        assert_eq!(p.shape, vec![1000, 768]);
        assert!(!p.fortran_order);
        assert_eq!(p.data_offset, h.len());
    }

    #[test]
    fn parses_numpy_written_headers() {
        // Exactly what numpy 1.26 writes for np.zeros((3, 4), np.float32).
        let mut b = Vec::new();
        b.extend_from_slice(b"\x93NUMPY\x01\x00");
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
        let total = (10 + dict.len() + 1).div_ceil(64) * 64;
        b.extend_from_slice(&((total - 10) as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.resize(total - 1, b' ');
        b.push(b'\n');
        let p = parse_header(&b, Path::new("x.npy")).unwrap();
        assert_eq!(p.shape, vec![3, 4]);
        assert_eq!(p.dtype, Some(NpyDtype::F32));
    }

    #[test]
    fn rejects_big_endian_and_garbage() {
        let mut h = header_bytes(NpyDtype::F32, &[2, 2]);
        let pos = h.windows(3).position(|w| w == b"<f4").unwrap();
        h[pos] = b'>';
        let p = parse_header(&h, Path::new("x.npy")).unwrap();
        assert_eq!(p.dtype, None);
        assert!(parse_header(b"not numpy at all", Path::new("x.npy")).is_err());
    }
}
