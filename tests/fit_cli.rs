//! `isoclip fit` / `inspect` / `spectrum` end to end, including every bad input of the core issue.

mod common;

use common::*;
use isoclip::align::synthetic::Rng;

fn small_weights(seed: u64, di: usize, dt: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng::new(seed);
    (
        uniform_matrix(&mut rng, di, d),
        uniform_matrix(&mut rng, dt, d),
    )
}

/// `isoclip fit --image-proj IMAGE --text-proj TEXT --k-top 1 --k-bottom 1` in `dir`.
fn fit_npy_pair(dir: &std::path::Path, image: &str, text: &str) -> std::process::Output {
    isoclip(
        &[
            "fit",
            "--image-proj",
            image,
            "--text-proj",
            text,
            "--k-top",
            "1",
            "--k-bottom",
            "1",
        ],
        dir,
    )
}

/// `isoclip fit --checkpoint CHECKPOINT --k-top 1 --k-bottom 1` in `dir`.
fn fit_checkpoint(dir: &std::path::Path, checkpoint: &str) -> std::process::Output {
    isoclip(
        &[
            "fit",
            "--checkpoint",
            checkpoint,
            "--k-top",
            "1",
            "--k-bottom",
            "1",
        ],
        dir,
    )
}

fn transpose(v: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = v[i * cols + j];
        }
    }
    t
}

