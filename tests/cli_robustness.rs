//! The command line under hostile conditions: a closed stdout, SIGINT/SIGTERM in the middle of a
//! run, outputs that are devices/FIFOs/directories, a gallery larger than the disk; and the
//! wording and help a new user reads.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use common::{gallery, isoclip, isoclip_command, stderr, stdout};

fn ok(args: &[&str], dir: &Path) -> Output {
    let o = isoclip(args, dir);
    assert!(o.status.success(), "isoclip {args:?}: {}", stderr(&o));
    o
}

/// Runs a command that must fail cleanly (exit 1, no panic); returns its stderr.
fn fails(args: &[&str], dir: &Path) -> String {
    let o = isoclip(args, dir);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "isoclip {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Files under `dir` (recursively) whose name marks a temporary.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(temporaries(&p));
        } else if p.to_string_lossy().ends_with(".isoclip-tmp") {
            out.push(p);
        }
    }
    out
}

// ---- 6b: a closed stdout is a quiet success ----

/// Runs `args` with stdout a pipe whose read end is closed before the command writes.
fn with_closed_stdout(args: &[&str], dir: &Path) -> Output {
    let mut child = isoclip_command()
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(&["fit", "-o", "p.st"], dir);
    gallery(dir, "g", 1, 64);
    let commands: &[&[&str]] = &[
        &["inspect", "p.st"],
        &["inspect", "p.st", "--json"],
        &["fit", "-o", "q.st"],
        &["eval"],
        &["eval", "--json"],
        &[
            "project",
            "--projector",
            "p.st",
            "--input",
            "g",
            "--output",
            "o1",
            "--json",
        ],
        &[
            "project",
            "--projector",
            "p.st",
            "--input",
            "g",
            "--output",
            "o2",
        ],
        &["sweep", "--k-top-grid", "200", "--k-bottom-grid", "50"],
        &[
            "sweep",
            "--k-top-grid",
            "200",
            "--k-bottom-grid",
            "50",
            "--json",
        ],
        &["spectrum", "--svg", "s.svg"],
        &[
            "gallery", "--out", "g2", "--shards", "1", "--rows", "8", "--dim", "4",
        ],
    ];
    for args in commands {
        let o = with_closed_stdout(args, dir);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(0), "isoclip {args:?}: {err}");
        assert!(!err.contains("panicked"), "isoclip {args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "isoclip {args:?}: {err}");
    }
    // The work itself was done.
    assert!(dir.join("o1/img_emb_0000.npy").is_file());
}

// ---- 9: SIGINT / SIGTERM ----

/// Starts `args` with stderr piped, waits for a stderr line starting with `marker`, sends
/// `signal`, and returns the exit status and the whole stderr.
fn interrupt_after(
    args: &[&str],
    dir: &Path,
    marker: &str,
    signal: i32,
) -> (std::process::ExitStatus, String) {
    let mut child: Child = isoclip_command()
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "isoclip {args:?} ended before '{marker}': {seen}");
        seen.push_str(&line);
        if line.starts_with(marker) {
            break;
        }
    }
    // SAFETY: kill(2) with the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0);
    reader.read_to_string(&mut seen).unwrap();
    (child.wait().unwrap(), seen)
}

/// The shard names recorded in `dir`'s manifest.
fn manifest_shards(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("isoclip-manifest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut names: Vec<String> = v["shards"].as_object().unwrap().keys().cloned().collect();
    names.sort();
    names
}

/// The interrupted line: "interrupted: kept N finished shard(s) in DIR; rerun ..."; returns N.
fn kept_shards(stderr: &str, dir: &str) -> usize {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("interrupted: "))
        .unwrap_or_else(|| panic!("no interrupted line: {stderr}"));
    let rest = line.strip_prefix("interrupted: kept ").unwrap();
    let n: usize = rest.split(' ').next().unwrap().parse().unwrap();
    let noun = if n == 1 { "shard" } else { "shards" };
    assert_eq!(
        line,
        format!("interrupted: kept {n} finished {noun} in {dir}; rerun the same command to resume")
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("interrupted"))
            .count(),
        1
    );
    n
}

