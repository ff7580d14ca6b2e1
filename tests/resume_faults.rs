//! Resume that is never wrong and outputs written safely: a rerun verifies what it keeps, a
//! fault at any step of the commit protocol then a rerun ends byte-identical to a clean run,
//! the output directory's lock holds, nothing is written through a planted symlink, no
//! temporary file survives an error, and no spelling of an input's folder is accepted as the
//! output directory.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use common::*;
use isoclip::backend::{select_backend, DeviceChoice};
use isoclip::engine::commit::{CommitStep, FAULT_ENV};
use isoclip::engine::{run_job, JobSpec, ProgressSink, SilentProgress};
use isoclip::formats::projector_file;

/// Runs the projection with `--json` and returns (shards processed, shards skipped).
fn counts(dir: &Path, output: &str, extra: &[&str]) -> (u64, u64) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let o = project(dir, "g", output, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    (
        s["shards_processed"].as_u64().unwrap(),
        s["shards_skipped"].as_u64().unwrap(),
    )
}

/// Every file of `dir` (name, bytes), sorted; the manifest (it holds timestamps) and
/// subdirectories excluded.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("isoclip-manifest.json") && !p.is_dir())
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

/// A clean run of `g` with `extra` options into `name`; returns its files.
fn reference(dir: &Path, name: &str, extra: &[&str]) -> Vec<(String, Vec<u8>)> {
    let o = project(dir, "g", name, extra);
    assert!(o.status.success(), "{}", stderr(&o));
    files(&dir.join(name))
}

#[test]
fn a_corrupted_swapped_or_symlinked_output_of_the_same_size_is_redone() {
    let dir = setup(3, 300);
    let d = dir.path();
    let clean = reference(d, "clean", &[]);
    assert_eq!(counts(d, "o", &[]), (3, 0));
    // One flipped byte, same size.
    let a = d.join("o/img_emb_0000.npy");
    let mut bytes = std::fs::read(&a).unwrap();
    bytes[500] ^= 1;
    std::fs::write(&a, &bytes).unwrap();
    // Another output of the same size in place of this one.
    std::fs::copy(d.join("o/img_emb_0002.npy"), d.join("o/img_emb_0001.npy")).unwrap();
    assert_eq!(counts(d, "o", &[]), (2, 1));
    assert_eq!(files(&d.join("o")), clean);
    // A symlink to a file holding exactly the right bytes is not trusted, and is replaced.
    let elsewhere = d.join("copy.npy");
    std::fs::copy(d.join("o/img_emb_0002.npy"), &elsewhere).unwrap();
    std::fs::remove_file(d.join("o/img_emb_0002.npy")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, d.join("o/img_emb_0002.npy")).unwrap();
    assert_eq!(counts(d, "o", &[]), (1, 2));
    let meta = std::fs::symlink_metadata(d.join("o/img_emb_0002.npy")).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(files(&d.join("o")), clean);
    // Trusting outputs skips the read-back but still sees an output rewritten in place.
    assert_eq!(counts(d, "o", &["--trust-outputs"]), (0, 3));
    let mut bytes = std::fs::read(&a).unwrap();
    bytes[600] ^= 1;
    std::fs::write(&a, &bytes).unwrap();
    assert_eq!(counts(d, "o", &["--trust-outputs"]), (1, 2));
    assert_eq!(files(&d.join("o")), clean);
}

