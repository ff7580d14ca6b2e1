//! NumPy `.npy` files (format versions 1, 2 and 3): header parsing, memory-mapped 2-D arrays,
//! and header writing. Shards of clip-retrieval / LAION galleries are exactly this format.
//!
//! The header is a Python dict literal. We read it the way numpy does (`ast.literal_eval`, then
//! exactly the keys `descr`, `fortran_order` and `shape`) with a small tokenizer for the subset
//! of Python literals numpy writes: `'...'`/`"..."` strings without escapes, `True`/`False`,
//! decimal integers (with the Python 2 `L` suffix numpy still accepts in versions 1 and 2), and
//! tuples, with any spacing and trailing commas. Anything else — a duplicate or unknown key, a
//! comment, an escape, a structured dtype, a value of the wrong type — is refused, never guessed
//! at; `tests/hostile_formats.rs` and the differential test against numpy
//! (`tests/reference/npy_differential.py`) hold the parser to this.
//!
//! Only little-endian (or byte-order-free) dtypes are accepted; we never guess at big-endian data.
//! All size arithmetic is checked: a shape whose byte size does not fit in `isize` is refused.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The longest header we accept, in bytes after the fixed prefix. numpy itself refuses headers
/// longer than 10000 characters (`max_header_size`) unless pickles are allowed.
pub const MAX_HEADER_LEN: usize = 10_000;

/// Bytes before the header dict: magic, version, and the header length (2 or 4 bytes).
pub const PREFIX_LEN_MAX: usize = 12;

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
    /// The dtype a `descr` names, when it is one we read: a byte-order character (`<`, `|`, or
    /// `=` on a little-endian machine) followed by a type code. Never panics.
    fn from_descr(descr: &str) -> Option<Self> {
        let mut chars = descr.chars();
        let order = chars.next()?;
        let code = chars.as_str();
        let order_ok =
            matches!(order, '<' | '|') || (order == '=' && cfg!(target_endian = "little"));
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

/// Why a `descr` we do not read is refused, in words (for messages: "dtype '>f4' is not
/// supported: big-endian ...").
pub fn unsupported_dtype_reason(descr: &str) -> &'static str {
    let mut chars = descr.chars();
    let order = chars.next();
    let code = chars.as_str();
    let kind = code.chars().next();
    if order == Some('>') || order == Some('!') {
        return "big-endian data is not read (convert with arr.astype(arr.dtype.newbyteorder('<')))";
    }
    match kind {
        Some('c') | Some('F') | Some('D') | Some('G') => "complex numbers are not supported",
        Some('M') | Some('m') => "datetimes and timedeltas are not supported",
        Some('O') => "object arrays (pickles) are never read",
        Some('S') | Some('a') | Some('U') | Some('V') => {
            "strings, bytes and void (record) types are not supported"
        }
        Some('f') | Some('g') => "only 2-, 4- and 8-byte floats are supported",
        _ => "it is not a little-endian numeric type isoclip reads",
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
    /// Bytes of array data the header promises (`None` for a dtype we cannot read). Never
    /// overflows: [`parse_header`] refuses shapes whose size does not fit.
    pub fn data_len(&self) -> Option<usize> {
        self.element_count()?.checked_mul(self.dtype?.size())
    }
    /// Offset just past the data: the smallest file size that holds the whole array.
    pub fn data_end(&self) -> Option<usize> {
        self.data_len()?.checked_add(self.data_offset)
    }
}

/// How many bytes the header of a `.npy` file occupies (prefix + dict), from its first
/// [`PREFIX_LEN_MAX`] bytes (fewer is fine if the file is shorter: the error says so). Lets a
/// reader fetch exactly the header before parsing it with [`parse_header`].
pub fn header_total_len(prefix: &[u8], path: &Path) -> Result<usize> {
    let (header_len, start) = header_len_and_start(prefix, path)?;
    Ok(start + header_len)
}

fn not_npy(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::format(path, format!("not a valid .npy file: {msg}"))
}

/// The declared dict length and where the dict starts, after checking magic, version and cap.
fn header_len_and_start(bytes: &[u8], path: &Path) -> Result<(usize, usize)> {
    if bytes.len() < 8 || &bytes[..6] != MAGIC {
        return Err(not_npy(path, "missing the \\x93NUMPY magic"));
    }
    let (header_len, start) = match (bytes[6], bytes.get(8..12)) {
        (1, _) if bytes.len() >= 10 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        (2 | 3, Some(l)) => (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12),
        (1..=3, _) => return Err(not_npy(path, "truncated header")),
        (v, _) => {
            return Err(Error::unsupported(
                path,
                format!(".npy format version {v} is not supported (1, 2 and 3 are)"),
            ))
        }
    };
    if bytes[7] != 0 {
        return Err(Error::unsupported(
            path,
            format!(
                ".npy format version {}.{} is not supported (x.0 is)",
                bytes[6], bytes[7]
            ),
        ));
    }
    if header_len > MAX_HEADER_LEN {
        return Err(not_npy(
            path,
            format!("header is {header_len} bytes, more than the {MAX_HEADER_LEN} numpy reads"),
        ));
    }
    Ok((header_len, start))
}

/// Parses the header at the start of `bytes`. `path` is only used in error messages.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<NpyHeader> {
    let (header_len, start) = header_len_and_start(bytes, path)?;
    let end = start + header_len;
    let Some(raw) = bytes.get(start..end) else {
        return Err(not_npy(path, "file is shorter than its header"));
    };
    let text: String = if bytes[6] == 3 {
        std::str::from_utf8(raw)
            .map_err(|e| {
                not_npy(
                    path,
                    format!("header is not UTF-8 (byte {})", e.valid_up_to()),
                )
            })?
            .to_string()
    } else {
        // Versions 1 and 2 are latin-1: every byte is one character.
        raw.iter().map(|&b| b as char).collect()
    };
    let dict = header_dict::parse(&text, bytes[6] < 3).map_err(|m| not_npy(path, m))?;
    let header = NpyHeader {
        dtype: NpyDtype::from_descr(&dict.descr),
        descr: dict.descr,
        fortran_order: dict.fortran_order,
        shape: dict.shape,
        data_offset: end,
    };
    check_size(&header, path)?;
    Ok(header)
}

