//! `isoclip project`: move a gallery of embedding shards into the IsoCLIP space.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::output::{count, human_rate};
use super::signals;
use super::targets::check_output_dir;
use super::values;
use isoclip::align::{AlignedProjector, Modality};
use isoclip::backend::{select_backend, Backend, DeviceChoice};
use isoclip::backend::{
    ElemType, InputKind, NonFinitePolicy, OutputForm, Precision, ProjectionOptions,
};
use isoclip::engine::{run_job, JobSpec, JobSummary, ProgressSink, ShardSelection};
use isoclip::error::{Error, Result};
use isoclip::storage::{self, Location};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  isoclip project --projector b16.safetensors --input img_emb/ --output iso_emb/\n  isoclip project --projector b16.safetensors --input img_emb/ --output iso_emb/ \\\n                  --input-kind embeddings\n  isoclip project --projector b16.safetensors --input shards.txt --output out/ \\\n                  --form full --dtype f32 --json\n\nA rerun skips shards whose output is complete and matches (input identity: device, inode,\nsize, mtime, ctime; projector; options) and whose output's checksum verifies\n(--trust-outputs: its identity instead); --overwrite redoes everything. Outputs are written\nto a temporary name, synced, then renamed.\n\nExit codes: 0 success; 1 failure (bad input, I/O error, disk full: finished shards are kept);\n2 invalid command line; 130/143 interrupted by SIGINT/SIGTERM (finished shards kept: rerun\nto resume)."
)]
pub struct ProjectArgs {
    /// Projector file from `isoclip fit` (a path or a URL).
    #[arg(long, value_name = "FILE|URL", value_parser = parse_location)]
    pub projector: Location,
    /// A .npy shard (fp16/fp32, 2-D, C order), a directory or prefix of shards, or a local text
    /// file listing shards. Paths, file://, s3://, gs://, az:// and http(s):// URLs.
    #[arg(long, value_name = "PATH|URL", value_parser = parse_location)]
    pub input: Location,
    /// Output directory or prefix: one .npy per input shard, same name, plus the resume records
    /// (isoclip-manifest.json for one worker on local paths; _isoclip/ otherwise).
    #[arg(long, short, value_name = "DIR|URL", value_parser = parse_location)]
    pub output: Location,
    /// Number of workers sharing the gallery: worker I takes shards k with k mod N = I of the
    /// sorted listing (default: from SLURM_ARRAY_TASK_COUNT, or ISOCLIP_NUM_SHARDS; else 1).
    #[arg(long, value_name = "N")]
    pub num_shards: Option<usize>,
    /// This worker's index, 0 to N-1 (default: from SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN,
    /// or Kubernetes' JOB_COMPLETION_INDEX, or ISOCLIP_SHARD_INDEX).
    #[arg(long, value_name = "I")]
    pub shard_index: Option<usize>,
    /// An object-store option as object_store names it (e.g. aws_endpoint=http://127.0.0.1:9000,
    /// aws_allow_http=true, aws_skip_signature=true); repeatable; over the environment's.
    #[arg(long = "storage-option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub storage_options: Vec<(String, String)>,
    /// Which modality's maps to use (needed when the projector holds both).
    #[arg(long, value_parser = values::modality())]
    pub modality: Option<Modality>,
    #[arg(long, default_value = "features", value_parser = values::input_kind(
        "Pre-projection features (the paper's route)",
        "Already-projected CLIP embeddings, possibly L2-normalised (exact embedding route)",
    ))]
    pub input_kind: InputKind,
    #[arg(long, default_value = "compact", value_parser = values::output_form())]
    pub form: OutputForm,
    /// Output element type.
    #[arg(long, default_value = "f16", value_parser = values::elem_type())]
    pub dtype: ElemType,
    /// Do not L2-normalise output rows.
    #[arg(long)]
    pub no_normalize: bool,
    /// Rows with NaN or Inf: fail (default) or write zeros.
    #[arg(long, default_value = "error", value_parser = values::nonfinite_policy())]
    pub nonfinite: NonFinitePolicy,
    /// Arithmetic of the CPU GEMM. bf16 runs on the CPU (with --device auto too) and is
    /// recorded per shard: a rerun at another precision redoes the shards.
    #[arg(long, default_value = "f32", value_parser = values::precision())]
    pub precision: Precision,
    /// Where to compute: the GPU(s) when usable (auto), the CPU, every visible GPU or an error
    /// (cuda), or one GPU by CUDA ordinal or an error (cuda:N).
    #[arg(long, default_value = "auto", value_name = "auto|cpu|cuda|cuda:N", value_parser = values::device)]
    pub device: DeviceChoice,
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

