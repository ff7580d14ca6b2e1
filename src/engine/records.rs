//! Completion records: how many workers sharing one output prefix (on an object store or a
//! shared file system) agree on which shards are finished, with no lock and no shared manifest.
//!
//! Layout under the output prefix:
//! - `<shard>.npy`: the outputs, named as their inputs;
//! - `_isoclip/job.json` ([`JobDescription`]): the input, projector and options of the latest
//!   run, written by every worker when it differs (what `isoclip status` compares against);
//! - `_isoclip/records/<shard>.npy.json` ([`CompletionRecord`]): one per finished shard, created
//!   with a create-only PUT after its output is complete. Workers never write the same record
//!   unless they process the same shard, and then they write the same content.
//! - `_isoclip/manifest.json`: the merged records, written on request by `isoclip status`.

use serde::{Deserialize, Serialize};

use super::manifest::FileIdentity;
use crate::error::{Error, Result};

/// The folder (prefix) under the output that holds the engine's records.
pub const RECORDS_DIR: &str = "_isoclip";
/// Where the latest run's description is kept.
pub const JOB_NAME: &str = "_isoclip/job.json";
/// Where the completion records are kept.
pub const RECORDS_PREFIX: &str = "_isoclip/records";
/// Where `isoclip status --write-manifest` writes the merged manifest.
pub const MERGED_MANIFEST_NAME: &str = "_isoclip/manifest.json";
/// The largest record or job description read (they are well under 4 KiB).
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

const RECORD_FORMAT: &str = "isoclip-completion-record";
const JOB_FORMAT: &str = "isoclip-job";
const FORMAT_VERSION: u32 = 1;

/// The record of shard `shard` (an input name).
pub fn record_name(shard: &str) -> String {
    format!("{RECORDS_PREFIX}/{shard}.json")
}

/// The shard a record name belongs to (`None` for anything else under the prefix).
pub fn shard_of_record(name: &str) -> Option<&str> {
    name.strip_prefix(RECORDS_PREFIX)?
        .strip_prefix('/')?
        .strip_suffix(".json")
        .filter(|s| !s.is_empty() && !s.contains('/'))
}

/// Who an input is without reading it: a local file's identity, or an object's size and
/// entity tag (and version, where the store keeps versions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceIdentity {
    File(FileIdentity),
    Object {
        size: u64,
        e_tag: Option<String>,
        version: Option<String>,
    },
}

impl SourceIdentity {
    pub fn size(&self) -> u64 {
        match self {
            SourceIdentity::File(f) => f.size,
            SourceIdentity::Object { size, .. } => *size,
        }
    }
}

/// The input, projector and options of a run: what every shard of it shares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOptions {
    pub projector: String,
    pub modality: String,
    pub input_kind: String,
    pub form: String,
    pub dtype: String,
    pub normalize: bool,
    pub nonfinite: String,
    pub cols_out: u64,
    /// The arithmetic that computes the outputs (`Backend::arithmetic`: "f32", "f32-gemm",
    /// "bf16", "cuda-fp16"). Records from before this field were written by the `gemm` crate's
    /// f32 kernels: they read as "f32-gemm".
    #[serde(default = "legacy_arithmetic")]
    pub arithmetic: String,
}

/// What records written before the `arithmetic` field were computed with.
pub(crate) fn legacy_arithmetic() -> String {
    crate::backend::cpu::GEMM_CRATE_ARITHMETIC.into()
}

/// `_isoclip/job.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDescription {
    pub format: String,
    pub version: u32,
    /// The input as given (URL, or canonical path).
    pub input: String,
    #[serde(flatten)]
    pub options: RunOptions,
}

impl JobDescription {
    pub fn new(input: String, options: RunOptions) -> Self {
        JobDescription {
            format: JOB_FORMAT.into(),
            version: FORMAT_VERSION,
            input,
            options,
        }
    }

