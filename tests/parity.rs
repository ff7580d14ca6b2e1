//! Parity with the reference `apply_iso` (numpy mirror in tests/reference/apply_iso_reference.py,
//! fixtures in tests/fixtures/parity) and the exactness of the two reformulations.

mod common;

use common::{fixture, uniform_matrix};
use isoclip::align::synthetic::Rng;
use isoclip::align::{fit, BandSpec, LinearMap, MatrixF32, Modality, ProjectorWeights};
use isoclip::formats::npy::{Accept, NpyMatrix};
use isoclip::formats::projector_file;

struct Case {
    name: &'static str,
    d_i: usize,
    d_t: usize,
    d: usize,
    image: Option<(usize, usize)>,
    text: Option<(usize, usize)>,
    bias: bool,
    seed: u64,
}

const CASES: &[Case] = &[
    Case {
        name: "vit_b",
        d_i: 768,
        d_t: 512,
        d: 512,
        image: Some((200, 50)),
        text: Some((10, 50)),
        bias: false,
        seed: 1000,
    },
    Case {
        name: "vit_l",
        d_i: 1024,
        d_t: 768,
        d: 768,
        image: Some((250, 200)),
        text: Some((10, 300)),
        bias: false,
        seed: 1001,
    },
    Case {
        name: "pe",
        d_i: 768,
        d_t: 1024,
        d: 1024,
        image: Some((300, 50)),
        text: None,
        bias: false,
        seed: 1002,
    },
    Case {
        name: "bias",
        d_i: 96,
        d_t: 64,
        d: 80,
        image: Some((20, 10)),
        text: Some((5, 10)),
        bias: true,
        seed: 1003,
    },
];

fn weights_for(c: &Case) -> ProjectorWeights {
    let mut rng = Rng::new(c.seed);
    let pi = uniform_matrix(&mut rng, c.d_i, c.d);
    let pt = uniform_matrix(&mut rng, c.d_t, c.d);
    let (bi, bt) = if c.bias {
        (
            Some(uniform_matrix(&mut rng, 1, c.d)),
            Some(uniform_matrix(&mut rng, 1, c.d)),
        )
    } else {
        (None, None)
    };
    ProjectorWeights::new((c.d_i, c.d, pi), (c.d_t, c.d, pt), bi, bt, c.name.into()).unwrap()
}

fn load_f64(name: &str) -> (usize, usize, Vec<f64>) {
    let m = NpyMatrix::open(&fixture(&format!("parity/{name}")), Accept::Weights).unwrap();
    (m.rows, m.cols, m.to_f64())
}

/// The map as a (d_in [+1]) x out matrix, bias as the last row (the reference's augmented form).
fn augmented_rows(map: &LinearMap) -> Vec<f64> {
    let mut v: Vec<f64> = map.weight.data.iter().map(|x| *x as f64).collect();
    if let Some(b) = &map.bias {
        v.extend(b.iter().map(|x| *x as f64));
    }
    v
}

fn normalize(v: Vec<f64>) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn cosines(rows: &[Vec<f64>]) -> Vec<f64> {
    let n: Vec<Vec<f64>> = rows.iter().cloned().map(normalize).collect();
    let mut out = Vec::new();
    for a in &n {
        for b in &n {
            out.push(a.iter().zip(b).map(|(x, y)| x * y).sum());
        }
    }
    out
}

