#!/usr/bin/env python3
"""Reference retrieval metrics (numpy only) and the fixtures of tests/eval_parity.rs.

Mirrors, line by line, what the IsoCLIP reference (github.com/simomagi/IsoCLIP, src/retrieval.py,
`compute_metrics` / `compute_cross_modal_metrics`) does per query:

  * torchmetrics.functional.retrieval_average_precision(preds, target)        -> AP
  * utils.retrieval_average_precision_atk(preds, target, top_k=relevant_per_query)
        with relevant_per_query counted BEFORE the query's own entry is removed -> AP@R
  * torchmetrics.functional.retrieval_r_precision(preds, target)              -> P@R
  * query_true[topk(query_sim)[0]], and hit-in-top-5/10 (cross-modal path)     -> R@1/5/10

Deliberate, documented differences (the Rust engine does the same):
  * ranking uses a STABLE descending order (score desc, then gallery index asc); torch's
    topk/argsort leave the order of exact ties unspecified;
  * where the reference's AP@R divides 0 by 0 (no relevant item after exclusion) it yields NaN;
    the expected values record that (`ap_at_r_reference`: null) and score it 0 (`ap_at_r`);
  * where the reference's top_k exceeds the gallery (every item relevant, one set), torch.topk
    would raise; we clamp top_k to the gallery size.

Run from the repository root to regenerate (needs numpy only):
    python3 tests/reference/eval_reference.py
It writes tests/fixtures/eval/<case>/*.npy and expected.json. Rust tests never run Python.
"""
import json
import os
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "eval")
CURVE_K = 10


def ranking(preds):
    """Indices by score descending, ties by index ascending (a stable sort)."""
    return np.argsort(-preds, kind="stable")


def tm_retrieval_average_precision(preds, target):
    # torchmetrics.functional.retrieval_average_precision with top_k=None
    top_k = preds.shape[-1]
    target = target[ranking(preds)[:top_k]]
    if not target.sum():
        return 0.0
    positions = np.arange(1, len(target) + 1, dtype=np.float64)[target > 0]
    return float(np.mean((np.arange(len(positions), dtype=np.float64) + 1) / positions))


def tm_retrieval_r_precision(preds, target):
    relevant_number = int(target.sum())
    if not relevant_number:
        return 0.0
    relevant = target[ranking(preds)][:relevant_number].sum()
    return float(relevant) / relevant_number


def repo_retrieval_average_precision_atk(preds, target, top_k=None):
    # `top_k or preds.shape[-1]`: a zero count (tensor(0)) is falsy -> the whole gallery.
    top_k = top_k or preds.shape[-1]
    number_of_relevant = int(target.sum())
    top_k = min(int(top_k), preds.shape[-1])  # torch.topk would raise beyond the gallery
    sorted_indices = ranking(preds)[:top_k]
    t = target[sorted_indices].astype(np.int64)
    precisions = np.cumsum(t) * t
    precisions = precisions / np.arange(1, precisions.shape[0] + 1)
    denom = min(number_of_relevant, top_k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(precisions) / np.float64(denom))


def evaluate(S, query_labels, gallery_labels, same_split):
    """Per-query metrics for a score matrix S (queries x gallery)."""
    ground_truth = query_labels[:, None] == gallery_labels[None, :]
    out = {k: [] for k in ["ap", "ap_at_r_reference", "ap_at_r", "ap_at_r_exact", "p_at_r",
                           "r_at_1", "r_at_5", "r_at_10", "relevant"]}
    hits = np.zeros(CURVE_K, dtype=np.int64)
    for q in range(S.shape[0]):
        query_sim = S[q].copy()
        query_true = ground_truth[q].copy()
        relevant_per_query = int(query_true.sum())
        if same_split:
            query_sim = np.delete(query_sim, q)
            query_true = np.delete(query_true, q)
        order = ranking(query_sim)
        out["ap"].append(tm_retrieval_average_precision(query_sim, query_true))
        ref = repo_retrieval_average_precision_atk(query_sim, query_true, top_k=relevant_per_query)
        out["ap_at_r_reference"].append(None if np.isnan(ref) else ref)
        out["ap_at_r"].append(0.0 if np.isnan(ref) else ref)
        exact = repo_retrieval_average_precision_atk(query_sim, query_true, top_k=int(query_true.sum()))
        out["ap_at_r_exact"].append(0.0 if np.isnan(exact) else exact)
        out["p_at_r"].append(tm_retrieval_r_precision(query_sim, query_true))
        top10 = order[:10]
        out["r_at_1"].append(float(query_true[top10[0]]))
        out["r_at_5"].append(float(min(query_true[top10[:5]].sum(), 1)))
        out["r_at_10"].append(float(min(query_true[top10].sum(), 1)))
        out["relevant"].append(int(query_true.sum()))
        ranked_true = query_true[order]
        found = np.cumsum(ranked_true[:CURVE_K]).astype(np.int64)
        if len(found) < CURVE_K:  # gallery shorter than K: nothing more is found
            found = np.concatenate([found, np.full(CURVE_K - len(found), found[-1])])
        hits += found
    n = S.shape[0]
    mean = {k: 100.0 * float(np.mean(out[src])) for k, src in [
        ("map", "ap"), ("map_at_r", "ap_at_r"), ("map_at_r_exact", "ap_at_r_exact"),
        ("p_at_r", "p_at_r"), ("r_at_1", "r_at_1"), ("r_at_5", "r_at_5"), ("r_at_10", "r_at_10")]}
    nan = sum(v is None for v in out["ap_at_r_reference"])
    mean["map_at_r_reference"] = None if nan else mean["map_at_r"]
    return {
        "per_query": out,
        "mean": mean,
        "reference_nan_queries": nan,
        "queries_without_relevant": sum(r == 0 for r in out["relevant"]),
        "precision_at_k": [100.0 * float(hits[k]) / ((k + 1) * n) for k in range(CURVE_K)],
    }


