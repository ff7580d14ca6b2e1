//! `isoclip project` end to end: parity, resume after SIGKILL, and every bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use isoclip::align::synthetic::Rng;
use isoclip::formats::npy::{Accept, NpyMatrix};
use isoclip::formats::projector_file;

fn read_rows(path: &Path) -> (usize, usize, Vec<f64>) {
    let m = NpyMatrix::open(path, Accept::Embeddings).unwrap();
    (m.rows, m.cols, m.to_f64())
}

#[test]
fn projects_a_gallery_matching_the_f64_reference() {
    let dir = tempfile::tempdir().unwrap();
    let p = fit_projector(dir.path());
    let g = gallery(dir.path(), "g", 3, 1000);
    for (form, dtype, tol) in [("compact", "f16", 2e-3), ("full", "f32", 1e-5)] {
        let out = format!("out_{form}");
        let o = project(
            dir.path(),
            "g",
            &out,
            &["--form", form, "--dtype", dtype, "--json"],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(s["rows_processed"], 3000);
        assert_eq!(s["shards_processed"], 3);
        let proj = projector_file::load(&p).unwrap();
        let maps = proj.image.as_ref().unwrap();
        let map = if form == "compact" {
            &maps.compact
        } else {
            &maps.full
        };
        for shard in ["img_emb_0000.npy", "img_emb_0002.npy"] {
            let (rows, cols, x) = read_rows(&g.join(shard));
            let (orows, ocols, y) = read_rows(&dir.path().join(&out).join(shard));
            assert_eq!((orows, ocols), (rows, map.d_out()));
            for r in (0..rows).step_by(97) {
                let xr: Vec<f32> = x[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|v| *v as f32)
                    .collect();
                let want = map.apply_row(&xr);
                let n = want.iter().map(|v| v * v).sum::<f64>().sqrt();
                for c in 0..ocols {
                    let d = (y[r * ocols + c] - want[c] / n).abs();
                    assert!(d <= tol, "{form} {shard} row {r} col {c}: {d}");
                }
            }
        }
    }
}

#[test]
fn embedding_route_matches_feature_route() {
    let dir = tempfile::tempdir().unwrap();
    let p = fit_projector(dir.path());
    let proj = projector_file::load(&p).unwrap();
    let maps = proj.image.as_ref().unwrap();
    // Features, and the ordinary CLIP embeddings e = x P_i, L2-normalised, stored as f16.
    let mut rng = Rng::new(3);
    let n = 300;
    let feats: Vec<f64> = (0..n * 768).map(|_| rng.normal()).collect();
    let mut emb = Vec::with_capacity(n * 512);
    for r in 0..n {
        let x: Vec<f32> = feats[r * 768..(r + 1) * 768]
            .iter()
            .map(|v| *v as f32)
            .collect();
        let e = maps.plain.apply_row(&x);
        let norm = e.iter().map(|v| v * v).sum::<f64>().sqrt();
        emb.extend(e.iter().map(|v| v / norm));
    }
    std::fs::create_dir(dir.path().join("f")).unwrap();
    std::fs::create_dir(dir.path().join("e")).unwrap();
    write_npy_f32(&dir.path().join("f/s.npy"), n, 768, &feats);
    let emb16: Vec<u8> = emb
        .iter()
        .flat_map(|v| half::f16::from_f64(*v).to_le_bytes())
        .collect();
    write_npy_raw(&dir.path().join("e/s.npy"), "<f2", &[n, 512], false, &emb16);
    let a = project(dir.path(), "f", "of", &["--dtype", "f32"]);
    assert!(a.status.success(), "{}", stderr(&a));
    let b = project(
        dir.path(),
        "e",
        "oe",
        &["--dtype", "f32", "--input-kind", "embeddings"],
    );
    assert!(b.status.success(), "{}", stderr(&b));
    let (_, c1, y1) = read_rows(&dir.path().join("of/s.npy"));
    let (_, c2, y2) = read_rows(&dir.path().join("oe/s.npy"));
    assert_eq!(c1, c2);
    // Compare cosines between pairs of rows (the two routes agree up to fp16 storage of e).
    let cos = |y: &[f64], c: usize, i: usize, j: usize| {
        (0..c).map(|k| y[i * c + k] * y[j * c + k]).sum::<f64>()
    };
    let mut worst = 0.0f64;
    for i in 0..40 {
        for j in 0..40 {
            worst = worst.max((cos(&y1, c1, i, j) - cos(&y2, c2, i, j)).abs());
        }
    }
    assert!(worst < 2e-3, "max |Δcos| between routes {worst}");
}

#[test]
fn sigkill_at_any_moment_then_rerun_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    fit_projector(dir.path());
    gallery(dir.path(), "g", 4, 6000);
    let clean = project(dir.path(), "g", "clean", &[]);
    assert!(clean.status.success(), "{}", stderr(&clean));
    let reference = npy_files(&dir.path().join("clean"));
    assert_eq!(reference.len(), 4);

    let mut killed_midway = 0;
    for (attempt, delay_ms) in [5u64, 20, 45, 80, 120, 170, 250].iter().enumerate() {
        let out = format!("run{attempt}");
        let mut kills = 0;
        // Kill repeatedly at growing delays, then let it finish.
        for k in 0..3 {
            let mut child = project_cmd(dir.path(), "g", &out, &["--chunk-bytes", "65536"])
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms * (k + 1)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            }
            child.wait().unwrap();
            // No final-named output is ever partial: each is complete or absent.
            for (name, bytes) in npy_files(&dir.path().join(&out)) {
                let want = &reference.iter().find(|(n, _)| *n == name).unwrap().1;
                assert!(
                    bytes == *want,
                    "{out}: {name} exists but differs after a kill"
                );
            }
        }
        if kills > 0 {
            killed_midway += 1;
        }
        let fin = project(dir.path(), "g", &out, &[]);
        assert!(fin.status.success(), "{}", stderr(&fin));
        assert_eq!(
            npy_files(&dir.path().join(&out)),
            reference,
            "{out} differs after resume"
        );
    }
    assert!(
        killed_midway >= 3,
        "the kills never landed mid-run ({killed_midway})"
    );
}

