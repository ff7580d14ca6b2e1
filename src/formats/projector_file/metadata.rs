//! The projector file's `__metadata__`, typed: one struct ([`Metadata`]) that the writer
//! serialises and the reader deserialises, so the two cannot drift apart.
//!
//! In the file every value is a string (safetensors metadata is a string → string map). The
//! helpers in [`text`] write each typed value as isoclip always has (integers and flags with
//! `Display`, a gap in `{:e}` notation or `none`, the normalised spectrum as a JSON list) and read
//! it back. A modality's entries are prefixed with its name (`image.k_top`) and form one
//! [`ModalityMetadata`]; a modality is present when its `k_top` entry is.
//!
//! Reading goes through [`Entries`], a serde deserializer over the entries that names the entry
//! in every error: `projector metadata lacks 'image.d_in'`, `projector metadata 'r' is not an
//! integer`, `projector metadata has an unknown entry 'x'`. The caller adds the file.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{FORMAT_NAME, FORMAT_VERSION};
use crate::align::{AlignedProjector, Modality, ModalityMaps};

/// The entry holding the content checksum, which it does not cover.
const CONTENT_SHA256: &str = "content_sha256";
/// The one entry besides the checksum that the checksum does not cover: the version of the tool
/// that wrote the file (informational; isoclip never reads it, and leaving it out keeps the
/// projector's identity the same across tool versions).
pub(super) const TOOL_VERSION: &str = "tool_version";

/// Every metadata entry of a projector file. Field names are the entries' keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Metadata {
    /// [`FORMAT_NAME`].
    pub format: String,
    #[serde(with = "text::integer")]
    pub format_version: u32,
    /// Written always, never required: see [`TOOL_VERSION`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text::some"
    )]
    pub tool_version: Option<String>,
    /// The content checksum (`content_digest`), hex.
    pub content_sha256: String,
    pub fingerprint: String,
    pub source: String,
    #[serde(with = "text::or_none")]
    pub preset: Option<String>,
    #[serde(with = "text::flag")]
    pub synthetic: bool,
    /// `image`, `text` or `both`: which modality entries follow (derived; the reader checks it
    /// against what the writer would write, as every entry).
    pub modality: String,
    #[serde(with = "text::integer")]
    pub r: usize,
    #[serde(with = "text::integer")]
    pub d: usize,
    /// σ_j/σ_0 rounded to 6 decimals, for plots (derived).
    #[serde(with = "text::number_list")]
    pub spectrum_normalized: Vec<f64>,
    /// The `image.*` entries, when the file holds the image maps.
    #[serde(skip)]
    pub image: Option<ModalityMetadata>,
    /// The `text.*` entries, when the file holds the text maps.
    #[serde(skip)]
    pub text: Option<ModalityMetadata>,
}

/// The entries of one modality, without their `image.`/`text.` prefix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModalityMetadata {
    #[serde(with = "text::integer")]
    pub k_top: usize,
    #[serde(with = "text::integer")]
    pub k_bottom: usize,
    /// Directions kept by the band.
    #[serde(with = "text::integer")]
    pub m: usize,
    #[serde(with = "text::integer")]
    pub d_in: usize,
    #[serde(with = "text::integer")]
    pub compact_dim: usize,
    #[serde(with = "text::flag")]
    pub bias: bool,
    #[serde(with = "text::gap")]
    pub gap_top: Option<f64>,
    #[serde(with = "text::gap")]
    pub gap_bottom: Option<f64>,
    /// `Ok` when the embedding route is exact, else the reason it is refused.
    #[serde(with = "text::route")]
    pub embedding_route: Result<(), String>,
}

