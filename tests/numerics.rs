//! Numbers and resources end to end: `isoclip project` never writes non-finite or unnormalised
//! rows for finite input (and refuses, naming the shard and row, what the output type cannot
//! hold); the library never aborts the process when memory is short (it reports
//! `Error::ResourceExhausted` or succeeds); a panic caught at the C ABI boundary prints nothing
//! on the host's stderr.
//!
//! The last two need a process of their own (an address-space limit, a clean stderr): the test
//! runs this test binary again as a child with `ISOCLIP_NUMERICS_CHILD` set; the child does the
//! work and prints its outcome on stdout.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{assert_fails_with, isoclip, stderr, write_npy_f32};

use half::f16;
use isoclip::align::synthetic::Rng;
use std::sync::Arc;

use isoclip::align::{LinearMap, MatrixF32};
use isoclip::backend::cpu::CpuBackend;
use isoclip::backend::{Backend, ElemType, ProjectionOptions, RowsIn, RowsOut};

const CHILD_ENV: &str = "ISOCLIP_NUMERICS_CHILD";

/// Runs the test `name` of this binary in a child process with `CHILD_ENV=mode`.
fn run_child(name: &str, mode: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the test binary as a child")
}

fn child_mode() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

const D_IN: usize = 768;
const D_OUT: usize = 512;
const ROWS: usize = 2048;

fn workload() -> (Arc<LinearMap>, Vec<u8>) {
    let mut rng = Rng::new(42);
    let map = LinearMap {
        weight: MatrixF32 {
            rows: D_IN,
            cols: D_OUT,
            data: (0..D_IN * D_OUT)
                .map(|_| (rng.normal() * 0.05) as f32)
                .collect(),
        },
        bias: None,
    };
    let map = Arc::new(map);
    let x = (0..ROWS * D_IN)
        .flat_map(|_| f16::from_f32(rng.normal() as f32).to_le_bytes())
        .collect();
    (map, x)
}

/// Projects the workload with `threads` threads; the output bytes or the error's text.
fn project_workload(threads: usize) -> Result<Vec<u8>, String> {
    let (map, x) = workload();
    let backend = CpuBackend::new(Some(threads)).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; ROWS * D_OUT * 2];
    let map = backend.prepare(map).map_err(|e| e.to_string())?;
    backend
        .project(
            &map,
            &ProjectionOptions::default(),
            RowsIn::dense(&x, ROWS, D_IN, ElemType::F16),
            RowsOut::dense(&mut out, ROWS, D_OUT, ElemType::F16),
        )
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The process's current virtual memory size in bytes.
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Child: limits its address space to what it uses now plus `headroom_mib`, then projects with
/// four threads and prints `ok <digest>` or `error <message>`.
fn limited_child(headroom_mib: u64) {
    let (map, x) = workload();
    let mut out = vec![0u8; ROWS * D_OUT * 2];
    let limit = vm_size() + (headroom_mib << 20);
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit reads the struct we pass; it has no other memory effects.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);
    let result = CpuBackend::new(Some(4)).and_then(|b| {
        b.project(
            &b.prepare(map)?,
            &ProjectionOptions::default(),
            RowsIn::dense(&x, ROWS, D_IN, ElemType::F16),
            RowsOut::dense(&mut out, ROWS, D_OUT, ElemType::F16),
        )
    });
    match result {
        Ok(_) => println!("CHILD ok {}", digest(&out)),
        Err(e) => println!("CHILD error {e}"),
    }
}

#[test]
fn projection_under_an_address_space_limit_succeeds_or_fails_cleanly_never_aborts() {
    if let Some(mode) = child_mode() {
        if let Some(mib) = mode.strip_prefix("rlimit:") {
            limited_child(mib.parse().unwrap());
        }
        return;
    }
    let want = digest(&project_workload(4).unwrap());
    let mut successes = 0;
    for headroom in [8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024] {
        let o = run_child(
            "projection_under_an_address_space_limit_succeeds_or_fails_cleanly_never_aborts",
            &format!("rlimit:{headroom}"),
        );
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "{headroom} MiB of headroom: the child died ({:?}); stderr: {stderr}",
            o.status
        );
        // libtest prints "test NAME ... " on the same line before the child's own output.
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("CHILD ").map(|(_, outcome)| outcome))
            .unwrap_or_else(|| panic!("{headroom} MiB: no outcome; stdout: {stdout}"));
        if let Some(d) = line.strip_prefix("ok ") {
            assert_eq!(d, want.to_string(), "{headroom} MiB: different bytes");
            successes += 1;
        } else {
            let message = line.strip_prefix("error ").unwrap();
            assert!(
                message.starts_with("cannot allocate") || message.starts_with("cannot start"),
                "{headroom} MiB: unexpected error: {message}"
            );
        }
    }
    // A generous limit is enough: the GEMM reserves nothing per thread beyond small buffers.
    assert!(successes >= 1, "no limit up to 1 GiB of headroom sufficed");
}