#[test]
fn default_fit_is_synthetic_labelled_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = isoclip(
        &["fit", "--modality", "both", "-o", "a.safetensors"],
        dir.path(),
    );
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(stdout(&a).contains("SYNTHETIC"));
    assert!(stderr(&a).contains("SYNTHETIC"));
    let b = isoclip(
        &["fit", "--modality", "both", "-o", "b.safetensors"],
        dir.path(),
    );
    assert!(b.status.success());
    let fa = std::fs::read(dir.path().join("a.safetensors")).unwrap();
    let fb = std::fs::read(dir.path().join("b.safetensors")).unwrap();
    assert!(fa == fb, "two fits are not byte-identical");

    let i = isoclip(&["inspect", "a.safetensors", "--json"], dir.path());
    assert!(i.status.success(), "{}", stderr(&i));
    let v: serde_json::Value = serde_json::from_str(&stdout(&i)).unwrap();
    assert_eq!(v["synthetic"], true);
    assert_eq!(v["r"], 512);
    assert_eq!(v["maps"][0]["m"], 262);
    assert_eq!(v["maps"][1]["modality"], "text");

    let s = isoclip(
        &["spectrum", "--projector", "a.safetensors", "--svg", "s.svg"],
        dir.path(),
    );
    assert!(s.status.success(), "{}", stderr(&s));
    let svg = std::fs::read_to_string(dir.path().join("s.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("kept band"));
    assert!(stdout(&s).contains("kept band [200, 462)"));
}

#[test]
fn openai_and_huggingface_names_give_the_same_projector() {
    let dir = tempfile::tempdir().unwrap();
    let (pi, pt) = small_weights(11, 48, 32, 40);
    write_safetensors(
        &dir.path().join("openai.safetensors"),
        &[
            StTensor::f32("visual.proj", &[48, 40], &pi),
            StTensor::f32("text_projection", &[32, 40], &pt),
            StTensor::f32("visual.transformer.unrelated", &[2, 2], &[0.0; 4]),
        ],
    );
    write_safetensors(
        &dir.path().join("hf.safetensors"),
        &[
            StTensor::f32(
                "visual_projection.weight",
                &[40, 48],
                &transpose(&pi, 48, 40),
            ),
            StTensor::f32("text_projection.weight", &[40, 32], &transpose(&pt, 32, 40)),
        ],
    );
    write_npy_f32(&dir.path().join("pi.npy"), 48, 40, &pi);
    write_npy_f32(&dir.path().join("pt.npy"), 32, 40, &pt);
    let args = ["--k-top", "4", "--k-bottom", "4", "--modality", "both"];
    for (src, out) in [
        (vec!["--checkpoint", "openai.safetensors"], "o.st"),
        (vec!["--checkpoint", "hf.safetensors"], "h.st"),
        (
            vec!["--image-proj", "pi.npy", "--text-proj", "pt.npy"],
            "n.st",
        ),
    ] {
        let mut a = vec!["fit"];
        a.extend(src);
        a.extend(args);
        a.extend(["-o", out]);
        let o = isoclip(&a, dir.path());
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // The fingerprint (of the source weights) and everything the projector holds agree; only the
    // provenance (`source`: which file, which names) differs, and the content checksum covers it
    // (format 2), so it is compared with the provenance set aside.
    let f = |n: &str| {
        let v: serde_json::Value =
            serde_json::from_str(&stdout(&isoclip(&["inspect", n, "--json"], dir.path()))).unwrap();
        let mut p = isoclip::formats::projector_file::load(&dir.path().join(n)).unwrap();
        p.source = String::new();
        (
            v["fingerprint"].clone(),
            isoclip::formats::projector_file::content_digest(&p),
        )
    };
    assert_eq!(f("o.st"), f("h.st"));
    assert_eq!(f("o.st"), f("n.st"));
}

#[test]
fn half_precision_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    let (pi, pt) = small_weights(12, 48, 32, 40);
    write_safetensors(
        &dir.path().join("f16.safetensors"),
        &[
            StTensor::f16("visual.proj", &[48, 40], &pi),
            StTensor::bf16("text_projection", &[32, 40], &pt),
        ],
    );
    let o = isoclip(
        &[
            "fit",
            "--checkpoint",
            "f16.safetensors",
            "--k-top",
            "3",
            "--k-bottom",
            "3",
            "-o",
            "p.st",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn tensors_not_found_lists_the_names_present() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(
        &dir.path().join("m.safetensors"),
        &[
            StTensor::f32("encoder.weight", &[2, 2], &[1.0; 4]),
            StTensor::f32("logit_scale", &[1], &[1.0]),
        ],
    );
    let o = fit_checkpoint(dir.path(), "m.safetensors");
    assert_fails_with(
        &o,
        &[
            "m.safetensors",
            "no projector tensors",
            "encoder.weight",
            "logit_scale",
            "visual.proj",
        ],
    );
    assert!(!dir.path().join("projector.isoclip.safetensors").exists());
}

#[test]
fn different_output_dims_name_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(3);
    write_npy_f32(
        &dir.path().join("a.npy"),
        16,
        12,
        &uniform_matrix(&mut rng, 16, 12),
    );
    write_npy_f32(
        &dir.path().join("b.npy"),
        8,
        10,
        &uniform_matrix(&mut rng, 8, 10),
    );
    let o = fit_npy_pair(dir.path(), "a.npy", "b.npy");
    assert_fails_with(&o, &["output dim 12", "output dim 10"]);
}

#[test]
fn non_finite_weights_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut pi, pt) = small_weights(4, 16, 8, 8);
    pi[5] = f64::NAN;
    write_npy_f32(&dir.path().join("a.npy"), 16, 8, &pi);
    write_npy_f32(&dir.path().join("b.npy"), 8, 8, &pt);
    let o = fit_npy_pair(dir.path(), "a.npy", "b.npy");
    assert_fails_with(&o, &["a.npy", "non-finite"]);

    let (pi, mut pt) = small_weights(4, 16, 8, 8);
    pt[0] = f64::INFINITY;
    write_safetensors(
        &dir.path().join("inf.safetensors"),
        &[
            StTensor::f32("visual.proj", &[16, 8], &pi),
            StTensor::f32("text_projection", &[8, 8], &pt),
        ],
    );
    let o = fit_checkpoint(dir.path(), "inf.safetensors");
    assert_fails_with(&o, &["inf.safetensors", "text projector", "non-finite"]);
}

#[test]
fn empty_band_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = isoclip(&["fit", "--k-top", "300", "--k-bottom", "212"], dir.path());
    assert_fails_with(&o, &["empty band", "512"]);
    assert!(!dir.path().join("projector.isoclip.safetensors").exists());
}

