//! `isoclip gallery`: write a synthetic gallery of random feature shards (demo, tests, benches).

use std::path::PathBuf;

use clap::Args;

use super::project::DtypeArg;
use crate::engine::gallery::write_random_gallery;
use crate::error::Result;
use crate::formats::npy::NpyDtype;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  isoclip gallery --out gallery/ --shards 4 --rows 100000 --dim 768\n  isoclip gallery --out big/ --shards 1 --rows 2800000 --dim 768 --dtype f16   # ~4 GB shard\n\nExit codes: 0 success; 1 failure; 2 invalid command line."
)]
pub struct GalleryArgs {
    /// Directory to write the shards into (img_emb_0000.npy, ...).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub shards: usize,
    /// Rows per shard.
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Columns (768 = ViT-B image features, 512 = ViT-B embeddings).
    #[arg(long, default_value_t = 768)]
    pub dim: usize,
    #[arg(long, value_enum, default_value = "f16")]
    pub dtype: DtypeArg,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(a: GalleryArgs) -> Result<()> {
    let dtype = match a.dtype {
        DtypeArg::F16 => NpyDtype::F16,
        DtypeArg::F32 => NpyDtype::F32,
    };
    let paths = write_random_gallery(&a.out, a.shards, a.rows, a.dim, dtype, a.seed)?;
    println!(
        "wrote {} SYNTHETIC shards of {} x {} {} to {}",
        paths.len(),
        a.rows,
        a.dim,
        dtype.descr(),
        a.out.display()
    );
    Ok(())
}
