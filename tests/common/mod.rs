//! Helpers shared by integration tests: deterministic weights, tiny safetensors/npy writers, and
//! running the `isoclip` binary (a projector and a gallery to work on, `isoclip project`, its
//! outputs).
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

/// The schedulers' variables that place a worker in a job (`isoclip project` reads them): a
/// test removes them, as it may itself run inside a Slurm job or a Kubernetes pod.
pub const SCHEDULER_VARIABLES: [&str; 9] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_JOB_ID",
    "JOB_COMPLETION_INDEX",
    "ISOCLIP_NUM_SHARDS",
    "ISOCLIP_SHARD_INDEX",
];

/// The `isoclip` binary as a command to build on, without [`SCHEDULER_VARIABLES`].
pub fn isoclip_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_isoclip"));
    for var in SCHEDULER_VARIABLES {
        c.env_remove(var);
    }
    c
}

pub fn isoclip(args: &[&str], cwd: &Path) -> Output {
    isoclip_command()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run isoclip")
}

/// Fits the synthetic projector into `dir/p.st` and returns its path.
pub fn fit_projector(dir: &Path) -> PathBuf {
    let o = isoclip(&["fit", "-o", "p.st"], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    dir.join("p.st")
}

/// Generates the gallery `dir/NAME/` of `shards` shards of `rows` rows of 768-dimensional f16
/// features (the synthetic model's) and returns its path.
pub fn gallery(dir: &Path, name: &str, shards: usize, rows: usize) -> PathBuf {
    let o = isoclip(
        &[
            "gallery",
            "--out",
            name,
            "--shards",
            &shards.to_string(),
            "--rows",
            &rows.to_string(),
            "--dim",
            "768",
            "--dtype",
            "f16",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    dir.join(name)
}

/// A work directory with the synthetic projector `p.st` and a gallery `g/` of `shards` shards
/// of `rows` rows.
pub fn setup(shards: usize, rows: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fit_projector(dir.path());
    gallery(dir.path(), "g", shards, rows);
    dir
}

/// `isoclip project --projector p.st --input INPUT --output OUTPUT --quiet EXTRA...` in `dir`.
pub fn project_cmd(dir: &Path, input: &str, output: &str, extra: &[&str]) -> Command {
    let mut c = isoclip_command();
    c.args([
        "project",
        "--projector",
        "p.st",
        "--input",
        input,
        "--output",
        output,
        "--quiet",
    ])
    .args(extra)
    .current_dir(dir);
    c
}

/// Runs [`project_cmd`].
pub fn project(dir: &Path, input: &str, output: &str, extra: &[&str]) -> Output {
    project_cmd(dir, input, output, extra)
        .output()
        .expect("run isoclip project")
}

/// The `.npy` files of `dir` (name, bytes), sorted by name; none when `dir` does not exist.
pub fn npy_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    if !dir.exists() {
        return Vec::new();
    }
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
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