fn interrupted_project_resumes_byte_identical(signal: i32, expected_code: i32) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(&["fit", "-o", "p.st"], dir);
    gallery(dir, "g", 10, 6000);
    let args = |out: &'static str| {
        vec![
            "project",
            "--projector",
            "p.st",
            "--input",
            "g",
            "--output",
            out,
            "--threads",
            "1",
            "--chunk-bytes",
            "65536",
        ]
    };
    let (status, err) = interrupt_after(&args("out"), dir, "done ", signal);
    assert_eq!(status.code(), Some(expected_code), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let kept = kept_shards(&err, "out");
    assert!((1..10).contains(&kept), "{err}");
    assert_eq!(temporaries(dir), Vec::<PathBuf>::new());
    let recorded = manifest_shards(&dir.join("out"));
    assert_eq!(recorded.len(), kept, "{err}");
    for name in &recorded {
        assert!(dir.join("out").join(name).is_file());
    }

    // The rerun finishes the rest and ends byte-identical to an uninterrupted run.
    let rerun = ok(&args("out"), dir);
    assert!(
        stdout(&rerun).contains(&format!("({kept} skipped as already done")),
        "{}",
        stdout(&rerun)
    );
    ok(&args("reference"), dir);
    for i in 0..10 {
        let name = format!("img_emb_{i:04}.npy");
        let a = std::fs::read(dir.join("out").join(&name)).unwrap();
        let b = std::fs::read(dir.join("reference").join(&name)).unwrap();
        assert!(
            a == b,
            "{name} differs after the interrupted run was resumed"
        );
    }
}

#[test]
fn sigint_stops_project_at_a_chunk_and_a_rerun_resumes() {
    interrupted_project_resumes_byte_identical(libc::SIGINT, 130);
}

#[test]
fn sigterm_stops_project_at_a_chunk_and_a_rerun_resumes() {
    interrupted_project_resumes_byte_identical(libc::SIGTERM, 143);
}

#[test]
fn sigint_stops_gallery_keeping_finished_shards() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let args = [
        "gallery", "--out", "g", "--shards", "12", "--rows", "40000", "--dim", "768",
    ];
    let (status, err) = interrupt_after(&args, dir, "wrote ", libc::SIGINT);
    assert_eq!(status.code(), Some(130), "{err}");
    let kept = kept_shards(&err, "g");
    assert!((1..12).contains(&kept), "{err}");
    assert_eq!(temporaries(dir), Vec::<PathBuf>::new());
    assert_eq!(std::fs::read_dir(dir.join("g")).unwrap().count(), kept);
}

// ---- 12: outputs that are not regular files are refused before any work ----

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn outputs_that_are_fifos_or_directories_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    mkfifo(&dir.join("fifo"));
    std::fs::create_dir(dir.join("adir")).unwrap();
    std::fs::write(dir.join("afile"), b"x").unwrap();
    std::fs::create_dir(dir.join("svgdir-precision-at-k.svg")).unwrap();

    let fifo = "fifo: is a FIFO (named pipe), not a regular file";
    let adir = "adir: is a directory, not a regular file";
    assert_eq!(
        fails(&["fit", "-o", "fifo"], dir),
        format!("error: {fifo}\n")
    );
    assert_eq!(
        fails(&["fit", "-o", "adir"], dir),
        format!("error: {adir}\n")
    );
    assert!(fails(&["spectrum", "--svg", "fifo"], dir).ends_with(&format!("error: {fifo}\n")));
    assert!(fails(&["sweep", "-o", "adir"], dir).ends_with(&format!("error: {adir}\n")));
    assert_eq!(
        fails(&["eval", "--svg", "svgdir"], dir),
        "error: svgdir-precision-at-k.svg: is a directory, not a regular file\n"
    );
    let not_dir = "exists and is not a directory; give a directory for the output";
    assert_eq!(
        fails(
            &["gallery", "--out", "afile", "--rows", "8", "--dim", "4"],
            dir
        ),
        format!("error: afile: {not_dir}\n")
    );
    // Nothing was replaced or left behind.
    assert!(dir.join("adir").is_dir());
    assert_eq!(std::fs::read(dir.join("afile")).unwrap(), b"x");
    assert_eq!(temporaries(dir), Vec::<PathBuf>::new());
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(dir.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

// ---- 8b: a gallery that does not fit is refused with the numbers ----

#[test]
fn gallery_larger_than_the_disk_is_refused_with_the_numbers() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let err = fails(
        &[
            "gallery",
            "--out",
            "big",
            "--shards",
            "1000",
            "--rows",
            "100000000",
            "--dim",
            "768",
        ],
        dir,
    );
    assert!(
        err.starts_with(
            "error: big: the gallery needs 153.60 TB (1000 x 153600000128 bytes) but the file system has "
        ),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.join("big")).unwrap().count(), 0);
}

// ---- 14 (part): the two-modality projector error names the file ----

#[test]
fn a_two_modality_projector_without_modality_is_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(&["fit", "--modality", "both", "-o", "both.st"], dir);
    gallery(dir, "g", 1, 16);
    let err = fails(
        &[
            "project",
            "--projector",
            "both.st",
            "--input",
            "g",
            "--output",
            "o",
        ],
        dir,
    );
    assert!(
        err.starts_with("error: both.st: the projector file holds both image and text maps"),
        "{err}"
    );
    assert!(
        !dir.join("o").exists(),
        "nothing is written before the check"
    );
    let err = fails(
        &[
            "eval",
            "--projector",
            "both.st",
            "--features",
            "g/img_emb_0000.npy",
            "--labels",
            "l.npy",
        ],
        dir,
    );
    assert!(
        err.starts_with("error: both.st: the projector file holds both image and text maps"),
        "{err}"
    );
}