/// Sets the modification time of `path` to `mtime` (what `touch -r`, `cp -p`, `rsync -t` do).
fn set_mtime(path: &Path, mtime: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn an_input_rewritten_with_its_size_and_mtime_restored_is_redone() {
    let dir = setup(2, 300);
    let d = dir.path();
    assert_eq!(counts(d, "o", &[]), (2, 0));
    // Rewrite shard 0 in place with other rows of the same shape; restore its mtime.
    let s0 = d.join("g/img_emb_0000.npy");
    let mtime = std::fs::metadata(&s0).unwrap().modified().unwrap();
    let o = isoclip(
        &[
            "gallery", "--out", "other", "--shards", "2", "--rows", "300", "--seed", "9",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(
        &s0,
        std::fs::read(d.join("other/img_emb_0000.npy")).unwrap(),
    )
    .unwrap();
    set_mtime(&s0, mtime);
    // Replace shard 1 by another file (new inode), mtime restored, as `cp -p` would.
    let s1 = d.join("g/img_emb_0001.npy");
    let mtime1 = std::fs::metadata(&s1).unwrap().modified().unwrap();
    std::fs::remove_file(&s1).unwrap();
    std::fs::copy(d.join("other/img_emb_0001.npy"), &s1).unwrap();
    set_mtime(&s1, mtime1);
    assert_eq!(counts(d, "o", &[]), (2, 0));
    let fresh = reference(d, "fresh", &[]);
    assert_eq!(files(&d.join("o")), fresh);
}

/// For every step of the commit protocol and both fault kinds: a run with other options (same
/// output size, other bytes: what a size check cannot tell apart) faults there; reruns with the old and with the new options both end byte-identical to clean runs,
/// and no temporary file remains.
#[test]
fn a_fault_at_every_commit_step_then_a_rerun_is_byte_identical() {
    let dir = setup(2, 300);
    let d = dir.path();
    let clean_a = reference(d, "clean_a", &[]);
    let clean_b = reference(d, "clean_b", &["--no-normalize"]);
    assert_ne!(clean_a, clean_b);
    assert_eq!(clean_a[0].1.len(), clean_b[0].1.len());
    for step in CommitStep::ALL {
        for mode in ["fail", "abort"] {
            let out = format!("o_{}_{mode}", step.name());
            let o = project(d, "g", &out, &[]);
            assert!(o.status.success(), "{}", stderr(&o));
            let faulted = project_cmd(d, "g", &out, &["--no-normalize"])
                .env(FAULT_ENV, format!("{}:{mode}", step.name()))
                .output()
                .unwrap();
            let what = format!("{out}: {}", stderr(&faulted));
            assert!(!faulted.status.success(), "{what}");
            if mode == "fail" {
                assert_fails_with(&faulted, &["img_emb_0000.npy", "injected fault"]);
            }
            let o = project(d, "g", &out, &[]);
            assert!(o.status.success(), "{what}");
            assert_eq!(files(&d.join(&out)), clean_a, "{what}");
            // Fault again, then finish with the new options.
            let faulted = project_cmd(d, "g", &out, &["--no-normalize"])
                .env(FAULT_ENV, format!("{}:{mode}", step.name()))
                .output()
                .unwrap();
            assert!(!faulted.status.success(), "{what}");
            let o = project(d, "g", &out, &["--no-normalize"]);
            assert!(o.status.success(), "{what}");
            assert_eq!(files(&d.join(&out)), clean_b, "{what}");
        }
    }
}

#[test]
fn a_manifest_from_the_previous_version_redoes_every_shard_with_a_warning() {
    let dir = setup(2, 100);
    let d = dir.path();
    assert_eq!(counts(d, "o", &[]), (2, 0));
    std::fs::write(
        d.join("o/isoclip-manifest.json"),
        br#"{"format":"isoclip-output-manifest","version":1,"tool_version":"0.1.0","shards":{}}"#,
    )
    .unwrap();
    let o = project(d, "g", "o", &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "manifest version 1 (this isoclip writes version 2); every shard will be redone"
        ),
        "{}",
        stderr(&o)
    );
    assert_eq!(counts(d, "o", &[]), (0, 2));
}

/// Runs the CLI on the same output directory from inside a library run's progress callback.
struct SecondRun {
    dir: PathBuf,
    result: Mutex<Option<Output>>,
}

impl ProgressSink for SecondRun {
    fn advance(&self, _rows: u64) {
        let mut r = self.result.lock().unwrap();
        if r.is_none() {
            *r = Some(project(&self.dir, "g", "o", &[]));
        }
    }
}

fn library_job(
    d: &Path,
    spec: &JobSpec,
    progress: &dyn ProgressSink,
    cancel: &AtomicBool,
) -> isoclip::Result<isoclip::engine::JobSummary> {
    let projector = projector_file::load(&d.join("p.st")).unwrap();
    let (backend, _) = select_backend(DeviceChoice::Cpu, Some(1)).unwrap();
    run_job(spec, &projector, backend.as_ref(), progress, cancel)
}

#[test]
fn a_second_run_on_a_locked_output_directory_is_refused_and_no_lock_file_is_left() {
    let dir = setup(2, 600);
    let d = dir.path();
    let second = SecondRun {
        dir: d.to_path_buf(),
        result: Mutex::new(None),
    };
    let mut spec = JobSpec::new(d.join("g"), d.join("o"));
    spec.chunk_bytes = 1;
    library_job(d, &spec, &second, &AtomicBool::new(false)).unwrap();
    let o = second.result.lock().unwrap().take().unwrap();
    assert_fails_with(
        &o,
        &["another isoclip run is writing to o (it holds the directory's lock)"],
    );
    let names: Vec<_> = files(&d.join("o")).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["img_emb_0000.npy", "img_emb_0001.npy"]);
}

/// Sets the cancel flag when the second shard starts producing rows.
struct CancelOnSecondShard<'a> {
    cancel: &'a AtomicBool,
    finished: AtomicUsize,
}

