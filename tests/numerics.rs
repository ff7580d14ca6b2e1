//! Resource bounds a host process relies on: the library never aborts the process when memory is
//! short (it reports `Error::ResourceExhausted` or succeeds), and a panic caught at the C ABI
//! boundary prints nothing on the host's stderr.
//!
//! Both need a process of their own (an address-space limit, a clean stderr), so each test runs
//! this test binary again as a child with `ISOCLIP_NUMERICS_CHILD` set; the child does the work
//! and prints its outcome on stdout.

use std::process::{Command, Output};

use half::f16;
use isoclip::align::synthetic::Rng;
use isoclip::align::MatrixF32;
use isoclip::backend::cpu::CpuBackend;
use isoclip::backend::{Backend, ElemType, PreparedMap, ProjectionOptions, RowsIn, RowsOut};

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

fn workload() -> (PreparedMap, Vec<u8>) {
    let mut rng = Rng::new(42);
    let map = PreparedMap {
        weight: MatrixF32 {
            rows: D_IN,
            cols: D_OUT,
            data: (0..D_IN * D_OUT)
                .map(|_| (rng.normal() * 0.05) as f32)
                .collect(),
        },
        bias: None,
    };
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
            &map,
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