#[test]
fn rerun_skips_matching_shards_and_redoes_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    fit_projector(dir.path());
    gallery(dir.path(), "g", 3, 500);
    let run = |extra: &[&str]| {
        let mut a = vec![
            "project",
            "--projector",
            "p.st",
            "--input",
            "g",
            "--output",
            "o",
            "--json",
        ];
        a.extend(extra);
        let o = isoclip(&a, dir.path());
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };
    assert_eq!(run(&[])["shards_processed"], 3);
    assert_eq!(run(&[])["shards_skipped"], 3);
    // Changing an option redoes everything; changing one input redoes one shard.
    assert_eq!(run(&["--dtype", "f32"])["shards_processed"], 3);
    std::thread::sleep(Duration::from_millis(20));
    let o = isoclip(
        &[
            "gallery", "--out", "g", "--shards", "1", "--rows", "500", "--seed", "9",
        ],
        dir.path(),
    );
    assert!(o.status.success());
    let s = run(&["--dtype", "f32"]);
    assert_eq!(
        (s["shards_processed"].clone(), s["shards_skipped"].clone()),
        (1.into(), 2.into())
    );
    assert_eq!(
        run(&["--dtype", "f32", "--overwrite"])["shards_processed"],
        3
    );
    // A deleted output is redone.
    std::fs::remove_file(dir.path().join("o/img_emb_0001.npy")).unwrap();
    assert_eq!(run(&["--dtype", "f32"])["shards_processed"], 1);
}

