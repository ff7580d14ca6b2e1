//! The projector file: a safetensors file with `__metadata__`, so Python users can open it with
//! `safetensors.numpy.load_file` and read the metadata with `safe_open(...).metadata()`.
//!
//! We write it ourselves (the format is an 8-byte length, a JSON header, raw little-endian data)
//! so the bytes are fully determined: keys sorted, tensors in name order, no hash-map order
//! anywhere. Two fits of the same weights and band give byte-identical files.
//!
//! Layout (per modality M in {image, text}; `.bias` only for bias-augmented projectors):
//!
//! ```text
//!   spectrum                     F64 [r]         singular values of Ψ, descending
//!   M.full.weight / .bias        F32 [d_in, d]   the paper's map U_m U_mᵀ P
//!   M.compact.weight / .bias     F32 [d_in, k]   same cosines, k = min(m, d) dims
//!   M.embedding.compact          F32 [d, k]      from already-projected embeddings (if exact)
//!   M.embedding.full             F32 [d, d]
//!   M.plain.weight / .bias       F32 [d_in, d]   the original projector (baseline)
//! ```

mod metadata;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::align::{hex, AlignedProjector, BandSpec, LinearMap, MatrixF32, Modality, ModalityMaps};
use crate::error::{Error, Result};
use crate::formats::read::{
    check_safetensors_bytes, open_regular, read_safetensors_header, SafetensorsLimits,
};
use metadata::{Metadata, TOOL_VERSION};

pub const FORMAT_NAME: &str = "isoclip-projector";
/// Version 2: the content checksum covers the metadata as well as the tensors. Version 1 files
/// (checksum over tensors only) are refused with a request to refit.
pub const FORMAT_VERSION: u32 = 2;

/// Caps on a projector file's safetensors header: it holds at most 17 tensors and a metadata
/// block of a few kB (the normalized spectrum is the longest entry).
pub const PROJECTOR_LIMITS: SafetensorsLimits = SafetensorsLimits {
    what: "an isoclip projector file",
    max_header_bytes: 1 << 20,
    max_tensors: 64,
};

enum TensorData<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

struct Entry<'a> {
    shape: Vec<usize>,
    data: TensorData<'a>,
}

fn collect_tensors(p: &AlignedProjector) -> BTreeMap<String, Entry<'_>> {
    let mut t = BTreeMap::new();
    t.insert(
        "spectrum".to_string(),
        Entry {
            shape: vec![p.sigma.len()],
            data: TensorData::F64(&p.sigma),
        },
    );
    for maps in [&p.image, &p.text].into_iter().flatten() {
        let mname = maps.modality.name();
        for (kind, map) in [
            ("full", &*maps.full),
            ("compact", &*maps.compact),
            ("plain", &*maps.plain),
        ] {
            t.insert(
                format!("{mname}.{kind}.weight"),
                Entry {
                    shape: vec![map.weight.rows, map.weight.cols],
                    data: TensorData::F32(&map.weight.data),
                },
            );
            if let Some(b) = &map.bias {
                t.insert(
                    format!("{mname}.{kind}.bias"),
                    Entry {
                        shape: vec![b.len()],
                        data: TensorData::F32(b),
                    },
                );
            }
        }
        for (kind, m) in [
            ("compact", &maps.embedding_compact),
            ("full", &maps.embedding_full),
        ] {
            if let Ok(m) = m {
                t.insert(
                    format!("{mname}.embedding.{kind}"),
                    Entry {
                        shape: vec![m.weight.rows, m.weight.cols],
                        data: TensorData::F32(&m.weight.data),
                    },
                );
            }
        }
    }
    t
}

