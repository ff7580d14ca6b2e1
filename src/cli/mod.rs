//! The `isoclip` command line. Each subcommand lives in its own file; this one parses arguments,
//! runs the command and maps errors to exit codes.
//!
//! Exit codes: 0 success; 1 the command failed (bad input file, I/O error, impossible band, ...);
//! 2 the command line itself is wrong (unknown flag, missing value: clap's usage errors);
//! 3 (`status` only) some shard of the gallery is missing or stale;
//! 130 / 143 interrupted by SIGINT / SIGTERM (finished work kept, see `signals`).
//! A closed standard output (`isoclip inspect p | head -1`) ends the command quietly with 0.

#[macro_use]
mod output;
mod demo;
mod eval;
mod fit;
mod gallery;
mod inspect;
mod project;
mod signals;
mod spectrum;
mod status;
mod sweep;
mod targets;
mod values;
mod weights_args;

use clap::{Parser, Subcommand};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

const EXIT_CODES: &str = "Exit codes: 0 success; 1 the command failed (the message names the file and the problem); 2 invalid command line; 130/143 interrupted (SIGINT/SIGTERM).";

#[derive(Parser, Debug)]
#[command(
    name = "isoclip",
    version,
    about = "IsoCLIP: training-free intra-modal alignment for CLIP embeddings",
    long_about = "IsoCLIP makes CLIP embeddings better at image-to-image and text-to-text search by \
projecting through the well-aligned middle band of the inter-modal operator Ψ = P_i P_tᵀ. \
`fit` computes the aligned projectors from a checkpoint; `project` moves galleries of embedding \
shards into the IsoCLIP space; `eval` and `sweep` measure the gain on labelled data; `inspect` and \
`spectrum` explain a projector. `demo` runs it all on a built-in SYNTHETIC model.",
    after_help = format!("Examples:\n  isoclip demo\n  isoclip fit --preset openai-vit-b-16 --checkpoint model.safetensors -o b16.safetensors\n  isoclip project --projector b16.safetensors --input img_emb/ --output iso_emb/\n  isoclip eval --projector b16.safetensors --features feats.npy --labels labels.npy\n  isoclip inspect b16.safetensors\n  isoclip spectrum --checkpoint model.safetensors --preset openai-vit-b-16 --svg spectrum.svg\n\n{EXIT_CODES}")
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// One value per process, parsed once: the size of its largest variant (arguments holding URLs)
// costs nothing worth an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the main job end to end on built-in defaults (a SYNTHETIC model): fit, project, report.
    Demo(demo::DemoArgs),
    /// Compute IsoCLIP's aligned projectors from projector weights and write a projector file.
    Fit(fit::FitArgs),
    /// Project a gallery of embedding shards into the IsoCLIP space (resumable).
    Project(project::ProjectArgs),
    /// Write a synthetic gallery of random feature shards (for trying things out and benchmarks).
    Gallery(gallery::GalleryArgs),
    /// Which shards of a gallery an output holds (done / missing / stale), across all workers.
    Status(status::StatusArgs),
    /// Summarise a projector file (human text, or --json).
    Inspect(inspect::InspectArgs),
    /// Plot Ψ's normalised spectrum with the kept band marked (SVG) and summarise it.
    Spectrum(spectrum::SpectrumArgs),
    /// Plain CLIP vs IsoCLIP on labelled data: retrieval metrics (reference semantics) or NCM.
    Eval(eval::EvalArgs),
    /// Evaluate a grid of bands (k_top, k_bottom) from one SVD and keep the best.
    Sweep(sweep::SweepArgs),
}

/// What the command line can add to a library error: the flag that changes the outcome, keyed
/// on the variant (library messages never name flags). Only `project` has such flags: `eval` and
/// `sweep` stop at a NaN row with nothing to pass.
fn hint(e: &isoclip::Error, project_flags: bool) -> Option<&'static str> {
    if !project_flags {
        return None;
    }
    match e.root() {
        isoclip::Error::NonFiniteRow { .. } => {
            Some("pass --nonfinite zero to write zeros for such rows instead")
        }
        isoclip::Error::Unrepresentable { .. } => Some(
            "normalise the output, write --dtype f32, or pass --nonfinite zero to write zeros for such rows",
        ),
        isoclip::Error::DeviceUnavailable(_) => Some("use --device auto or --device cpu"),
        _ => None,
    }
}

/// The line the command line prints for a failed command: the library's message, then the hint.
fn error_line(e: &isoclip::Error, project_flags: bool) -> String {
    match hint(e, project_flags) {
        Some(h) => format!("error: {e} ({h})"),
        None => format!("error: {e}"),
    }
}

/// Runs the CLI with the process arguments; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    signals::install();
    let project_flags = matches!(cli.command, Command::Project(_));
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Fit(a) => fit::run(a),
        Command::Gallery(a) => gallery::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Project(a) => project::run(a),
        Command::Spectrum(a) => spectrum::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Sweep(a) => sweep::run(a),
        Command::Status(a) => match status::run(a) {
            Ok(false) => {
                return match output::flush() {
                    Err(e) if !output::is_broken_pipe(&e) => {
                        eprintln!("error: {e}");
                        EXIT_FAILURE
                    }
                    _ => status::EXIT_INCOMPLETE,
                }
            }
            other => other.map(|_| ()),
        },
    };
    let result = result.and_then(|()| output::flush());
    match result {
        Ok(()) => EXIT_OK,
        Err(e) if output::is_broken_pipe(&e) => EXIT_OK,
        // The command has said what was kept; the exit code says which signal stopped it.
        Err(e) if matches!(e.root(), isoclip::Error::Cancelled) => signals::exit_code(),
        Err(e) => {
            eprintln!("{}", error_line(&e, project_flags));
            EXIT_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isoclip::Error;

    #[test]
    fn the_flag_is_the_command_lines_not_the_librarys() {
        let cases = [
            (Error::NonFiniteRow { row: 7 }, "--nonfinite zero"),
            (
                Error::Unrepresentable {
                    row: 7,
                    message: "the unnormalised result exceeds the f16 range".into(),
                },
                "--dtype f32",
            ),
            (
                Error::DeviceUnavailable("no usable CUDA GPU (libcuda not found)".into()),
                "--device cpu",
            ),
        ];
        for (e, flag) in cases {
            let e = e.in_file("/data/img_emb_0003.npy");
            let library = e.to_string();
            assert!(!library.contains("--"), "{library}");
            let project = error_line(&e, true);
            assert_eq!(
                project,
                format!("error: {library} ({})", hint(&e, true).unwrap())
            );
            assert!(project.contains(flag), "{project}");
            // eval and sweep have no such flag to suggest.
            assert_eq!(error_line(&e, false), format!("error: {library}"));
        }
    }
}
