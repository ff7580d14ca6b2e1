//! Per-query retrieval metrics with the reference's semantics (docs/METHOD.md §8).
//!
//! Everything is derived from one thing: the 1-based positions `p_1 < p_2 < … < p_R` of the
//! query's relevant gallery items in the ranked gallery (the query's own entry removed in
//! one-set evaluation). With those:
//!
//! * **AP** (torchmetrics `retrieval_average_precision`, `top_k=None`):
//!   `(1/R) Σ_k k / p_k`; a query with no relevant item scores **0**, as the functional
//!   torchmetrics API returns `tensor(0.0)` when `target.sum() == 0`.
//! * **AP@R** (the reference's `retrieval_average_precision_atk(preds, target,
//!   top_k=relevant_per_query)`): `Σ_{p_k ≤ top_k} k / p_k / min(R, top_k)`. The reference counts
//!   `relevant_per_query` *before* removing the query's own entry, so in one-set evaluation
//!   `top_k = R + 1` while the divisor is `min(R, top_k) = R`: a relevant item at rank R + 1 still
//!   counts. We replicate that quirk in [`QueryMetrics::ap_at_r`] and offer the corrected
//!   variant (`top_k = R`) in [`QueryMetrics::ap_at_r_exact`]; in query/gallery evaluation the two
//!   agree. Where the reference divides 0 by 0 (R = 0: a query whose class is absent from the
//!   gallery, or a singleton class in one-set evaluation) it produces NaN, which poisons its mean;
//!   we score 0 instead (torchmetrics' convention for empty targets) and count those queries in
//!   [`QueryMetrics::reference_nan`]. Where the reference's `top_k` exceeds the gallery (every
//!   item relevant, one set) `torch.topk` would raise; we clamp `top_k` to the gallery size.
//! * **P@R** (torchmetrics `retrieval_r_precision`): `#{k : p_k ≤ R} / R`, 0 when R = 0.
//! * **R@K** for K = 1, 5, 10: 1 when the top-K results hold a relevant item (`p_1 ≤ K`), else 0.
//!
//! **Ties.** The gallery is ranked by score, descending; equal scores are ordered by gallery
//! index, ascending — exactly what a stable sort gives (`np.argsort(-s, kind="stable")`,
//! `torch.sort(s, descending=True, stable=True)`). torch's default `topk`/`argsort` leave tie
//! order unspecified, so on exact ties the reference itself is not reproducible across devices;
//! with continuous features exact ties only come from duplicate items.

use serde::Serialize;

/// One query's metrics, each in [0, 1].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct QueryMetrics {
    /// Average precision over the whole ranked gallery.
    pub ap: f64,
    /// AP@R with the reference's quirk (R counted before self-exclusion).
    pub ap_at_r: f64,
    /// AP@R with R the true number of relevant gallery items.
    pub ap_at_r_exact: f64,
    /// Precision in the top R.
    pub p_at_r: f64,
    pub r_at_1: f64,
    pub r_at_5: f64,
    pub r_at_10: f64,
    /// R: relevant gallery items for this query (its own entry excluded).
    pub relevant: usize,
    /// Whether the reference's mAP@R is NaN for this query (we report 0).
    pub reference_nan: bool,
}