/// Progress of a run on stderr: a bar (rows/s, ETA) on a terminal, one line per finished shard
/// otherwise (logs), nothing with `quiet`. Also holds the backend's notice ("no usable CUDA GPU:
/// running on the CPU"), printed only when the run has work to compute, and counts the finished
/// shards (done or skipped) for the line an interrupted run prints.
pub struct BarProgress {
    bar: Option<ProgressBar>,
    lines: bool,
    notice: Option<String>,
    to_process: AtomicUsize,
    processed: AtomicUsize,
    finished: AtomicUsize,
}

impl BarProgress {
    pub fn new(enabled: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        BarProgress {
            bar: (enabled && terminal).then(ProgressBar::hidden),
            lines: enabled && !terminal,
            notice: None,
            to_process: AtomicUsize::new(0),
            processed: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
        }
    }

    /// A note to print once the run is known to compute something.
    pub fn with_notice(mut self, notice: Option<String>) -> Self {
        self.notice = notice;
        self
    }

    /// Shards finished so far (written by this run or found finished), all in the manifest.
    pub fn finished_shards(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }
}

impl ProgressSink for BarProgress {
    fn start(&self, rows: u64, shards: usize) {
        self.to_process.store(shards, Ordering::SeqCst);
        if shards > 0 {
            if let Some(n) = &self.notice {
                eprintln!("note: {n}");
            }
        }
        if let Some(b) = &self.bar {
            b.set_length(rows);
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:40.cyan/blue} {human_pos}/{human_len} rows  {rate} rows/s  ETA {eta}  {msg}",
                )
                .expect("valid template")
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&human_rate(state.per_sec()));
                    },
                ),
            );
            b.set_message(count(shards as u64, "shard", "shards"));
        }
    }
    fn advance(&self, rows: u64) {
        if let Some(b) = &self.bar {
            b.inc(rows);
        }
    }
    fn shard_done(&self, name: &str, skipped: bool) {
        self.finished.fetch_add(1, Ordering::SeqCst);
        let what = if skipped { "skipped" } else { "done" };
        if let Some(b) = &self.bar {
            b.set_message(format!("{what} {name}"));
        }
        if self.lines && !skipped {
            let n = self.processed.fetch_add(1, Ordering::SeqCst) + 1;
            let total = self.to_process.load(Ordering::SeqCst);
            eprintln!("{what} {name} ({n}/{total})");
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The one line an interrupted run prints: what was kept and how to resume.
pub fn interrupted_line(finished: usize, output: &Location) -> String {
    format!(
        "interrupted: kept {} in {}; rerun the same command to resume",
        count(finished as u64, "finished shard", "finished shards"),
        output
    )
}

/// Runs a job with SIGINT/SIGTERM wired to its cancel flag. On a signal the job stops at the
/// next chunk (its temporary file removed, finished shards kept in the manifest), the
/// interrupted line is printed and `Error::Cancelled` returned (exit 130/143).
pub fn run_interruptible(
    spec: &JobSpec,
    projector: &AlignedProjector,
    backend: &dyn Backend,
    progress: &BarProgress,
) -> Result<JobSummary> {
    let result = {
        let _cooperative = signals::cooperative();
        run_job(spec, projector, backend, progress, &signals::CANCEL)
    };
    match result {
        Err(e) if matches!(e.root(), Error::Cancelled) => {
            eprintln!(
                "{}",
                interrupted_line(progress.finished_shards(), &spec.output)
            );
            Err(e)
        }
        other => other,
    }
}

impl ProjectArgs {
    pub fn options(&self) -> ProjectionOptions {
        ProjectionOptions {
            input_kind: self.input_kind,
            form: self.form,
            output: self.dtype,
            normalize: !self.no_normalize,
            nonfinite: self.nonfinite,
            precision: self.precision,
        }
    }
}

/// A path or URL argument, checked by the command line (an empty one or a malformed URL is a
/// usage error, exit 2).
pub fn parse_location(s: &str) -> std::result::Result<Location, String> {
    Location::parse(s).map_err(|e| e.to_string())
}

/// `KEY=VALUE` for `--storage-option` (the key non-empty; the value may hold `=`).
pub fn parse_key_value(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

pub fn run(a: ProjectArgs) -> Result<()> {
    let input = a.input.clone();
    let output = a.output.clone();
    if let Some(dir) = output.as_plain_path() {
        check_output_dir(dir)?;
    }
    let shards = ShardSelection::resolve(a.num_shards, a.shard_index, |k| std::env::var(k).ok())?;
    let projector = storage::load_projector(&a.projector, &a.storage_options)?;
    let modality = a.modality;
    projector
        .only_modality(modality)
        .map_err(|e| e.in_file(a.projector.to_string()))?;
    // bf16 is a CPU kernel: `auto` means the CPU then; an explicit GPU is refused by the backend.
    let device = match (a.precision, a.device) {
        (Precision::Bf16, DeviceChoice::Auto(_)) => DeviceChoice::Cpu,
        (_, device) => device,
    };
    let (backend, notice) = select_backend(device, a.threads)?;
    let mut spec = JobSpec::new(input, output);
    spec.shards = shards;
    spec.storage_options = a.storage_options.clone();
    spec.modality = modality;
    spec.options = a.options();
    spec.overwrite = a.overwrite;
    spec.trust_outputs = a.trust_outputs;
    spec.chunk_bytes = a.chunk_bytes;
    let progress = BarProgress::new(!a.quiet && !a.json).with_notice(notice);
    let summary = run_interruptible(&spec, &projector, backend.as_ref(), &progress)?;
    if a.json {
        let mut v = serde_json::to_value(&summary).expect("serialises");
        v["synthetic"] = projector.synthetic.into();
        outln!("{}", serde_json::to_string_pretty(&v).expect("serialises"))?;
    } else {
        print_summary(&summary, projector.synthetic)?;
    }
    Ok(())
}

/// The human summary of a run (shared with the demo). `synthetic`: the projector was fitted
/// from the built-in SYNTHETIC model.
pub fn print_summary(s: &JobSummary, synthetic: bool) -> Result<()> {
    if synthetic {
        outln!("SYNTHETIC projector (built-in CLIP-like model, not a real checkpoint)")?;
    }
    outln!(
        "projected {} in {} ({} skipped as already done, {}) on {}, {} arithmetic",
        count(s.rows_processed, "row", "rows"),
        count(s.shards_processed as u64, "shard", "shards"),
        s.shards_skipped,
        count(s.rows_skipped, "row", "rows"),
        s.backend,
        s.arithmetic
    )?;
    outln!(
        "  {} {} -> {} {} dims ({}{}), into {}",
        s.modality,
        s.input_kind,
        s.form,
        s.d_out,
        s.dtype,
        if s.normalized { ", L2-normalised" } else { "" },
        s.output_dir
    )?;
    outln!(
        "  {:.2} s, {} rows/s, {:.3} GB/s read, {:.1} MB written",
        s.seconds,
        human_rate(s.rows_per_second),
        s.gb_per_second_read,
        s.bytes_written as f64 / 1e6
    )?;
    outln!(
        "  rows with zero norm: {}; rows with NaN/Inf written as zeros: {}",
        s.zero_norm_rows,
        s.nonfinite_rows
    )?;
    Ok(())
}