#[test]
fn zero_rows_and_nonfinite_rows() {
    let dir = tempfile::tempdir().unwrap();
    fit_projector(dir.path());
    std::fs::create_dir(dir.path().join("g")).unwrap();
    let mut rng = Rng::new(1);
    let mut x: Vec<f64> = (0..400 * 768).map(|_| rng.normal()).collect();
    x[10 * 768..11 * 768].iter_mut().for_each(|v| *v = 0.0);
    x[333 * 768 + 5] = f64::NAN;
    write_npy_f32(&dir.path().join("g/s.npy"), 400, 768, &x);
    let o = project(dir.path(), "g", "o", &[]);
    // The library's message, then the command line's remedy (src/cli/mod.rs).
    assert_fails_with(
        &o,
        &[
            "s.npy: row 333 contains NaN or Inf",
            "(pass --nonfinite zero",
        ],
    );
    assert!(!dir.path().join("o/s.npy").exists());
    assert!(std::fs::read_dir(dir.path().join("o")).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("tmp")));
    let o = project(dir.path(), "g", "o", &["--nonfinite", "zero", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["zero_norm_rows"], 1);
    assert_eq!(s["nonfinite_rows"], 1);
    let (_, c, y) = read_rows(&dir.path().join("o/s.npy"));
    assert!(y[10 * c..11 * c].iter().all(|v| *v == 0.0));
    assert!(y[333 * c..334 * c].iter().all(|v| *v == 0.0));
}

#[test]
fn bad_shards_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    fit_projector(dir.path());
    /// (file name, npy descr, shape, Fortran order, element size, expected message parts)
    type BadShard<'a> = (&'a str, &'a str, Vec<usize>, bool, usize, Vec<&'a str>);
    let cases: Vec<BadShard<'_>> = vec![
        (
            "f8.npy",
            "<f8",
            vec![4, 768],
            false,
            8,
            vec!["f8.npy", "'<f8'", "not supported"],
        ),
        (
            "int.npy",
            "<i4",
            vec![4, 768],
            false,
            4,
            vec!["int.npy", "'<i4'"],
        ),
        (
            "one_d.npy",
            "<f2",
            vec![768],
            false,
            2,
            vec!["one_d.npy", "1-D", "2-D"],
        ),
        (
            "three_d.npy",
            "<f2",
            vec![2, 2, 768],
            false,
            2,
            vec!["three_d.npy", "3-D"],
        ),
        (
            "fortran.npy",
            "<f2",
            vec![4, 768],
            true,
            2,
            vec!["fortran.npy", "Fortran"],
        ),
        (
            "dim.npy",
            "<f2",
            vec![4, 500],
            false,
            2,
            vec!["dim.npy", "500 dimensions", "768"],
        ),
        (
            "emb.npy",
            "<f2",
            vec![4, 512],
            false,
            2,
            vec!["emb.npy", "512 dimensions", "input kind 'embeddings'"],
        ),
    ];
    for (name, descr, shape, fortran, esize, needles) in cases {
        let sub = dir.path().join(format!("in_{name}"));
        std::fs::create_dir(&sub).unwrap();
        let n: usize = shape.iter().product();
        write_npy_raw(
            &sub.join(name),
            descr,
            &shape,
            fortran,
            &vec![0u8; n * esize],
        );
        // A good shard next to it must not be processed either.
        write_npy_raw(
            &sub.join("aaa_good.npy"),
            "<f2",
            &[4, 768],
            false,
            &vec![0u8; 4 * 768 * 2],
        );
        let out = format!("out_{name}");
        let o = project(dir.path(), sub.to_str().unwrap(), &out, &[]);
        assert_fails_with(&o, &needles);
        assert!(
            !dir.path().join(&out).join("aaa_good.npy").exists(),
            "{name}: work done despite a bad shard"
        );
    }
    // Truncated: header promises more rows than the file holds.
    let sub = dir.path().join("trunc");
    std::fs::create_dir(&sub).unwrap();
    write_npy_raw(
        &sub.join("t.npy"),
        "<f2",
        &[1000, 768],
        false,
        &vec![0u8; 999 * 768 * 2],
    );
    let o = project(dir.path(), "trunc", "o_t", &[]);
    assert_fails_with(&o, &["t.npy", "truncated", "1000 x 768"]);
}

