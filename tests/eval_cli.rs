//! `isoclip eval` and `isoclip sweep` end to end: the synthetic default, files in every layout,
//! the embedding route, NCM, SVG output, and bad inputs (clear message naming the file, exit 1,
//! never a panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use isoclip::align::synthetic::SyntheticModel;
use isoclip::formats::npy::{header_bytes, write_matrix_f32, write_vector_i64, NpyDtype};
use serde_json::Value;

/// The built-in synthetic evaluation set: `isoclip eval` with no inputs uses exactly these.
const ROWS: usize = 3000;
const CLASSES: usize = 60;
const SEED: u64 = 7;
const D_IN: usize = 768;

fn isoclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isoclip"))
        .args(args)
        .output()
        .expect("run isoclip")
}

fn ok_json(args: &[&str]) -> Value {
    let out = isoclip(args);
    assert!(
        out.status.success(),
        "isoclip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Runs a command that must fail cleanly; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = isoclip(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "isoclip {args:?}: {err}");
    assert!(
        !err.contains("panicked"),
        "isoclip {args:?} panicked: {err}"
    );
    assert!(err.contains("error: "), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Data {
    dir: tempfile::TempDir,
    features: Vec<f32>,
    labels: Vec<i64>,
    projector: PathBuf,
}

impl Data {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = SyntheticModel::vit_b().unwrap();
        let (features, labels) = model.labelled_image_features(ROWS, CLASSES, SEED);
        let projector = dir.path().join("synthetic.safetensors");
        let out = isoclip(&["fit", "-o", s(&projector)]);
        assert!(out.status.success());
        Data {
            dir,
            features,
            labels,
            projector,
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Rows [a, b) as an f32 (or f16) file, and their labels.
    fn write(&self, name: &str, a: usize, b: usize, dtype: NpyDtype) -> (PathBuf, PathBuf) {
        let f = self.path(&format!("{name}.npy"));
        let l = self.path(&format!("{name}_labels.npy"));
        write_matrix_f32(&f, b - a, D_IN, &self.features[a * D_IN..b * D_IN], dtype).unwrap();
        write_vector_i64(&l, &self.labels[a..b]).unwrap();
        (f, l)
    }
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

#[test]
fn synthetic_default_is_labelled_and_isoclip_wins() {
    let out = isoclip(&["eval"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SYNTHETIC"), "{text}");
    for row in ["mAP", "mAP@R", "P@R", "R@1", "R@5", "R@10"] {
        assert!(text.contains(row), "{row} missing from\n{text}");
    }
    let v = ok_json(&["eval", "--json"]);
    assert_eq!(v["synthetic"], true);
    assert_eq!(v["k_top"], 200);
    assert_eq!(v["k_bottom"], 50);
    for key in ["map", "map_at_r", "p_at_r", "r_at_1", "r_at_5", "r_at_10"] {
        for side in ["clip", "isoclip"] {
            let x = num(&v, &[side, key]);
            assert!((0.0..=100.0).contains(&x), "{side}.{key} = {x}");
        }
    }
    // The synthetic class signal lives mostly in Ψ's middle band, the nuisance in its top (and
    // the data are calibrated so plain CLIP sits near the published ViT-B/16 mAP): IsoCLIP wins.
    assert!(
        num(&v, &["isoclip", "map"]) > num(&v, &["clip", "map"]) + 5.0,
        "{v}"
    );
    assert!((35.0..55.0).contains(&num(&v, &["clip", "map"])), "{v}");
    assert_eq!(num(&v, &["clip", "queries"]), ROWS as f64);
    assert_eq!(num(&v, &["clip", "gallery"]), (ROWS - 1) as f64);
}

#[test]
fn files_give_the_builtin_numbers_and_embeddings_route_agrees() {
    let d = Data::new();
    let builtin = ok_json(&["eval", "--json"]);
    let (f, l) = d.write("all", 0, ROWS, NpyDtype::F32);
    let from_files = ok_json(&[
        "eval",
        "--projector",
        s(&d.projector),
        "--features",
        s(&f),
        "--labels",
        s(&l),
        "--json",
    ]);
    assert_eq!(from_files["synthetic"], true);
    for side in ["clip", "isoclip"] {
        for key in [
            "map",
            "map_at_r",
            "map_at_r_exact",
            "p_at_r",
            "r_at_1",
            "r_at_10",
        ] {
            let (a, b) = (num(&builtin, &[side, key]), num(&from_files, &[side, key]));
            assert!(
                (a - b).abs() < 1e-9,
                "{side}.{key}: built-in {a} vs files {b}"
            );
        }
    }

    // f16 storage: same ranking up to rounding.
    let (f16, _) = d.write("half", 0, ROWS, NpyDtype::F16);
    let half = ok_json(&[
        "eval",
        "--projector",
        s(&d.projector),
        "--features",
        s(&f16),
        "--labels",
        s(&l),
        "--json",
    ]);
    for side in ["clip", "isoclip"] {
        let (a, b) = (num(&builtin, &[side, "map"]), num(&half, &[side, "map"]));
        assert!((a - b).abs() < 0.5, "{side} f16 mAP {b} vs f32 {a}");
    }

    // Already-projected CLIP embeddings e = x P_i (d = 512): plain CLIP is the same vectors and
    // IsoCLIP goes through the exact embedding route, so the metrics agree up to rounding.
    let model = SyntheticModel::vit_b().unwrap();
    let p = &model.weights.image;
    let dd = p.ncols();
    let mut emb = vec![0.0f32; ROWS * dd];
    for i in 0..ROWS {
        let x = &d.features[i * D_IN..(i + 1) * D_IN];
        for j in 0..dd {
            emb[i * dd + j] = (0..D_IN).map(|k| x[k] as f64 * p[(k, j)]).sum::<f64>() as f32;
        }
    }
    let e = d.path("emb.npy");
    write_matrix_f32(&e, ROWS, dd, &emb, NpyDtype::F32).unwrap();
    let via_emb = ok_json(&[
        "eval",
        "--projector",
        s(&d.projector),
        "--input-kind",
        "embeddings",
        "--features",
        s(&e),
        "--labels",
        s(&l),
        "--json",
    ]);
    assert_eq!(via_emb["input_kind"], "embeddings");
    for side in ["clip", "isoclip"] {
        for key in ["map", "p_at_r"] {
            let (a, b) = (num(&builtin, &[side, key]), num(&via_emb, &[side, key]));
            assert!(
                (a - b).abs() < 0.05,
                "{side}.{key}: features {a} vs embeddings {b}"
            );
        }
    }
    // Passing embeddings as features is caught, with a hint.
    let err = fails(&[
        "eval",
        "--projector",
        s(&d.projector),
        "--features",
        s(&e),
        "--labels",
        s(&l),
    ]);
    assert!(
        err.contains("emb.npy") && err.contains("512") && err.contains("768"),
        "{err}"
    );
    assert!(err.contains("input kind 'embeddings'"), "{err}");
}

#[test]
fn query_gallery_mode_and_ncm_from_files() {
    let d = Data::new();
    let (qf, ql) = d.write("q", 0, 1000, NpyDtype::F32);
    let (gf, gl) = d.write("g", 1000, ROWS, NpyDtype::F32);
    let v = ok_json(&[
        "eval",
        "--projector",
        s(&d.projector),
        "--query-features",
        s(&qf),
        "--query-labels",
        s(&ql),
        "--gallery-features",
        s(&gf),
        "--gallery-labels",
        s(&gl),
        "--json",
    ]);
    assert_eq!(num(&v, &["clip", "queries"]), 1000.0);
    assert_eq!(num(&v, &["clip", "gallery"]), 2000.0);
    assert_eq!(v["clip"]["one_set"], false);
    // No self-exclusion: the reference's mAP@R quirk does not apply.
    assert_eq!(
        num(&v, &["isoclip", "map_at_r"]),
        num(&v, &["isoclip", "map_at_r_exact"])
    );
    assert!(num(&v, &["isoclip", "map"]) > num(&v, &["clip", "map"]));

    // NCM: the built-in default trains on the first 2/3 and tests on the rest.
    let builtin = ok_json(&["eval", "--ncm", "--json"]);
    let (trf, trl) = d.write("train", 0, 2000, NpyDtype::F32);
    let (tef, tel) = d.write("test", 2000, ROWS, NpyDtype::F32);
    let files = ok_json(&[
        "eval",
        "--projector",
        s(&d.projector),
        "--ncm",
        "--train-features",
        s(&trf),
        "--train-labels",
        s(&trl),
        "--test-features",
        s(&tef),
        "--test-labels",
        s(&tel),
        "--json",
    ]);
    assert_eq!(files["task"], "ncm");
    for side in ["clip", "isoclip"] {
        assert_eq!(
            num(&builtin, &[side, "accuracy"]),
            num(&files, &[side, "accuracy"])
        );
        assert_eq!(num(&files, &[side, "test_rows"]), 1000.0);
    }
    // Class means average the noise away: on the built-in data both are (near) perfect.
    assert!(num(&files, &["isoclip", "accuracy"]) >= num(&files, &["clip", "accuracy"]));
    assert!(num(&files, &["isoclip", "accuracy"]) >= 95.0);
    let err = fails(&[
        "eval",
        "--projector",
        s(&d.projector),
        "--ncm",
        "--train-features",
        s(&trf),
        "--train-labels",
        s(&tel),
        "--test-features",
        s(&tef),
        "--test-labels",
        s(&tel),
    ]);
    assert!(
        err.contains("test_labels.npy") && err.contains("train.npy"),
        "{err}"
    );
}

#[test]
fn svg_pictures_and_overlap() {
    let d = Data::new();
    let prefix = d.path("pics/run"); // the directory is created
    let out = isoclip(&["eval", "--svg", s(&prefix)]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("overlap"), "{text}");
    for name in [
        "run-precision-at-k.svg",
        "run-similarity-clip.svg",
        "run-similarity-isoclip.svg",
    ] {
        let svg = std::fs::read_to_string(d.path("pics").join(name)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{name}"
        );
    }
    let v = ok_json(&["eval", "--svg", s(&prefix), "--json"]);
    let (oc, oi) = (
        num(&v, &["clip", "similarity_overlap"]),
        num(&v, &["isoclip", "similarity_overlap"]),
    );
    assert!((0.0..=1.0).contains(&oc) && (0.0..=1.0).contains(&oi));
    // IsoCLIP separates positives from negatives better on the synthetic data.
    assert!(oi < oc, "overlap CLIP {oc} vs IsoCLIP {oi}");
    assert_eq!(v["clip"]["precision_at_k"].as_array().unwrap().len(), 100);
}

#[test]
fn bad_inputs_fail_cleanly_naming_the_file() {
    let d = Data::new();
    let p = s(&d.projector).to_string();
    let (f, l) = d.write("all", 0, 200, NpyDtype::F32);

    // Label count differs from the row count.
    let short = d.path("short_labels.npy");
    write_vector_i64(&short, &d.labels[..199]).unwrap();
    let err = fails(&[
        "eval",
        "--projector",
        &p,
        "--features",
        s(&f),
        "--labels",
        s(&short),
    ]);
    assert!(
        err.contains("short_labels.npy") && err.contains("199") && err.contains("200"),
        "{err}"
    );

    // Float labels.
    let fl = d.path("float_labels.npy");
    write_matrix_f32(&fl, 200, 1, &vec![1.0; 200], NpyDtype::F32).unwrap();
    let err = fails(&[
        "eval",
        "--projector",
        &p,
        "--features",
        s(&f),
        "--labels",
        s(&fl),
    ]);
    assert!(
        err.contains("float_labels.npy") && err.contains("integers"),
        "{err}"
    );

    // Empty set (0 rows).
    let empty = d.path("empty.npy");
    write_matrix_f32(&empty, 0, D_IN, &[], NpyDtype::F32).unwrap();
    let err = fails(&[
        "eval",
        "--projector",
        &p,
        "--features",
        s(&empty),
        "--labels",
        s(&l),
    ]);
    assert!(err.contains("empty.npy") && err.contains("0 rows"), "{err}");
    let empty_labels = d.path("empty_labels.npy");
    write_vector_i64(&empty_labels, &[]).unwrap();
    let err = fails(&[
        "eval",
        "--projector",
        &p,
        "--features",
        s(&f),
        "--labels",
        s(&empty_labels),
    ]);
    assert!(err.contains("empty_labels.npy"), "{err}");

    // Feature width differs from the projector's input.
    let narrow = d.path("narrow.npy");
    write_matrix_f32(&narrow, 200, 100, &vec![0.5; 200 * 100], NpyDtype::F32).unwrap();
    let err = fails(&[
        "eval",
        "--projector",
        &p,
        "--features",
        s(&narrow),
        "--labels",
        s(&l),
    ]);
    assert!(
        err.contains("narrow.npy") && err.contains("100") && err.contains("768"),
        "{err}"
    );

    // Query and gallery of different widths.
    let err = fails(&[
        "eval",
        "--projector",
        &p,
        "--query-features",
        s(&narrow),
        "--query-labels",
        s(&l),
        "--gallery-features",
        s(&f),
        "--gallery-labels",
        s(&l),
    ]);
    assert!(
        err.contains("narrow.npy") && err.contains("all.npy"),
        "{err}"
    );

    // Missing file.
    let err = fails(&[
        "eval",
        "--projector",
        &p,
        "--features",
        "/nonexistent/x.npy",
        "--labels",
        s(&l),
    ]);
    assert!(err.contains("/nonexistent/x.npy"), "{err}");

    // One row: nothing to retrieve.
    let (one, one_l) = d.write("one", 0, 1, NpyDtype::F32);
    let err = fails(&[
        "eval",
        "--projector",
        &p,
        "--features",
        s(&one),
        "--labels",
        s(&one_l),
    ]);
    assert!(
        err.contains("one.npy") && err.contains("at least 2"),
        "{err}"
    );

    // NaN in a feature row.
    let mut bad = d.features[..200 * D_IN].to_vec();
    bad[17 * D_IN + 3] = f32::NAN;
    let nan = d.path("nan.npy");
    write_matrix_f32(&nan, 200, D_IN, &bad, NpyDtype::F32).unwrap();
    let err = fails(&[
        "eval",
        "--projector",
        &p,
        "--features",
        s(&nan),
        "--labels",
        s(&l),
    ]);
    assert!(err.contains("nan.npy") && err.contains("row 17"), "{err}");
    // `project`'s remedy is not eval's: eval has no flag to suggest.
    assert!(!err.contains("--nonfinite"), "{err}");

    // Not a .npy at all, and a 3-D array.
    let junk = d.path("junk.npy");
    std::fs::write(&junk, b"hello").unwrap();
    let err = fails(&[
        "eval",
        "--projector",
        &p,
        "--features",
        s(&f),
        "--labels",
        s(&junk),
    ]);
    assert!(err.contains("junk.npy"), "{err}");
    let cube = d.path("cube_labels.npy");
    let mut b = header_bytes(NpyDtype::I64, &[2, 2, 50]);
    b.extend(vec![0u8; 200 * 8]);
    std::fs::write(&cube, b).unwrap();
    let err = fails(&[
        "eval",
        "--projector",
        &p,
        "--features",
        s(&f),
        "--labels",
        s(&cube),
    ]);
    assert!(
        err.contains("cube_labels.npy") && err.contains("shape"),
        "{err}"
    );

    // A projector without data, and data without a projector.
    let err = fails(&["eval", "--projector", &p]);
    assert!(err.contains("--features"), "{err}");
    let err = fails(&["eval", "--features", s(&f), "--labels", s(&l)]);
    assert!(err.contains("--projector"), "{err}");

    // Usage errors are exit code 2 (clap), e.g. --features without --labels.
    let out = isoclip(&["eval", "--projector", &p, "--features", s(&f)]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sweep_finds_the_synthetic_band_and_writes_its_projector() {
    let d = Data::new();
    let best = d.path("best.safetensors");
    let v = ok_json(&[
        "sweep",
        "--k-top-grid",
        "0,100,200",
        "--k-bottom-grid",
        "0,50",
        "-o",
        s(&best),
        "--json",
    ]);
    assert_eq!(v["synthetic"], true);
    assert_eq!(v["bands"].as_array().unwrap().len(), 6);
    assert_eq!(v["best"]["k_top"], 200);
    assert_eq!(v["best"]["k_bottom"], 50);
    let best_map = num(&v, &["best", "map"]);
    for b in v["bands"].as_array().unwrap() {
        assert!(num(b, &["map"]) <= best_map);
    }
    // The written projector reproduces the sweep's numbers.
    let (f, l) = d.write("all", 0, ROWS, NpyDtype::F32);
    let e = ok_json(&[
        "eval",
        "--projector",
        s(&best),
        "--features",
        s(&f),
        "--labels",
        s(&l),
        "--json",
    ]);
    assert_eq!(e["k_top"], 200);
    assert!((num(&e, &["isoclip", "map"]) - best_map).abs() < 1e-9);
    assert!((num(&e, &["clip", "map"]) - num(&v, &["clip", "map"])).abs() < 1e-9);

    // Human output marks the best band.
    let out = isoclip(&["sweep", "--k-top-grid", "150,200", "--k-bottom-grid", "50"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SYNTHETIC"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with('*') && l.contains("200")),
        "{text}"
    );

    // A grid where no band keeps a direction.
    let err = fails(&["sweep", "--k-top-grid", "600", "--k-bottom-grid", "0"]);
    assert!(err.contains("no band"), "{err}");
}

#[test]
fn sweep_writes_no_projector_when_no_band_beats_clip_unless_forced() {
    let d = Data::new();
    let out = d.path("worse.safetensors");
    // Keeping only 12 of 512 directions loses to plain CLIP on the synthetic data.
    let args = [
        "sweep",
        "--k-top-grid",
        "500",
        "--k-bottom-grid",
        "0",
        "-o",
        s(&out),
        "--json",
    ];
    let o = isoclip(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["beats_clip"], false);
    assert!(num(&v, &["best", "map"]) < num(&v, &["clip", "map"]));
    assert_eq!(v["output"], Value::Null);
    assert!(!out.exists(), "the losing band must not be written");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: no band beats plain CLIP")
            && err.contains("pass --force to write it anyway"),
        "{err}"
    );

    let mut forced = args.to_vec();
    forced.push("--force");
    let v = ok_json(&forced);
    assert_eq!(v["beats_clip"], false);
    assert_eq!(v["output"], s(&out));
    assert!(out.is_file());

    // A band that wins is written without --force and says so.
    let best = d.path("best.safetensors");
    let v = ok_json(&[
        "sweep",
        "--k-top-grid",
        "200",
        "--k-bottom-grid",
        "50",
        "-o",
        s(&best),
        "--json",
    ]);
    assert_eq!(v["beats_clip"], true);
    assert!(best.is_file());
}

/// Data files and the projector named by `file://` URLs (the object-store path of `eval`: each
/// file is streamed into an unnamed temporary file) give exactly the numbers of plain paths, and
/// a missing object is an error naming its URL.
#[test]
fn eval_reads_data_files_and_projector_from_urls() {
    let d = Data::new();
    let (f, l) = d.write("url", 0, ROWS, NpyDtype::F32);
    let url = |p: &Path| format!("file://{}", std::fs::canonicalize(p).unwrap().display());
    let by_path = ok_json(&[
        "eval",
        "--projector",
        s(&d.projector),
        "--features",
        s(&f),
        "--labels",
        s(&l),
        "--json",
    ]);
    let by_url = ok_json(&[
        "eval",
        "--projector",
        &url(&d.projector),
        "--features",
        &url(&f),
        "--labels",
        &url(&l),
        "--json",
    ]);
    for side in ["clip", "isoclip", "delta"] {
        assert_eq!(by_path[side], by_url[side], "{side}");
    }
    assert!(
        by_url["data"].as_str().unwrap().contains("file://"),
        "{}",
        by_url["data"]
    );
    let missing = format!("{}-missing.npy", url(&f));
    let err = fails(&[
        "eval",
        "--projector",
        &url(&d.projector),
        "--features",
        &missing,
        "--labels",
        &url(&l),
    ]);
    assert!(err.contains(&missing), "{err}");
}
