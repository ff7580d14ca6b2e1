//! Hostile input to every parser of files we read: `.npy` headers (shards, biases), safetensors
//! checkpoints, projector files. Each test would have failed before the fix it guards: a wrong
//! silent result, a panic, a hang on a FIFO, or an unbounded read.

mod common;

use std::path::{Path, PathBuf};

use common::{write_npy_raw, write_safetensors, StTensor};
use isoclip::align::{fit, BandSpec, Modality, ProjectorWeights};
use isoclip::formats::checkpoint::{load_npy_vector, load_safetensors, load_safetensors_bytes};
use isoclip::formats::npy::{parse_header, Accept, NpyDtype, NpyMatrix};
use isoclip::formats::projector_file;

/// A version-1 `.npy` header around `dict` (padded as numpy pads), followed by `data`.
fn npy_v1(dict: &str, data: &[u8]) -> Vec<u8> {
    npy_with_version(1, dict.as_bytes(), data)
}

fn npy_with_version(version: u8, dict: &[u8], data: &[u8]) -> Vec<u8> {
    let prefix = if version == 1 { 10 } else { 12 };
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let mut b = b"\x93NUMPY".to_vec();
    b.extend_from_slice(&[version, 0]);
    if version == 1 {
        b.extend_from_slice(&((total - prefix) as u16).to_le_bytes());
    } else {
        b.extend_from_slice(&((total - prefix) as u32).to_le_bytes());
    }
    b.extend_from_slice(dict);
    b.resize(total - 1, b' ');
    b.push(b'\n');
    b.extend_from_slice(data);
    b
}

fn parse_err(dict: &str) -> String {
    parse_header(&npy_v1(dict, &[]), Path::new("h.npy"))
        .unwrap_err()
        .to_string()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

// ---- item 4: the header dict is read as numpy reads it, or refused ----

#[test]
fn duplicate_header_keys_are_refused_not_first_wins() {
    // numpy's literal_eval keeps the last 'fortran_order' (True); the old scanner took the first.
    let e = parse_err(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), 'fortran_order': True, }",
    );
    assert!(
        e.contains("h.npy") && e.contains("duplicate key 'fortran_order'"),
        "{e}"
    );
    let e = parse_err("{'descr': '<f4', 'descr': '<f2', 'fortran_order': False, 'shape': (2, 2)}");
    assert!(e.contains("duplicate key 'descr'"), "{e}");
}

#[test]
fn a_key_inside_a_string_value_is_not_taken_for_the_key() {
    // The old scanner found "'shape'" inside the note and read shape (1, 1).
    let e = parse_err("{'descr': '<f4', 'fortran_order': False, 'note': \"'shape': (1, 1)\"}");
    assert!(e.contains("unknown key 'note'"), "{e}");
}

#[test]
fn unknown_and_missing_keys_are_refused() {
    let e = parse_err("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': True}");
    assert!(e.contains("unknown key 'extra'"), "{e}");
    let e = parse_err("{'descr': '<f4', 'shape': (2,)}");
    assert!(e.contains("header has no 'fortran_order'"), "{e}");
    let e = parse_err("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}");
    assert!(e.contains("unexpected value starting with '0'"), "{e}");
    let e = parse_err("{'descr': '<f4', 'fortran_order': False, 'shape': (2)}");
    assert!(e.contains("is an integer, not a tuple"), "{e}");
    let e = parse_err("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} # c");
    assert!(e.contains("after the header dict"), "{e}");
}

#[test]
fn spacing_quotes_trailing_commas_and_long_suffixes_are_read_like_numpy() {
    let h = parse_header(
        &npy_v1(
            "{ \"shape\" :(\t2 ,3L, ) ,\n\"fortran_order\":True,\"descr\":\"<f8\"}",
            &[],
        ),
        Path::new("h.npy"),
    )
    .unwrap();
    assert_eq!(h.shape, vec![2, 3]);
    assert!(h.fortran_order);
    assert_eq!(h.dtype, Some(NpyDtype::F64));
    let h = parse_header(
        &npy_v1("{'descr': '|b1', 'fortran_order': False, 'shape': ()}", &[]),
        Path::new("h.npy"),
    )
    .unwrap();
    assert_eq!(h.shape, Vec::<usize>::new());
    // Python 2 longs only in versions 1 and 2, as numpy.
    let v3 = npy_with_version(
        3,
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (3L,)}",
        &[],
    );
    assert!(parse_header(&v3, Path::new("h.npy")).is_err());
}