    pub fn parse(bytes: &[u8], url: &str) -> Result<Self> {
        let job: JobDescription = serde_json::from_slice(bytes)
            .map_err(|e| Error::format(url, format!("not a readable job description: {e}")))?;
        if job.format != JOB_FORMAT || job.version != FORMAT_VERSION {
            return Err(Error::unsupported(
                url,
                format!(
                    "job description {} version {} (this build reads {JOB_FORMAT} version {FORMAT_VERSION})",
                    job.format, job.version
                ),
            ));
        }
        Ok(job)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("serialises");
        v.push(b'\n');
        v
    }
}

/// `_isoclip/records/<shard>.json`: one finished output shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionRecord {
    pub format: String,
    pub version: u32,
    /// The input shard's name (and the output's).
    pub shard: String,
    /// The input shard as given (URL, or canonical path).
    pub input: String,
    pub input_identity: SourceIdentity,
    pub rows: u64,
    pub cols_in: u64,
    #[serde(flatten)]
    pub options: RunOptions,
    pub output_size: u64,
    pub output_e_tag: Option<String>,
    pub output_version: Option<String>,
    pub output_xxh3: String,
    pub zero_norm_rows: u64,
    pub nonfinite_rows: u64,
    /// Which worker wrote it ("index/count"), and with which build: for people, never compared.
    pub worker: String,
    pub tool_version: String,
}

impl CompletionRecord {
    pub fn parse(bytes: &[u8], url: &str) -> Result<Self> {
        let r: CompletionRecord = serde_json::from_slice(bytes)
            .map_err(|e| Error::format(url, format!("not a readable completion record: {e}")))?;
        if r.format != RECORD_FORMAT || r.version != FORMAT_VERSION {
            return Err(Error::unsupported(
                url,
                format!(
                    "completion record {} version {} (this build reads {RECORD_FORMAT} version {FORMAT_VERSION})",
                    r.format, r.version
                ),
            ));
        }
        Ok(r)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("serialises");
        v.push(b'\n');
        v
    }