/// Refuses shapes whose size in bytes (ignoring zero dimensions) does not fit in `isize`, as
/// numpy does ("array is too big"), so every later size computation is exact.
fn check_size(h: &NpyHeader, path: &Path) -> Result<()> {
    let elem = h.dtype.map(NpyDtype::size).unwrap_or(1);
    let bytes = h
        .shape
        .iter()
        .try_fold(elem, |acc, &d| acc.checked_mul(d.max(1)))
        .and_then(|n| n.checked_add(h.data_offset))
        .filter(|&n| n <= isize::MAX as usize);
    if bytes.is_none() {
        return Err(not_npy(
            path,
            format!(
                "shape {:?} of '{}' is too large to address (its size overflows)",
                h.shape, h.descr
            ),
        ));
    }
    Ok(())
}

/// Reads and parses the header of an open `.npy` file of `len` bytes, reading only the header.
pub fn read_header(file: &File, len: u64, path: &Path) -> Result<NpyHeader> {
    if len == 0 {
        return Err(Error::format(path, "file is empty, not a .npy array"));
    }
    let mut prefix = vec![0u8; (len as usize).min(PREFIX_LEN_MAX)];
    file.read_exact_at(&mut prefix, 0)
        .map_err(|e| Error::io(path, e))?;
    let total = header_total_len(&prefix, path)?;
    if total as u64 > len {
        return Err(not_npy(path, "file is shorter than its header"));
    }
    let mut bytes = vec![0u8; total];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io(path, e))?;
    parse_header(&bytes, path)
}

/// The header dict and the tokenizer for the Python literal it is written in.
mod header_dict {
    pub struct HeaderDict {
        pub descr: String,
        pub fortran_order: bool,
        pub shape: Vec<usize>,
    }

    enum Value {
        Str(String),
        Bool(bool),
        Tuple(Vec<usize>),
    }