fn apply_matrix(m: &MatrixF32, x: &[f64]) -> Vec<f64> {
    (0..m.cols)
        .map(|j| {
            (0..m.rows)
                .map(|i| x[i] * m.data[i * m.cols + j] as f64)
                .sum()
        })
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn full_maps_match_the_reference_and_reformulations_are_exact() {
    for c in CASES {
        let w = weights_for(c);
        let mut bands = Vec::new();
        if let Some((t, b)) = c.image {
            bands.push((Modality::Image, BandSpec::new(t, b)));
        }
        if let Some((t, b)) = c.text {
            bands.push((Modality::Text, BandSpec::new(t, b)));
        }
        let p = fit(&w, &bands, None).unwrap();
        for &(modality, _) in &bands {
            let maps = p.maps(modality).unwrap();
            let tag = format!("{}_{}", c.name, modality.name());

            // 1. Full map vs the reference, relative Frobenius error.
            let (rows, cols, expected) = load_f64(&format!("{tag}_full.npy"));
            assert_eq!(
                (rows, cols),
                (maps.d_in + c.bias as usize, c.d),
                "{tag} shape"
            );
            let got = augmented_rows(&maps.full);
            let num: f64 = got
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt();
            let den: f64 = expected.iter().map(|b| b * b).sum::<f64>().sqrt();
            let rel = num / den;
            eprintln!("{tag}: full map relative Frobenius error {rel:.3e}");
            assert!(rel <= 1e-5, "{tag}: relative Frobenius error {rel:e}");

            // 2. Cosines: reference (full, f64) vs our full, compact and embedding route.
            let (n, _, probes) = load_f64(&format!("{tag}_probes.npy"));
            let (_, _, ref_cos) = load_f64(&format!("{tag}_cos.npy"));
            let xs: Vec<Vec<f32>> = (0..n)
                .map(|i| {
                    probes[i * maps.d_in..(i + 1) * maps.d_in]
                        .iter()
                        .map(|v| *v as f32)
                        .collect()
                })
                .collect();
            let full: Vec<Vec<f64>> = xs.iter().map(|x| maps.full.apply_row(x)).collect();
            let compact: Vec<Vec<f64>> = xs.iter().map(|x| maps.compact.apply_row(x)).collect();
            let d_full = max_abs_diff(&cosines(&full), &ref_cos);
            let d_compact = max_abs_diff(&cosines(&compact), &ref_cos);
            eprintln!("{tag}: max |Δcos| full {d_full:.2e}, compact {d_compact:.2e}");
            assert!(d_full <= 1e-6, "{tag}: full cos error {d_full:e}");
            assert!(d_compact <= 1e-6, "{tag}: compact cos error {d_compact:e}");
            assert_eq!(maps.compact_dim(), maps.m.min(c.d));

            match (&maps.embedding_compact, &maps.embedding_full, c.bias) {
                (Ok(ec), Ok(ef), false) => {
                    let emb: Vec<Vec<f64>> = xs.iter().map(|x| maps.plain.apply_row(x)).collect();
                    let via_c: Vec<Vec<f64>> =
                        emb.iter().map(|e| apply_matrix(&ec.weight, e)).collect();
                    let via_f: Vec<Vec<f64>> =
                        emb.iter().map(|e| apply_matrix(&ef.weight, e)).collect();
                    let d_ec = max_abs_diff(&cosines(&via_c), &ref_cos);
                    let d_ef = max_abs_diff(&cosines(&via_f), &ref_cos);
                    eprintln!(
                        "{tag}: embedding route max |Δcos| compact {d_ec:.2e}, full {d_ef:.2e}"
                    );
                    assert!(d_ec <= 1e-6, "{tag}: embedding compact cos error {d_ec:e}");
                    assert!(d_ef <= 1e-6, "{tag}: embedding full cos error {d_ef:e}");
                    // Already L2-normalised embeddings give the same cosines (the route is linear).
                    let normed: Vec<Vec<f64>> = emb.iter().cloned().map(normalize).collect();
                    let via_n: Vec<Vec<f64>> =
                        normed.iter().map(|e| apply_matrix(&ec.weight, e)).collect();
                    assert!(max_abs_diff(&cosines(&via_n), &ref_cos) <= 1e-6);
                }
                (Err(reason), Err(_), true) => {
                    assert!(
                        reason.contains("bias"),
                        "{tag}: reason should name the bias: {reason}"
                    );
                }
                other => panic!(
                    "{tag}: unexpected embedding route availability {:?}",
                    other.2
                ),
            }
        }
    }
}

#[test]
fn no_band_removal_reproduces_plain_clip() {
    let w = weights_for(&CASES[0]);
    let p = fit(&w, &[(Modality::Image, BandSpec::new(0, 0))], None).unwrap();
    let maps = p.maps(Modality::Image).unwrap();
    let mut rng = Rng::new(5);
    let xs: Vec<Vec<f32>> = (0..6)
        .map(|_| (0..768).map(|_| rng.normal() as f32).collect())
        .collect();
    let plain: Vec<Vec<f64>> = xs.iter().map(|x| maps.plain.apply_row(x)).collect();
    let full: Vec<Vec<f64>> = xs.iter().map(|x| maps.full.apply_row(x)).collect();
    let compact: Vec<Vec<f64>> = xs.iter().map(|x| maps.compact.apply_row(x)).collect();
    assert!(max_abs_diff(&cosines(&plain), &cosines(&full)) <= 1e-6);
    assert!(max_abs_diff(&cosines(&plain), &cosines(&compact)) <= 1e-6);
}

#[test]
fn empty_band_is_an_error() {
    let w = weights_for(&CASES[3]);
    // r = 65 for the bias case (64 + 1).
    let e = fit(&w, &[(Modality::Image, BandSpec::new(40, 25))], None).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("empty band") && msg.contains("65"), "{msg}");
    assert!(fit(&w, &[(Modality::Image, BandSpec::new(40, 24))], None).is_ok());
}

#[test]
fn fitting_twice_gives_identical_bytes_and_files_round_trip() {
    let w = weights_for(&CASES[0]);
    let bands = [
        (Modality::Image, BandSpec::new(200, 50)),
        (Modality::Text, BandSpec::new(10, 50)),
    ];
    let a = projector_file::to_bytes(&fit(&w, &bands, Some("openai-vit-b-16")).unwrap());
    let b = projector_file::to_bytes(&fit(&w.clone(), &bands, Some("openai-vit-b-16")).unwrap());
    assert!(a == b, "two fits differ");
    let p = projector_file::from_bytes(&a, std::path::Path::new("mem")).unwrap();
    assert_eq!(projector_file::to_bytes(&p), a, "load + save changes bytes");
    assert_eq!(p.preset.as_deref(), Some("openai-vit-b-16"));
    assert_eq!(p.maps(Modality::Image).unwrap().m, 262);
}

#[test]
fn projector_file_refuses_what_it_cannot_trust() {
    let w = weights_for(&CASES[3]);
    let p = fit(&w, &[(Modality::Image, BandSpec::new(20, 10))], None).unwrap();
    let good = projector_file::to_bytes(&p);
    let path = std::path::Path::new("proj.safetensors");

    // Flip one data byte at the end (inside a tensor): checksum mismatch.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x40;
    let e = projector_file::from_bytes(&bad, path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("proj.safetensors")
            && (e.contains("checksum") || e.contains("inconsistent") || e.contains("non-finite")),
        "{e}"
    );

    // Truncated.
    let e = projector_file::from_bytes(&good[..good.len() / 2], path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a readable projector file"), "{e}");

    // A future format version (same length, so every offset stays valid).
    let needle = b"\"format_version\":\"2\"";
    let pos = good
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("version in header");
    let mut bumped = good.clone();
    bumped[pos + needle.len() - 2] = b'9';
    let e = projector_file::from_bytes(&bumped, path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("version 9"), "{e}");
}