impl Metadata {
    /// What the writer records for `p`, whose checksum is `content_sha256`.
    pub fn of(p: &AlignedProjector, content_sha256: String) -> Self {
        let mods: Vec<&str> = p.modalities().iter().map(|m| m.name()).collect();
        let s1 = p.sigma.first().copied().unwrap_or(1.0);
        Metadata {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            tool_version: Some(env!("CARGO_PKG_VERSION").into()),
            content_sha256,
            fingerprint: p.fingerprint.clone(),
            source: p.source.clone(),
            preset: p.preset.clone(),
            synthetic: p.synthetic,
            modality: if mods.len() == 2 {
                "both".into()
            } else {
                mods.join(",")
            },
            r: p.r(),
            d: p.d,
            spectrum_normalized: p
                .sigma
                .iter()
                .map(|s| (s / s1 * 1e6).round() / 1e6)
                .collect(),
            image: p.image.as_ref().map(ModalityMetadata::of),
            text: p.text.as_ref().map(ModalityMetadata::of),
        }
    }

    /// The modalities present, with their entries.
    pub fn modalities(&self) -> impl Iterator<Item = (Modality, &ModalityMetadata)> {
        [(Modality::Image, &self.image), (Modality::Text, &self.text)]
            .into_iter()
            .filter_map(|(m, entries)| Some((m, entries.as_ref()?)))
    }

    /// The entries as the file holds them, in key order.
    pub fn to_entries(&self) -> BTreeMap<String, String> {
        let mut entries = string_map(self);
        for (modality, maps) in self.modalities() {
            for (key, value) in string_map(maps) {
                entries.insert(format!("{}.{key}", modality.name()), value);
            }
        }
        entries
    }

    /// The entries the content checksum covers: all but the checksum and the tool version.
    pub fn checked_entries(&self) -> BTreeMap<String, String> {
        let mut entries = self.to_entries();
        entries.remove(CONTENT_SHA256);
        entries.remove(TOOL_VERSION);
        entries
    }

    /// Reads every entry; an error names the entry (missing, unknown, or not the value it must
    /// be). A modality's entries are read when its `k_top` entry is there; otherwise an entry
    /// with its prefix is unknown.
    pub fn from_entries(entries: &BTreeMap<String, String>) -> Result<Self, String> {
        let present: Vec<Modality> = [Modality::Image, Modality::Text]
            .into_iter()
            .filter(|m| entries.contains_key(&format!("{}.k_top", m.name())))
            .collect();
        let owner = |key: &str| {
            present.iter().copied().find(|m| {
                key.strip_prefix(m.name())
                    .is_some_and(|rest| rest.starts_with('.'))
            })
        };
        let mut meta: Metadata = read(entries.iter().filter(|(key, _)| owner(key).is_none()), "")?;
        for &modality in &present {
            let prefix = format!("{}.", modality.name());
            let maps = read(
                entries
                    .iter()
                    .filter(|(key, _)| owner(key) == Some(modality)),
                &prefix,
            )?;
            match modality {
                Modality::Image => meta.image = Some(maps),
                Modality::Text => meta.text = Some(maps),
            }
        }
        Ok(meta)
    }
}

impl ModalityMetadata {
    fn of(maps: &ModalityMaps) -> Self {
        ModalityMetadata {
            k_top: maps.band.k_top,
            k_bottom: maps.band.k_bottom,
            m: maps.m,
            d_in: maps.d_in,
            compact_dim: maps.compact_dim(),
            bias: maps.full.bias.is_some(),
            gap_top: maps.gap_top,
            gap_bottom: maps.gap_bottom,
            embedding_route: match &maps.embedding_compact {
                Ok(_) => Ok(()),
                Err(reason) => Err(reason.clone()),
            },
        }
    }
}

/// The file's `format` entry, read before anything else so that a safetensors file of another
/// kind is refused as such rather than for the entries it lacks.
pub(super) fn read_format(entries: &BTreeMap<String, String>) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Format {
        format: String,
    }
    read::<Format>(entries.iter(), "").map(|f| f.format)
}

