//! `isoclip demo`: the main job end to end on built-in defaults (a SYNTHETIC model), so a
//! newcomer sees every stage work with one command.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Parser};

use super::fit::print_summary;
use crate::align::synthetic::{SyntheticModel, SYNTHETIC_IMAGE_BAND};
use crate::align::{fit, BandSpec, Modality};
use crate::error::{Error, Result};
use crate::formats::npy::NpyDtype;
use crate::formats::projector_file;
use std::sync::atomic::AtomicBool;

use super::project::{print_summary as print_project_summary, BarProgress};
use crate::backend::{select_backend, DeviceChoice};
use crate::engine::gallery::write_random_gallery;
use crate::engine::{run_job, JobSpec};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  isoclip demo\n  isoclip demo --dir /tmp/isoclip-demo\n\nExit codes: 0 success; 1 failure; 2 invalid command line."
)]
pub struct DemoArgs {
    /// Working directory for the demo's files (projector, spectrum plot, gallery, outputs).
    #[arg(long, value_name = "DIR", default_value = "isoclip-demo")]
    pub dir: PathBuf,
}

pub fn run(a: DemoArgs) -> Result<()> {
    std::fs::create_dir_all(&a.dir).map_err(|e| Error::io(&a.dir, e))?;
    println!("isoclip demo on the built-in SYNTHETIC CLIP-like model (ViT-B/16 shapes)");
    println!("== 1. fit the aligned projector");
    let t0 = Instant::now();
    let model = SyntheticModel::vit_b()?;
    let band = BandSpec::new(SYNTHETIC_IMAGE_BAND.0, SYNTHETIC_IMAGE_BAND.1);
    let mut projector = fit(&model.weights, &[(Modality::Image, band)], None)?;
    projector.synthetic = true;
    let projector_path = a.dir.join("projector.safetensors");
    projector_file::save(&projector, &projector_path)?;
    print_summary(&projector);
    println!(
        "wrote {} ({:.3} s)",
        projector_path.display(),
        t0.elapsed().as_secs_f64()
    );

    println!(
        "\n== 2. a SYNTHETIC gallery: {DEMO_SHARDS} shards x {DEMO_ROWS} rows x 768 fp16 features"
    );
    let gallery = a.dir.join("gallery");
    write_random_gallery(&gallery, DEMO_SHARDS, DEMO_ROWS, 768, NpyDtype::F16, 1)?;
    println!("wrote {}", gallery.display());

    println!("\n== 3. project it into the IsoCLIP space (compact fp16, normalised; resumable)");
    let (backend, notice) = select_backend(DeviceChoice::Auto, None)?;
    if let Some(n) = notice {
        println!("note: {n}");
    }
    let spec = JobSpec::new(&gallery, a.dir.join("projected"));
    let progress = BarProgress::new(true);
    let summary = run_job(
        &spec,
        &projector,
        backend.as_ref(),
        &progress,
        &AtomicBool::new(false),
    )?;
    print_project_summary(&summary);

    println!("\n== 4. what IsoCLIP gains: image-image retrieval on SYNTHETIC labelled data");
    let prefix = a.dir.join("eval");
    let eval_args = EvalOnly::try_parse_from([
        std::ffi::OsStr::new("eval"),
        std::ffi::OsStr::new("--svg"),
        prefix.as_os_str(),
    ])
    .expect("fixed arguments parse");
    super::eval::run(eval_args.args)?;
    println!(
        "\nfiles in {}: projector.safetensors, gallery/, projected/, eval-*.svg",
        a.dir.display()
    );
    Ok(())
}

/// Lets the demo run `isoclip eval` with its defaults.
#[derive(clap::Parser)]
struct EvalOnly {
    #[command(flatten)]
    args: super::eval::EvalArgs,
}

const DEMO_SHARDS: usize = 4;
const DEMO_ROWS: usize = 50_000;
