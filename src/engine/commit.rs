//! Putting a finished output shard in place so that "output present and recorded" always means
//! "made from this input with these options", whatever moment the run is killed at.
//!
//! The protocol, per shard (the steps are also the fault-injection points, see below):
//! 1. `temp-written`: the output is complete in its temporary file (created exclusively, never
//!    through a symlink; see [`crate::formats::create_temporary`]) and fsynced.
//! 2. `record-retracted`: the shard's previous record, if any, is removed from the manifest and
//!    the manifest saved (atomically). From here on no record vouches for the old output.
//! 3. `renamed`: the temporary file is renamed over the output name (a symlink there is
//!    replaced, never followed) and the directory fsynced.
//! 4. `recorded`: the new record — input identity, options, output identity and xxh3 — is added
//!    and the manifest saved (atomically). Only now is the shard reported as finished.
//!
//! A kill between 1 and 2 leaves the old output under its old (true) record; between 2 and 4 an
//! output with no record (redone by any rerun). A record therefore never describes bytes other
//! than its own, and a rerun also verifies that: a shard is skipped only when its output is a
//! regular file (not a symlink) whose size and xxh3 match the record ([`output_is_intact`]), or,
//! when the caller opts into trusting outputs, whose identity (device, inode, size, mtime,
//! ctime) is the one recorded.
//!
//! Fault injection (internal, for the test suite only): `ISOCLIP_INTERNAL_FAULT_AT=<step>[:fail|
//! :abort]` makes the first shard that reaches `<step>` fail there with an I/O error (`fail`, the
//! default) or abort the process (`abort`, as a kill would). Not a user feature; do not document
//! it for users.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use xxhash_rust::xxh3::Xxh3;

use super::manifest::{FileIdentity, OutputManifest, ShardRecord};
use crate::error::{Error, Result};
use crate::formats::sync_parent_dir;

/// The environment variable read by [`FaultPlan::from_env`].
pub const FAULT_ENV: &str = "ISOCLIP_INTERNAL_FAULT_AT";

/// The points of the commit protocol, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStep {
    TempWritten,
    RecordRetracted,
    Renamed,
    Recorded,
    /// Runs kept by completion records ([`super::distributed`]): the output object is complete
    /// and visible, its record not yet created.
    Uploaded,
}

impl CommitStep {
    pub const ALL: [CommitStep; 4] = [
        CommitStep::TempWritten,
        CommitStep::RecordRetracted,
        CommitStep::Renamed,
        CommitStep::Recorded,
    ];

    /// The steps of a run kept by completion records, in order.
    pub const RECORDED_RUN: [CommitStep; 3] = [
        CommitStep::RecordRetracted,
        CommitStep::Uploaded,
        CommitStep::Recorded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CommitStep::Uploaded => "uploaded",
            CommitStep::TempWritten => "temp-written",
            CommitStep::RecordRetracted => "record-retracted",
            CommitStep::Renamed => "renamed",
            CommitStep::Recorded => "recorded",
        }
    }
}

/// Where (and how) to inject a fault; see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    step: CommitStep,
    abort: bool,
}

impl FaultPlan {
    /// Reads [`FAULT_ENV`]; `None` when it is unset.
    pub fn from_env() -> Result<Option<FaultPlan>> {
        match std::env::var(FAULT_ENV) {
            Ok(v) => Self::parse(&v).map(Some),
            Err(_) => Ok(None),
        }
    }

    fn parse(text: &str) -> Result<FaultPlan> {
        let (step, mode) = text.split_once(':').unwrap_or((text, "fail"));
        let bad = || Error::invalid(format!("{FAULT_ENV}={text}: not <step>[:fail|:abort]"));
        let step = CommitStep::ALL
            .into_iter()
            .chain([CommitStep::Uploaded])
            .find(|s| s.name() == step)
            .ok_or_else(bad)?;
        let abort = match mode {
            "fail" => false,
            "abort" => true,
            _ => return Err(bad()),
        };
        Ok(FaultPlan { step, abort })
    }
}