#[test]
fn truncated_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let (pi, pt) = small_weights(5, 16, 8, 8);
    write_safetensors(
        &dir.path().join("full.safetensors"),
        &[
            StTensor::f32("visual.proj", &[16, 8], &pi),
            StTensor::f32("text_projection", &[8, 8], &pt),
        ],
    );
    let bytes = std::fs::read(dir.path().join("full.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("cut.safetensors"),
        &bytes[..bytes.len() - 100],
    )
    .unwrap();
    let o = fit_checkpoint(dir.path(), "cut.safetensors");
    assert_fails_with(&o, &["cut.safetensors", "not a readable safetensors file"]);

    write_npy_f32(&dir.path().join("a.npy"), 16, 8, &pi);
    write_npy_f32(&dir.path().join("b.npy"), 8, 8, &pt);
    let b = std::fs::read(dir.path().join("a.npy")).unwrap();
    std::fs::write(dir.path().join("a_cut.npy"), &b[..b.len() - 7]).unwrap();
    let o = fit_npy_pair(dir.path(), "a_cut.npy", "b.npy");
    assert_fails_with(&o, &["a_cut.npy", "truncated"]);

    let o = fit_checkpoint(dir.path(), "missing.safetensors");
    assert_fails_with(&o, &["missing.safetensors", "No such file"]);

    std::fs::write(dir.path().join("model.pt"), b"PK\x03\x04 torch zip").unwrap();
    let o = fit_checkpoint(dir.path(), "model.pt");
    assert_fails_with(&o, &["model.pt", "convert it to safetensors"]);

    let o = isoclip(&["inspect", "full.safetensors"], dir.path());
    assert_fails_with(&o, &["full.safetensors", "not an isoclip projector file"]);
}

#[test]
fn unsupported_dtypes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pt) = small_weights(6, 16, 8, 8);
    write_npy_raw(
        &dir.path().join("int.npy"),
        "<i4",
        &[16, 8],
        false,
        &[0u8; 16 * 8 * 4],
    );
    write_npy_f32(&dir.path().join("b.npy"), 8, 8, &pt);
    let o = fit_npy_pair(dir.path(), "int.npy", "b.npy");
    assert_fails_with(&o, &["int.npy", "'<i4'", "not supported"]);

    write_safetensors(
        &dir.path().join("i32.safetensors"),
        &[
            StTensor {
                name: "visual.proj".into(),
                dtype: "I32",
                shape: vec![16, 8],
                bytes: vec![0; 16 * 8 * 4],
            },
            StTensor::f32("text_projection", &[8, 8], &pt),
        ],
    );
    let o = fit_checkpoint(dir.path(), "i32.safetensors");
    assert_fails_with(&o, &["i32.safetensors", "visual.proj", "I32"]);
}

#[test]
fn presets_check_shapes_and_explicit_bands_override() {
    let dir = tempfile::tempdir().unwrap();
    let (pi, pt) = small_weights(7, 16, 8, 8);
    write_npy_f32(&dir.path().join("a.npy"), 16, 8, &pi);
    write_npy_f32(&dir.path().join("b.npy"), 8, 8, &pt);
    let o = isoclip(
        &[
            "fit",
            "--image-proj",
            "a.npy",
            "--text-proj",
            "b.npy",
            "--preset",
            "openai-vit-b-16",
        ],
        dir.path(),
    );
    assert_fails_with(&o, &["openai-vit-b-16", "768x512"]);
    let o = isoclip(&["fit", "--preset", "no-such-model"], dir.path());
    assert_fails_with(&o, &["unknown preset", "openai-vit-l-14"]);
    let o = isoclip(
        &[
            "fit",
            "--preset",
            "openai-vit-b-16",
            "--k-top",
            "100",
            "--json",
            "-o",
            "p.st",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["maps"][0]["k_top"], 100);
    assert_eq!(v["maps"][0]["k_bottom"], 50);
    let o = isoclip(
        &["fit", "--image-proj", "a.npy", "--text-proj", "b.npy"],
        dir.path(),
    );
    assert_fails_with(&o, &["--preset", "--k-top"]);
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let o = isoclip(&["fit", "--no-such-flag"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    let o = isoclip(&["fit", "--help"], dir.path());
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("Examples") && stdout(&o).contains("Exit codes"));
}

/// `isoclip fit` on two `.npy` projectors with an explicit band, in `dir`.
fn fit_npy_band(dir: &std::path::Path, k_top: &str, k_bottom: &str) -> std::process::Output {
    isoclip(
        &[
            "fit",
            "--image-proj",
            "a.npy",
            "--text-proj",
            "b.npy",
            "--k-top",
            k_top,
            "--k-bottom",
            k_bottom,
            "-o",
            "p.safetensors",
        ],
        dir,
    )
}

#[test]
fn all_zero_weights_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pt) = small_weights(5, 16, 8, 8);
    write_npy_f32(&dir.path().join("a.npy"), 16, 8, &[0.0; 16 * 8]);
    write_npy_f32(&dir.path().join("b.npy"), 8, 8, &pt);
    let o = fit_npy_band(dir.path(), "1", "1");
    assert_fails_with(
        &o,
        &[
            "the image projector (16 x 8) is all zeros: Ψ = P_i P_tᵀ would be zero and have no \
           singular direction to keep",
        ],
    );
    assert!(!dir.path().join("p.safetensors").exists());
}