#[test]
fn every_unsupported_dtype_is_refused_by_name_with_a_reason() {
    let d = tmp();
    for (descr, reason) in [
        (">f4", "big-endian"),
        ("<c8", "complex"),
        ("<M8[ns]", "datetimes"),
        ("|O", "object arrays"),
        ("<U4", "strings"),
        ("|S3", "strings"),
        ("|V8", "void"),
        ("<f16", "only 2-, 4- and 8-byte floats"),
        ("<i4", "floats only"),
    ] {
        let p = d.path().join("shard.npy");
        write_npy_raw(&p, descr, &[2, 2], false, &[0u8; 64]);
        let e = NpyMatrix::open(&p, Accept::Embeddings)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shard.npy")
                && e.contains(&format!("dtype '{descr}'"))
                && e.contains(reason),
            "{descr}: {e}"
        );
    }
    let e = parse_err("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}");
    assert!(e.contains("structured dtypes are not supported"), "{e}");
}

#[test]
fn shapes_whose_size_overflows_are_refused() {
    // 2^61 + 512 f8 values: times 8 bytes wraps to 4096, which the old loader accepted as a
    // 512-entry bias read from the 4096 bytes that follow the header.
    let d = tmp();
    let p = d.path().join("bias.npy");
    let n = (1usize << 61) + 512;
    write_npy_raw(&p, "<f8", &[n], false, &[0u8; 4096]);
    let e = load_npy_vector(&p).unwrap_err().to_string();
    assert!(
        e.contains("bias.npy") && e.contains("too large to address"),
        "{e}"
    );
    let s = d.path().join("shard.npy");
    write_npy_raw(&s, "<f4", &[1 << 62, 4], false, &[0u8; 64]);
    let e = NpyMatrix::open(&s, Accept::Embeddings)
        .unwrap_err()
        .to_string();
    assert!(e.contains("too large to address"), "{e}");
}

#[test]
fn truncated_bias_is_refused_and_a_good_one_is_read() {
    let d = tmp();
    let p = d.path().join("bias.npy");
    write_npy_raw(&p, "<f4", &[3], false, &[0u8; 8]);
    let e = load_npy_vector(&p).unwrap_err().to_string();
    assert!(e.contains("file is truncated"), "{e}");
    let data: Vec<u8> = [1.5f32, -2.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_npy_raw(&p, "<f4", &[3], false, &data);
    assert_eq!(load_npy_vector(&p).unwrap(), vec![1.5, -2.0, 4.0]);
}

// ---- item 6a: no panic on any input ----

#[test]
fn multibyte_descr_does_not_panic() {
    let d = tmp();
    let p = d.path().join("shard.npy");
    let bytes = npy_with_version(
        3,
        "{'descr': 'é4', 'fortran_order': False, 'shape': (1, 1)}".as_bytes(),
        &[0u8; 8],
    );
    std::fs::write(&p, bytes).unwrap();
    let e = NpyMatrix::open(&p, Accept::Embeddings)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dtype 'é4' is not supported"), "{e}");
    // Version 1 is latin-1: byte 0xE9 is the same character.
    let bytes = npy_v1(
        "{'descr': '\u{e9}4', 'fortran_order': False, 'shape': (1,)}",
        &[],
    );
    let _ = parse_header(&bytes, Path::new("h.npy"));
    for cut in 0..bytes.len() {
        let _ = parse_header(&bytes[..cut], Path::new("h.npy"));
    }
}

// ---- items 7 and 14: non-regular files, unbounded reads ----

/// A loader under test, returning its error message.
type Loader = Box<dyn Fn(&Path) -> String>;

#[test]
fn fifos_devices_and_directories_are_refused_by_name_everywhere() {
    let d = tmp();
    let fifo = d.path().join("pipe.npy");
    mkfifo(&fifo);
    let checks: Vec<(&str, Loader)> = vec![
        (
            "shard",
            Box::new(|p| {
                NpyMatrix::open(p, Accept::Embeddings)
                    .unwrap_err()
                    .to_string()
            }),
        ),
        (
            "bias",
            Box::new(|p| load_npy_vector(p).unwrap_err().to_string()),
        ),
        (
            "checkpoint",
            Box::new(|p| load_safetensors(p).unwrap_err().to_string()),
        ),
        (
            "projector",
            Box::new(|p| projector_file::load(p).unwrap_err().to_string()),
        ),
    ];
    for (what, check) in &checks {
        let e = check(&fifo);
        assert!(e.contains("pipe.npy") && e.contains("FIFO"), "{what}: {e}");
        let e = check(Path::new("/dev/zero"));
        assert!(
            e.contains("/dev/zero") && e.contains("character device") && !e.contains("empty"),
            "{what}: {e}"
        );
        let e = check(d.path());
        assert!(e.contains("is a directory"), "{what}: {e}");
    }
}

#[test]
fn checkpoint_header_size_and_tensor_count_are_capped() {
    let d = tmp();
    let p = d.path().join("many.safetensors");
    let mut header = String::from("{");
    for i in 0..70_000 {
        header.push_str(&format!(
            "\"t{i}\":{{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}},"
        ));
    }
    header.pop();
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = load_safetensors(&p).unwrap_err().to_string();
    assert!(
        e.contains("many.safetensors") && e.contains("more than 65536 tensors"),
        "{e}"
    );

    let mut big = (32u64 << 20).to_le_bytes().to_vec();
    big.resize(1024, b' ');
    let e = load_safetensors_bytes(&big, Path::new("big.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 16777216 bytes allowed"), "{e}");
}

#[test]
fn a_checkpoint_within_the_caps_still_loads() {
    let d = tmp();
    let p = d.path().join("ck.safetensors");
    let img: Vec<f64> = (0..6 * 4).map(|i| (i as f64 * 0.37).sin()).collect();
    let txt: Vec<f64> = (0..5 * 4).map(|i| (i as f64 * 0.91).cos()).collect();
    write_safetensors(
        &p,
        &[
            StTensor::f32("visual.proj", &[6, 4], &img),
            StTensor::f32("text_projection", &[5, 4], &txt),
        ],
    );
    let w = load_safetensors(&p).unwrap();
    assert_eq!(w.d(), 4);
}

// ---- item 19: a projector file's header is checked before its data is read ----

#[test]
fn a_huge_non_projector_file_is_refused_from_its_first_bytes() {
    // A 64 GiB sparse file starting with an .npy header: the old loader read all of it first.
    let d = tmp();
    let p = d.path().join("shard.npy");
    write_npy_raw(&p, "<f4", &[1 << 20, 16384], false, &[]);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(64 << 30).unwrap();
    let e = projector_file::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("shard.npy") && e.contains("more than 1048576 bytes allowed"),
        "{e}"
    );
}

