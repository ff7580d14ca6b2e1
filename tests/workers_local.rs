//! Many workers on one output, on a local (shared) file system, through the engine mode kept by
//! per-shard completion records: `--num-shards` workers cover the gallery exactly once and give
//! the bytes of a one-worker run; a fault at every step of the record protocol, then a rerun,
//! ends byte-identical; `isoclip status` tells done, missing and stale shards apart exactly as a
//! rerun would; file:// URLs behave as paths. (The same protocol against a real S3 server is in
//! `tests/scale_out.rs`.)

mod common;

use std::path::Path;

use common::*;
use isoclip::engine::commit::{CommitStep, FAULT_ENV};

fn status(dir: &Path, output: &str) -> (i32, serde_json::Value) {
    let o = isoclip(&["status", "--output", output, "--json"], dir);
    let code = o.status.code().unwrap();
    assert!(code == 0 || code == 3, "status failed: {}", stderr(&o));
    (code, serde_json::from_str(&stdout(&o)).unwrap())
}

/// Everything under `dir` that is not an output, a record or the job description: what a
/// killed upload could have left behind.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".npy") || name == "_isoclip") {
            v.push(name);
        }
    }
    v
}

#[test]
fn three_workers_cover_the_gallery_once_and_match_one_worker() {
    let dir = setup(7, 150);
    let d = dir.path();
    // The reference: one worker, plain paths (the local engine, with its manifest).
    let o = project(d, "g", "one", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = npy_files(&d.join("one"));
    assert_eq!(reference.len(), 7);

    let mut children = Vec::new();
    for index in 0..3 {
        children.push(
            project_cmd(
                d,
                "g",
                "many",
                &[
                    "--num-shards",
                    "3",
                    "--shard-index",
                    &index.to_string(),
                    "--json",
                ],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        );
    }
    let mut processed = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        processed.push(s["shards_processed"].as_u64().unwrap());
    }
    // Shards 0..7 by k mod 3: worker 0 takes 0, 3, 6; worker 1 takes 1, 4; worker 2 takes 2, 5.
    assert_eq!(processed, vec![3, 2, 2]);
    assert_eq!(npy_files(&d.join("many")), reference);
    assert!(
        leftovers(&d.join("many")).is_empty(),
        "{:?}",
        leftovers(&d.join("many"))
    );
    let (code, report) = status(d, "many");
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["done"], 7);
    assert_eq!(report["rows_done"], 7 * 150);

    // A rerun of any worker skips its shards; a one-worker run on the same output, which is now
    // kept by records, skips everything too.
    let o = project(
        d,
        "g",
        "many",
        &["--num-shards", "3", "--shard-index", "1", "--json"],
    );
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (s["shards_processed"].as_u64(), s["shards_skipped"].as_u64()),
        (Some(0), Some(2))
    );
    let o = project(d, "g", "many", &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["shards_skipped"], 7, "{s}");
}