impl ProgressSink for CancelOnSecondShard<'_> {
    fn advance(&self, _rows: u64) {
        if self.finished.load(Ordering::SeqCst) == 1 {
            self.cancel.store(true, Ordering::SeqCst);
        }
    }
    fn shard_done(&self, _name: &str, skipped: bool) {
        assert!(!skipped);
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_cancelled_run_keeps_and_reports_finished_shards_and_leaves_no_temporary() {
    let dir = setup(3, 600);
    let d = dir.path();
    let clean = reference(d, "clean", &[]);
    let cancel = AtomicBool::new(false);
    let sink = CancelOnSecondShard {
        cancel: &cancel,
        finished: AtomicUsize::new(0),
    };
    let mut spec = JobSpec::new(d.join("g"), d.join("o"));
    spec.chunk_bytes = 1;
    let e = library_job(d, &spec, &sink, &cancel).unwrap_err();
    assert!(matches!(e.root(), isoclip::Error::Cancelled), "{e}");
    assert_eq!(sink.finished.load(Ordering::SeqCst), 1);
    assert_eq!(files(&d.join("o")), clean[..1]);
    assert_eq!(counts(d, "o", &[]), (2, 1));
    assert_eq!(files(&d.join("o")), clean);
}

#[test]
fn a_failed_final_rename_leaves_no_temporary_file() {
    let dir = setup(1, 100);
    let d = dir.path();
    // A non-empty directory where the output goes: the rename onto it fails.
    std::fs::create_dir_all(d.join("o/img_emb_0000.npy/inside")).unwrap();
    let o = project(d, "g", "o", &[]);
    assert_fails_with(&o, &["o/img_emb_0000.npy"]);
    let mut names: Vec<_> = std::fs::read_dir(d.join("o"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["img_emb_0000.npy"]);
}

#[test]
fn planted_symlinks_are_replaced_never_written_through() {
    let dir = setup(2, 100);
    let d = dir.path();
    let clean = reference(d, "clean", &[]);
    std::fs::create_dir(d.join("o")).unwrap();
    let victims: Vec<PathBuf> = (0..3).map(|i| d.join(format!("victim{i}"))).collect();
    for v in &victims {
        std::fs::write(v, b"precious").unwrap();
    }
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, d.join("o").join(name)).unwrap()
    };
    link(&victims[0], ".img_emb_0000.npy.isoclip-tmp");
    link(&victims[1], "img_emb_0001.npy");
    link(&victims[2], "isoclip-manifest.json");
    let o = project(d, "g", "o", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for v in &victims {
        assert_eq!(std::fs::read(v).unwrap(), b"precious", "{}", v.display());
    }
    for name in ["img_emb_0001.npy", "isoclip-manifest.json"] {
        let meta = std::fs::symlink_metadata(d.join("o").join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name}");
    }
    assert_eq!(files(&d.join("o")), clean);
}

#[test]
fn fit_refuses_to_replace_a_device_node_fifo_or_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = isoclip(&["fit", "-o", "/dev/full"], d);
    assert_fails_with(&o, &["/dev/full: is a character device"]);
    assert!(std::fs::symlink_metadata("/dev/full")
        .unwrap()
        .file_type()
        .is_char_device());
    let fifo = d.join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let o = isoclip(&["fit", "-o", "pipe"], d);
    assert_fails_with(&o, &["pipe: is a FIFO (named pipe)"]);
    std::fs::create_dir(d.join("adir")).unwrap();
    let o = isoclip(&["fit", "-o", "adir"], d);
    assert_fails_with(&o, &["adir: is a directory"]);
    let mut names: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["adir", "pipe"]);
}