// ---- item 5: the checksum covers the metadata ----

fn small_projector() -> isoclip::align::AlignedProjector {
    let img: Vec<f64> = (0..12 * 8)
        .map(|i| ((i * 7 % 13) as f64 - 6.0) / 5.0)
        .collect();
    let txt: Vec<f64> = (0..10 * 8)
        .map(|i| ((i * 5 % 11) as f64 - 5.0) / 4.0)
        .collect();
    let w = ProjectorWeights::new((12, 8, img), (10, 8, txt), None, None, "unit".into()).unwrap();
    fit(&w, &[(Modality::Image, BandSpec::new(2, 2))], None).unwrap()
}

/// Rewrites a safetensors file's header with `edit` (data unchanged), as a tamperer would.
fn rewrite_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = header.to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

fn set_meta(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    rewrite_header(bytes, |h| {
        h["__metadata__"][key] = serde_json::Value::String(value.into());
    })
}

#[test]
fn rewritten_projector_metadata_is_detected() {
    let bytes = projector_file::to_bytes(&small_projector());
    let path = Path::new("proj.safetensors");
    projector_file::from_bytes(&bytes, path).unwrap();
    for (key, value) in [
        ("source", "someone else's model"),
        ("synthetic", "true"),
        ("preset", "vit-l-14"),
        ("fingerprint", "0000"),
        ("image.k_top", "1"),
        ("image.gap_top", "NaN"),
        ("spectrum_normalized", "[1.0, NaN]"),
        ("added", "x"),
    ] {
        let e = projector_file::from_bytes(&set_meta(&bytes, key, value), path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("proj.safetensors"), "{key}: {e}");
        assert!(
            e.contains("checksum mismatch")
                || e.contains("does not match")
                || e.contains("unknown entry")
                || e.contains("not a finite number")
                || e.contains("disagrees"),
            "{key}: {e}"
        );
    }
    // A band beyond usize arithmetic is refused before it is added up (it used to overflow).
    let e = projector_file::from_bytes(
        &set_meta(&bytes, "image.k_top", &usize::MAX.to_string()),
        path,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("exceeds r"), "{e}");
    // tool_version is informational and not covered: rewriting it changes nothing read.
    projector_file::from_bytes(&set_meta(&bytes, "tool_version", "9.9.9"), path).unwrap();
}

#[test]
fn non_finite_spectrum_is_refused() {
    let bytes = projector_file::to_bytes(&small_projector());
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header["spectrum"]["data_offsets"][0].as_u64().unwrap() as usize;
    let mut bad = bytes.clone();
    bad[8 + n + start..8 + n + start + 8].copy_from_slice(&f64::NAN.to_le_bytes());
    let e = projector_file::from_bytes(&bad, Path::new("p.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'spectrum' has a non-finite value at index 0"),
        "{e}"
    );
}

