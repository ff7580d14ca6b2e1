//! Rows of an input shard in memory, as both shard readers hand them out: the local reader
//! (`engine::reader`, `pread` from a file) and the object-store reader
//! (`storage::objects::shards`, ranged GETs). What they share lives here, below both: the chunk
//! they yield ([`RowChunk`]), the aligned buffer it is read into (`AlignedBuffer`), and how a
//! shard's `.npy` header is sized before it is read ([`announced_header_end`],
//! [`check_header_size`]), so the two readers refuse the same headers with the same words.

use std::path::Path;

use crate::error::{Error, Result};

/// Largest `.npy` header read (numpy writes a few hundred bytes; version 1 allows 64 KiB).
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// Buffers are aligned to a cache line, as the rows of a memory map were (headers we write, and
/// numpy's, are padded to 64 bytes).
pub const BUFFER_ALIGN: usize = 64;

/// Rows `[start, start + rows)` of a shard, as raw little-endian bytes.
pub struct RowChunk<'a> {
    pub start: usize,
    pub rows: usize,
    pub bytes: &'a [u8],
}

/// One cache line; a `Vec` of them is a byte buffer aligned to [`BUFFER_ALIGN`].
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct CacheLine([u8; BUFFER_ALIGN]);

// SAFETY: `CacheLine` is `repr(C)` over a byte array whose size equals its alignment: no padding,
// every bit pattern valid, all-zero valid.
unsafe impl bytemuck::Zeroable for CacheLine {}
// SAFETY: as above; it is also `Copy` and `'static`.
unsafe impl bytemuck::Pod for CacheLine {}

/// A reusable read buffer of `len` bytes, aligned to [`BUFFER_ALIGN`].
pub(crate) struct AlignedBuffer {
    lines: Vec<CacheLine>,
    len: usize,
}

impl AlignedBuffer {
    /// Allocates without aborting: a buffer that does not fit in memory is an error naming
    /// `path`, the shard it is for.
    pub(crate) fn new(len: usize, path: &Path) -> Result<Self> {
        let count = len.div_ceil(BUFFER_ALIGN);
        let mut lines = Vec::new();
        lines.try_reserve_exact(count).map_err(|_| {
            Error::ResourceExhausted(format!(
                "{}: cannot allocate a {len}-byte read buffer",
                path.display()
            ))
        })?;
        lines.resize(count, CacheLine([0; BUFFER_ALIGN]));
        Ok(AlignedBuffer { lines, len })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

/// Where a `.npy` header ends, from its fixed prefix (magic, version, length field: 10 bytes in
/// version 1, 12 in versions 2 and 3); `None` when the prefix is too short or the version
/// unknown (then `npy::parse_header` on the prefix says why).
pub fn announced_header_end(prefix: &[u8]) -> Option<usize> {
    match (prefix.len(), prefix.get(6)) {
        (10.., Some(1)) => Some(10 + u16::from_le_bytes([prefix[8], prefix[9]]) as usize),
        (12.., Some(2 | 3)) => {
            let field = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
            Some(12 + field as usize)
        }
        _ => None,
    }
}

/// Refuses a header announced longer than [`MAX_HEADER_BYTES`] before it is read; `shown` is the
/// shard's path or URL.
pub fn check_header_size(header_end: usize, shown: &Path) -> Result<()> {
    if header_end > MAX_HEADER_BYTES {
        return Err(Error::format(
            shown,
            format!(
                "not a valid .npy file: its header claims {header_end} bytes, more than the {MAX_HEADER_BYTES} a shard header can be"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_exactly_as_long_as_asked() {
        for len in [0, 1, 63, 64, 65, 1000] {
            let mut b = AlignedBuffer::new(len, Path::new("s.npy")).unwrap();
            assert_eq!(b.bytes().len(), len);
            assert_eq!(b.bytes().as_ptr() as usize % BUFFER_ALIGN, 0);
            assert!(b.bytes().iter().all(|&x| x == 0));
            b.bytes_mut().fill(7);
            assert!(b.bytes().iter().all(|&x| x == 7));
        }
        let e = AlignedBuffer::new(usize::MAX, Path::new("s.npy"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("s.npy: cannot allocate"), "{e}");
    }

    #[test]
    fn header_sizes_come_from_the_version_s_length_field() {
        let mut v1 = b"\x93NUMPY\x01\x00".to_vec();
        v1.extend_from_slice(&118u16.to_le_bytes());
        assert_eq!(announced_header_end(&v1), Some(128));
        assert_eq!(announced_header_end(&v1[..9]), None);
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&(3u32 << 20).to_le_bytes());
        assert_eq!(announced_header_end(&v2), Some(12 + (3 << 20)));
        assert_eq!(announced_header_end(&v2[..11]), None);
        v2[6] = 4;
        assert_eq!(announced_header_end(&v2), None);
        assert!(check_header_size(MAX_HEADER_BYTES, Path::new("s.npy")).is_ok());
        let e = check_header_size(MAX_HEADER_BYTES + 1, Path::new("s.npy"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "s.npy: not a valid .npy file: its header claims 1048577 bytes, more than the 1048576 a shard header can be"
        );
    }
}