/// The file's `format_version` entry, read right after its format so that a file of another
/// version is refused as such.
pub(super) fn read_format_version(entries: &BTreeMap<String, String>) -> Result<u32, String> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(with = "text::integer")]
        format_version: u32,
    }
    read::<Version>(entries.iter(), "").map(|v| v.format_version)
}

/// A struct's entries as strings, in key order. Every field is written as a string by the
/// helpers in [`text`] (or is one), so this cannot fail.
fn string_map<T: Serialize>(value: &T) -> BTreeMap<String, String> {
    let value = serde_json::to_value(value).expect("metadata serialises to JSON");
    serde_json::from_value(value).expect("every metadata value is written as a string")
}

/// Deserialises `T` from `entries`, whose keys all start with `prefix` (stripped to get the
/// field names).
fn read<'a, T: DeserializeOwned>(
    entries: impl Iterator<Item = (&'a String, &'a String)>,
    prefix: &str,
) -> Result<T, String> {
    T::deserialize(Entries {
        entries,
        prefix,
        current: None,
    })
    .map_err(|e| match e {
        EntryError::Missing(field) => format!("projector metadata lacks '{prefix}{field}'"),
        EntryError::Message(message) => message,
    })
}

/// An error while reading the entries.
#[derive(Debug)]
enum EntryError {
    /// A field the struct needs has no entry (serde names it without the prefix).
    Missing(&'static str),
    /// From a value helper, "is not an integer", until [`Entries`] adds the entry's name; then
    /// the whole message.
    Message(String),
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryError::Missing(field) => write!(f, "missing entry '{field}'"),
            EntryError::Message(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for EntryError {}

impl de::Error for EntryError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        EntryError::Message(message.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        EntryError::Missing(field)
    }
}

/// A serde deserializer over metadata entries (a map of strings) that knows which entry it is
/// reading, so its errors can name it.
struct Entries<'a, 'p, I> {
    entries: I,
    prefix: &'p str,
    /// The entry whose key was just read.
    current: Option<(&'a String, &'a String)>,
}

impl<'de, 'a, 'p, I> de::Deserializer<'de> for Entries<'a, 'p, I>
where
    I: Iterator<Item = (&'a String, &'a String)>,
{
    type Error = EntryError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, EntryError> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de, 'a, 'p, I> MapAccess<'de> for Entries<'a, 'p, I>
where
    I: Iterator<Item = (&'a String, &'a String)>,
{
    type Error = EntryError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, EntryError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.current = Some((key, value));
        let field: StrDeserializer<'_, EntryError> = key[self.prefix.len()..].into_deserializer();
        // The only error a field name can give: a struct with no such field.
        seed.deserialize(field).map(Some).map_err(|_| {
            EntryError::Message(format!("projector metadata has an unknown entry '{key}'"))
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, EntryError> {
        let (key, value) = self
            .current
            .take()
            .expect("serde reads a value right after its key");
        let text: StrDeserializer<'_, EntryError> = value.as_str().into_deserializer();
        seed.deserialize(text).map_err(|e| match e {
            EntryError::Message(what) => {
                EntryError::Message(format!("projector metadata '{key}' {what}"))
            }
            missing => missing,
        })
    }
}

/// Serde helpers for values stored as strings, one module per kind (`#[serde(with = ...)]`):
/// `serialize` writes the value as isoclip always has, `deserialize` reads it back or says what
/// the value is not ("is not an integer"; [`Entries`] adds the entry's name).
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Non-negative integers, in decimal.
    pub mod integer {
        use super::*;

        pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(value)
        }

        pub fn deserialize<'de, T: FromStr, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
            String::deserialize(d)?
                .parse()
                .map_err(|_| D::Error::custom("is not an integer"))
        }
    }

    /// `true` or `false`.
    pub mod flag {
        use super::*;

        pub fn serialize<S: Serializer>(value: &bool, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(value)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
            String::deserialize(d)?
                .parse()
                .map_err(|_| D::Error::custom("is not true or false"))
        }
    }

    /// An optional string that is there (a missing one is the field's default).
    pub fn some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        String::deserialize(d).map(Some)
    }

    /// A name, or `none` for no name.
    pub mod or_none {
        use super::*;

        pub fn serialize<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(value.as_deref().unwrap_or("none"))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
            let text = String::deserialize(d)?;
            Ok(Some(text).filter(|t| t != "none"))
        }
    }