#[test]
fn version_1_projector_files_are_refused_with_a_refit_request() {
    let bytes = projector_file::to_bytes(&small_projector());
    let e = projector_file::from_bytes(
        &set_meta(&bytes, "format_version", "1"),
        Path::new("old.safetensors"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("old.safetensors") && e.contains("re-run `isoclip fit`"),
        "{e}"
    );
}

#[test]
fn projector_files_round_trip_through_disk() {
    let d = tmp();
    let p: PathBuf = d.path().join("p.safetensors");
    let proj = small_projector();
    projector_file::save(&proj, &p).unwrap();
    let back = projector_file::load(&p).unwrap();
    assert_eq!(
        projector_file::content_digest(&back),
        projector_file::content_digest(&proj)
    );
    // A byte appended after the data is refused before parsing.
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.push(0);
    std::fs::write(&p, &bytes).unwrap();
    let e = projector_file::load(&p).unwrap_err().to_string();
    assert!(e.contains("header describes"), "{e}");
}

/// The header and the data of a safetensors file.
fn split_safetensors(bytes: &[u8]) -> (&str, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        std::str::from_utf8(&bytes[8..8 + n]).unwrap(),
        &bytes[8 + n..],
    )
}

#[test]
fn a_projector_file_written_by_an_earlier_isoclip_reads_and_is_written_again_byte_for_byte() {
    // Written by isoclip 0.1.0's writer (commit 853c8b6) from `small_projector()`.
    let seed = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/projector_file/seed-image-12x8.safetensors"),
    )
    .unwrap();
    let p = projector_file::from_bytes(&seed, Path::new("seed.safetensors")).unwrap();
    assert_eq!(p.source, "unit");
    assert_eq!(
        (p.r(), p.d, p.preset.as_deref(), p.synthetic),
        (10, 8, None, false)
    );
    let maps = p.image.as_ref().unwrap();
    assert_eq!((maps.band, maps.m, maps.d_in), (BandSpec::new(2, 2), 6, 12));
    assert_eq!(maps.gap_top, Some(6.61179621304126));
    assert_eq!(maps.gap_bottom, Some(1.1140775055861596));
    assert!(maps.embedding_compact.is_ok() && maps.full.bias.is_none());
    assert_eq!(
        projector_file::content_digest(&p),
        "d70b7bbe6614dd82c1919c502fbe9ebfc5c517aa0f127a423c3c266c316fe8a1"
    );

    // Fitting the same weights, and writing what was read, give the same bytes; only the
    // informational tool version may differ, and the header's padding with its length.
    let (seed_header, seed_data) = split_safetensors(&seed);
    let seed_header = seed_header.trim_end_matches(' ').replace(
        r#""tool_version":"0.1.0""#,
        &format!(r#""tool_version":"{}""#, env!("CARGO_PKG_VERSION")),
    );
    for bytes in [
        projector_file::to_bytes(&small_projector()),
        projector_file::to_bytes(&p),
    ] {
        let (header, data) = split_safetensors(&bytes);
        assert_eq!(header.trim_end_matches(' '), seed_header);
        assert!(data == seed_data, "the tensor data differ");
        if env!("CARGO_PKG_VERSION") == "0.1.0" {
            assert!(bytes == seed, "the files differ");
        }
    }
}

/// Writes the fuzz seed corpora for the checkpoint and projector targets with the crate's own
/// writers (`cargo test --test hostile_formats -- --ignored write_fuzz_seed_corpus`); the
/// `.npy` seeds come from numpy (`fuzz/make_npy_seeds.py`).
#[test]
#[ignore = "writes fuzz/corpus; run by hand when the formats change"]
fn write_fuzz_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let projector = root.join("projector_file");
    std::fs::create_dir_all(&projector).unwrap();
    std::fs::write(
        projector.join("seed-image-12x8.safetensors"),
        projector_file::to_bytes(&small_projector()),
    )
    .unwrap();
    let checkpoint = root.join("safetensors_checkpoint");
    std::fs::create_dir_all(&checkpoint).unwrap();
    let img: Vec<f64> = (0..6 * 4).map(|i| i as f64 / 7.0).collect();
    let txt: Vec<f64> = (0..5 * 4).map(|i| 1.0 - i as f64 / 9.0).collect();
    write_safetensors(
        &checkpoint.join("seed-openai.safetensors"),
        &[
            StTensor::f32("visual.proj", &[6, 4], &img),
            StTensor::f16("text_projection", &[5, 4], &txt),
        ],
    );
    write_safetensors(
        &checkpoint.join("seed-hf.safetensors"),
        &[
            StTensor::bf16("visual_projection.weight", &[4, 6], &img),
            StTensor::f32("text_projection.weight", &[4, 5], &txt),
            StTensor::f32("visual_projection.bias", &[4], &[0.5; 4]),
            StTensor::f32("text_projection.bias", &[4], &[0.25; 4]),
        ],
    );
}