impl QueryMetrics {
    /// Metrics from the 1-based ranks of the relevant items (strictly increasing), the number of
    /// relevant entries the reference counts *before* self-exclusion (`r_before`; equal to
    /// `ranks.len()` in query/gallery evaluation) and the gallery length after exclusion.
    pub fn from_ranks(ranks: &[u64], r_before: usize, gallery_len: usize) -> Self {
        let r = ranks.len();
        debug_assert!(ranks.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(ranks.iter().all(|&p| p as usize <= gallery_len));
        if r == 0 {
            return QueryMetrics {
                reference_nan: true,
                ..Default::default()
            };
        }
        // precision at the k-th relevant item: k / p_k (k 1-based).
        let prec = |k: usize, p: u64| (k + 1) as f64 / p as f64;
        let ap = ranks
            .iter()
            .enumerate()
            .map(|(k, &p)| prec(k, p))
            .sum::<f64>()
            / r as f64;
        let top_k = if r_before == 0 {
            gallery_len
        } else {
            r_before.min(gallery_len)
        };
        let sum_within = |limit: usize| -> f64 {
            ranks
                .iter()
                .enumerate()
                .take_while(|(_, &p)| p as usize <= limit)
                .map(|(k, &p)| prec(k, p))
                .sum()
        };
        let ap_at_r = sum_within(top_k) / r.min(top_k) as f64;
        let ap_at_r_exact = sum_within(r) / r as f64;
        let hits_in_r = ranks.iter().take_while(|&&p| p as usize <= r).count();
        let hit = |k: u64| if ranks[0] <= k { 1.0 } else { 0.0 };
        QueryMetrics {
            ap,
            ap_at_r,
            ap_at_r_exact,
            p_at_r: hits_in_r as f64 / r as f64,
            r_at_1: hit(1),
            r_at_5: hit(5),
            r_at_10: hit(10),
            relevant: r,
            reference_nan: false,
        }
    }
}

/// The mean of every metric over the queries, x100, as the reference reports them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RetrievalSummary {
    pub queries: usize,
    /// Gallery items each query is ranked against (after self-exclusion).
    pub gallery: usize,
    pub one_set: bool,
    pub map: f64,
    pub map_at_r: f64,
    pub map_at_r_exact: f64,
    pub p_at_r: f64,
    pub r_at_1: f64,
    pub r_at_5: f64,
    pub r_at_10: f64,
    /// Queries with no relevant gallery item (they score 0 on every metric).
    pub queries_without_relevant: usize,
    /// Queries where the reference's mAP@R would be NaN (counted as 0 here).
    pub reference_nan_queries: usize,
    /// Mean precision@K for K = 1..=len, x100.
    pub precision_at_k: Vec<f64>,
}

impl RetrievalSummary {
    /// Averages per-query metrics in query order (deterministic). `hits_at_k[K-1]` is the total,
    /// over queries, of relevant items within the top K.
    pub fn from_queries(
        per_query: &[QueryMetrics],
        gallery: usize,
        one_set: bool,
        hits_at_k: &[u64],
    ) -> Self {
        let n = per_query.len();
        let mean = |f: fn(&QueryMetrics) -> f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            100.0 * per_query.iter().map(f).sum::<f64>() / n as f64
        };
        RetrievalSummary {
            queries: n,
            gallery,
            one_set,
            map: mean(|q| q.ap),
            map_at_r: mean(|q| q.ap_at_r),
            map_at_r_exact: mean(|q| q.ap_at_r_exact),
            p_at_r: mean(|q| q.p_at_r),
            r_at_1: mean(|q| q.r_at_1),
            r_at_5: mean(|q| q.r_at_5),
            r_at_10: mean(|q| q.r_at_10),
            queries_without_relevant: per_query.iter().filter(|q| q.relevant == 0).count(),
            reference_nan_queries: per_query.iter().filter(|q| q.reference_nan).count(),
            precision_at_k: hits_at_k
                .iter()
                .enumerate()
                .map(|(k, &h)| {
                    if n == 0 {
                        0.0
                    } else {
                        100.0 * h as f64 / ((k + 1) as f64 * n as f64)
                    }
                })
                .collect(),
        }
    }

    /// The metrics in table order: (name, value).
    pub fn rows(&self) -> [(&'static str, f64); 7] {
        [
            ("mAP", self.map),
            ("mAP@R", self.map_at_r),
            ("P@R", self.p_at_r),
            ("R@1", self.r_at_1),
            ("R@5", self.r_at_5),
            ("R@10", self.r_at_10),
            ("mAP@R (exact R)", self.map_at_r_exact),
        ]
    }
}