fn entry_bytes(e: &Entry<'_>) -> Vec<u8> {
    match e.data {
        TensorData::F32(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
        TensorData::F64(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// SHA-256 over every tensor's name, shape and bytes, in name order, then every metadata entry
/// (key and value, in key order) except the checksum and the tool version: identifies the
/// projector (weights, band, provenance) in output manifests, and detects corruption or
/// rewriting on load.
pub fn content_digest(p: &AlignedProjector) -> String {
    let mut h = Sha256::new();
    for (name, e) in collect_tensors(p) {
        h.update(name.as_bytes());
        h.update([0]);
        for s in &e.shape {
            h.update((*s as u64).to_le_bytes());
        }
        h.update(entry_bytes(&e));
    }
    h.update(b"\0metadata\0");
    // The checksum is not among the entries it covers: any placeholder for it will do.
    for (key, value) in Metadata::of(p, String::new()).checked_entries() {
        for part in [key.as_bytes(), value.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    hex(&h.finalize())
}

/// Every metadata entry, as written.
fn metadata(p: &AlignedProjector, digest: &str) -> BTreeMap<String, String> {
    Metadata::of(p, digest.into()).to_entries()
}

/// Serialises the projector to bytes (deterministic).
pub fn to_bytes(p: &AlignedProjector) -> Vec<u8> {
    let tensors = collect_tensors(p);
    let digest = content_digest(p);
    let mut header = serde_json::Map::new();
    let md: serde_json::Map<String, Value> = metadata(p, &digest)
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    header.insert("__metadata__".into(), Value::Object(md));
    let mut offset = 0usize;
    let mut blobs = Vec::new();
    for (name, e) in &tensors {
        let bytes = entry_bytes(e);
        let dtype = match e.data {
            TensorData::F32(_) => "F32",
            TensorData::F64(_) => "F64",
        };
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": e.shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
        blobs.push(bytes);
    }
    let mut header_text = Value::Object(header).to_string().into_bytes();
    while !header_text.len().is_multiple_of(8) {
        header_text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header_text.len() + offset);
    out.extend_from_slice(&(header_text.len() as u64).to_le_bytes());
    out.extend_from_slice(&header_text);
    for b in blobs {
        out.extend_from_slice(&b);
    }
    out
}

/// Writes the projector file atomically.
pub fn save(p: &AlignedProjector, path: &Path) -> Result<()> {
    crate::formats::atomic_write(path, &to_bytes(p))
}

/// Reads and verifies a projector file: format and version, shapes against the metadata,
/// the content checksum (tensors and metadata), finite values, and that the compact map
/// reproduces the full map's inner products on fixed probe vectors. The 8-byte header length and
/// the header are read and checked first; the data is read only if the header describes a file
/// of exactly this size.
pub fn load(path: &Path) -> Result<AlignedProjector> {
    let (file, len) = open_regular(path)?;
    let (_, expected_len) = read_safetensors_header(&file, len, path, PROJECTOR_LIMITS)?;
    if expected_len != len {
        return Err(Error::format(
            path,
            format!(
                "not a readable projector file: its header describes {expected_len} bytes but the file has {len}"
            ),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes, path)
}

/// [`load`] on a file already in memory (`path` names it in messages).
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<AlignedProjector> {
    check_safetensors_bytes(bytes, path, PROJECTOR_LIMITS)?;
    let bad = |m: String| Error::format(path, m);
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a readable projector file (safetensors): {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a readable projector file (safetensors): {e}")))?;
    let entries: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .ok_or_else(|| bad("no isoclip metadata: this is a safetensors file but not an isoclip projector file (make one with `isoclip fit`)".into()))?
        .into_iter()
        .collect();
    // What the file is, before anything else: another kind of file, or another version, is
    // refused as such rather than for the entries it lacks.
    let format = metadata::read_format(&entries).map_err(bad)?;
    if format != FORMAT_NAME {
        return Err(bad(format!(
            "not an isoclip projector file (format '{format}')"
        )));
    }
    let version = metadata::read_format_version(&entries).map_err(bad)?;
    if version == 1 {
        return Err(Error::unsupported(
            path,
            "projector format version 1 (written by an older isoclip) has a checksum that does not cover its metadata, so it cannot be verified; re-run `isoclip fit` to write it again",
        ));
    }
    if version != FORMAT_VERSION {
        return Err(Error::unsupported(
            path,
            format!(
                "projector format version {version} is not supported by isoclip {} (it reads version {FORMAT_VERSION}); refit with this version",
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    let md = Metadata::from_entries(&entries).map_err(bad)?;
    let (r, d) = (md.r, md.d);

    let read_f32 = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let v = st
            .tensor(name)
            .map_err(|_| bad(format!("tensor '{name}' is missing")))?;
        if v.dtype() != Dtype::F32 || v.shape() != shape {
            return Err(bad(format!(
                "tensor '{name}' is {:?} {:?}, expected F32 {:?}",
                v.dtype(),
                v.shape(),
                shape
            )));
        }
        let data: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!(
                "tensor '{name}' has a non-finite value at index {i}"
            )));
        }
        Ok(data)
    };
    let spec = st
        .tensor("spectrum")
        .map_err(|_| bad("tensor 'spectrum' is missing".into()))?;
    if spec.dtype() != Dtype::F64 || spec.shape() != [r] {
        return Err(bad(format!(
            "tensor 'spectrum' is {:?} {:?}, expected F64 [{r}]",
            spec.dtype(),
            spec.shape()
        )));
    }
    let sigma: Vec<f64> = spec
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    if let Some(i) = sigma.iter().position(|x| !x.is_finite()) {
        return Err(bad(format!(
            "tensor 'spectrum' has a non-finite value at index {i}"
        )));
    }

    let mut out = AlignedProjector {
        fingerprint: md.fingerprint.clone(),
        source: md.source.clone(),
        preset: md.preset.clone(),
        sigma,
        d,
        image: None,
        text: None,
        synthetic: md.synthetic,
    };
    for (modality, entries) in md.modalities() {
        let m = modality.name();
        let (k_top, k_bottom) = (entries.k_top, entries.k_bottom);
        if k_top > r || k_bottom > r {
            return Err(bad(format!(
                "{m}.k_top {k_top} or {m}.k_bottom {k_bottom} exceeds r = {r}"
            )));
        }
        let band = BandSpec::new(k_top, k_bottom);
        let kept = band.kept(r).map_err(|e| bad(e.to_string()))?;
        if entries.m != kept {
            return Err(bad(format!("{m}.m disagrees with r, k_top and k_bottom")));
        }
        let (d_in, k) = (entries.d_in, entries.compact_dim);
        if k != kept.min(d) {
            return Err(bad(format!(
                "{m}.compact_dim {k} is not min(m, d) = {}",
                kept.min(d)
            )));
        }
        let has_bias = entries.bias;
        let read_map = |kind: &str, cols: usize| -> Result<LinearMap> {
            let w = read_f32(&format!("{m}.{kind}.weight"), &[d_in, cols])?;
            let bias = if has_bias {
                Some(read_f32(&format!("{m}.{kind}.bias"), &[cols])?)
            } else {
                None
            };
            Ok(LinearMap {
                weight: MatrixF32 {
                    rows: d_in,
                    cols,
                    data: w,
                },
                bias,
            })
        };
        let (embedding_compact, embedding_full) = if let Err(reason) = &entries.embedding_route {
            (Err(reason.clone()), Err(reason.clone()))
        } else {
            (
                Ok(Arc::new(LinearMap::unbiased(MatrixF32 {
                    rows: d,
                    cols: k,
                    data: read_f32(&format!("{m}.embedding.compact"), &[d, k])?,
                }))),
                Ok(Arc::new(LinearMap::unbiased(MatrixF32 {
                    rows: d,
                    cols: d,
                    data: read_f32(&format!("{m}.embedding.full"), &[d, d])?,
                }))),
            )
        };
        let maps = ModalityMaps {
            modality,
            band,
            m: kept,
            d_in,
            d,
            full: Arc::new(read_map("full", d)?),
            compact: Arc::new(read_map("compact", k)?),
            embedding_compact,
            embedding_full,
            plain: Arc::new(read_map("plain", d)?),
            gap_top: entries.gap_top,
            gap_bottom: entries.gap_bottom,
        };
        check_compact_matches_full(&maps).map_err(bad)?;
        match modality {
            Modality::Image => out.image = Some(maps),
            Modality::Text => out.text = Some(maps),
        }
    }
    if out.image.is_none() && out.text.is_none() {
        return Err(bad("projector file holds no modality".into()));
    }
    let digest = content_digest(&out);
    if digest != md.content_sha256 {
        return Err(bad(
            "content checksum mismatch: the file was modified or corrupted after it was written; refit it".into(),
        ));
    }
    check_metadata_is_exactly(&entries, &metadata(&out, &digest)).map_err(bad)?;
    Ok(out)
}

/// The metadata must be exactly what this projector's writer produces: no unknown entries, and
/// no entry (derived ones such as `spectrum_normalized` included) differing from it.
fn check_metadata_is_exactly(
    found: &BTreeMap<String, String>,
    expected: &BTreeMap<String, String>,
) -> std::result::Result<(), String> {
    let mut keys: Vec<&String> = found.keys().chain(expected.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        if key == TOOL_VERSION {
            continue;
        }
        match (found.get(key), expected.get(key)) {
            (Some(_), None) => return Err(format!("projector metadata has an unknown entry '{key}'")),
            (None, Some(_)) => return Err(format!("projector metadata lacks '{key}'")),
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "projector metadata '{key}' does not match the file's content; the file was modified after it was written, refit it"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The compact and full maps must give the same inner products; checked on fixed probes.
fn check_compact_matches_full(maps: &ModalityMaps) -> std::result::Result<(), String> {
    let mut rng = crate::align::synthetic::Rng::new(7);
    let probes: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..maps.d_in).map(|_| rng.normal() as f32).collect())
        .collect();
    let full: Vec<Vec<f64>> = probes.iter().map(|x| maps.full.apply_row(x)).collect();
    let comp: Vec<Vec<f64>> = probes.iter().map(|x| maps.compact.apply_row(x)).collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for i in 0..probes.len() {
        for j in 0..probes.len() {
            let a = dot(&full[i], &full[j]);
            let b = dot(&comp[i], &comp[j]);
            let scale = dot(&full[i], &full[i]).sqrt() * dot(&full[j], &full[j]).sqrt();
            if (a - b).abs() > 1e-3 * scale.max(1e-30) {
                return Err(format!(
                    "{} maps are inconsistent: the compact map does not reproduce the full map's inner products; the file cannot be trusted, refit it",
                    maps.modality
                ));
            }
        }
    }
    Ok(())
}