#[test]
fn a_panic_caught_at_the_c_boundary_prints_nothing() {
    if child_mode().as_deref() == Some("panic") {
        let status =
            isoclip::ffi::status::guard("isoclip_test", || panic!("boom from inside an export"));
        println!("CHILD status {}", status as i32);
        return;
    }
    let o = run_child("a_panic_caught_at_the_c_boundary_prints_nothing", "panic");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("CHILD status 255"), "{stdout}");
    assert!(
        !stderr.contains("boom") && !stderr.contains("panicked"),
        "the boundary printed: {stderr}"
    );
}

/// The rows of a 2-D little-endian f16 or f32 `.npy` file as f32 (a reader written for the test).
fn read_npy_rows(path: &Path) -> (usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    let shape = header.split("'shape': (").nth(1).unwrap();
    let dims: Vec<usize> = shape
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().parse().unwrap())
        .collect();
    let data = &bytes[start + header_len..];
    let values: Vec<f32> = if header.contains("'<f2'") {
        data.chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()
    } else {
        assert!(header.contains("'<f4'"), "{header}");
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    (dims[0], dims[1], values)
}

/// Extreme but finite feature rows for the synthetic ViT-B/16 image projector (768 inputs): a
/// base row scaled by 1e20 and 1e-30, constant rows of 1e-42 (subnormal), 3e38 and -3e38, and
/// the base row itself (last).
fn write_extreme_rows(dir: &Path) -> Vec<f64> {
    let d = 768;
    let mut rng = Rng::new(3);
    let base: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let mut rows = Vec::new();
    for f in [1e20, 1e-30] {
        rows.extend(base.iter().map(|v| v * f));
    }
    for c in [1e-42, 3e38, -3e38] {
        rows.extend(std::iter::repeat_n(c, d));
    }
    rows.extend(&base);
    std::fs::create_dir_all(dir.join("in")).unwrap();
    write_npy_f32(&dir.join("in/rows.npy"), 6, d, &rows);
    rows
}

#[test]
fn finite_extreme_rows_project_to_finite_unit_rows_in_f16_and_f32() {
    let dir = tempfile::tempdir().unwrap();
    write_extreme_rows(dir.path());
    let o = isoclip(&["fit", "-o", "p.st"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    for dtype in ["f16", "f32"] {
        let out = format!("out_{dtype}");
        let o = isoclip(
            &[
                "project",
                "--projector",
                "p.st",
                "--input",
                "in",
                "--output",
                &out,
                "--dtype",
                dtype,
                "--device",
                "cpu",
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{dtype}: {}", stderr(&o));
        let (rows, cols, y) = read_npy_rows(&dir.path().join(&out).join("rows.npy"));
        assert_eq!(rows, 6);
        let tol = if dtype == "f16" { 2e-3 } else { 1e-5 };
        let row = |r: usize| &y[r * cols..(r + 1) * cols];
        for r in 0..rows {
            assert!(
                row(r).iter().all(|v| v.is_finite()),
                "{dtype}: row {r} not finite"
            );
            let n = row(r)
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((n - 1.0).abs() < tol, "{dtype}: row {r} has norm {n}");
        }
        // Scaling a row does not change its direction: rows 0 and 1 equal the base row (5), and
        // the constant rows 3 and 4 are opposite.
        for (a, b, sign) in [(0, 5, 1.0), (1, 5, 1.0), (3, 4, -1.0)] {
            for (p, q) in row(a).iter().zip(row(b)) {
                assert!(
                    (p - sign * q).abs() < tol as f32,
                    "{dtype}: rows {a} and {b} differ"
                );
            }
        }
    }
}

#[test]
fn unnormalised_results_beyond_f16_name_the_shard_and_row_or_become_counted_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let d = 768;
    let mut rng = Rng::new(4);
    let mut rows: Vec<f64> = (0..4 * d).map(|_| rng.normal()).collect();
    rows[2 * d..3 * d].iter_mut().for_each(|v| *v *= 1e6);
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    write_npy_f32(&dir.path().join("in/big.npy"), 4, d, &rows);
    let o = isoclip(&["fit", "-o", "p.st"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let project = |extra: &[&str]| {
        let mut args = vec![
            "project",
            "--projector",
            "p.st",
            "--input",
            "in",
            "--output",
            "out",
            "--no-normalize",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        isoclip(&args, dir.path())
    };
    let o = project(&[]);
    assert_fails_with(
        &o,
        &[
            "big.npy: row 2: the unnormalised result exceeds the f16 range (largest finite value \
           65504)",
        ],
    );
    assert!(!dir.path().join("out/big.npy").exists(), "partial output");
    let o = project(&["--nonfinite", "zero"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, cols, y) = read_npy_rows(&dir.path().join("out/big.npy"));
    assert!(y[2 * cols..3 * cols].iter().all(|v| *v == 0.0));
    assert!(y.iter().all(|v| v.is_finite()));
    assert!(y[..cols].iter().any(|v| *v != 0.0));
    // f32 holds the same values: no error.
    let o = project(&["--dtype", "f32", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