    impl Value {
        fn kind(&self) -> &'static str {
            match self {
                Value::Str(_) => "a string",
                Value::Bool(_) => "a boolean",
                Value::Tuple(_) => "a tuple",
            }
        }
    }

    type Res<T> = Result<T, String>;

    struct Cursor<'a> {
        chars: std::iter::Peekable<std::str::Chars<'a>>,
        /// Python 2 long literals (`3L`) are accepted in versions 1 and 2, as numpy does.
        allow_long_suffix: bool,
    }

    impl Cursor<'_> {
        /// Skips spaces, tabs, form feeds and line breaks (all legal inside the braces).
        fn skip_space(&mut self) {
            while matches!(self.chars.peek(), Some(' ' | '\t' | '\n' | '\r' | '\x0c')) {
                self.chars.next();
            }
        }
        fn expect(&mut self, want: char, context: &str) -> Res<()> {
            self.skip_space();
            match self.chars.next() {
                Some(c) if c == want => Ok(()),
                Some(c) => Err(format!("expected '{want}' {context}, found {c:?}")),
                None => Err(format!(
                    "expected '{want}' {context}, found the end of the header"
                )),
            }
        }
        /// Consumes `c` if it is next (after spaces).
        fn eat(&mut self, c: char) -> bool {
            self.skip_space();
            if self.chars.peek() == Some(&c) {
                self.chars.next();
                true
            } else {
                false
            }
        }
        fn string(&mut self) -> Res<String> {
            self.skip_space();
            let quote = match self.chars.next() {
                Some(q @ ('\'' | '"')) => q,
                Some(c) => return Err(format!("expected a quoted string, found {c:?}")),
                None => return Err("expected a quoted string, found the end".into()),
            };
            let mut s = String::new();
            loop {
                match self.chars.next() {
                    Some(c) if c == quote => break,
                    Some('\\') => {
                        return Err("escape sequences in strings are not supported".into())
                    }
                    Some('\n' | '\r') | None => return Err("unterminated string".into()),
                    Some(c) => s.push(c),
                }
            }
            self.skip_space();
            if matches!(self.chars.peek(), Some('\'' | '"')) {
                return Err("adjacent string literals are not supported".into());
            }
            Ok(s)
        }
        fn word(&mut self) -> String {
            let mut w = String::new();
            while let Some(&c) = self.chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    w.push(c);
                    self.chars.next();
                } else {
                    break;
                }
            }
            w
        }
        fn integer(&mut self) -> Res<usize> {
            self.skip_space();
            let mut w = self.word();
            if self.allow_long_suffix && (w.ends_with('L') || w.ends_with('l')) {
                w.pop();
            }
            if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "shape entry '{w}' is not a non-negative decimal integer"
                ));
            }
            if w.len() > 1 && w.starts_with('0') && w.bytes().any(|b| b != b'0') {
                return Err(format!("shape entry '{w}' has a leading zero"));
            }
            w.parse::<usize>()
                .map_err(|_| format!("shape entry {w} is too large"))
        }
        fn tuple(&mut self) -> Res<Vec<usize>> {
            self.expect('(', "to open the shape tuple")?;
            let mut items = Vec::new();
            loop {
                if self.eat(')') {
                    // `(3)` is an integer in Python, not a tuple.
                    return Ok(items);
                }
                items.push(self.integer()?);
                if self.eat(')') {
                    if items.len() == 1 {
                        return Err("shape '(n)' is an integer, not a tuple (write '(n,)')".into());
                    }
                    return Ok(items);
                }
                self.expect(',', "between shape entries")?;
            }
        }
        fn value(&mut self) -> Res<Value> {
            self.skip_space();
            match self.chars.peek() {
                Some('\'' | '"') => Ok(Value::Str(self.string()?)),
                Some('(') => Ok(Value::Tuple(self.tuple()?)),
                Some('[') => Err("a list value (structured dtypes are not supported)".into()),
                Some(c) if c.is_ascii_alphabetic() => match self.word().as_str() {
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    w => Err(format!("unexpected value '{w}'")),
                },
                Some(c) => Err(format!("unexpected value starting with {c:?}")),
                None => Err("header ends where a value belongs".into()),
            }
        }
    }

    /// Parses the dict literal of a header, e.g.
    /// `{'descr': '<f2', 'fortran_order': False, 'shape': (1000, 768), }`.
    pub fn parse(text: &str, allow_long_suffix: bool) -> Res<HeaderDict> {
        if text.contains('\0') {
            return Err("header contains a NUL byte".into());
        }
        let mut c = Cursor {
            chars: text.trim_start_matches([' ', '\t']).chars().peekable(),
            allow_long_suffix,
        };
        c.expect('{', "at the start of the header dict")?;
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        loop {
            if c.eat('}') {
                break;
            }
            let key = c.string()?;
            c.expect(':', &format!("after key '{key}'"))?;
            let value = c.value()?;
            let slot_taken = match (key.as_str(), value) {
                ("descr", Value::Str(s)) => descr.replace(s).is_some(),
                ("fortran_order", Value::Bool(b)) => fortran.replace(b).is_some(),
                ("shape", Value::Tuple(t)) => shape.replace(t).is_some(),
                ("descr" | "fortran_order" | "shape", v) => {
                    return Err(format!(
                        "'{key}' is {}, which numpy does not accept",
                        v.kind()
                    ))
                }
                _ => return Err(format!("unknown key '{key}'")),
            };
            if slot_taken {
                return Err(format!("duplicate key '{key}'"));
            }
            if c.eat('}') {
                break;
            }
            c.expect(',', "between entries")?;
        }
        c.skip_space();
        if let Some(ch) = c.chars.next() {
            return Err(format!("unexpected {ch:?} after the header dict"));
        }
        Ok(HeaderDict {
            descr: descr.ok_or("header has no 'descr'")?,
            fortran_order: fortran.ok_or("header has no 'fortran_order'")?,
            shape: shape.ok_or("header has no 'shape'")?,
        })
    }
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
        let (file, len) = crate::formats::read::open_regular(path)?;
        Self::from_file(file, len, path, accept)
    }

    /// [`NpyMatrix::open`] on a file already opened (a regular file of `len` bytes); `path` is
    /// the name errors give (a path or a URL).
    pub fn from_file(file: File, len: u64, path: &Path, accept: Accept) -> Result<Self> {
        let header = read_header(&file, len, path)?;
        let (rows, cols, dtype) = check_matrix(&header, path, len, accept)?;
        // SAFETY: the file is opened read-only; we never write through the map. A concurrent
        // writer truncating the file could make reads fault (SIGBUS); shards are inputs that
        // the user promises not to modify during a run, as with any mmap-based reader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
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

/// The refusal for a dtype `accept` does not take, naming the descr and why.
/// What a 2-D array file must be, shared by every reader of matrices (weights through
/// [`NpyMatrix`], shards through the engine's reader): a dtype `accept` allows, C order, 2-D, and
/// a file of `file_len` bytes long enough for the shape. Returns (rows, cols, dtype).
pub fn check_matrix(
    header: &NpyHeader,
    path: &Path,
    file_len: u64,
    accept: Accept,
) -> Result<(usize, usize, NpyDtype)> {
    let dtype = match header.dtype.filter(|d| accept.allows(*d)) {
        Some(d) => d,
        None => return Err(unsupported_dtype(path, &header.descr, accept)),
    };
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
        .data_end()
        .ok_or_else(|| Error::format(path, "shape overflows"))? as u64;
    if file_len < need {
        return Err(Error::format(
            path,
            format!(
                "file is truncated: header promises {rows} x {cols} {} ({need} bytes) but the file has {file_len} bytes",
                header.descr
            ),
        ));
    }
    Ok((rows, cols, dtype))
}

fn unsupported_dtype(path: &Path, descr: &str, accept: Accept) -> Error {
    let why = match NpyDtype::from_descr(descr) {
        Some(_) => "this input takes floats only",
        None => unsupported_dtype_reason(descr),
    };
    Error::unsupported(
        path,
        format!(
            "dtype '{descr}' is not supported: {why} (expected {})",
            accept.describe()
        ),
    )
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