def min_score_gap(S):
    gaps = []
    for row in S:
        u = np.unique(row)
        if len(u) > 1:
            gaps.append(np.min(np.diff(u)))
    return min(gaps) if gaps else np.inf


def save(case, name, arr):
    np.save(os.path.join(OUT, case, name), arr)


def write_case(case, description, queries, query_labels, gallery=None, gallery_labels=None,
               continuous=False):
    os.makedirs(os.path.join(OUT, case), exist_ok=True)
    same = gallery is None
    if same:
        gallery, gallery_labels = queries, query_labels
    S = queries.astype(np.float64) @ gallery.astype(np.float64).T
    if continuous:
        # f32 GEMM vs this f64 product differ by ~1e-7: keep every distinct score far apart so
        # the ranking cannot depend on rounding.
        assert min_score_gap(S) > 1e-5, f"{case}: scores too close, choose another seed"
    else:
        # integer-valued vectors: every score is exact in f32 whatever the summation order
        assert np.all(queries == np.round(queries)) and np.all(gallery == np.round(gallery))
    res = evaluate(S, query_labels.reshape(-1).astype(np.int64),
                   gallery_labels.reshape(-1).astype(np.int64), same)
    files = {}
    if same:
        save(case, "features.npy", queries)
        save(case, "labels.npy", query_labels)
        files = {"features": "features.npy", "labels": "labels.npy"}
    else:
        save(case, "queries.npy", queries)
        save(case, "query_labels.npy", query_labels)
        save(case, "gallery.npy", gallery)
        save(case, "gallery_labels.npy", gallery_labels)
        files = {"queries": "queries.npy", "query_labels": "query_labels.npy",
                 "gallery": "gallery.npy", "gallery_labels": "gallery_labels.npy"}
    expected = {"description": description, "mode": "one_set" if same else "query_gallery",
                "files": files, **res}
    with open(os.path.join(OUT, case, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{case}: map {res['mean']['map']:.4f}, map@R {res['mean']['map_at_r']:.4f}, "
          f"reference NaN queries {res['reference_nan_queries']}")


def main():
    rng = np.random.default_rng(20260401)

    # 1. One set, integer vectors (exact ties everywhere), uneven classes incl. a singleton
    #    (R = 0 after self-exclusion: the reference's AP@R is 0/0 = NaN there).
    n = 40
    x = rng.integers(-2, 3, size=(n, 3)).astype(np.float32)
    labels = np.array([0] * 12 + [1] * 9 + [2] * 8 + [3] * 6 + [4] * 4 + [5], dtype=np.int32)
    rng.shuffle(labels)
    write_case("oneset_ties", "one set, integer vectors with many exact ties, a singleton class",
               x, labels)

    # 2. Queries vs gallery, integer vectors, query classes absent from the gallery (no relevant
    #    item: AP 0, reference AP@R NaN), uint8 / int16 labels.
    q = rng.integers(-2, 3, size=(25, 3)).astype(np.float32)
    g = rng.integers(-2, 3, size=(50, 3)).astype(np.float32)
    ql = rng.integers(0, 7, size=25).astype(np.uint8)
    gl = rng.integers(0, 5, size=50).astype(np.int16)
    write_case("qg_ties_missing", "query/gallery, integer vectors with ties, classes 5 and 6 absent from the gallery",
               q, ql, g, gl)

    # 3. One set where every item is relevant to every other (the reference's top_k = n exceeds
    #    the gallery of n - 1: clamped).
    x = rng.normal(size=(12, 5)).astype(np.float32)
    write_case("oneset_all_relevant", "one set, a single class", x, np.full(12, 3, dtype=np.int64),
               continuous=True)

    # 4. One set, continuous features, 7 classes, int64 labels.
    for seed in range(100):
        r = np.random.default_rng(seed)
        x = r.normal(size=(80, 6)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        if min_score_gap(x.astype(np.float64) @ x.astype(np.float64).T) > 1e-5:
            break
    else:
        sys.exit("no seed gave well-separated scores")
    write_case("oneset_random", "one set, random unit vectors, 7 classes",
               x, r.integers(0, 7, size=80).astype(np.int64), continuous=True)

    # 5. Queries vs gallery, continuous features, int32 labels, 2-D (n, 1) label arrays.
    for seed in range(100, 200):
        r = np.random.default_rng(seed)
        q = r.normal(size=(30, 6)).astype(np.float32)
        g = r.normal(size=(70, 6)).astype(np.float32)
        if min_score_gap(q.astype(np.float64) @ g.astype(np.float64).T) > 1e-5:
            break
    else:
        sys.exit("no seed gave well-separated scores")
    write_case("qg_random", "query/gallery, random vectors, 5 classes, (n, 1) label arrays",
               q, r.integers(0, 5, size=(30, 1)).astype(np.int32), g,
               r.integers(0, 5, size=(70, 1)).astype(np.int32), continuous=True)

    # 6. A hand-checkable case: one query, gallery scores 3, 2, 2, 1, 0 along one axis.
    #    Relevant: gallery 1 and 4. Ranked (stable): g0(3) g1(2) g2(2) g3(1) g4(0) -> ranks 2, 5.
    q = np.array([[1.0]], dtype=np.float32)
    g = np.array([[3.0], [2.0], [2.0], [1.0], [0.0]], dtype=np.float32)
    write_case("qg_hand", "one query: relevant items at ranks 2 and 5 (AP = (1/2 + 2/5)/2 = 0.45)",
               q, np.array([1], dtype=np.int64), g, np.array([0, 1, 0, 0, 1], dtype=np.int64))


if __name__ == "__main__":
    main()