// ---- wording ----

#[test]
fn summaries_agree_in_number_and_say_synthetic_and_f16() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(&["fit", "-o", "p.st"], dir);
    let o = ok(
        &[
            "gallery", "--out", "g", "--shards", "1", "--rows", "10", "--dim", "768",
        ],
        dir,
    );
    assert_eq!(
        stdout(&o),
        "wrote 1 SYNTHETIC shard of 10 x 768 f16 (15.49 kB) to g\n"
    );
    let args = [
        "project",
        "--projector",
        "p.st",
        "--input",
        "g",
        "--output",
        "o",
        "--device",
        "auto",
    ];
    let first = ok(&args, dir);
    let text = stdout(&first);
    assert!(text.starts_with("SYNTHETIC projector"), "{text}");
    assert!(
        text.contains("projected 10 rows in 1 shard (0 skipped"),
        "{text}"
    );
    // A rerun computes nothing: no device note, nothing but the summary.
    let second = ok(&args, dir);
    assert!(!stderr(&second).contains("note:"), "{}", stderr(&second));
    assert!(stdout(&second)
        .contains("projected 0 rows in 0 shards (1 skipped as already done, 10 rows)"));
}

#[test]
fn sweep_progress_is_one_line_per_band_with_a_total_when_piped() {
    let d = tempfile::tempdir().unwrap();
    let o = ok(
        &["sweep", "--k-top-grid", "150,200", "--k-bottom-grid", "50"],
        d.path(),
    );
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("band ")).collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("band 1/2: k_top 150 k_bottom 50 (m = "),
        "{err}"
    );
    assert!(
        lines[1].starts_with("band 2/2: k_top 200 k_bottom 50 (m = "),
        "{err}"
    );
    assert!(
        stdout(&o).contains("2 bands from one SVD"),
        "{}",
        stdout(&o)
    );
}

/// Every example under "Examples:" in `isoclip [CMD] --help` stays on one line at clap's
/// 100-column width, or continues with a trailing `\`; projector files are `b16.safetensors`.
#[test]
fn help_examples_fit_in_100_columns_and_name_projectors_alike() {
    let d = tempfile::tempdir().unwrap();
    let commands = [
        "", "demo", "fit", "project", "gallery", "inspect", "spectrum", "eval", "sweep",
    ];
    for cmd in commands {
        let mut args: Vec<&str> = cmd.split_whitespace().collect();
        args.push("--help");
        let text = stdout(&ok(&args, d.path()));
        let examples = text
            .split("Examples:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("isoclip {cmd} --help has no examples"));
        let mut continued = false;
        for line in examples.lines().take_while(|l| !l.is_empty()) {
            assert!(
                line.starts_with("  isoclip ") || continued,
                "isoclip {cmd} --help: example broken mid-command: {line:?}"
            );
            assert!(line.chars().count() <= 100, "{line:?}");
            continued = line.ends_with('\\');
            for other in [
                "b16.isoclip",
                "projector.isoclip",
                "--projector p.safetensors",
            ] {
                assert!(!line.contains(other), "{line:?}");
            }
        }
    }
}

#[test]
fn help_states_checkpoint_dtypes_and_the_torchmetrics_version() {
    let d = tempfile::tempdir().unwrap();
    let fit = stdout(&ok(&["fit", "--help"], d.path())).replace('\n', " ");
    assert!(
        fit.contains("F32, F16,") && fit.contains("BF16 or F64"),
        "{fit}"
    );
    let eval = stdout(&ok(&["eval", "--help"], d.path())).replace('\n', " ");
    assert!(eval.contains("torchmetrics 1.4.0.post0"), "{eval}");
    assert!(eval.contains("PR #3104"), "{eval}");
}

#[test]
fn demo_writes_the_promised_spectrum_plot_and_shows_gallery_progress() {
    let d = tempfile::tempdir().unwrap();
    let o = ok(&["demo", "--dir", "d"], d.path());
    let svg = std::fs::read_to_string(d.path().join("d/spectrum.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("kept band (image): 262 directions"));
    let err = stderr(&o);
    for i in 0..4 {
        let line = format!("wrote d/gallery/img_emb_{i:04}.npy ({}/4)", i + 1);
        assert!(err.lines().any(|l| l == line), "{err}");
    }
    assert!(stdout(&o).contains("spectrum.svg"));
}

#[test]
fn sigint_during_fit_exits_130_and_leaves_no_file() {
    let d = tempfile::tempdir().unwrap();
    // The note is printed when the weights are loaded, before the fit and the write.
    let (status, err) = interrupt_after(&["fit", "-o", "p.st"], d.path(), "note: ", libc::SIGINT);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(temporaries(d.path()), Vec::<PathBuf>::new());
    assert!(!d.path().join("p.st").exists());
}
