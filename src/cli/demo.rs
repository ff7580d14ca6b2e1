//! `isoclip demo`: the main job end to end on built-in defaults (a SYNTHETIC model), so a
//! newcomer sees every stage work with one command.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Parser};

use super::fit::print_summary;
use super::gallery::write_gallery;
use super::project::{print_summary as print_project_summary, run_interruptible, BarProgress};
use super::signals::atomic_output;
use super::spectrum::write_spectrum_svg;
use super::targets::check_output_dir;
use isoclip::align::synthetic::{SyntheticModel, SYNTHETIC_IMAGE_BAND};
use isoclip::align::{fit, AlignedProjector, BandSpec, Modality};
use isoclip::backend::{select_backend, DeviceChoice};
use isoclip::engine::gallery::GallerySpec;
use isoclip::engine::JobSpec;
use isoclip::error::{Error, Result};
use isoclip::formats::npy::NpyDtype;
use isoclip::formats::projector_file;

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
    check_output_dir(&a.dir)?;
    std::fs::create_dir_all(&a.dir).map_err(|e| Error::io(&a.dir, e))?;
    outln!("isoclip demo on the built-in SYNTHETIC CLIP-like model (ViT-B/16 shapes)")?;
    let projector = fit_step(&a.dir)?;
    gallery_step(&a.dir)?;
    project_step(&a.dir, &projector)?;

    outln!("\n== 4. what IsoCLIP gains: image-image retrieval on SYNTHETIC labelled data")?;
    let prefix = a.dir.join("eval");
    let eval_args = EvalOnly::try_parse_from([
        std::ffi::OsStr::new("eval"),
        std::ffi::OsStr::new("--svg"),
        prefix.as_os_str(),
    ])
    .expect("fixed arguments parse");
    super::eval::run(eval_args.args)?;
    outln!(
        "\nfiles in {}: projector.safetensors, spectrum.svg, gallery/, projected/, eval-*.svg",
        a.dir.display()
    )?;
    Ok(())
}

/// Step 1: fit the synthetic model, write the projector file and the spectrum plot.
fn fit_step(dir: &Path) -> Result<AlignedProjector> {
    outln!("== 1. fit the aligned projector")?;
    let t0 = Instant::now();
    let model = SyntheticModel::vit_b()?;
    let band = BandSpec::new(SYNTHETIC_IMAGE_BAND.0, SYNTHETIC_IMAGE_BAND.1);
    let mut projector = fit(&model.weights, &[(Modality::Image, band)], None)?;
    projector.synthetic = true;
    let projector_path = dir.join("projector.safetensors");
    atomic_output(&projector_path, || {
        projector_file::save(&projector, &projector_path)
    })?;
    print_summary(&projector)?;
    outln!(
        "wrote {} ({:.3} s)",
        projector_path.display(),
        t0.elapsed().as_secs_f64()
    )?;
    let spectrum_path = dir.join("spectrum.svg");
    write_spectrum_svg(
        &spectrum_path,
        &projector.sigma,
        Some(band),
        Modality::Image,
        "SYNTHETIC model",
    )?;
    outln!(
        "wrote {} (Ψ spectrum, kept band shaded)",
        spectrum_path.display()
    )?;
    Ok(projector)
}

/// Step 2: the synthetic gallery (one progress line per shard on stderr).
fn gallery_step(dir: &Path) -> Result<()> {
    outln!(
        "\n== 2. a SYNTHETIC gallery: {DEMO_SHARDS} shards x {DEMO_ROWS} rows x 768 f16 features"
    )?;
    let gallery = dir.join("gallery");
    let spec = GallerySpec {
        shards: DEMO_SHARDS,
        rows_per_shard: DEMO_ROWS,
        cols: 768,
        dtype: NpyDtype::F16,
        seed: 1,
    };
    write_gallery(&gallery, &spec)?;
    outln!("wrote {}", gallery.display())?;
    Ok(())
}

/// Step 3: project the gallery (resumable; SIGINT/SIGTERM stop it cleanly).
fn project_step(dir: &Path, projector: &AlignedProjector) -> Result<()> {
    outln!("\n== 3. project it into the IsoCLIP space (compact f16, normalised; resumable)")?;
    let (backend, notice) = select_backend(DeviceChoice::default(), None)?;
    let spec = JobSpec::new(dir.join("gallery"), dir.join("projected"));
    let progress = BarProgress::new(true).with_notice(notice);
    let summary = run_interruptible(&spec, projector, backend.as_ref(), &progress)?;
    print_project_summary(&summary, projector.synthetic)
}

/// Lets the demo run `isoclip eval` with its defaults.
#[derive(clap::Parser)]
struct EvalOnly {
    #[command(flatten)]
    args: super::eval::EvalArgs,
}

const DEMO_SHARDS: usize = 4;
const DEMO_ROWS: usize = 50_000;
