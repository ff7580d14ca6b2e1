//! The output directory's manifest: what was finished, from what, with what. A rerun skips a
//! shard only when every field that determines its bytes still matches *and* the output file on
//! disk is still the one recorded (see [`super::commit`] for how records and outputs are kept in
//! step, and for what a rerun verifies).
//!
//! What resume trusts about an input: its canonical path and its identity — device, inode, size,
//! modification time and status-change time (ctime). ctime cannot be set by `touch`, `cp -p`,
//! `rsync -t` or `tar x`, so an input rewritten in place or replaced, even with the same size and
//! its old mtime restored, is redone.
//!
//! Format history: version 1 recorded only the input's size and mtime; a version-1 (or any other
//! foreign) manifest is ignored with a warning and every shard is redone.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::read::read_bounded;

pub const MANIFEST_NAME: &str = "isoclip-manifest.json";
const MANIFEST_FORMAT: &str = "isoclip-output-manifest";
const MANIFEST_VERSION: u32 = 2;
/// The largest manifest we read: about 700 bytes a shard, so room for well over 100 000 shards.
pub const MAX_MANIFEST_BYTES: u64 = 512 << 20;

/// Who a file is, as far as the file system can tell without reading it: a file rewritten in
/// place, replaced by another, or touched back to its old mtime has a different identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// Seconds and nanoseconds as one count (saturating: a forged timestamp must not overflow).
fn nanoseconds(secs: i64, nanos: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

impl FileIdentity {
    pub fn of(meta: &Metadata) -> Self {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: nanoseconds(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanoseconds(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// One finished output shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Canonical path of the input shard.
    pub input: String,
    pub input_identity: FileIdentity,
    pub rows: u64,
    pub cols_in: u64,
    pub cols_out: u64,
    /// Identity of the output file as renamed into place (what `--trust-outputs` compares).
    pub output_identity: FileIdentity,
    /// xxh3-64 of the whole output file, hex.
    pub output_xxh3: String,
    /// content_sha256 of the projector file used.
    pub projector: String,
    pub modality: String,
    pub input_kind: String,
    pub form: String,
    pub dtype: String,
    pub normalize: bool,
    pub nonfinite: String,
    /// The arithmetic that computed the output (see `records::RunOptions::arithmetic`).
    #[serde(default = "super::records::legacy_arithmetic")]
    pub arithmetic: String,
    pub zero_norm_rows: u64,
    pub nonfinite_rows: u64,
}

impl ShardRecord {
    /// Whether this record describes the output the current run would produce for the same input
    /// (the output fields — identity, checksum, counts — are not compared).
    pub fn matches(&self, want: &ShardRecord) -> bool {
        self.input == want.input
            && self.input_identity == want.input_identity
            && self.rows == want.rows
            && self.cols_in == want.cols_in
            && self.cols_out == want.cols_out
            && self.projector == want.projector
            && self.modality == want.modality
            && self.input_kind == want.input_kind
            && self.form == want.form
            && self.dtype == want.dtype
            && self.normalize == want.normalize
            && self.nonfinite == want.nonfinite
            && self.arithmetic == want.arithmetic
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutputManifest {
    pub format: String,
    pub version: u32,
    pub tool_version: String,
    /// Keyed by output file name.
    pub shards: BTreeMap<String, ShardRecord>,
}

impl Default for OutputManifest {
    fn default() -> Self {
        OutputManifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            shards: BTreeMap::new(),
        }
    }
}

/// The parts every manifest version shares, read first to tell a foreign file from a bad one.
#[derive(Deserialize)]
struct ManifestHead {
    format: Option<String>,
    version: Option<u32>,
}

impl OutputManifest {
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_NAME)
    }

    /// Parses manifest bytes (`path` only names the file in errors). Pure: no file access.
    /// Refuses anything that is not a current-version isoclip output manifest.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<OutputManifest> {
        let head: ManifestHead = serde_json::from_slice(bytes)
            .map_err(|e| Error::format(path, format!("not an isoclip output manifest: {e}")))?;
        if head.format.as_deref() != Some(MANIFEST_FORMAT) {
            return Err(Error::format(path, "not an isoclip output manifest"));
        }
        if head.version != Some(MANIFEST_VERSION) {
            return Err(Error::unsupported(
                path,
                format!(
                    "manifest version {} (this isoclip writes version {MANIFEST_VERSION})",
                    head.version
                        .map_or_else(|| "missing".to_string(), |v| v.to_string())
                ),
            ));
        }
        serde_json::from_slice(bytes)
            .map_err(|e| Error::format(path, format!("damaged output manifest: {e}")))
    }

    /// Loads the manifest of `dir`; a missing one is empty. One that cannot be parsed, or is
    /// from another version, is reported in the returned warning and treated as empty (every
    /// shard is redone: safe). One that cannot be read at all (not a regular file, too large,
    /// permission denied) is an error.
    pub fn load(dir: &Path) -> Result<(Self, Option<String>)> {
        let p = Self::path_in(dir);
        let bytes = match read_bounded(&p, MAX_MANIFEST_BYTES, "an output manifest") {
            Ok(b) => b,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Self::default(), None))
            }
            Err(e) => return Err(e),
        };
        match Self::parse(&bytes, &p) {
            Ok(m) => Ok((m, None)),
            Err(e) => Ok((
                Self::default(),
                Some(format!("{e}; every shard will be redone")),
            )),
        }
    }

    /// Writes the manifest atomically (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).expect("manifest serialises");
        text.push('\n');
        crate::formats::atomic_write(&Self::path_in(dir), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_foreign_old_and_damaged_manifests() {
        let p = Path::new("/out/isoclip-manifest.json");
        let e = OutputManifest::parse(b"[1,2", p).unwrap_err().to_string();
        assert!(
            e.starts_with("/out/isoclip-manifest.json: not an isoclip output manifest"),
            "{e}"
        );
        let e = OutputManifest::parse(br#"{"format":"other","version":2}"#, p)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/out/isoclip-manifest.json: not an isoclip output manifest"
        );
        let v1 = br#"{"format":"isoclip-output-manifest","version":1,"tool_version":"0.1.0","shards":{}}"#;
        let e = OutputManifest::parse(v1, p).unwrap_err().to_string();
        assert_eq!(
            e,
            "/out/isoclip-manifest.json: manifest version 1 (this isoclip writes version 2)"
        );
        let damaged = br#"{"format":"isoclip-output-manifest","version":2,"shards":{"a.npy":{}}}"#;
        let e = OutputManifest::parse(damaged, p).unwrap_err().to_string();
        assert!(e.contains("damaged output manifest"), "{e}");
        let good = serde_json::to_vec(&OutputManifest::default()).unwrap();
        assert!(OutputManifest::parse(&good, p).unwrap().shards.is_empty());
    }

    #[test]
    fn an_old_manifest_is_a_warning_and_an_empty_record() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            OutputManifest::path_in(d.path()),
            br#"{"format":"isoclip-output-manifest","version":1,"tool_version":"0.1.0","shards":{}}"#,
        )
        .unwrap();
        let (m, w) = OutputManifest::load(d.path()).unwrap();
        assert!(m.shards.is_empty());
        assert!(w.unwrap().contains("manifest version 1"));
        let missing = tempfile::tempdir().unwrap();
        let (m, w) = OutputManifest::load(missing.path()).unwrap();
        assert!(m.shards.is_empty() && w.is_none());
    }
}