/// Every spelling of the input's own folder (or a folder inside a directory input) is refused
/// before anything is created or overwritten.
#[test]
fn every_spelling_of_the_input_folder_is_refused_as_output() {
    let dir = setup(1, 10);
    let d = dir.path();
    let g = d.join("g");
    std::fs::create_dir(g.join("sub")).unwrap();
    std::os::unix::fs::symlink(&g, d.join("link")).unwrap();
    // The projector next to the shard, for runs from inside the input's folder.
    std::fs::copy(d.join("p.st"), g.join("p.st")).unwrap();
    let shard = g.join("img_emb_0000.npy");
    let original = std::fs::read(&shard).unwrap();
    let before = files(&g);
    let abs = g.to_str().unwrap().to_string();
    let refused = |o: &Output, what: &str| {
        let err = stderr(o);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("is the folder of input shard")
                || err.contains("is inside (or equal to) the input directory")
                || err.contains("empty path"),
            "{what}: {err}"
        );
    };
    // A single-shard input, run from its own folder.
    let o = project(&g, "img_emb_0000.npy", "", &[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "the command line refuses an empty --output"
    );
    for out in [".", "./", "sub/..", "../link", abs.as_str()] {
        let o = project(&g, "img_emb_0000.npy", out, &[]);
        refused(&o, out);
    }
    // A directory input: the folder itself or anything inside it, created or not.
    for out in ["g", "g/", "g/sub/..", "link", "link/new", "g/new/deeper"] {
        let o = project(d, "g", out, &[]);
        refused(&o, out);
    }
    assert!(
        !g.join("new").exists(),
        "created inside the input before refusing"
    );
    // A shard list whose shards live in the output directory.
    std::fs::write(d.join("list.txt"), "g/img_emb_0000.npy\n").unwrap();
    for out in ["g", "link", abs.as_str()] {
        let o = project(d, "list.txt", out, &[]);
        refused(&o, out);
    }
    assert_eq!(std::fs::read(&shard).unwrap(), original);
    assert_eq!(files(&g), before);
    assert!(!g.join("isoclip-manifest.json").exists());

    // The same through the library.
    let spellings = [
        (shard.clone(), PathBuf::from("")),
        (shard.clone(), g.clone()),
        (shard.clone(), g.join(".")),
        (shard.clone(), g.join("sub/..")),
        (shard.clone(), d.join("link")),
        (g.clone(), g.join("new")),
        (d.join("list.txt"), d.join("link/")),
    ];
    for (input, out) in spellings {
        let spec = JobSpec::new(&input, &out);
        let e = library_job(d, &spec, &SilentProgress, &AtomicBool::new(false)).unwrap_err();
        assert!(
            matches!(e.root(), isoclip::Error::InvalidArgument(_)),
            "{input:?} -> {out:?}: {e}"
        );
    }
    assert_eq!(std::fs::read(&shard).unwrap(), original);
    assert!(!g.join("new").exists());
}

/// Touches the first shard's mtime as soon as rows flow, as a concurrent `touch` would.
struct TouchInput(PathBuf);

impl ProgressSink for TouchInput {
    fn advance(&self, _rows: u64) {
        set_mtime(&self.0, std::time::SystemTime::UNIX_EPOCH);
    }
}

#[test]
fn an_input_that_changes_while_it_is_read_is_not_recorded() {
    let dir = setup(1, 300);
    let d = dir.path();
    let shard = d.join("g/img_emb_0000.npy");
    let spec = JobSpec::new(d.join("g"), d.join("o"));
    let e = library_job(
        d,
        &spec,
        &TouchInput(shard.clone()),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(matches!(e.root(), isoclip::Error::Format { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{}: ", shard.display())) && msg.contains("changed"),
        "{msg}"
    );
    let names: Vec<_> = std::fs::read_dir(d.join("o"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n == "isoclip-manifest.json"),
        "{names:?}"
    );
    // A rerun (input now stable) projects it.
    assert_eq!(counts(d, "o", &[]), (1, 0));
}
