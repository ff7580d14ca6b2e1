//! `isoclip gallery`: write a synthetic gallery of random feature shards (demo, tests, benches).

use std::path::{Path, PathBuf};

use clap::Args;

use super::output::count;
use super::project::interrupted_line;
use super::signals;
use super::targets::check_output_dir;
use super::values;
use isoclip::backend::ElemType;
use isoclip::engine::gallery::{human_bytes, write_random_gallery, GallerySpec};
use isoclip::error::{Error, Result};
use isoclip::formats::npy::NpyDtype;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  isoclip gallery --out gallery/ --shards 4 --rows 100000 --dim 768\n  isoclip gallery --out big/ --shards 1 --rows 2800000 --dim 768 --dtype f16   # ~4 GB shard\n\nThe free space of the file system is checked first: a gallery that will not fit is refused.\n\nExit codes: 0 success; 1 failure; 2 invalid command line; 130/143 interrupted (finished shards kept)."
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
    #[arg(long, default_value = "f16", value_parser = values::elem_type())]
    pub dtype: ElemType,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(a: GalleryArgs) -> Result<()> {
    check_output_dir(&a.out)?;
    let spec = GallerySpec {
        shards: a.shards,
        rows_per_shard: a.rows,
        cols: a.dim,
        dtype: match a.dtype {
            ElemType::F16 => NpyDtype::F16,
            ElemType::F32 => NpyDtype::F32,
        },
        seed: a.seed,
    };
    let paths = write_gallery(&a.out, &spec)?;
    outln!(
        "wrote {} of {} x {} {} ({}) to {}",
        count(paths.len() as u64, "SYNTHETIC shard", "SYNTHETIC shards"),
        a.rows,
        a.dim,
        dtype_name(spec.dtype),
        human_bytes(spec.total_bytes().unwrap_or(u64::MAX)),
        a.out.display()
    )?;
    Ok(())
}

/// Writes a gallery with one progress line per shard on stderr; SIGINT/SIGTERM stop it at the
/// next chunk, keep the finished shards and print the interrupted line (exit 130/143).
pub fn write_gallery(dir: &Path, spec: &GallerySpec) -> Result<Vec<PathBuf>> {
    let mut done = 0;
    let result = {
        let _cooperative = signals::cooperative();
        write_random_gallery(dir, spec, &signals::CANCEL, &mut |p| {
            done += 1;
            eprintln!("wrote {} ({done}/{})", p.display(), spec.shards);
        })
    };
    match result {
        Err(e) if matches!(e.root(), Error::Cancelled) => {
            eprintln!(
                "{}",
                interrupted_line(done, &isoclip::storage::Location::from(dir))
            );
            Err(e)
        }
        other => other,
    }
}

/// The element type as users name it (f16/f32), not numpy's descriptor.
pub fn dtype_name(d: NpyDtype) -> &'static str {
    match d {
        NpyDtype::F16 => "f16",
        NpyDtype::F32 => "f32",
        NpyDtype::F64 => "f64",
        _ => d.descr(),
    }
}
