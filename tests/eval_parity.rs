//! Retrieval metrics vs an independent numpy mirror of the reference's definitions
//! (tests/reference/eval_reference.py: torchmetrics' retrieval_average_precision and
//! retrieval_r_precision, the IsoCLIP repo's retrieval_average_precision_atk with R counted
//! before self-exclusion). The fixtures in tests/fixtures/eval were written by that script.

use std::path::{Path, PathBuf};

use isoclip::backend::cpu::CpuBackend;
use isoclip::backend::InputKind;
use isoclip::eval::{
    self, evaluate, load_labels, Embeddings, Layout, Projection, RetrievalOptions,
    RetrievalOutcome, Rows, Sets,
};
use isoclip::formats::npy::{Accept, NpyMatrix};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(case)
}

fn expected(case: &str) -> Value {
    let text = std::fs::read_to_string(case_dir(case).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The raw f32 rows of a fixture, not normalised: the scores are the fixture's dot products.
fn raw(case: &str, file: &str) -> Embeddings {
    let m = NpyMatrix::open(&case_dir(case).join(file), Accept::Embeddings).unwrap();
    let data = m
        .row_bytes(0, m.rows)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Embeddings::new(m.rows, m.cols, data)
}

fn labels(case: &str, file: &str) -> Vec<i64> {
    load_labels(&case_dir(case).join(file)).unwrap()
}

fn run_case(case: &str) -> (Value, RetrievalOutcome) {
    let e = expected(case);
    let opts = RetrievalOptions {
        curve_max_k: 10,
        histogram_bins: 0,
    };
    let files = &e["files"];
    let name = |k: &str| files[k].as_str().unwrap().to_string();
    let out = if e["mode"] == "one_set" {
        let x = raw(case, &name("features"));
        let l = labels(case, &name("labels"));
        evaluate(
            Layout::OneSet {
                items: &x,
                labels: &l,
            },
            opts,
        )
        .unwrap()
    } else {
        let q = raw(case, &name("queries"));
        let ql = labels(case, &name("query_labels"));
        let g = raw(case, &name("gallery"));
        let gl = labels(case, &name("gallery_labels"));
        evaluate(
            Layout::QueryGallery {
                queries: &q,
                query_labels: &ql,
                gallery: &g,
                gallery_labels: &gl,
            },
            opts,
        )
        .unwrap()
    };
    (e, out)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn check_case(case: &str) {
    let (e, out) = run_case(case);
    let pq = &e["per_query"];
    let n = pq["ap"].as_array().unwrap().len();
    assert_eq!(out.per_query.len(), n, "{case}: query count");
    for (i, m) in out.per_query.iter().enumerate() {
        let ctx = format!("{case}, query {i}");
        assert!(
            (m.ap - f(&pq["ap"][i])).abs() < TOL,
            "{ctx}: AP {} vs {}",
            m.ap,
            pq["ap"][i]
        );
        assert!(
            (m.ap_at_r - f(&pq["ap_at_r"][i])).abs() < TOL,
            "{ctx}: AP@R {} vs {}",
            m.ap_at_r,
            pq["ap_at_r"][i]
        );
        assert!(
            (m.ap_at_r_exact - f(&pq["ap_at_r_exact"][i])).abs() < TOL,
            "{ctx}: AP@R exact"
        );
        assert!((m.p_at_r - f(&pq["p_at_r"][i])).abs() < TOL, "{ctx}: P@R");
        assert_eq!(m.r_at_1, f(&pq["r_at_1"][i]), "{ctx}: R@1");
        assert_eq!(m.r_at_5, f(&pq["r_at_5"][i]), "{ctx}: R@5");
        assert_eq!(m.r_at_10, f(&pq["r_at_10"][i]), "{ctx}: R@10");
        assert_eq!(
            m.relevant as u64,
            pq["relevant"][i].as_u64().unwrap(),
            "{ctx}: R"
        );
        assert_eq!(
            m.reference_nan,
            pq["ap_at_r_reference"][i].is_null(),
            "{ctx}: NaN flag"
        );
    }
    let s = &out.summary;
    let mean = &e["mean"];
    for (name, got) in [
        ("map", s.map),
        ("map_at_r", s.map_at_r),
        ("map_at_r_exact", s.map_at_r_exact),
        ("p_at_r", s.p_at_r),
        ("r_at_1", s.r_at_1),
        ("r_at_5", s.r_at_5),
        ("r_at_10", s.r_at_10),
    ] {
        assert!(
            (got - f(&mean[name])).abs() < TOL,
            "{case}: mean {name} {got} vs {}",
            mean[name]
        );
    }
    assert_eq!(
        s.reference_nan_queries as u64,
        e["reference_nan_queries"].as_u64().unwrap()
    );
    assert_eq!(
        s.queries_without_relevant as u64,
        e["queries_without_relevant"].as_u64().unwrap()
    );
    for (k, want) in e["precision_at_k"].as_array().unwrap().iter().enumerate() {
        assert!(
            (s.precision_at_k[k] - f(want)).abs() < TOL,
            "{case}: P@{}",
            k + 1
        );
    }
}

#[test]
fn one_set_with_exact_ties_and_a_singleton_class() {
    check_case("oneset_ties");
    // The fixture really exercises the quirk and the NaN case.
    let (e, _) = run_case("oneset_ties");
    assert_eq!(e["reference_nan_queries"], 1);
    assert_ne!(e["mean"]["map_at_r"], e["mean"]["map_at_r_exact"]);
}

#[test]
fn query_gallery_with_ties_and_absent_classes() {
    check_case("qg_ties_missing");
    let (e, out) = run_case("qg_ties_missing");
    assert!(e["queries_without_relevant"].as_u64().unwrap() > 0);
    // Absent class: every metric 0, not NaN.
    assert!(out
        .per_query
        .iter()
        .filter(|m| m.relevant == 0)
        .all(|m| m.ap == 0.0 && m.ap_at_r == 0.0 && m.p_at_r == 0.0 && m.r_at_10 == 0.0));
}

#[test]
fn one_set_where_everything_is_relevant() {
    check_case("oneset_all_relevant");
}

#[test]
fn one_set_random() {
    check_case("oneset_random");
}

#[test]
fn query_gallery_random_with_column_labels() {
    check_case("qg_random");
}

#[test]
fn hand_checked_ranking() {
    check_case("qg_hand");
    let (_, out) = run_case("qg_hand");
    // Scores 3, 2, 2, 1, 0; relevant g1 (tied with g2, earlier index: rank 2) and g4 (rank 5).
    let m = out.per_query[0];
    assert!((m.ap - 0.45).abs() < 1e-12);
    assert!((m.ap_at_r - 0.25).abs() < 1e-12);
    assert_eq!((m.p_at_r, m.r_at_1, m.r_at_5), (0.5, 0.0, 1.0));
}

#[test]
fn full_pipeline_from_files_matches_on_unit_vectors() {
    // oneset_random holds unit vectors: normalising again must not change any ranking, so the
    // file -> embed (through the CPU backend) -> evaluate path gives the fixture's numbers.
    let dir = case_dir("oneset_random");
    let m = eval::open_rows(&dir.join("features.npy")).unwrap();
    let l = labels("oneset_random", "labels.npy");
    let cpu = CpuBackend::new(None).unwrap();
    let out = eval::evaluate_sets(
        &cpu,
        Sets::One {
            rows: Rows::Npy(&m),
            labels: &l,
        },
        &Projection::IDENTITY,
        InputKind::Embeddings,
        RetrievalOptions::default(),
    )
    .unwrap();
    let e = expected("oneset_random");
    assert!((out.summary.map - f(&e["mean"]["map"])).abs() < TOL);
    assert!((out.summary.map_at_r - f(&e["mean"]["map_at_r"])).abs() < TOL);
    assert!((out.summary.p_at_r - f(&e["mean"]["p_at_r"])).abs() < TOL);
}