impl FaultPlan {
    /// Fails (or aborts the process) if this plan targets `step` and has not fired yet; `what`
    /// names the output in the injected error.
    pub fn fire(plan: &mut Option<FaultPlan>, step: CommitStep, what: &Path) -> Result<()> {
        match *plan {
            Some(p) if p.step == step => {
                if p.abort {
                    std::process::abort();
                }
                *plan = None;
                Err(Error::io(
                    what,
                    std::io::Error::other(format!("injected fault at step {}", step.name())),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The manifest of an output directory and the protocol that keeps it in step with the files.
pub struct Committer<'a> {
    dir: &'a Path,
    pub manifest: OutputManifest,
    fault: Option<FaultPlan>,
}

impl<'a> Committer<'a> {
    pub fn new(dir: &'a Path, manifest: OutputManifest, fault: Option<FaultPlan>) -> Self {
        Committer {
            dir,
            manifest,
            fault,
        }
    }

    /// Steps 2–4 for shard `name`, whose complete, synced output is in `tmp` (step 1 done).
    /// `record` describes it (its output identity is filled in here). On error the caller
    /// removes `tmp` (harmless once renamed).
    pub fn commit(
        &mut self,
        name: &str,
        tmp: &Path,
        out: &Path,
        mut record: ShardRecord,
    ) -> Result<()> {
        self.fault_point(CommitStep::TempWritten, out)?;
        if self.manifest.shards.remove(name).is_some() {
            self.manifest.save(self.dir)?;
        }
        self.fault_point(CommitStep::RecordRetracted, out)?;
        std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))?;
        sync_parent_dir(out);
        self.fault_point(CommitStep::Renamed, out)?;
        let meta = std::fs::symlink_metadata(out).map_err(|e| Error::io(out, e))?;
        record.output_identity = FileIdentity::of(&meta);
        self.manifest.shards.insert(name.to_string(), record);
        self.manifest.save(self.dir)?;
        self.fault_point(CommitStep::Recorded, out)
    }

    fn fault_point(&mut self, step: CommitStep, out: &Path) -> Result<()> {
        FaultPlan::fire(&mut self.fault, step, out)
    }
}

/// Whether the file at `path` is still the output `record` describes: a regular file (a symlink
/// is never trusted) with the recorded size and xxh3 (read in large sequential reads), or with
/// `trust_identity`, the recorded device, inode, size, mtime and ctime (no read).
pub fn output_is_intact(path: &Path, record: &ShardRecord, trust_identity: bool) -> bool {
    let Some((file, meta)) = open_regular_nofollow(path) else {
        return false;
    };
    if meta.len() != record.output_identity.size {
        return false;
    }
    if trust_identity {
        return FileIdentity::of(&meta) == record.output_identity;
    }
    matches!(xxh3_of(file), Ok(h) if format!("{h:016x}") == record.output_xxh3)
}

/// Whether `path` is a regular file (never followed through a symlink) of `size` bytes whose
/// xxh3-64 is `xxh3_hex`.
pub fn file_has_content(path: &Path, size: u64, xxh3_hex: &str) -> bool {
    match open_regular_nofollow(path) {
        Some((file, meta)) if meta.len() == size => {
            matches!(xxh3_of(file), Ok(h) if format!("{h:016x}") == xxh3_hex)
        }
        _ => false,
    }
}

fn open_regular_nofollow(path: &Path) -> Option<(std::fs::File, std::fs::Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then_some((file, meta))
}

fn xxh3_of(mut file: std::fs::File) -> std::io::Result<u64> {
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(hasher.digest()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_plans_parse_every_step_and_refuse_others() {
        for step in CommitStep::ALL {
            let p = FaultPlan::parse(&format!("{}:abort", step.name())).unwrap();
            assert_eq!(p, FaultPlan { step, abort: true });
            let p = FaultPlan::parse(step.name()).unwrap();
            assert_eq!(p, FaultPlan { step, abort: false });
        }
        assert!(FaultPlan::parse("renamed:explode").is_err());
        assert!(FaultPlan::parse("nowhere").is_err());
    }
}
