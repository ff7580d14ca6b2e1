//! The output directory's manifest: what was finished, from what, with what. A rerun skips a
//! shard only when every field that determines its bytes still matches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;

pub const MANIFEST_NAME: &str = "isoclip-manifest.json";
const MANIFEST_FORMAT: &str = "isoclip-output-manifest";
const MANIFEST_VERSION: u32 = 1;

/// One finished output shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub input: String,
    pub input_size: u64,
    pub input_mtime_ns: u64,
    pub rows: u64,
    pub cols_in: u64,
    pub cols_out: u64,
    pub output_size: u64,
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
    pub zero_norm_rows: u64,
    pub nonfinite_rows: u64,
}

impl ShardRecord {
    /// Whether this record describes the output the current run would produce for the same input.
    pub fn matches(&self, want: &ShardRecord) -> bool {
        self.input == want.input
            && self.input_size == want.input_size
            && self.input_mtime_ns == want.input_mtime_ns
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

impl OutputManifest {
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_NAME)
    }

    /// Loads the manifest of `dir`; a missing one is empty. An unreadable or foreign one is
    /// reported in the returned warning and treated as empty (every shard is redone: safe).
    pub fn load(dir: &Path) -> (Self, Option<String>) {
        let p = Self::path_in(dir);
        let Ok(text) = std::fs::read_to_string(&p) else {
            return (Self::default(), None);
        };
        match serde_json::from_str::<OutputManifest>(&text) {
            Ok(m) if m.format == MANIFEST_FORMAT && m.version == MANIFEST_VERSION => (m, None),
            _ => (
                Self::default(),
                Some(format!(
                    "{}: unreadable or from another version; all shards will be redone",
                    p.display()
                )),
            ),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).expect("manifest serialises");
        text.push('\n');
        crate::formats::atomic_write(&Self::path_in(dir), text.as_bytes())
    }
}
