//! `isoclip inspect`: what is in a projector file.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::fit::{maps_json, print_summary};
use isoclip::error::Result;
use isoclip::formats::projector_file;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  isoclip inspect b16.safetensors\n  isoclip inspect b16.safetensors --json | jq .maps\n\nExit codes: 0 success; 1 the file is unreadable or cannot be trusted; 2 invalid command line."
)]
pub struct InspectArgs {
    /// A projector file written by `isoclip fit`.
    pub file: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InspectArgs) -> Result<()> {
    let p = projector_file::load(&a.file)?;
    if a.json {
        let v = json!({
            "file": a.file.display().to_string(),
            "format_version": projector_file::FORMAT_VERSION,
            "synthetic": p.synthetic,
            "source": p.source,
            "fingerprint": p.fingerprint,
            "content_sha256": projector_file::content_digest(&p),
            "preset": p.preset,
            "r": p.r(),
            "d": p.d,
            "spectrum": p.sigma,
            "maps": p.modalities().iter().map(|m| maps_json(p.maps(*m).unwrap(), &p.sigma)).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap())?;
    } else {
        outln!("{}", a.file.display())?;
        print_summary(&p)?;
    }
    Ok(())
}
