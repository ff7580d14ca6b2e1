//! Helpers shared by integration tests: deterministic weights, tiny safetensors/npy writers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use isoclip::align::synthetic::Rng;

/// Row-major uniform matrix with entries (u*2-1)*0.05, bit-identical to
/// tests/reference/apply_iso_reference.py's SplitMix64.uniform_matrix.
pub fn uniform_matrix(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f64> {
    (0..rows * cols)
        .map(|_| (rng.uniform() * 2.0 - 1.0) * 0.05)
        .collect()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A tensor to put in a test safetensors file: name, dtype string, shape, raw bytes.
pub struct StTensor {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl StTensor {
    pub fn f32(name: &str, shape: &[usize], data: &[f64]) -> Self {
        StTensor {
            name: name.into(),
            dtype: "F32",
            shape: shape.to_vec(),
            bytes: data
                .iter()
                .flat_map(|v| (*v as f32).to_le_bytes())
                .collect(),
        }
    }
    pub fn f16(name: &str, shape: &[usize], data: &[f64]) -> Self {
        StTensor {
            name: name.into(),
            dtype: "F16",
            shape: shape.to_vec(),
            bytes: data
                .iter()
                .flat_map(|v| half::f16::from_f64(*v).to_le_bytes())
                .collect(),
        }
    }
    pub fn bf16(name: &str, shape: &[usize], data: &[f64]) -> Self {
        StTensor {
            name: name.into(),
            dtype: "BF16",
            shape: shape.to_vec(),
            bytes: data
                .iter()
                .flat_map(|v| half::bf16::from_f64(*v).to_le_bytes())
                .collect(),
        }
    }
}

/// Writes a safetensors file by hand (independent of the code under test).
pub fn write_safetensors(path: &Path, tensors: &[StTensor]) {
    let mut header = String::from("{");
    let mut offset = 0;
    for (i, t) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{}\":{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{},{}]}}",
            t.name,
            t.dtype,
            t.shape,
            offset,
            offset + t.bytes.len()
        ));
        offset += t.bytes.len();
    }
    header.push('}');
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for t in tensors {
        out.extend_from_slice(&t.bytes);
    }
    std::fs::write(path, out).unwrap();
}

/// Writes a 2-D npy array with an arbitrary descr (bytes given raw).
pub fn write_npy_raw(path: &Path, descr: &str, shape: &[usize], fortran: bool, data: &[u8]) {
    let shape_s = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape_s}, }}",
        if fortran { "True" } else { "False" }
    );
    let total = (10 + dict.len() + 1).div_ceil(64) * 64;
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    b.extend_from_slice(dict.as_bytes());
    b.resize(total - 1, b' ');
    b.push(b'\n');
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

pub fn write_npy_f32(path: &Path, rows: usize, cols: usize, data: &[f64]) {
    let bytes: Vec<u8> = data
        .iter()
        .flat_map(|v| (*v as f32).to_le_bytes())
        .collect();
    write_npy_raw(path, "<f4", &[rows, cols], false, &bytes);
}

pub fn isoclip(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isoclip"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run isoclip")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failed run: exit code 1, the message contains every needle, no panic.
pub fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1, stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}
