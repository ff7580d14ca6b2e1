//! What an output prefix holds, across every worker that wrote to it: which input shards are
//! done, missing or stale, judged exactly as a rerun would judge them (same record checks, same
//! output checks), so "done" means a rerun would skip it.

use std::path::Path;

use serde::Serialize;

use super::distributed::{
    input_string, output_is_recorded_one, read_records, Gallery, StoredRecord,
};
use super::records::{
    CompletionRecord, JobDescription, JOB_NAME, MAX_RECORD_BYTES, MERGED_MANIFEST_NAME,
};
use crate::error::{Error, Result};
use crate::storage::{Location, StorageContext};

/// What to look at.
#[derive(Clone, Debug)]
pub struct StatusSpec {
    pub output: Location,
    /// The gallery; by default the input recorded in the output's `_isoclip/job.json`.
    pub input: Option<Location>,
    pub storage_options: Vec<(String, String)>,
    /// Accept a local output whose size matches its record without reading its checksum.
    pub trust_outputs: bool,
    /// Also write the merged records of the done shards to `_isoclip/manifest.json`.
    pub write_manifest: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// Recorded, and the record and output are what a rerun with the latest job's options
    /// would keep.
    Done,
    /// No record: never finished (or interrupted).
    Missing,
    /// A record that a rerun would not keep (input changed, other options, output gone or
    /// changed, unreadable record).
    Stale,
}

#[derive(Clone, Debug, Serialize)]
pub struct ShardStatus {
    pub name: String,
    pub state: ShardState,
    /// Why a shard is stale; empty otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub input: String,
    pub output: String,
    pub shards_total: usize,
    pub done: usize,
    pub missing: usize,
    pub stale: usize,
    /// Rows and output bytes of the done shards.
    pub rows_done: u64,
    pub bytes_done: u64,
    pub shards: Vec<ShardStatus>,
}

impl StatusReport {
    pub fn complete(&self) -> bool {
        self.done == self.shards_total
    }
}

/// The merged manifest written by `write_manifest`.
#[derive(Serialize)]
struct MergedManifest<'a> {
    format: &'static str,
    version: u32,
    job: &'a JobDescription,
    shards: Vec<&'a CompletionRecord>,
}

/// Reports the state of every shard of the gallery in `spec.output`.
pub fn gallery_status(spec: &StatusSpec) -> Result<StatusReport> {
    let context = StorageContext::new(spec.storage_options.clone())?;
    let out = context.open(&spec.output)?;
    let job_url = out.url_of(JOB_NAME);
    let job = out
        .get_bounded(JOB_NAME, MAX_RECORD_BYTES, "a job description")?
        .map(|b| JobDescription::parse(&b, &job_url))
        .transpose()?;
    let input = match (&spec.input, &job) {
        (Some(i), _) => i.clone(),
        (None, Some(j)) => Location::parse(&j.input)?,
        (None, None) => {
            return Err(Error::invalid(format!(
                "{}: no run has recorded its job here ({JOB_NAME} is missing); give the input",
                spec.output
            )))
        }
    };
    let gallery = Gallery::list(&context, &input)?;
    let shards = gallery.identities()?;
    let names: Vec<String> = shards.iter().map(|(n, _, _)| n.clone()).collect();
    let stored = read_records(&out, &names)?;
    let local_dir = spec.output.local_path();
    let checks = super::distributed::in_parallel(
        &(0..shards.len()).collect::<Vec<_>>(),
        |&i| -> Result<(ShardState, String)> {
            let (name, input, identity) = &shards[i];
            let record = match &stored[i] {
                StoredRecord::Absent => return Ok((ShardState::Missing, String::new())),
                StoredRecord::Unreadable(why) => {
                    return Ok((ShardState::Stale, format!("unreadable record: {why}")))
                }
                StoredRecord::Present(r) => r,
            };
            let reason = if record.shard != *name || record.input != *input {
                Some("recorded for another input")
            } else if record.input_identity != *identity {
                Some("the input changed since it was projected")
            } else if job.as_ref().is_some_and(|j| j.options != record.options) {
                Some("projected with another projector or other options than the latest run")
            } else {
                output_is_recorded_one(&out, local_dir.as_deref(), record, spec.trust_outputs)?
            };
            Ok(match reason {
                Some(r) => (ShardState::Stale, r.to_string()),
                None => (ShardState::Done, String::new()),
            })
        },
    );
    let mut report = StatusReport {
        input: input_string(&input),
        output: spec.output.to_string(),
        shards_total: shards.len(),
        done: 0,
        missing: 0,
        stale: 0,
        rows_done: 0,
        bytes_done: 0,
        shards: Vec::with_capacity(shards.len()),
    };
    let mut done_records = Vec::new();
    for (i, check) in checks.into_iter().enumerate() {
        let (state, reason) = check?;
        match state {
            ShardState::Done => {
                let StoredRecord::Present(r) = &stored[i] else {
                    unreachable!("done shards have a record")
                };
                report.done += 1;
                report.rows_done += r.rows;
                report.bytes_done += r.output_size;
                done_records.push(r);
            }
            ShardState::Missing => report.missing += 1,
            ShardState::Stale => report.stale += 1,
        }
        report.shards.push(ShardStatus {
            name: shards[i].0.clone(),
            state,
            reason,
        });
    }
    if spec.write_manifest {
        let job = job.as_ref().ok_or_else(|| {
            Error::invalid(format!(
                "{}: no job description to write a manifest for",
                Path::new(&job_url).display()
            ))
        })?;
        let merged = MergedManifest {
            format: "isoclip-merged-manifest",
            version: 1,
            job,
            shards: done_records,
        };
        let mut bytes = serde_json::to_vec_pretty(&merged).expect("serialises");
        bytes.push(b'\n');
        out.put(MERGED_MANIFEST_NAME, bytes)?;
    }
    Ok(report)
}