#[test]
fn weights_far_outside_the_f32_safe_scale_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (pi, pt) = small_weights(6, 16, 8, 8);
    let huge: Vec<f64> = pi.iter().map(|v| v * 1e36).collect();
    write_npy_f32(&dir.path().join("a.npy"), 16, 8, &huge);
    write_npy_f32(&dir.path().join("b.npy"), 8, 8, &pt);
    let o = fit_npy_band(dir.path(), "1", "1");
    assert_fails_with(
        &o,
        &[
            "the image projector's largest |weight| is",
            "outside the supported range [9.094947017729282e-13, 1.099511627776e12]",
        ],
    );
    assert!(!dir.path().join("p.safetensors").exists());
    // The same weights at their real scale fit.
    write_npy_f32(&dir.path().join("a.npy"), 16, 8, &pi);
    let o = fit_npy_band(dir.path(), "1", "1");
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_band_reaching_the_zero_singular_values_of_a_rank_deficient_psi_is_refused() {
    // Ψ = P_i P_tᵀ is 96 x 64 but has rank d = 32: σ_33..σ_64 are zero.
    let dir = tempfile::tempdir().unwrap();
    let (pi, pt) = small_weights(7, 96, 64, 32);
    write_npy_f32(&dir.path().join("a.npy"), 96, 32, &pi);
    write_npy_f32(&dir.path().join("b.npy"), 64, 32, &pt);
    let o = fit_npy_band(dir.path(), "40", "10");
    assert_fails_with(
        &o,
        &[
            "Ψ has rank 32: only 32 of its 64 singular values exceed 1e-9·σ_1, but the band \
           k_top 40 / k_bottom 10 keeps directions [40, 54), which reach singular values that \
           are zero; a band must end by direction 32: k_bottom >= 32 (r − rank) and \
           k_top + k_bottom < 64",
        ],
    );
    assert!(!dir.path().join("p.safetensors").exists());
    let o = fit_npy_band(dir.path(), "4", "31");
    assert_fails_with(&o, &["Ψ has rank 32", "keeps directions [4, 33)"]);
    // The band the message allows fits, with m = 64 − 4 − 32 = 28 directions.
    let o = fit_npy_band(dir.path(), "4", "32");
    assert!(o.status.success(), "{}", stderr(&o));
    let i = isoclip(&["inspect", "p.safetensors", "--json"], dir.path());
    let j: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
    assert_eq!(j["maps"][0]["m"], 28, "{j}");
}

#[test]
fn band_sizes_that_overflow_when_added_are_an_empty_band_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (pi, pt) = small_weights(8, 16, 8, 8);
    write_npy_f32(&dir.path().join("a.npy"), 16, 8, &pi);
    write_npy_f32(&dir.path().join("b.npy"), 8, 8, &pt);
    let max = usize::MAX.to_string();
    let o = fit_npy_band(dir.path(), &max, "1");
    assert_fails_with(
        &o,
        &[&format!(
            "empty band: k_top {max} + k_bottom 1 = more than the largest size leaves no \
             direction of the 8 singular directions of Ψ; k_top + k_bottom must be < 8"
        )],
    );
}