    /// A record for `shard` with its output fields still empty.
    pub fn planned(
        shard: &str,
        input: String,
        input_identity: SourceIdentity,
        rows: u64,
        cols_in: u64,
        options: RunOptions,
        worker: String,
    ) -> Self {
        CompletionRecord {
            format: RECORD_FORMAT.into(),
            version: FORMAT_VERSION,
            shard: shard.into(),
            input,
            input_identity,
            rows,
            cols_in,
            options,
            output_size: 0,
            output_e_tag: None,
            output_version: None,
            output_xxh3: String::new(),
            zero_norm_rows: 0,
            nonfinite_rows: 0,
            worker,
            tool_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Why this record does not stand for the output `want` plans (same input, same identity,
    /// same options), in words; `None` when it does.
    pub fn mismatch(&self, want: &CompletionRecord) -> Option<&'static str> {
        if self.shard != want.shard || self.input != want.input {
            Some("recorded for another input")
        } else if self.input_identity != want.input_identity
            || self.rows != want.rows
            || self.cols_in != want.cols_in
        {
            Some("the input changed since it was projected")
        } else if self.options.arithmetic != want.options.arithmetic
            && (RunOptions {
                arithmetic: want.options.arithmetic.clone(),
                ..self.options.clone()
            }) == want.options
        {
            Some("computed with other arithmetic (another precision, CPU kernel or device)")
        } else if self.options != want.options {
            Some("projected with another projector or other options")
        } else {
            None
        }
    }

    /// Whether `output` (what the store says of the output object now) is the object this
    /// record describes: same size, and the same entity tag when the store gives one.
    pub fn describes_output(&self, size: u64, e_tag: Option<&str>) -> bool {
        size == self.output_size
            && match (self.output_e_tag.as_deref(), e_tag) {
                (Some(recorded), Some(now)) => recorded == now,
                (None, _) => true,
                (Some(_), None) => false,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> RunOptions {
        RunOptions {
            projector: "p".into(),
            modality: "image".into(),
            input_kind: "features".into(),
            form: "compact".into(),
            dtype: "f16".into(),
            normalize: true,
            nonfinite: "error".into(),
            cols_out: 262,
            arithmetic: "f32".into(),
        }
    }

    fn record() -> CompletionRecord {
        CompletionRecord::planned(
            "a.npy",
            "s3://b/in/a.npy".into(),
            SourceIdentity::Object {
                size: 100,
                e_tag: Some("\"e1\"".into()),
                version: None,
            },
            10,
            768,
            options(),
            "0/1".into(),
        )
    }

    #[test]
    fn records_round_trip_and_name_their_shard() {
        let r = record();
        assert_eq!(
            CompletionRecord::parse(&r.to_bytes(), "u").unwrap(),
            r,
            "round trip"
        );
        assert_eq!(record_name("a.npy"), "_isoclip/records/a.npy.json");
        assert_eq!(shard_of_record(&record_name("a.npy")), Some("a.npy"));
        assert_eq!(shard_of_record("_isoclip/records/x/a.npy.json"), None);
        assert_eq!(shard_of_record("_isoclip/job.json"), None);
        let e = CompletionRecord::parse(b"{}", "s3://b/out/_isoclip/records/a.npy.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s3://b/out/_isoclip/records/a.npy.json: not a readable completion record: missing field"),
            "{e}"
        );
    }

    #[test]
    fn a_record_from_before_the_arithmetic_field_reads_as_the_gemm_crates_f32() {
        let mut v: serde_json::Value = serde_json::from_slice(&record().to_bytes()).unwrap();
        assert_eq!(v["arithmetic"], "f32");
        v.as_object_mut().unwrap().remove("arithmetic");
        let old = CompletionRecord::parse(&serde_json::to_vec(&v).unwrap(), "u").unwrap();
        assert_eq!(old.options.arithmetic, "f32-gemm");
        // Its bytes are not the packed kernel's: the shard is redone...
        assert_eq!(
            old.mismatch(&record()),
            Some("computed with other arithmetic (another precision, CPU kernel or device)")
        );
        // ...except where this build computes with the gemm crate too.
        let mut gemm = record();
        gemm.options.arithmetic = "f32-gemm".into();
        assert_eq!(old.mismatch(&gemm), None);
    }

    #[test]
    fn a_record_stands_only_for_the_same_input_and_options() {
        let want = record();
        let mut r = want.clone();
        r.worker = "2/3".into();
        r.output_size = 5;
        assert_eq!(
            r.mismatch(&want),
            None,
            "output fields and worker are not compared"
        );
        let mut changed = want.clone();
        changed.input_identity = SourceIdentity::Object {
            size: 100,
            e_tag: Some("\"e2\"".into()),
            version: None,
        };
        assert_eq!(
            changed.mismatch(&want),
            Some("the input changed since it was projected")
        );
        let mut other = want.clone();
        other.options.dtype = "f32".into();
        assert_eq!(
            other.mismatch(&want),
            Some("projected with another projector or other options")
        );
        let mut bf16 = want.clone();
        bf16.options.arithmetic = "bf16".into();
        assert_eq!(
            bf16.mismatch(&want),
            Some("computed with other arithmetic (another precision, CPU kernel or device)")
        );
        bf16.options.dtype = "f32".into();
        assert_eq!(
            bf16.mismatch(&want),
            Some("projected with another projector or other options"),
            "arithmetic is named only when it is the one difference"
        );
        let mut done = want.clone();
        done.output_size = 42;
        done.output_e_tag = Some("\"o\"".into());
        assert!(done.describes_output(42, Some("\"o\"")));
        assert!(!done.describes_output(42, Some("\"p\"")));
        assert!(!done.describes_output(41, Some("\"o\"")));
        assert!(!done.describes_output(42, None));
    }
}
