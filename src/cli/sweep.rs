//! `isoclip sweep`: which band (k_top, k_bottom) works best on a labelled validation set?
//! One SVD of Ψ serves the whole grid; each band is one `fit_modality` plus one evaluation.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::eval::{describe_sets, SetArgs, SyntheticSet, SYNTHETIC_ROWS};
use super::output::count;
use super::signals::atomic_output;
use super::targets::check_output_file;
use super::weights_args::WeightsArgs;
use crate::align::synthetic::SyntheticModel;
use crate::align::{fit_modality, AlignedProjector, BandSpec, Modality, ModalityMaps, PsiSpectrum};
use crate::error::{Error, Result};
use crate::eval::{self, InputKind, Projection, RetrievalOptions, RetrievalSummary, Sets};
use crate::formats::projector_file;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  isoclip sweep                                          # built-in SYNTHETIC model and data\n  isoclip sweep --checkpoint model.safetensors --features val.npy --labels val_y.npy \\\n                -o b16.safetensors\n  isoclip sweep --checkpoint model.safetensors --modality text \\\n                --features caps.npy --labels caps_y.npy \\\n                --k-top-grid 0,10,20,50 --k-bottom-grid 50,100,150\n\nThe best band is the one with the highest mAP (ties: the first in grid order). Bands that keep no\ndirection (k_top + k_bottom >= r) are skipped, and so is k_top 0 / k_bottom 0 of the default grids\n(it is plain CLIP, the baseline row). When no band beats plain CLIP, -o writes nothing unless\n--force is given. Progress goes to stderr: one line per band when stderr is not a terminal.\n\nExit codes: 0 success; 1 failure (the message names the file and the problem); 2 invalid command line."
)]
pub struct SweepArgs {
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Which modality's band to sweep.
    #[arg(long, default_value = "image", value_parser = ["image", "text"])]
    pub modality: String,
    #[command(flatten)]
    pub sets: SetArgs,
    /// k_top values to try (default: 0, 50, 100, ... up to 0.6 r).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub k_top_grid: Option<Vec<usize>>,
    /// k_bottom values to try (default: 0, 25, 50, then every 50 up to 0.4 r).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub k_bottom_grid: Option<Vec<usize>>,
    /// Write the projector file of the best band here (only when it beats plain CLIP, unless
    /// --force).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write -o even when no band beats plain CLIP.
    #[arg(long, requires = "output")]
    pub force: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn default_k_top_grid(r: usize) -> Vec<usize> {
    (0..=r * 6 / 10).step_by(50).collect()
}

pub fn default_k_bottom_grid(r: usize) -> Vec<usize> {
    let mut g = vec![0, 25];
    g.extend((50..=r * 4 / 10).step_by(50));
    g.retain(|&k| k < r);
    g
}

struct BandResult {
    band: BandSpec,
    m: usize,
    summary: RetrievalSummary,
}

/// mAP differences below this (x100 points) are rounding, not a gain: band 0/0 is plain CLIP.
const MAP_TOLERANCE: f64 = 1e-6;

pub fn run(a: SweepArgs) -> Result<()> {
    let t0 = Instant::now();
    if let Some(out) = &a.output {
        check_output_file(out)?;
    }
    let modality = Modality::parse(&a.modality).expect("clap checked the value");
    let loaded = a.weights.load()?;
    let weights = &loaded.weights;
    let kind = a.sets.input_kind;
    let synthetic_data;
    let files;
    let sets = if a.sets.given() {
        files = a.sets.load()?;
        files.sets()
    } else if loaded.synthetic {
        if modality != Modality::Image || kind != InputKind::Features {
            return Err(Error::invalid(
                "the built-in synthetic data are image features; pass your own --features/--labels for text or embeddings",
            ));
        }
        let model = SyntheticModel::vit_b()?;
        synthetic_data = SyntheticSet::generate(&model, SYNTHETIC_ROWS);
        Sets::One {
            rows: synthetic_data.rows(0, synthetic_data.rows),
            labels: &synthetic_data.labels,
        }
    } else {
        return Err(Error::invalid(
            "give a labelled validation set: --features F --labels L, or --query-features/--query-labels/--gallery-features/--gallery-labels",
        ));
    };
    let spectrum = PsiSpectrum::compute(weights)?;
    let r = spectrum.r();
    let k_tops = a
        .k_top_grid
        .clone()
        .unwrap_or_else(|| default_k_top_grid(r));
    let k_bottoms = a
        .k_bottom_grid
        .clone()
        .unwrap_or_else(|| default_k_bottom_grid(r));
    let default_grid = a.k_top_grid.is_none() && a.k_bottom_grid.is_none();
    let mut bands = Vec::new();
    let mut skipped = Vec::new();
    for &kt in &k_tops {
        for &kb in &k_bottoms {
            if default_grid && kt == 0 && kb == 0 {
                continue;
            }
            let band = BandSpec::new(kt, kb);
            if spectrum.check_band(band).is_ok() {
                bands.push(band);
            } else {
                skipped.push(band);
            }
        }
    }
    if bands.is_empty() {
        return Err(Error::Band(format!(
            "no band of the grid keeps a direction of the {r} singular directions of Ψ (every k_top + k_bottom >= {r})"
        )));
    }
    let opts = RetrievalOptions {
        curve_max_k: 10,
        histogram_bins: 0,
    };
    // Baseline: the plain projector (or the stored embeddings themselves).
    let plain_map = weights.plain_map(modality);
    let plain = match kind {
        InputKind::Features => Projection {
            weight: Some(&plain_map.weight),
            bias: plain_map.bias.as_deref(),
        },
        InputKind::Embeddings => Projection::IDENTITY,
    };
    let baseline = eval::evaluate_sets(sets, plain, kind, opts)?.summary;
    let terminal = std::io::stderr().is_terminal();
    let mut results: Vec<BandResult> = Vec::new();
    let mut best: Option<(usize, ModalityMaps)> = None;
    for &band in &bands {
        let maps = fit_modality(weights, &spectrum, modality, band)?;
        let (_, iso) = Projection::pair(&maps, kind)?;
        let summary = eval::evaluate_sets(sets, iso, kind, opts)?.summary;
        let better = match &best {
            None => true,
            Some((i, _)) => summary.map > results[*i].summary.map,
        };
        results.push(BandResult {
            band,
            m: maps.m,
            summary,
        });
        if better {
            best = Some((results.len() - 1, maps));
        }
        report_band(
            results.last().expect("just pushed"),
            results.len(),
            bands.len(),
            terminal,
        );
    }
    if terminal {
        eprintln!();
    }
    let (best_i, best_maps) = best.expect("at least one band was evaluated");
    let beats_clip = results[best_i].summary.map > baseline.map + MAP_TOLERANCE;
    let write_output = a.output.as_ref().filter(|_| beats_clip || a.force);
    if let (Some(out), false) = (&a.output, beats_clip) {
        eprintln!(
            "warning: no band beats plain CLIP (best mAP {:.2}, CLIP {:.2}){}",
            results[best_i].summary.map,
            baseline.map,
            if a.force {
                format!("; writing {} anyway (--force)", out.display())
            } else {
                format!(
                    "; not writing {} (pass --force to write it anyway)",
                    out.display()
                )
            }
        );
    }
    if let Some(out) = write_output {
        let mut p = AlignedProjector {
            fingerprint: weights.fingerprint.clone(),
            source: weights.source.clone(),
            preset: None,
            sigma: spectrum.sigma.clone(),
            d: weights.d(),
            image: None,
            text: None,
            synthetic: loaded.synthetic,
        };
        match modality {
            Modality::Image => p.image = Some(best_maps),
            Modality::Text => p.text = Some(best_maps),
        }
        atomic_output(out, || projector_file::save(&p, out))?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let best_band = results[best_i].band;
    if a.json {
        let row = |b: &BandResult| {
            json!({
                "k_top": b.band.k_top, "k_bottom": b.band.k_bottom, "m": b.m,
                "map": b.summary.map, "map_at_r": b.summary.map_at_r, "p_at_r": b.summary.p_at_r,
                "r_at_1": b.summary.r_at_1, "map_at_r_exact": b.summary.map_at_r_exact,
            })
        };
        let v = json!({
            "synthetic": loaded.synthetic,
            "source": weights.source,
            "modality": modality.name(),
            "input_kind": kind.name(),
            "data": describe_sets(&sets),
            "r": r,
            "clip": { "map": baseline.map, "map_at_r": baseline.map_at_r, "p_at_r": baseline.p_at_r, "r_at_1": baseline.r_at_1, "map_at_r_exact": baseline.map_at_r_exact },
            "bands": results.iter().map(row).collect::<Vec<_>>(),
            "best": row(&results[best_i]),
            "beats_clip": beats_clip,
            "skipped": skipped.iter().map(|b| json!({"k_top": b.k_top, "k_bottom": b.k_bottom})).collect::<Vec<_>>(),
            "output": write_output.map(|p| p.display().to_string()),
            "seconds": seconds,
        });
        outln!("{}", serde_json::to_string_pretty(&v).expect("json"))?;
        return Ok(());
    }
    if loaded.synthetic {
        outln!(
            "SYNTHETIC: built-in CLIP-like model{}, for demonstration only",
            if a.sets.given() {
                ""
            } else {
                " and labelled data"
            }
        )?;
    }
    outln!("weights:   {}", weights.source)?;
    outln!("data:      {}", describe_sets(&sets))?;
    outln!(
        "{modality} band sweep: {} from one SVD of Ψ (r = {r}), best by mAP marked *",
        count(results.len() as u64, "band", "bands")
    )?;
    outln!()?;
    outln!(
        "  {:>6} {:>8} {:>5} {:>8} {:>8} {:>8} {:>8}",
        "k_top",
        "k_bottom",
        "m",
        "mAP",
        "mAP@R",
        "P@R",
        "R@1"
    )?;
    let line = |mark: &str, kt: String, kb: String, m: String, s: &RetrievalSummary| {
        outln!(
            "{mark} {kt:>6} {kb:>8} {m:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            s.map,
            s.map_at_r,
            s.p_at_r,
            s.r_at_1
        )
    };
    line(" ", "CLIP".into(), "-".into(), "-".into(), &baseline)?;
    for (i, b) in results.iter().enumerate() {
        line(
            if i == best_i { "*" } else { " " },
            b.band.k_top.to_string(),
            b.band.k_bottom.to_string(),
            b.m.to_string(),
            &b.summary,
        )?;
    }
    if !skipped.is_empty() {
        outln!(
            "skipped {} that keep no direction (k_top + k_bottom >= {r})",
            count(skipped.len() as u64, "band", "bands")
        )?;
    }
    let bs = &results[best_i].summary;
    outln!(
        "best: k_top {} / k_bottom {} (m = {}): mAP {:.2} vs CLIP {:.2} ({:+.2})",
        best_band.k_top,
        best_band.k_bottom,
        results[best_i].m,
        bs.map,
        baseline.map,
        bs.map - baseline.map
    )?;
    if !beats_clip {
        outln!("no band beats plain CLIP on these data: keep the plain projector")?;
    }
    if let Some(out) = write_output {
        outln!("wrote {} (best band)", out.display())?;
    }
    outln!("({seconds:.2} s)")?;
    Ok(())
}

/// Progress of the sweep on stderr: an updating count on a terminal, one line per band (with
/// its mAP) otherwise, so a piped or logged sweep shows it is alive and how far it is.
fn report_band(b: &BandResult, done: usize, total: usize, terminal: bool) {
    if terminal {
        eprint!("\r  evaluated {done}/{total} bands");
    } else {
        eprintln!(
            "band {done}/{total}: k_top {} k_bottom {} (m = {}): mAP {:.2}",
            b.band.k_top, b.band.k_bottom, b.m, b.summary.map
        );
    }
}