#[test]
fn placement_comes_from_slurm_and_kubernetes_variables() {
    let dir = setup(5, 40);
    let d = dir.path();
    let o = project(d, "g", "one", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = npy_files(&d.join("one"));
    for id in 1..=2 {
        // `sbatch --array=1-2`: ids 1 and 2, min 1, count 2.
        let o = project_cmd(d, "g", "slurm", &[])
            .env("SLURM_ARRAY_TASK_ID", id.to_string())
            .env("SLURM_ARRAY_TASK_MIN", "1")
            .env("SLURM_ARRAY_TASK_MAX", "2")
            .env("SLURM_ARRAY_TASK_COUNT", "2")
            .env("SLURM_ARRAY_TASK_STEP", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(npy_files(&d.join("slurm")), reference);
    for index in 0..3 {
        let o = project_cmd(d, "g", "k8s", &[])
            .env("JOB_COMPLETION_INDEX", index.to_string())
            .env("ISOCLIP_NUM_SHARDS", "3")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(npy_files(&d.join("k8s")), reference);
    // An index without a count is refused before any work.
    let o = project_cmd(d, "g", "k8s_bad", &[])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert_fails_with(
        &o,
        &[
            "worker 1 of a Kubernetes Indexed Job",
            "number of workers is unknown",
        ],
    );
    assert!(!d.join("k8s_bad").exists());
}

#[test]
fn a_fault_at_every_record_step_then_a_rerun_is_byte_identical() {
    let dir = setup(2, 300);
    let d = dir.path();
    let workers = ["--num-shards", "1", "--shard-index", "0"];
    let run = |out: &str, extra: &[&str]| {
        let mut args = workers.to_vec();
        args.extend_from_slice(extra);
        project(d, "g", out, &args)
    };
    let o = run("clean_a", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run("clean_b", &["--no-normalize"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (clean_a, clean_b) = (npy_files(&d.join("clean_a")), npy_files(&d.join("clean_b")));
    assert_ne!(clean_a, clean_b);
    for step in CommitStep::RECORDED_RUN {
        for mode in ["fail", "abort"] {
            let out = format!("o_{}_{mode}", step.name());
            // Half the output kept by a finished run, then a run with other options faults.
            let o = project(
                d,
                "g",
                &format!("file://{}", d.join(&out).display()),
                &workers,
            );
            assert!(o.status.success(), "{}", stderr(&o));
            let mut args = workers.to_vec();
            args.push("--no-normalize");
            let faulted = project_cmd(d, "g", &out, &args)
                .env(FAULT_ENV, format!("{}:{mode}", step.name()))
                .output()
                .unwrap();
            let what = format!("{out}: {}", stderr(&faulted));
            assert!(!faulted.status.success(), "{what}");
            if mode == "fail" {
                assert_fails_with(&faulted, &["img_emb_0000.npy", "injected fault"]);
            }
            assert!(
                leftovers(&d.join(&out)).is_empty(),
                "{what}: {:?}",
                leftovers(&d.join(&out))
            );
            // Status after the fault: the faulted shard is never "done" with the new options'
            // output under the old record.
            let (code, report) = status(d, &out);
            assert_eq!(code, 3, "{what}: {report}");
            let o = run(&out, &["--no-normalize"]);
            assert!(o.status.success(), "{what}");
            assert_eq!(npy_files(&d.join(&out)), clean_b, "{what}");
            let (code, report) = status(d, &out);
            assert_eq!(code, 0, "{what}: {report}");
            let o = run(&out, &[]);
            assert!(o.status.success(), "{what}");
            assert_eq!(npy_files(&d.join(&out)), clean_a, "{what}");
        }
    }
}

#[test]
fn status_tells_missing_and_stale_shards_as_a_rerun_would_judge_them() {
    let dir = setup(4, 64);
    let d = dir.path();
    let o = isoclip(&["status", "--output", "out"], d);
    assert_fails_with(
        &o,
        &["out: no run has recorded its job here", "give the input"],
    );
    let o = project(d, "g", "out", &["--num-shards", "2", "--shard-index", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (code, report) = status(d, "out");
    assert_eq!(code, 3);
    assert_eq!(
        (report["done"].as_u64(), report["missing"].as_u64()),
        (Some(2), Some(2))
    );
    let human = isoclip(&["status", "--output", "out"], d);
    assert_eq!(human.status.code(), Some(3));
    assert!(
        stdout(&human).contains("2 of 4 shards done"),
        "{}",
        stdout(&human)
    );
    assert!(
        stdout(&human).contains("missing img_emb_0001.npy"),
        "{}",
        stdout(&human)
    );

    let o = project(d, "g", "out", &["--num-shards", "2", "--shard-index", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(status(d, "out").0, 0);

    // An output corrupted in place (same size): stale, and a rerun redoes exactly that shard.
    let victim = d.join("out/img_emb_0002.npy");
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();
    // An input rewritten with other content.
    let input = d.join("g/img_emb_0003.npy");
    let mut bytes = std::fs::read(&input).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&input, &bytes).unwrap();
    let (code, report) = status(d, "out");
    assert_eq!(code, 3, "{report}");
    let states: Vec<(String, String, String)> = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(states[0].1, "done");
    assert_eq!(states[1].1, "done");
    assert_eq!(
        (states[2].1.as_str(), states[2].2.as_str()),
        ("stale", "its output does not match the recorded checksum")
    );
    assert_eq!(
        (states[3].1.as_str(), states[3].2.as_str()),
        ("stale", "the input changed since it was projected")
    );
    let o = project(
        d,
        "g",
        "out",
        &["--num-shards", "1", "--shard-index", "0", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["shards_processed"], 2, "{s}");
    assert_eq!(status(d, "out").0, 0);

    // The merged manifest lists every done shard.
    let o = isoclip(&["status", "--output", "out", "--write-manifest"], d);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out/_isoclip/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["shards"].as_array().unwrap().len(), 4);
}

#[test]
fn an_output_that_is_the_input_is_refused_by_path_and_by_url() {
    let dir = setup(2, 16);
    let d = dir.path();
    let before = npy_files(&d.join("g"));
    let o = project(d, "g", "g", &["--num-shards", "2", "--shard-index", "0"]);
    assert!(!o.status.success());
    let url = format!("file://{}", d.join("g").display());
    let o = project(d, "g", &url, &[]);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert_eq!(npy_files(&d.join("g")), before, "the inputs are untouched");
    assert!(!d.join("g/_isoclip").exists());
}
