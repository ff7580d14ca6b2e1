//! `isoclip demo`: the main job end to end on built-in defaults (a SYNTHETIC model), so a
//! newcomer sees every stage work with one command.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::fit::print_summary;
use crate::align::synthetic::{SyntheticModel, SYNTHETIC_IMAGE_BAND};
use crate::align::{fit, BandSpec, Modality};
use crate::error::{Error, Result};
use crate::formats::projector_file;

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
    Ok(())
}
