//! Where projector weights come from, shared by `fit`, `spectrum` and (later) `sweep`.

use std::path::PathBuf;

use clap::Args;

use isoclip::align::presets::{self, Preset};
use isoclip::align::synthetic::{SyntheticModel, SYNTHETIC_IMAGE_BAND, SYNTHETIC_TEXT_BAND};
use isoclip::align::{BandSpec, Modality, ProjectorWeights};
use isoclip::error::{Error, Result};
use isoclip::formats::checkpoint;

#[derive(Args, Debug, Clone, Default)]
pub struct WeightsArgs {
    /// A safetensors checkpoint (OpenAI/OpenCLIP or Hugging Face tensor names; tensors in F32, F16,
    /// BF16 or F64).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["image_proj", "text_proj"])]
    pub checkpoint: Option<PathBuf>,
    /// Image projector as .npy, "input x output" (d_i x d).
    #[arg(long, value_name = "A.npy", requires = "text_proj")]
    pub image_proj: Option<PathBuf>,
    /// Text projector as .npy, "input x output" (d_t x d).
    #[arg(long, value_name = "B.npy", requires = "image_proj")]
    pub text_proj: Option<PathBuf>,
    /// Optional image projector bias (1-D .npy of length d): bias-augmented form.
    #[arg(long, value_name = "FILE", requires = "image_proj")]
    pub image_bias: Option<PathBuf>,
    /// Optional text projector bias (1-D .npy of length d).
    #[arg(long, value_name = "FILE", requires = "text_proj")]
    pub text_bias: Option<PathBuf>,
}

/// Loaded weights, and whether they are the built-in synthetic default.
pub struct LoadedWeights {
    pub weights: ProjectorWeights,
    pub synthetic: bool,
}

impl WeightsArgs {
    pub fn load(&self) -> Result<LoadedWeights> {
        if let Some(ck) = &self.checkpoint {
            return Ok(LoadedWeights {
                weights: checkpoint::load_safetensors(ck)?,
                synthetic: false,
            });
        }
        if let (Some(a), Some(b)) = (&self.image_proj, &self.text_proj) {
            return Ok(LoadedWeights {
                weights: checkpoint::load_npy_pair(
                    a,
                    b,
                    self.image_bias.as_deref(),
                    self.text_bias.as_deref(),
                )?,
                synthetic: false,
            });
        }
        eprintln!(
            "note: no --checkpoint given: using the built-in SYNTHETIC CLIP-like model \
             (ViT-B/16 shapes); results are for demonstration only"
        );
        Ok(LoadedWeights {
            weights: SyntheticModel::vit_b()?.weights,
            synthetic: true,
        })
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct BandArgs {
    /// The authors' band for a model, by name (see `isoclip fit --help`).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Top singular directions of Ψ to drop (overrides the preset).
    #[arg(long, value_name = "N")]
    pub k_top: Option<usize>,
    /// Bottom singular directions of Ψ to drop (overrides the preset).
    #[arg(long, value_name = "N")]
    pub k_bottom: Option<usize>,
}

impl BandArgs {
    pub fn preset(&self) -> Result<Option<&'static Preset>> {
        match &self.preset {
            None => Ok(None),
            Some(name) => presets::find(name).map(Some).ok_or_else(|| {
                Error::invalid(format!(
                    "unknown preset '{name}'; known presets: {}",
                    presets::names().join(", ")
                ))
            }),
        }
    }

    /// The band for `modality`: explicit k's override the preset; the synthetic default has its
    /// own band.
    pub fn band_for(&self, modality: Modality, synthetic: bool) -> Result<BandSpec> {
        let preset = self.preset()?;
        let from_preset = preset.and_then(|p| match modality {
            Modality::Image => p.image,
            Modality::Text => p.text,
        });
        let synthetic_band = synthetic.then(|| {
            let (t, b) = match modality {
                Modality::Image => SYNTHETIC_IMAGE_BAND,
                Modality::Text => SYNTHETIC_TEXT_BAND,
            };
            BandSpec::new(t, b)
        });
        let default = from_preset.or(synthetic_band);
        match (self.k_top, self.k_bottom, default) {
            (Some(t), Some(b), _) => Ok(BandSpec::new(t, b)),
            (t, b, Some(d)) => Ok(BandSpec::new(t.unwrap_or(d.k_top), b.unwrap_or(d.k_bottom))),
            (_, _, None) => Err(Error::invalid(match preset {
                Some(p) => format!(
                    "preset '{}' has no {modality} band (the authors published none); give --k-top and --k-bottom",
                    p.name
                ),
                None => format!(
                    "no band for {modality}: give --preset NAME or both --k-top N and --k-bottom N (known presets: {})",
                    presets::names().join(", ")
                ),
            })),
        }
    }

    /// Checks that the weights have the shapes the preset was made for.
    pub fn check_preset_shapes(&self, w: &ProjectorWeights) -> Result<()> {
        if let Some(p) = self.preset()? {
            let got = (w.d_in(Modality::Image), w.d_in(Modality::Text), w.d());
            let want = (p.d_image, p.d_text, p.d);
            if got != want {
                return Err(Error::Shape(format!(
                    "preset '{}' is for projectors {}x{} (image) and {}x{} (text), but the weights are {}x{} and {}x{}; choose the matching preset or give --k-top/--k-bottom",
                    p.name, want.0, want.2, want.1, want.2, got.0, got.2, got.1, got.2
                )));
            }
        }
        Ok(())
    }
}

pub fn preset_help() -> String {
    let mut s = String::from("Presets (the authors' bands, k_top/k_bottom):\n");
    for p in presets::PRESETS {
        let fmt = |b: Option<BandSpec>| {
            b.map(|b| format!("{}/{}", b.k_top, b.k_bottom))
                .unwrap_or_else(|| "-".into())
        };
        s.push_str(&format!(
            "  {:<28} image {:<8} text {:<8} {}\n",
            p.name,
            fmt(p.image),
            fmt(p.text),
            p.description
        ));
    }
    s
}
