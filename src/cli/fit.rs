//! `isoclip fit`: weights -> aligned projectors -> projector file.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::signals::atomic_output;
use super::targets::check_output_file;
use super::values;
use super::weights_args::{preset_help, BandArgs, WeightsArgs};
use isoclip::align::{self, AlignedProjector, Modality, ModalityMaps};
use isoclip::error::Result;
use isoclip::formats::projector_file;

#[derive(Args, Debug)]
#[command(after_help = fit_after_help())]
pub struct FitArgs {
    #[command(flatten)]
    pub weights: WeightsArgs,
    #[command(flatten)]
    pub band: BandArgs,
    /// Which modality's maps to compute.
    #[arg(long, default_value = "image", value_parser = values::modalities())]
    pub modality: &'static [Modality],
    /// Output projector file.
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "projector.isoclip.safetensors"
    )]
    pub output: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

fn fit_after_help() -> String {
    format!(
        "Examples:\n  isoclip fit                                   # built-in SYNTHETIC model, for a first look\n  isoclip fit --checkpoint open_clip_model.safetensors --preset openai-vit-b-16 -o b16.safetensors\n  isoclip fit --checkpoint model.safetensors --modality both --preset openai-vit-l-14\n  isoclip fit --image-proj visual_proj.npy --text-proj text_proj.npy --k-top 200 --k-bottom 50\n\n{}\nExit codes: 0 success; 1 failure (message names the file and the problem); 2 invalid command line.",
        preset_help()
    )
}

pub fn run(a: FitArgs) -> Result<()> {
    let t0 = Instant::now();
    check_output_file(&a.output)?;
    let loaded = a.weights.load()?;
    a.band.check_preset_shapes(&loaded.weights)?;
    let mut bands = Vec::new();
    for &m in a.modality {
        bands.push((m, a.band.band_for(m, loaded.synthetic)?));
    }
    let preset = a.band.preset()?.map(|p| p.name);
    let mut projector = align::fit(&loaded.weights, &bands, preset)?;
    projector.synthetic = loaded.synthetic;
    let fit_seconds = t0.elapsed().as_secs_f64();
    atomic_output(&a.output, || projector_file::save(&projector, &a.output))?;
    let total = t0.elapsed().as_secs_f64();
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&summary_json(&projector, fit_seconds, total, &a.output))
                .unwrap()
        )?;
    } else {
        print_summary(&projector)?;
        outln!(
            "wrote {} in {:.3} s (fit {:.3} s)",
            a.output.display(),
            total,
            fit_seconds
        )?;
    }
    Ok(())
}

pub fn maps_json(m: &ModalityMaps, sigma: &[f64]) -> serde_json::Value {
    let s1 = sigma.first().copied().unwrap_or(1.0);
    json!({
        "modality": m.modality.name(),
        "k_top": m.band.k_top,
        "k_bottom": m.band.k_bottom,
        "m": m.m,
        "d_in": m.d_in,
        "d": m.d,
        "compact_dim": m.compact_dim(),
        "bias": m.full.bias.is_some(),
        "gap_top": m.gap_top,
        "gap_bottom": m.gap_bottom,
        "gap_top_relative": m.gap_top.map(|g| g / s1),
        "gap_bottom_relative": m.gap_bottom.map(|g| g / s1),
        "embedding_route": match &m.embedding_compact { Ok(_) => "exact".to_string(), Err(r) => r.clone() },
    })
}

fn summary_json(
    p: &AlignedProjector,
    fit_s: f64,
    total_s: f64,
    out: &std::path::Path,
) -> serde_json::Value {
    json!({
        "output": out.display().to_string(),
        "synthetic": p.synthetic,
        "source": p.source,
        "fingerprint": p.fingerprint,
        "preset": p.preset,
        "r": p.r(),
        "d": p.d,
        "maps": p.modalities().iter().map(|m| maps_json(p.maps(*m).unwrap(), &p.sigma)).collect::<Vec<_>>(),
        "fit_seconds": fit_s,
        "total_seconds": total_s,
    })
}

/// The human summary shared by `fit` and `inspect`.
pub fn print_summary(p: &AlignedProjector) -> Result<()> {
    if p.synthetic {
        outln!("SYNTHETIC model (built-in default, not a real checkpoint)")?;
    }
    outln!("source:      {}", p.source)?;
    outln!("fingerprint: {}", p.fingerprint)?;
    outln!("preset:      {}", p.preset.as_deref().unwrap_or("none"))?;
    let s1 = p.sigma.first().copied().unwrap_or(0.0);
    outln!(
        "Ψ spectrum:  r = {}, σ_1 = {:.4e}, σ_r/σ_1 = {:.3e}, embedding dim d = {}",
        p.r(),
        s1,
        p.sigma.last().copied().unwrap_or(0.0) / s1.max(f64::MIN_POSITIVE),
        p.d
    )?;
    for m in p.modalities() {
        let maps = p.maps(m).unwrap();
        let gap = |g: Option<f64>| {
            g.map(|g| format!("{:.3e} ({:.3}% of σ_1)", g, 100.0 * g / s1))
                .unwrap_or_else(|| "-".into())
        };
        outln!(
            "{:<5} band [{}, {}) of {}: keeps m = {} directions; input {} -> compact {} dims (full {}){}",
            m.name(),
            maps.band.k_top,
            p.r() - maps.band.k_bottom,
            p.r(),
            maps.m,
            maps.d_in,
            maps.compact_dim(),
            maps.d,
            if maps.full.bias.is_some() { ", bias-augmented" } else { "" }
        )?;
        outln!(
            "      σ gap at top edge {}, at bottom edge {}",
            gap(maps.gap_top),
            gap(maps.gap_bottom)
        )?;
        outln!(
            "      embedding route: {}",
            match &maps.embedding_compact {
                Ok(_) => "exact".to_string(),
                Err(r) => format!("unavailable: {r}"),
            }
        )?;
    }
    Ok(())
}
