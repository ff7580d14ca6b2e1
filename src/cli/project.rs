//! `isoclip project`: move a gallery of embedding shards into the IsoCLIP space.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::align::Modality;
use crate::backend::{select_backend, DeviceChoice};
use crate::backend::{ElemType, InputKind, NonFinitePolicy, OutputForm, ProjectionOptions};
use crate::engine::{run_job, JobSpec, JobSummary, ProgressSink};
use crate::error::Result;
use crate::formats::projector_file;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum InputKindArg {
    /// Pre-projection features (the paper's route).
    Features,
    /// Already-projected CLIP embeddings, possibly L2-normalised (exact embedding route).
    Embeddings,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormArg {
    /// m = r − k_top − k_bottom dims, identical cosines (e.g. 262 for ViT-B/16 images).
    Compact,
    /// d dims, the paper's map.
    Full,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DtypeArg {
    F16,
    F32,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NonFiniteArg {
    /// Stop with an error naming the shard and row.
    Error,
    /// Write a zero row and count it in the summary.
    Zero,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModalityArg {
    Image,
    Text,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  isoclip project --projector b16.safetensors --input img_emb/ --output iso_emb/\n  isoclip project --projector b16.safetensors --input img_emb/ --output iso_emb/ --input-kind embeddings\n  isoclip project --projector b16.safetensors --input shards.txt --output out/ --form full --dtype f32 --json\n\nA rerun skips shards whose output is complete and matches (input identity: device, inode, size,\nmtime, ctime; projector; options) and whose output's checksum verifies (--trust-outputs: its identity);\n--overwrite redoes everything. Outputs are written to a temporary name, synced, then renamed.\n\nExit codes: 0 success; 1 failure (bad input, I/O error, disk full: finished shards are kept); 2 invalid command line."
)]
pub struct ProjectArgs {
    /// Projector file from `isoclip fit`.
    #[arg(long, value_name = "FILE")]
    pub projector: PathBuf,
    /// A .npy shard (fp16/fp32, 2-D, C order), a directory of shards, or a text file listing shards.
    #[arg(long, value_name = "PATH")]
    pub input: PathBuf,
    /// Output directory: one .npy per input shard, same file name, plus isoclip-manifest.json.
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    /// Which modality's maps to use (needed when the projector holds both).
    #[arg(long, value_enum)]
    pub modality: Option<ModalityArg>,
    #[arg(long, value_enum, default_value = "features")]
    pub input_kind: InputKindArg,
    #[arg(long, value_enum, default_value = "compact")]
    pub form: FormArg,
    /// Output element type.
    #[arg(long, value_enum, default_value = "f16")]
    pub dtype: DtypeArg,
    /// Do not L2-normalise output rows.
    #[arg(long)]
    pub no_normalize: bool,
    /// Rows with NaN or Inf: fail (default) or write zeros.
    #[arg(long, value_enum, default_value = "error")]
    pub nonfinite: NonFiniteArg,
    /// Where to compute: the GPU when usable (auto), the CPU, or the GPU or an error (cuda).
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    pub device: String,
    /// CPU worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Redo every shard even if the manifest says it is finished.
    #[arg(long)]
    pub overwrite: bool,
    /// On a rerun, keep a recorded output whose file identity (device, inode, size, mtime,
    /// ctime) is unchanged without reading it back (default: verify its xxh3 checksum).
    #[arg(long)]
    pub trust_outputs: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Output bytes per chunk (tests use small chunks to exercise resume at many points).
    #[arg(long, hide = true, default_value_t = 0)]
    pub chunk_bytes: usize,
}

/// A terminal progress bar (rows/s, ETA); absent when stderr is not a terminal or with --quiet.
pub struct BarProgress {
    bar: Option<ProgressBar>,
}

impl BarProgress {
    pub fn new(enabled: bool) -> Self {
        BarProgress {
            bar: (enabled && std::io::stderr().is_terminal()).then(ProgressBar::hidden),
        }
    }
}

impl ProgressSink for BarProgress {
    fn start(&self, rows: u64, shards: usize) {
        if let Some(b) = &self.bar {
            b.set_length(rows);
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:40.cyan/blue} {human_pos}/{human_len} rows  {per_sec}  ETA {eta}  {msg}",
                )
                .expect("valid template"),
            );
            b.set_message(format!("{shards} shards"));
        }
    }
    fn advance(&self, rows: u64) {
        if let Some(b) = &self.bar {
            b.inc(rows);
        }
    }
    fn shard_done(&self, name: &str, skipped: bool) {
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "{} {name}",
                if skipped { "skipped" } else { "done" }
            ));
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl ProjectArgs {
    pub fn options(&self) -> ProjectionOptions {
        ProjectionOptions {
            input_kind: match self.input_kind {
                InputKindArg::Features => InputKind::Features,
                InputKindArg::Embeddings => InputKind::Embeddings,
            },
            form: match self.form {
                FormArg::Compact => OutputForm::Compact,
                FormArg::Full => OutputForm::Full,
            },
            output: match self.dtype {
                DtypeArg::F16 => ElemType::F16,
                DtypeArg::F32 => ElemType::F32,
            },
            normalize: !self.no_normalize,
            nonfinite: match self.nonfinite {
                NonFiniteArg::Error => NonFinitePolicy::Error,
                NonFiniteArg::Zero => NonFinitePolicy::Zero,
            },
        }
    }
}

pub fn run(a: ProjectArgs) -> Result<()> {
    let projector = projector_file::load(&a.projector)?;
    let device = DeviceChoice::parse(&a.device).expect("clap checked the value");
    let (backend, notice) = select_backend(device, a.threads)?;
    if let Some(n) = notice {
        eprintln!("note: {n}");
    }
    let mut spec = JobSpec::new(&a.input, &a.output);
    spec.modality = a.modality.map(|m| match m {
        ModalityArg::Image => Modality::Image,
        ModalityArg::Text => Modality::Text,
    });
    spec.options = a.options();
    spec.overwrite = a.overwrite;
    spec.trust_outputs = a.trust_outputs;
    spec.chunk_bytes = a.chunk_bytes;
    let progress = BarProgress::new(!a.quiet && !a.json);
    let summary = run_job(
        &spec,
        &projector,
        backend.as_ref(),
        &progress,
        &AtomicBool::new(false),
    )?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("serialises")
        );
    } else {
        print_summary(&summary);
    }
    Ok(())
}

pub fn print_summary(s: &JobSummary) {
    println!(
        "projected {} rows in {} shards ({} skipped as already done, {} rows) on {}",
        s.rows_processed, s.shards_processed, s.shards_skipped, s.rows_skipped, s.backend
    );
    println!(
        "  {} {} -> {} {} dims ({}{}), into {}",
        s.modality,
        s.input_kind,
        s.form,
        s.d_out,
        s.dtype,
        if s.normalized { ", L2-normalised" } else { "" },
        s.output_dir
    );
    println!(
        "  {:.2} s, {:.0} rows/s, {:.3} GB/s read, {:.1} MB written",
        s.seconds,
        s.rows_per_second,
        s.gb_per_second_read,
        s.bytes_written as f64 / 1e6
    );
    println!(
        "  rows with zero norm: {}; rows with NaN/Inf written as zeros: {}",
        s.zero_norm_rows, s.nonfinite_rows
    );
}