    /// A finite number in Rust's `{:e}` notation (`6.61179621304126e0`), or `none`.
    pub mod gap {
        use super::*;

        pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(x) => s.collect_str(&format_args!("{x:e}")),
                None => s.serialize_str("none"),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            let text = String::deserialize(d)?;
            if text == "none" {
                return Ok(None);
            }
            text.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| D::Error::custom("is not a finite number"))
        }
    }

    /// A JSON list of numbers (`[1.0,0.559451]`), as serde_json writes it.
    pub mod number_list {
        use super::*;

        pub fn serialize<S: Serializer>(value: &[f64], s: S) -> Result<S::Ok, S::Error> {
            let json = serde_json::to_string(value).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&json)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
            // The list is derived from the spectrum tensor, so a value that is not one cannot be
            // what the writer wrote for it.
            serde_json::from_str(&String::deserialize(d)?).map_err(|_| {
                D::Error::custom(
                    "does not match the file's content (it is not a JSON list of numbers); the \
                     file was modified after it was written, refit it",
                )
            })
        }
    }

    /// The embedding route: `exact`, or the reason it is refused.
    pub mod route {
        use super::*;

        pub fn serialize<S: Serializer>(
            value: &Result<(), String>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Ok(()) => s.serialize_str("exact"),
                Err(reason) => s.serialize_str(reason),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Result<(), String>, D::Error> {
            let text = String::deserialize(d)?;
            Ok(if text == "exact" { Ok(()) } else { Err(text) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::{fit, BandSpec, ProjectorWeights};

    /// A small fitted projector of both modalities, the text one with a refused embedding
    /// route (bias-augmented) and a preset name.
    fn projector() -> AlignedProjector {
        let img: Vec<f64> = (0..12 * 8)
            .map(|i| ((i * 7 % 13) as f64 - 6.0) / 5.0)
            .collect();
        let txt: Vec<f64> = (0..10 * 8)
            .map(|i| ((i * 5 % 11) as f64 - 5.0) / 4.0)
            .collect();
        let w = ProjectorWeights::new(
            (12, 8, img),
            (10, 8, txt),
            None,
            Some(vec![0.5; 8]),
            "unit".into(),
        )
        .unwrap();
        let mut p = fit(
            &w,
            &[
                (Modality::Image, BandSpec::new(2, 3)),
                (Modality::Text, BandSpec::new(0, 3)),
            ],
            None,
        )
        .unwrap();
        p.preset = Some("vit-b-16".into());
        p
    }

    fn entries() -> BTreeMap<String, String> {
        Metadata::of(&projector(), "ab".repeat(32)).to_entries()
    }

    fn error_with(edit: impl FnOnce(&mut BTreeMap<String, String>)) -> String {
        let mut e = entries();
        edit(&mut e);
        Metadata::from_entries(&e).unwrap_err()
    }

    #[test]
    fn entries_read_back_to_the_same_metadata_and_the_same_entries() {
        let p = projector();
        let written = Metadata::of(&p, "ab".repeat(32));
        let e = written.to_entries();
        let read = Metadata::from_entries(&e).unwrap();
        assert_eq!(read, written);
        assert_eq!(read.to_entries(), e);
        // The values as the file spells them.
        assert_eq!(e["format"], "isoclip-projector");
        assert_eq!(e["format_version"], "2");
        assert_eq!(e["modality"], "both");
        assert_eq!(e["preset"], "vit-b-16");
        assert_eq!(e["synthetic"], "false");
        assert_eq!(e["text.bias"], "true");
        assert_eq!(e["image.bias"], "false");
        assert_eq!(e["text.k_top"], "0");
        assert_eq!(e["text.gap_top"], "none");
        assert_eq!(e["image.embedding_route"], "exact");
        assert_ne!(e["text.embedding_route"], "exact");
        let gap = p.image.as_ref().unwrap().gap_top.unwrap();
        assert_eq!(e["image.gap_top"], format!("{gap:e}"));
        assert!(e["spectrum_normalized"].starts_with("[1.0,"), "{e:?}");
        // The checksum covers all but itself and the tool version.
        let checked = written.checked_entries();
        assert_eq!(checked.len(), e.len() - 2);
        assert!(!checked.contains_key("content_sha256") && !checked.contains_key("tool_version"));
    }

    #[test]
    fn errors_name_the_entry() {
        assert_eq!(
            error_with(|e| {
                e.remove("image.d_in");
            }),
            "projector metadata lacks 'image.d_in'"
        );
        assert_eq!(
            error_with(|e| {
                e.remove("fingerprint");
            }),
            "projector metadata lacks 'fingerprint'"
        );
        assert_eq!(
            error_with(|e| {
                e.insert("r".into(), "ten".into());
            }),
            "projector metadata 'r' is not an integer"
        );
        assert_eq!(
            error_with(|e| {
                e.insert("text.compact_dim".into(), "-1".into());
            }),
            "projector metadata 'text.compact_dim' is not an integer"
        );
        assert_eq!(
            error_with(|e| {
                e.insert("image.bias".into(), "yes".into());
            }),
            "projector metadata 'image.bias' is not true or false"
        );
        assert_eq!(
            error_with(|e| {
                e.insert("text.gap_bottom".into(), "inf".into());
            }),
            "projector metadata 'text.gap_bottom' is not a finite number"
        );
        assert!(error_with(|e| {
            e.insert("spectrum_normalized".into(), "[1.0, NaN]".into());
        })
        .starts_with("projector metadata 'spectrum_normalized' does not match the file's content"));
        assert_eq!(
            error_with(|e| {
                e.insert("image.colour".into(), "blue".into());
            }),
            "projector metadata has an unknown entry 'image.colour'"
        );
        assert_eq!(
            error_with(|e| {
                e.insert("added".into(), "x".into());
            }),
            "projector metadata has an unknown entry 'added'"
        );
    }

    #[test]
    fn a_modality_is_present_when_its_k_top_is() {
        let mut e = entries();
        e.retain(|k, _| !k.starts_with("text."));
        let read = Metadata::from_entries(&e).unwrap();
        assert!(read.image.is_some() && read.text.is_none());
        // Without its k_top, a modality's other entries are unknown ones.
        e.insert("text.m".into(), "3".into());
        assert_eq!(
            Metadata::from_entries(&e).unwrap_err(),
            "projector metadata has an unknown entry 'text.m'"
        );
        // A key that only starts like a modality's belongs to no modality.
        let mut e = entries();
        e.insert("images".into(), "x".into());
        assert_eq!(
            Metadata::from_entries(&e).unwrap_err(),
            "projector metadata has an unknown entry 'images'"
        );
    }

    #[test]
    fn format_and_version_are_read_alone() {
        let foreign: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        assert_eq!(read_format(&foreign).unwrap(), "pt");
        assert_eq!(
            read_format_version(&foreign).unwrap_err(),
            "projector metadata lacks 'format_version'"
        );
        let mut e = entries();
        e.insert("format_version".into(), "two".into());
        assert_eq!(
            read_format_version(&e).unwrap_err(),
            "projector metadata 'format_version' is not an integer"
        );
        assert_eq!(
            read_format(&BTreeMap::new()).unwrap_err(),
            "projector metadata lacks 'format'"
        );
    }
}
