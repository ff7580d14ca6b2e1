//! `isoclip sweep`: which band (k_top, k_bottom) works best on a labelled validation set?
//! The search itself is `eval::search_bands` (one SVD of Ψ for the whole grid); this file parses
//! the arguments, prints progress and the table, and writes the best band's projector.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::eval::{describe_sets, eval_backend, SetArgs, SyntheticSet, SYNTHETIC_ROWS};
use super::output::count;
use super::signals::atomic_output;
use super::targets::check_output_file;
use super::values;
use super::weights_args::WeightsArgs;
use isoclip::align::synthetic::SyntheticModel;
use isoclip::align::{AlignedProjector, Modality, PsiSpectrum};
use isoclip::backend::InputKind;
use isoclip::error::{Error, Result};
use isoclip::eval::{search_bands, BandGrid, BandMetrics, BandRow, BandSearchSpec, Sets};
use isoclip::formats::projector_file;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  isoclip sweep                                          # built-in SYNTHETIC model and data\n  isoclip sweep --checkpoint model.safetensors --features val.npy --labels val_y.npy \\\n                -o b16.safetensors\n  isoclip sweep --checkpoint model.safetensors --modality text \\\n                --features caps.npy --labels caps_y.npy \\\n                --k-top-grid 0,10,20,50 --k-bottom-grid 50,100,150\n\nThe best band is the one with the highest mAP (ties: the first in grid order). Bands that keep no\ndirection (k_top + k_bottom >= r) are skipped, and so is k_top 0 / k_bottom 0 of the default grids\n(it is plain CLIP, the baseline row). When no band beats plain CLIP, -o writes nothing unless\n--force is given. Progress goes to stderr: one line per band when stderr is not a terminal.\n\nExit codes: 0 success; 1 failure (the message names the file and the problem); 2 invalid command line."
)]
pub struct SweepArgs {
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Which modality's band to sweep.
    #[arg(long, default_value = "image", value_parser = values::modality())]
    pub modality: Modality,
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

pub fn run(a: SweepArgs) -> Result<()> {
    let t0 = Instant::now();
    if let Some(out) = &a.output {
        check_output_file(out)?;
    }
    let modality = a.modality;
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
    let grid = BandGrid::new(a.k_top_grid.clone(), a.k_bottom_grid.clone(), r);
    let spec = BandSearchSpec {
        weights,
        spectrum: &spectrum,
        modality,
        input_kind: kind,
        grid: &grid,
    };
    let terminal = std::io::stderr().is_terminal();
    let backend = eval_backend()?;
    let found = search_bands(backend.as_ref(), &spec, sets, &mut |row, done, total| {
        report_band(row, done, total, terminal)
    })?;
    if terminal {
        eprintln!();
    }
    let report = &found.report;
    let beats_clip = report.beats_clip;
    let (best, baseline) = (&report.best.metrics, &report.clip);
    let write_output = a.output.as_ref().filter(|_| beats_clip || a.force);
    if let (Some(out), false) = (&a.output, beats_clip) {
        eprintln!(
            "warning: no band beats plain CLIP (best mAP {:.2}, CLIP {:.2}){}",
            best.map,
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
            Modality::Image => p.image = Some(found.best_maps),
            Modality::Text => p.text = Some(found.best_maps),
        }
        atomic_output(out, || projector_file::save(&p, out))?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(report).expect("json");
        v["synthetic"] = json!(loaded.synthetic);
        v["source"] = json!(weights.source);
        v["modality"] = json!(modality.name());
        v["input_kind"] = json!(kind.name());
        v["data"] = json!(describe_sets(&sets));
        v["output"] = json!(write_output.map(|p| p.display().to_string()));
        v["seconds"] = json!(seconds);
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
        count(report.bands.len() as u64, "band", "bands")
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
    let line = |mark: &str, kt: String, kb: String, m: String, s: &BandMetrics| {
        outln!(
            "{mark} {kt:>6} {kb:>8} {m:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            s.map,
            s.map_at_r,
            s.p_at_r,
            s.r_at_1
        )
    };
    line(" ", "CLIP".into(), "-".into(), "-".into(), baseline)?;
    for (i, b) in report.bands.iter().enumerate() {
        line(
            if i == report.best_index { "*" } else { " " },
            b.k_top.to_string(),
            b.k_bottom.to_string(),
            b.m.to_string(),
            &b.metrics,
        )?;
    }
    if !report.skipped.is_empty() {
        outln!(
            "skipped {} that keep no direction (k_top + k_bottom >= {r})",
            count(report.skipped.len() as u64, "band", "bands")
        )?;
    }
    outln!(
        "best: k_top {} / k_bottom {} (m = {}): mAP {:.2} vs CLIP {:.2} ({:+.2})",
        report.best.k_top,
        report.best.k_bottom,
        report.best.m,
        best.map,
        baseline.map,
        best.map - baseline.map
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
fn report_band(b: &BandRow, done: usize, total: usize, terminal: bool) {
    if terminal {
        eprint!("\r  evaluated {done}/{total} bands");
    } else {
        eprintln!(
            "band {done}/{total}: k_top {} k_bottom {} (m = {}): mAP {:.2}",
            b.k_top, b.k_bottom, b.m, b.metrics.map
        );
    }
}