#[test]
fn output_directory_checks() {
    let dir = tempfile::tempdir().unwrap();
    fit_projector(dir.path());
    gallery(dir.path(), "g", 1, 10);
    let o = project(dir.path(), "g", "g", &[]);
    assert_fails_with(&o, &["inside (or equal to) the input"]);
    let o = project(dir.path(), "g", "g/sub", &[]);
    assert_fails_with(&o, &["inside (or equal to) the input"]);
    let o = project(dir.path(), "g/img_emb_0000.npy", "g", &[]);
    assert_fails_with(&o, &["is the folder of input shard", "g/img_emb_0000.npy"]);
    std::fs::write(dir.path().join("afile"), b"x").unwrap();
    let o = project(dir.path(), "g", "afile/out", &[]);
    assert_fails_with(&o, &["afile/out"]);
    assert_eq!(
        std::fs::read(dir.path().join("g/img_emb_0000.npy"))
            .unwrap()
            .len(),
        128 + 10 * 768 * 2
    );
}

/// A disk that fills up mid-run: a clean error naming the file, finished shards kept, no
/// temporary file left; after freeing space a rerun completes with the right bytes.
/// Needs root (tmpfs mount), which CI has; elsewhere it says why it is skipped and returns.
#[test]
fn disk_full_mid_run_then_rerun_completes() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipped disk_full_mid_run_then_rerun_completes: mounting a small tmpfs needs root"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fit_projector(dir.path());
    gallery(dir.path(), "g", 3, 2000); // each output: 2000 x 262 x 2 ≈ 1.05 MB
    let clean = project(dir.path(), "g", "clean", &[]);
    assert!(clean.status.success());
    let mnt = dir.path().join("small_disk");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2600k", "tmpfs"])
        .arg(&mnt)
        .status();
    match mounted {
        Ok(status) if status.success() => {}
        // Root without CAP_SYS_ADMIN (an unprivileged container), or no mount(8).
        refused => {
            eprintln!(
                "skipped disk_full_mid_run_then_rerun_completes: mounting a small tmpfs was refused ({refused:?})"
            );
            return;
        }
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let out = mnt.join("out");
    let o = project(dir.path(), "g", out.to_str().unwrap(), &[]);
    assert_fails_with(&o, &["img_emb_0002.npy", "No space left"]);
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("isoclip-tmp")),
        "temporary file left: {names:?}"
    );
    assert!(names.contains(&"img_emb_0001.npy".to_string()));
    // Free space: remount bigger (tmpfs keeps its files on remount).
    let r = Command::new("mount")
        .args(["-o", "remount,size=8m"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(r.success());
    let o = project(dir.path(), "g", out.to_str().unwrap(), &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (s["shards_processed"].clone(), s["shards_skipped"].clone()),
        (1.into(), 2.into())
    );
    assert_eq!(npy_files(&out), npy_files(&dir.path().join("clean")));
}

/// `--precision bf16` (on a CPU with AVX-512 BF16): close to the f64 reference at bf16's
/// accuracy, recorded per shard, never mixed with f32 outputs on a rerun, and refused on a GPU.
#[test]
fn bf16_precision_is_recorded_and_never_mixed_with_f32() {
    if isoclip::backend::bf16::Bf16Kernel::new().is_none() {
        let d = setup(1, 10);
        let o = project(d.path(), "g", "o", &["--precision", "bf16"]);
        assert_fails_with(&o, &["bf16 precision needs a CPU with AVX-512 BF16"]);
        eprintln!("skipped: no AVX-512 BF16 on this CPU (the refusal was checked)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = fit_projector(dir.path());
    let g = gallery(dir.path(), "g", 2, 300);
    let run = |extra: &[&str]| {
        let mut args = vec!["--json", "--dtype", "f32"];
        args.extend(extra);
        let o = project(dir.path(), "g", "o", &args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };
    let f32_run = run(&[]);
    let f32_kernel = if isoclip::backend::packed_f32::F32Kernel::new().is_some() {
        "f32"
    } else {
        "f32-gemm"
    };
    assert_eq!(f32_run["arithmetic"], f32_kernel);
    let f32_out = npy_files(&dir.path().join("o"));

    // Another precision redoes every shard, and says so.
    let s = run(&["--precision", "bf16"]);
    assert_eq!(s["arithmetic"], "bf16");
    assert_eq!(s["shards_processed"], 2);
    assert_eq!(run(&["--precision", "bf16"])["shards_skipped"], 2);
    let manifest = std::fs::read_to_string(dir.path().join("o/isoclip-manifest.json")).unwrap();
    assert_eq!(manifest.matches("\"arithmetic\": \"bf16\"").count(), 2);

    // Close to the f64 reference at bf16's accuracy (8 significant bits per operand), and not
    // the f32 bytes.
    let bf16_out = npy_files(&dir.path().join("o"));
    assert_ne!(f32_out, bf16_out);
    let maps = projector_file::load(&p).unwrap().image.unwrap();
    let (rows, cols, x) = read_rows(&g.join("img_emb_0001.npy"));
    let (_, ocols, y) = read_rows(&dir.path().join("o/img_emb_0001.npy"));
    let mut worst_cos = 1.0f64;
    for r in 0..rows {
        let xr: Vec<f32> = x[r * cols..(r + 1) * cols]
            .iter()
            .map(|v| *v as f32)
            .collect();
        let want = maps.compact.apply_row(&xr);
        let n = want.iter().map(|v| v * v).sum::<f64>().sqrt();
        let got = &y[r * ocols..(r + 1) * ocols];
        let cos: f64 = got.iter().zip(&want).map(|(g, w)| g * w / n).sum();
        worst_cos = worst_cos.min(cos);
        for (c, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w / n).abs() <= 2e-2,
                "row {r} col {c}: {g} vs {}",
                w / n
            );
        }
    }
    assert!(worst_cos > 0.999, "{worst_cos}");

    // Back to f32: the bf16 shards are redone, and the bytes are the first run's again.
    assert_eq!(run(&[])["shards_processed"], 2);
    assert_eq!(npy_files(&dir.path().join("o")), f32_out);

    // bf16 is a CPU kernel: an explicit GPU is refused (before any work), never ignored.
    let o = project(
        dir.path(),
        "g",
        "o2",
        &["--precision", "bf16", "--device", "cuda"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!dir.path().join("o2/img_emb_0000.npy").exists());
}

/// A manifest written before records named their arithmetic (made by the `gemm` crate's f32
/// kernels) is redone where this build computes f32 with another kernel, and kept where it
/// computes with the same one: a gallery never mixes the two kernels' last bits.
#[test]
fn outputs_recorded_before_the_arithmetic_field_are_redone_only_by_another_kernel() {
    let dir = setup(2, 200);
    let run = || {
        let o = project(dir.path(), "g", "o", &["--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };
    assert_eq!(run()["shards_processed"], 2);
    let manifest_path = dir.path().join("o/isoclip-manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    for record in manifest["shards"].as_object_mut().unwrap().values_mut() {
        record
            .as_object_mut()
            .unwrap()
            .remove("arithmetic")
            .unwrap();
    }
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let s = run();
    if isoclip::backend::packed_f32::F32Kernel::new().is_some() {
        assert_eq!(s["shards_processed"], 2, "{s}");
    } else {
        assert_eq!(s["shards_skipped"], 2, "{s}");
    }
}