/// The slow, obviously-correct path: fully sort one score row (stable: score descending, then
/// index ascending) and return the 1-based ranks of the relevant entries. Used by tests to check
/// the blocked engine.
pub fn ranks_by_full_sort(scores: &[f32], relevant: &[bool]) -> Vec<u64> {
    assert_eq!(scores.len(), relevant.len());
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).expect("finite scores"));
    order
        .iter()
        .enumerate()
        .filter(|(_, &g)| relevant[g])
        .map(|(pos, _)| pos as u64 + 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_ranking() {
        // Gallery of 6 ranked: R N R N N R  -> relevant at 1, 3, 6.
        let m = QueryMetrics::from_ranks(&[1, 3, 6], 3, 6);
        assert!(close(m.ap, (1.0 + 2.0 / 3.0 + 3.0 / 6.0) / 3.0));
        // R = 3: top 3 holds ranks 1 and 3.
        assert!(close(m.ap_at_r, (1.0 + 2.0 / 3.0) / 3.0));
        assert!(close(m.ap_at_r_exact, m.ap_at_r));
        assert!(close(m.p_at_r, 2.0 / 3.0));
        assert_eq!((m.r_at_1, m.r_at_5, m.r_at_10), (1.0, 1.0, 1.0));
    }

    #[test]
    fn one_set_quirk_counts_rank_r_plus_one() {
        // One-set: R = 2 true relevant, the reference's top_k = R_before = 3.
        // Ranked: N R R -> ranks 2, 3.
        let m = QueryMetrics::from_ranks(&[2, 3], 3, 10);
        assert!(close(m.ap_at_r, (1.0 / 2.0 + 2.0 / 3.0) / 2.0));
        assert!(close(m.ap_at_r_exact, (1.0 / 2.0) / 2.0));
        assert!(close(m.p_at_r, 0.5));
        assert_eq!((m.r_at_1, m.r_at_5), (0.0, 1.0));
    }

    #[test]
    fn no_relevant_item_scores_zero_and_is_flagged() {
        let m = QueryMetrics::from_ranks(&[], 1, 10);
        assert_eq!(m.ap, 0.0);
        assert_eq!(m.ap_at_r, 0.0);
        assert!(m.reference_nan);
        assert_eq!(m.relevant, 0);
    }

    #[test]
    fn all_relevant_clamps_top_k() {
        // One set of 5 items, one class: R = 4, R_before = 5 > gallery 4.
        let m = QueryMetrics::from_ranks(&[1, 2, 3, 4], 5, 4);
        assert_eq!(
            (m.ap, m.ap_at_r, m.ap_at_r_exact, m.p_at_r),
            (1.0, 1.0, 1.0, 1.0)
        );
    }

    #[test]
    fn recall_at_k_boundaries() {
        let m = QueryMetrics::from_ranks(&[5], 1, 20);
        assert_eq!((m.r_at_1, m.r_at_5, m.r_at_10), (0.0, 1.0, 1.0));
        let m = QueryMetrics::from_ranks(&[11], 1, 20);
        assert_eq!((m.r_at_1, m.r_at_5, m.r_at_10), (0.0, 0.0, 0.0));
        assert!(close(m.ap, 1.0 / 11.0));
    }

    #[test]
    fn full_sort_breaks_ties_by_index() {
        // Scores: g0 0.5 (N), g1 0.9 (R), g2 0.5 (R), g3 0.5 (N).
        // Order: g1, g0, g2, g3 -> relevant ranks 1, 3.
        let r = ranks_by_full_sort(&[0.5, 0.9, 0.5, 0.5], &[false, true, true, false]);
        assert_eq!(r, vec![1, 3]);
    }

    #[test]
    fn summary_means_and_curve() {
        let q = [
            QueryMetrics::from_ranks(&[1], 1, 4),
            QueryMetrics::from_ranks(&[], 0, 4),
        ];
        let s = RetrievalSummary::from_queries(&q, 4, false, &[1, 1]);
        assert!(close(s.map, 50.0));
        assert_eq!(s.queries_without_relevant, 1);
        assert_eq!(s.reference_nan_queries, 1);
        assert!(close(s.precision_at_k[0], 50.0));
        assert!(close(s.precision_at_k[1], 25.0));
    }
}
