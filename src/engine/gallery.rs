//! Synthetic galleries: shards of random features, for the demo, tests and benchmarks.
//! Streamed to disk in chunks (a 4 GB shard needs no 4 GB of memory) and deterministic: row `i`
//! of a shard depends only on (seed, i).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::f16;
use rayon::prelude::*;

use crate::align::synthetic::Rng;
use crate::error::{Error, Result};
use crate::formats::npy::{header_bytes, NpyDtype};
use crate::formats::{sync_parent_dir, temporary_path};

/// Writes one shard of `rows` x `cols` values uniform in [-1, 1) as f16 or f32.
pub fn write_random_shard(
    path: &Path,
    rows: usize,
    cols: usize,
    dtype: NpyDtype,
    seed: u64,
) -> Result<()> {
    assert!(matches!(dtype, NpyDtype::F16 | NpyDtype::F32));
    let tmp = temporary_path(path);
    let io = |e: std::io::Error| Error::io(path, e);
    let result = (|| -> Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io)?);
        w.write_all(&header_bytes(dtype, &[rows, cols]))
            .map_err(io)?;
        let esize = dtype.size();
        let chunk = 8192usize;
        let mut buf = vec![0u8; chunk * cols * esize];
        let mut start = 0;
        while start < rows {
            let n = chunk.min(rows - start);
            buf[..n * cols * esize]
                .par_chunks_mut(cols * esize)
                .enumerate()
                .for_each(|(r, row)| {
                    let mut rng =
                        Rng::new(seed ^ ((start + r) as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
                    for c in row.chunks_exact_mut(esize) {
                        let v = (rng.uniform() * 2.0 - 1.0) as f32;
                        if esize == 2 {
                            c.copy_from_slice(&f16::from_f32(v).to_le_bytes());
                        } else {
                            c.copy_from_slice(&v.to_le_bytes());
                        }
                    }
                });
            w.write_all(&buf[..n * cols * esize]).map_err(io)?;
            start += n;
        }
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        sync_parent_dir(path);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `shards` shards named `img_emb_0000.npy`, ... (the clip-retrieval naming) into `dir`.
pub fn write_random_gallery(
    dir: &Path,
    shards: usize,
    rows_per_shard: usize,
    cols: usize,
    dtype: NpyDtype,
    seed: u64,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    (0..shards)
        .map(|i| {
            let p = dir.join(format!("img_emb_{i:04}.npy"));
            write_random_shard(
                &p,
                rows_per_shard,
                cols,
                dtype,
                seed.wrapping_add(i as u64 * 7919),
            )?;
            Ok(p)
        })
        .collect()
}
