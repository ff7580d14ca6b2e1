//! `isoclip spectrum`: Ψ's normalised spectrum σ_j/σ_1 with the kept band marked.

use std::path::{Path, PathBuf};

use clap::Args;

use super::signals::atomic_output;
use super::targets::check_output_file;
use super::values;
use super::weights_args::{BandArgs, WeightsArgs};
use isoclip::align::{BandSpec, Modality, PsiSpectrum};
use isoclip::error::{Error, Result};
use isoclip::formats::projector_file;
use isoclip::report::svg::{Plot, Series, Shade};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  isoclip spectrum                                  # built-in SYNTHETIC model\n  isoclip spectrum --checkpoint model.safetensors --preset openai-vit-b-16 --svg b16.svg\n  isoclip spectrum --projector b16.safetensors --svg b16.svg\n\nExit codes: 0 success; 1 failure; 2 invalid command line."
)]
pub struct SpectrumArgs {
    /// Read the spectrum (and band) from a projector file instead of weights.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["checkpoint", "image_proj"])]
    pub projector: Option<PathBuf>,
    #[command(flatten)]
    pub weights: WeightsArgs,
    #[command(flatten)]
    pub band: BandArgs,
    /// Which modality's band to mark.
    #[arg(long, default_value = "image", value_parser = values::modality())]
    pub modality: Modality,
    /// Where to write the SVG plot.
    #[arg(long, value_name = "FILE", default_value = "spectrum.svg")]
    pub svg: PathBuf,
}

pub fn run(a: SpectrumArgs) -> Result<()> {
    check_output_file(&a.svg)?;
    let modality = a.modality;
    let (sigma, band, label) = if let Some(p) = &a.projector {
        let proj = projector_file::load(p)?;
        let maps = proj
            .maps(modality)
            .ok_or_else(|| Error::invalid(format!("{} holds no {modality} maps", p.display())))?;
        let label = if proj.synthetic {
            "SYNTHETIC model".to_string()
        } else {
            proj.source.clone()
        };
        (proj.sigma.clone(), Some(maps.band), label)
    } else {
        let loaded = a.weights.load()?;
        let spectrum = PsiSpectrum::compute(&loaded.weights)?;
        let band = a.band.band_for(modality, loaded.synthetic).ok();
        let label = if loaded.synthetic {
            "SYNTHETIC model".to_string()
        } else {
            loaded.weights.source.clone()
        };
        (spectrum.sigma, band, label)
    };
    write_spectrum_svg(&a.svg, &sigma, band, modality, &label)?;
    let norm = normalised(&sigma);
    print_terminal_summary(&norm, band, &label)?;
    outln!("wrote {}", a.svg.display())?;
    Ok(())
}

/// σ_j / σ_1.
fn normalised(sigma: &[f64]) -> Vec<f64> {
    let s1 = sigma.first().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    sigma.iter().map(|s| s / s1).collect()
}

/// Writes the SVG of σ_j/σ_1 with `band` shaded (shared with the demo). A signal during the
/// write leaves no temporary file.
pub fn write_spectrum_svg(
    path: &Path,
    sigma: &[f64],
    band: Option<BandSpec>,
    modality: Modality,
    label: &str,
) -> Result<()> {
    let r = sigma.len();
    let norm = normalised(sigma);
    let mut plot = Plot {
        title: format!("Normalised spectrum of Ψ — {label}"),
        x_label: "singular direction j".into(),
        y_label: "σ_j / σ_1".into(),
        y_range: Some((0.0, 1.0)),
        x_range: Some((0.0, r as f64)),
        series: vec![Series {
            label: "σ_j / σ_1".into(),
            color: "#1f77b4".into(),
            points: norm
                .iter()
                .enumerate()
                .map(|(j, v)| (j as f64, *v))
                .collect(),
            bars: false,
        }],
        ..Default::default()
    };
    if let Some(b) = band {
        if let Ok(m) = b.kept(r) {
            plot.shades.push(Shade {
                x0: b.k_top as f64,
                x1: (r - b.k_bottom) as f64,
                label: format!("kept band ({modality}): {m} directions"),
                color: "#2ca02c".into(),
            });
        }
    }
    atomic_output(path, || {
        isoclip::formats::atomic_write(path, plot.render().as_bytes())
    })
}

fn print_terminal_summary(norm: &[f64], band: Option<BandSpec>, label: &str) -> Result<()> {
    let r = norm.len();
    outln!("Ψ spectrum of {label}: r = {r}")?;
    let at = |j: usize| norm.get(j).copied().unwrap_or(0.0);
    let picks = [
        0,
        1,
        2,
        5,
        10,
        r / 4,
        r / 2,
        3 * r / 4,
        r.saturating_sub(30),
        r.saturating_sub(10),
        r.saturating_sub(1),
    ];
    let mut line = String::from("  σ_j/σ_1 at j =");
    let mut last = usize::MAX;
    for j in picks {
        if j < r && j != last {
            line.push_str(&format!(" {j}:{:.3}", at(j)));
            last = j;
        }
    }
    outln!("{line}")?;
    if let Some(b) = band {
        match b.kept(r) {
            Ok(m) => {
                let lo = b.k_top;
                let hi = r - b.k_bottom;
                outln!(
                    "  kept band [{lo}, {hi}): {m} directions, σ/σ_1 from {:.3} down to {:.3} (flatness {:.2}x)",
                    at(lo),
                    at(hi - 1),
                    at(lo) / at(hi - 1).max(f64::MIN_POSITIVE)
                )?;
                if lo > 0 {
                    outln!(
                        "  dropped top {lo}: σ/σ_1 from {:.3} to {:.3}",
                        at(0),
                        at(lo - 1)
                    )?;
                }
                if b.k_bottom > 0 {
                    outln!(
                        "  dropped bottom {}: σ/σ_1 from {:.3} to {:.3e}",
                        b.k_bottom,
                        at(hi),
                        at(r - 1)
                    )?;
                }
            }
            Err(e) => outln!("  band: {e}")?,
        }
    }
    Ok(())
}
