//! `isoclip status`: which shards of a gallery an output holds, across all workers.

use clap::Args;

use super::output::count;
use super::project::{parse_key_value, parse_location};
use isoclip::engine::status::{gallery_status, ShardState, StatusSpec};
use isoclip::error::Result;
use isoclip::storage::Location;

/// Exit code while any shard is missing or stale.
pub const EXIT_INCOMPLETE: i32 = 3;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  isoclip status --output s3://bucket/iso_emb/\n  isoclip status --output s3://bucket/iso_emb/ --json --write-manifest\n\nA shard is done when its completion record matches the input as it is now and the latest\nrun's projector and options, and its output is the recorded object: exactly what a rerun\nwould skip. Outputs written by one worker to a local directory without --num-shards keep\nisoclip-manifest.json instead, which this command does not read.\n\nExit codes: 0 every shard is done; 3 some shard is missing or stale (rerun the job); 1 the\nstatus could not be read; 2 invalid command line."
)]
pub struct StatusArgs {
    /// The output directory or prefix of a run (`isoclip project --output`).
    #[arg(long, short, value_name = "DIR|URL", value_parser = parse_location)]
    pub output: Location,
    /// The gallery (default: the input recorded by the latest run in <output>/_isoclip/job.json).
    #[arg(long, value_name = "PATH|URL", value_parser = parse_location)]
    pub input: Option<Location>,
    /// An object-store option, as for `isoclip project`; repeatable.
    #[arg(long = "storage-option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub storage_options: Vec<(String, String)>,
    /// Accept local outputs whose size and identity match their records without reading back
    /// their checksums.
    #[arg(long)]
    pub trust_outputs: bool,
    /// Also write the records of the done shards, merged, to <output>/_isoclip/manifest.json.
    #[arg(long)]
    pub write_manifest: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command; `Ok(true)` when every shard is done.
pub fn run(a: StatusArgs) -> Result<bool> {
    let spec = StatusSpec {
        output: a.output,
        input: a.input,
        storage_options: a.storage_options.clone(),
        trust_outputs: a.trust_outputs,
        write_manifest: a.write_manifest,
    };
    let report = gallery_status(&spec)?;
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialises")
        )?;
    } else {
        outln!(
            "{}: {} of {} done ({}, {:.1} MB); {} missing, {} stale",
            report.output,
            report.done,
            count(report.shards_total as u64, "shard", "shards"),
            count(report.rows_done, "row", "rows"),
            report.bytes_done as f64 / 1e6,
            report.missing,
            report.stale
        )?;
        outln!("  input: {}", report.input)?;
        for s in report.shards.iter().filter(|s| s.state != ShardState::Done) {
            match s.state {
                ShardState::Missing => outln!("  missing {}", s.name)?,
                _ => outln!("  stale   {} ({})", s.name, s.reason)?,
            }
        }
    }
    Ok(report.complete())
}
