//! The blocked retrieval engine: ranks every gallery item for every query without ever holding
//! the N x N similarity matrix.
//!
//! Queries are processed in blocks of `b` rows (b depends only on the gallery size, so results
//! never depend on the number of threads). For a block, one GEMM gives the `b x G` scores, held
//! in a per-thread buffer of at most [`BLOCK_BYTES`]. For each query of the block:
//!
//! 1. the scores of its relevant gallery items (its class, at most the class size, its own
//!    entry removed in one-set mode) are gathered and sorted (score descending, index ascending);
//! 2. one pass over the row places every non-relevant item among the sorted relevant scores:
//!    a monotone bucketing of the score range (vectorised) settles most items with a counter per
//!    bucket, and the few that share a bucket with a relevant score are placed by a short scan;
//!    this yields how many non-relevant items sit before each relevant one;
//! 3. a prefix sum of that histogram gives each relevant item's exact rank in the full ranking,
//!    from which every metric follows (see [`super::metrics`]).
//!
//! Cost: one GEMM plus O(G + R log R) per query; memory: the embeddings plus
//! threads x [`BLOCK_BYTES`].

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use serde::Serialize;

use super::metrics::{QueryMetrics, RetrievalSummary};
use crate::error::{Error, Result};

/// Upper bound on one thread's score buffer (a block of queries x the whole gallery).
pub const BLOCK_BYTES: usize = 32 << 20;
const MIN_BLOCK: usize = 16;
const MAX_BLOCK: usize = 256;

/// Row-major f32 vectors, `rows x dim`, usually L2-normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Embeddings {
    pub fn new(rows: usize, dim: usize, data: Vec<f32>) -> Self {
        assert_eq!(
            data.len(),
            rows * dim,
            "embedding data does not match its shape"
        );
        Embeddings { rows, dim, data }
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
    fn check_finite(&self, what: &str) -> Result<()> {
        if let Some(pos) = self.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "{what}: row {} holds a non-finite value",
                pos / self.dim.max(1)
            )));
        }
        Ok(())
    }
}

/// What is searched against what.
#[derive(Clone, Copy, Debug)]
pub enum Layout<'a> {
    /// Every item queries all the others (its own entry is removed from its ranking).
    OneSet {
        items: &'a Embeddings,
        labels: &'a [i64],
    },
    /// Each query searches the gallery; nothing is removed.
    QueryGallery {
        queries: &'a Embeddings,
        query_labels: &'a [i64],
        gallery: &'a Embeddings,
        gallery_labels: &'a [i64],
    },
}

#[derive(Clone, Copy, Debug)]
pub struct RetrievalOptions {
    /// Precision@K is reported for K = 1..=curve_max_k.
    pub curve_max_k: usize,
    /// Histogram positive/negative pair similarities in this many bins over [-1, 1]
    /// (0: no histogram; it costs one more pass over every score).
    pub histogram_bins: usize,
}

impl Default for RetrievalOptions {
    fn default() -> Self {
        RetrievalOptions {
            curve_max_k: 100,
            histogram_bins: 0,
        }
    }
}

/// Counts of query-gallery pair similarities (self pairs excluded), positives (same label) and
/// negatives apart, in equal bins over [-1, 1] (values outside fall in the end bins).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairHistogram {
    pub lo: f64,
    pub hi: f64,
    pub positive: Vec<u64>,
    pub negative: Vec<u64>,
}

impl PairHistogram {
    pub fn new(bins: usize) -> Self {
        PairHistogram {
            lo: -1.0,
            hi: 1.0,
            positive: vec![0; bins],
            negative: vec![0; bins],
        }
    }
    pub fn bins(&self) -> usize {
        self.positive.len()
    }
    pub fn bin_of(&self, s: f32) -> usize {
        let n = self.bins();
        let t = (s as f64 - self.lo) / (self.hi - self.lo) * n as f64;
        if t <= 0.0 {
            0
        } else {
            (t as usize).min(n - 1)
        }
    }
    pub fn bin_centre(&self, b: usize) -> f64 {
        self.lo + (b as f64 + 0.5) * (self.hi - self.lo) / self.bins() as f64
    }
    fn merge(&mut self, other: &PairHistogram) {
        for (a, b) in self.positive.iter_mut().zip(&other.positive) {
            *a += b;
        }
        for (a, b) in self.negative.iter_mut().zip(&other.negative) {
            *a += b;
        }
    }
    /// The two distributions, each normalised to sum 1.
    pub fn densities(&self) -> (Vec<f64>, Vec<f64>) {
        let norm = |v: &[u64]| {
            let t: u64 = v.iter().sum();
            v.iter()
                .map(|&c| if t == 0 { 0.0 } else { c as f64 / t as f64 })
                .collect::<Vec<_>>()
        };
        (norm(&self.positive), norm(&self.negative))
    }
    /// Overlap coefficient Σ_b min(p_b, n_b) of the normalised histograms (1: identical
    /// distributions, 0: perfectly separated). Depends on the bin width.
    pub fn overlap(&self) -> f64 {
        let (p, n) = self.densities();
        p.iter().zip(&n).map(|(a, b)| a.min(*b)).sum()
    }
    /// Σ min / Σ max of the normalised histograms: the "IoU" of the two distributions that the
    /// IsoCLIP poster prints for dogs vs cats (0.454 CLIP, 0.285 IsoCLIP).
    pub fn iou(&self) -> f64 {
        let (p, n) = self.densities();
        let (mut lo, mut hi) = (0.0, 0.0);
        for (a, b) in p.iter().zip(&n) {
            lo += a.min(*b);
            hi += a.max(*b);
        }
        if hi == 0.0 {
            0.0
        } else {
            lo / hi
        }
    }
}

/// Everything one evaluation produces.
#[derive(Clone, Debug)]
pub struct RetrievalOutcome {
    pub per_query: Vec<QueryMetrics>,
    pub summary: RetrievalSummary,
    pub histogram: Option<PairHistogram>,
}

/// Labels mapped to dense class ids, and the gallery members of each class.
struct Classes {
    gallery_class: Vec<u32>,
    query_class: Vec<Option<u32>>,
    members: Vec<Vec<u32>>,
}

impl Classes {
    fn new(query_labels: &[i64], gallery_labels: &[i64]) -> Self {
        let mut distinct: Vec<i64> = gallery_labels.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let id = |l: i64| distinct.binary_search(&l).ok().map(|i| i as u32);
        let gallery_class: Vec<u32> = gallery_labels
            .iter()
            .map(|&l| id(l).expect("every gallery label is in the list"))
            .collect();
        let mut members = vec![Vec::new(); distinct.len()];
        for (g, &c) in gallery_class.iter().enumerate() {
            members[c as usize].push(g as u32);
        }
        let query_class = query_labels.iter().map(|&l| id(l)).collect();
        Classes {
            gallery_class,
            query_class,
            members,
        }
    }
}

/// Reusable per-thread memory.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    keys: Vec<(f32, u32)>,
    rel_scores: Vec<f32>,
    rel_index: Vec<u32>,
    before: Vec<u64>,
    ranks: Vec<u64>,
    /// Per score bucket (see `relevant_ranks`): relevant scores in earlier buckets, whether a
    /// relevant score falls inside, and how many non-relevant items landed there.
    above: Vec<u32>,
    mixed: Vec<bool>,
    landed: Vec<u32>,
    buckets: Vec<u32>,
}

/// Gallery items bucketed per pass in `relevant_ranks`, and interleaved counter copies.
const CHUNK: usize = 1024;
const LANES: usize = 4;

struct BlockOut {
    per_query: Vec<QueryMetrics>,
    /// at_rank[p-1]: relevant items found at rank p (p ≤ curve_max_k).
    at_rank: Vec<u64>,
    histogram: Option<PairHistogram>,
}

/// Queries per block: as many as fit in [`BLOCK_BYTES`] of scores, within [16, 256].
pub fn block_rows(gallery: usize) -> usize {
    (BLOCK_BYTES / 4 / gallery.max(1)).clamp(MIN_BLOCK, MAX_BLOCK)
}

/// Evaluates retrieval on already-embedded vectors; scores are plain dot products (normalise the
/// embeddings first for cosine similarity).
pub fn evaluate(layout: Layout<'_>, opts: RetrievalOptions) -> Result<RetrievalOutcome> {
    let (queries, query_labels, gallery, gallery_labels, one_set) = match layout {
        Layout::OneSet { items, labels } => (items, labels, items, labels, true),
        Layout::QueryGallery {
            queries,
            query_labels,
            gallery,
            gallery_labels,
        } => (queries, query_labels, gallery, gallery_labels, false),
    };
    if queries.rows != query_labels.len() || gallery.rows != gallery_labels.len() {
        return Err(Error::Shape(format!(
            "labels do not match embeddings: {} query rows with {} labels, {} gallery rows with {} labels",
            queries.rows,
            query_labels.len(),
            gallery.rows,
            gallery_labels.len()
        )));
    }
    if queries.dim != gallery.dim {
        return Err(Error::Shape(format!(
            "queries have {} dims but the gallery has {}",
            queries.dim, gallery.dim
        )));
    }
    if queries.rows == 0 || gallery.rows == 0 || queries.dim == 0 {
        return Err(Error::invalid(
            "retrieval needs at least one query, one gallery item and one dimension",
        ));
    }
    if one_set && gallery.rows < 2 {
        return Err(Error::invalid(
            "one-set retrieval needs at least 2 items (each queries the others)",
        ));
    }
    queries.check_finite("query embeddings")?;
    if !one_set {
        gallery.check_finite("gallery embeddings")?;
    }
    let classes = Classes::new(query_labels, gallery_labels);
    let gallery_len = gallery.rows - one_set as usize;
    let block = block_rows(gallery.rows);
    let starts: Vec<usize> = (0..queries.rows).step_by(block).collect();
    let blocks: Vec<BlockOut> = starts
        .par_iter()
        .map_init(Scratch::default, |scratch, &q0| {
            let q1 = (q0 + block).min(queries.rows);
            evaluate_block(q0, q1, queries, gallery, &classes, one_set, opts, scratch)
        })
        .collect();
    let mut per_query = Vec::with_capacity(queries.rows);
    let mut at_rank = vec![0u64; opts.curve_max_k];
    let mut histogram = (opts.histogram_bins > 0).then(|| PairHistogram::new(opts.histogram_bins));
    for b in blocks {
        per_query.extend_from_slice(&b.per_query);
        for (a, x) in at_rank.iter_mut().zip(&b.at_rank) {
            *a += x;
        }
        if let (Some(h), Some(bh)) = (histogram.as_mut(), b.histogram.as_ref()) {
            h.merge(bh);
        }
    }
    // hits within the top K = relevant items at ranks 1..=K.
    let mut hits = at_rank;
    for k in 1..hits.len() {
        hits[k] += hits[k - 1];
    }
    let summary = RetrievalSummary::from_queries(&per_query, gallery_len, one_set, &hits);
    Ok(RetrievalOutcome {
        per_query,
        summary,
        histogram,
    })
}

#[allow(clippy::too_many_arguments)]
fn evaluate_block(
    q0: usize,
    q1: usize,
    queries: &Embeddings,
    gallery: &Embeddings,
    classes: &Classes,
    one_set: bool,
    opts: RetrievalOptions,
    s: &mut Scratch,
) -> BlockOut {
    let (b, g, d) = (q1 - q0, gallery.rows, gallery.dim);
    // scores[i * g + j] = <query q0+i, gallery j>: a column-major G x b matrix.
    s.scores.resize(g * b, 0.0);
    matmul(
        MatMut::from_column_major_slice_mut(&mut s.scores[..g * b], g, b),
        Accum::Replace,
        MatRef::from_row_major_slice(&gallery.data, g, d),
        MatRef::from_column_major_slice(&queries.data[q0 * d..q1 * d], d, b),
        1.0f32,
        Par::Seq,
    );
    let mut out = BlockOut {
        per_query: Vec::with_capacity(b),
        at_rank: vec![0; opts.curve_max_k],
        histogram: (opts.histogram_bins > 0).then(|| PairHistogram::new(opts.histogram_bins)),
    };
    let gallery_len = g - one_set as usize;
    let scores = std::mem::take(&mut s.scores);
    for i in 0..b {
        let q = q0 + i;
        let row = &scores[i * g..(i + 1) * g];
        let exclude = one_set.then_some(q);
        let class = classes.query_class[q];
        let r_before = match class {
            Some(c) => {
                relevant_ranks(
                    row,
                    c,
                    &classes.members[c as usize],
                    &classes.gallery_class,
                    exclude,
                    s,
                );
                classes.members[c as usize].len()
            }
            None => {
                s.ranks.clear();
                0
            }
        };
        for &p in &s.ranks {
            if (p as usize) <= opts.curve_max_k {
                out.at_rank[p as usize - 1] += 1;
            } else {
                break;
            }
        }
        out.per_query
            .push(QueryMetrics::from_ranks(&s.ranks, r_before, gallery_len));
        if let Some(h) = out.histogram.as_mut() {
            for (j, &x) in row.iter().enumerate() {
                if Some(j) == exclude {
                    continue;
                }
                let bin = h.bin_of(x);
                if class == Some(classes.gallery_class[j]) {
                    h.positive[bin] += 1;
                } else {
                    h.negative[bin] += 1;
                }
            }
        }
    }
    s.scores = scores;
    out
}

/// The score bucket of `v`, in [0, top]: monotone non-increasing in `v` (float arithmetic and
/// rounding are monotone), NaN in bucket 0. The float -> integer step is the "add 2^23" trick
/// (round to nearest, exact for 0 <= t < 2^22), which the compiler vectorises, unlike `as`.
#[inline(always)]
fn bucket_of(v: f32, highest: f32, scale: f32, top: f32) -> u32 {
    const MAGIC: f32 = 8_388_608.0; // 2^23
    let t = ((highest - v) * scale).max(0.0).min(top);
    (t + MAGIC).to_bits() - MAGIC.to_bits()
}

/// Fills `s.ranks` with the 1-based ranks, in the full ranking of `row` (score descending, ties
/// by index ascending, `exclude` removed), of the gallery items of class `c`.
fn relevant_ranks(
    row: &[f32],
    c: u32,
    members: &[u32],
    gallery_class: &[u32],
    exclude: Option<usize>,
    s: &mut Scratch,
) {
    s.keys.clear();
    s.keys.extend(
        members
            .iter()
            .filter(|&&m| Some(m as usize) != exclude)
            // -0.0 -> 0.0: IEEE (and the reference) treat them as equal, total_cmp would not.
            .map(|&m| (row[m as usize] + 0.0, m)),
    );
    s.keys
        .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    s.ranks.clear();
    let r = s.keys.len();
    if r == 0 {
        return;
    }
    s.rel_scores.clear();
    s.rel_scores.extend(s.keys.iter().map(|k| k.0));
    s.rel_index.clear();
    s.rel_index.extend(s.keys.iter().map(|k| k.1));
    s.before.clear();
    s.before.resize(r + 1, 0);
    let (scores, index) = (&s.rel_scores[..], &s.rel_index[..]);
    let (lowest, highest) = (scores[r - 1], scores[0]);
    // Placing each gallery score x among the sorted relevant scores without a binary search:
    // cut [lowest, highest] into `nb` buckets with a monotone bucket function. A relevant v with
    // bucket(v) < bucket(x) is > x, one with bucket(v) > bucket(x) is < x. So when no relevant
    // score shares x's bucket, x's place is simply the number of relevant scores in earlier
    // buckets, and a per-bucket counter suffices; only items in the few "mixed" buckets are
    // placed exactly by a short scan. Scores below `lowest` go to an extra last bucket.
    let nb = (16 * r).next_power_of_two().min(1 << 16);
    let sink = nb as u32; // relevant items and scores below `lowest`: they move no rank
    let mut scale = nb as f32 / (highest - lowest);
    if !(scale.is_finite() && scale > 0.0) {
        scale = 0.0;
    }
    let top = (nb - 1) as f32;
    let bucket = |v: f32| bucket_of(v, highest, scale, top);
    s.above.clear();
    s.above.resize(nb + 1, 0);
    s.mixed.clear();
    s.mixed.resize(nb + 1, false);
    for &v in scores {
        let b = bucket(v) as usize;
        s.mixed[b] = true;
        s.above[b + 1] += 1;
    }
    for b in 1..=nb {
        s.above[b] += s.above[b - 1];
    }
    // LANES interleaved copies of the per-bucket counters, so that runs of items landing in the
    // same bucket do not serialise on one memory location.
    s.landed.clear();
    s.landed.resize(LANES * (nb + 1), 0);
    let (above, mixed) = (&s.above[..], &s.mixed[..]);
    for (chunk_i, (xs, gs)) in row
        .chunks(CHUNK)
        .zip(gallery_class.chunks(CHUNK))
        .enumerate()
    {
        // Pass 1, branch-free (vectorised by the compiler): each item's bucket, or the sink.
        let n = xs.len();
        s.buckets.resize(CHUNK, 0);
        let out = &mut s.buckets[..n];
        for ((o, &x), &g) in out.iter_mut().zip(xs).zip(gs) {
            let b = bucket_of(x, highest, scale, top);
            // (the query's own entry has class c: it is skipped like every relevant item)
            let skip = (x < lowest) | (g == c);
            *o = if skip { sink } else { b };
        }
        // Pass 2: count items of clean buckets, place those of mixed buckets exactly.
        for (k, &b) in s.buckets[..n].iter().enumerate() {
            let b = b as usize;
            if !mixed[b] {
                s.landed[(k % LANES) * (nb + 1) + b] += 1;
                continue;
            }
            let x = xs[k];
            let j = chunk_i * CHUNK + k;
            let mut pos = above[b] as usize;
            while pos < r && scores[pos] > x {
                pos += 1;
            }
            // Equal scores: the item with the smaller gallery index ranks first.
            while pos < r && scores[pos] == x && (index[pos] as usize) < j {
                pos += 1;
            }
            s.before[pos] += 1;
        }
    }
    for lane in s.landed.chunks_exact(nb + 1) {
        for b in 0..nb {
            s.before[above[b] as usize] += lane[b] as u64;
        }
    }
    // A non-relevant item placed at `pos` ranks before relevant items pos, pos+1, ...
    let mut ahead = 0u64;
    for k in 0..r {
        ahead += s.before[k];
        s.ranks.push(k as u64 + 1 + ahead);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::synthetic::Rng;
    use crate::eval::metrics::ranks_by_full_sort;

    fn random_set(
        n: usize,
        dim: usize,
        classes: usize,
        seed: u64,
        quantise: bool,
    ) -> (Embeddings, Vec<i64>) {
        let mut rng = Rng::new(seed);
        let data: Vec<f32> = (0..n * dim)
            .map(|_| {
                let v = rng.normal() as f32;
                if quantise {
                    // few distinct values -> many exact ties (products of small integers)
                    (v * 1.5).round().clamp(-2.0, 2.0)
                } else {
                    v
                }
            })
            .collect();
        let labels = (0..n).map(|_| rng.below(classes) as i64).collect();
        (Embeddings::new(n, dim, data), labels)
    }

    fn naive(
        q: &Embeddings,
        ql: &[i64],
        g: &Embeddings,
        gl: &[i64],
        one_set: bool,
    ) -> Vec<QueryMetrics> {
        (0..q.rows)
            .map(|i| {
                let mut scores = Vec::new();
                let mut rel = Vec::new();
                for (j, &lj) in gl.iter().enumerate() {
                    if one_set && i == j {
                        continue;
                    }
                    let s: f32 = q.row(i).iter().zip(g.row(j)).map(|(a, b)| a * b).sum();
                    scores.push(s);
                    rel.push(ql[i] == lj);
                }
                let r_before = gl.iter().filter(|&&l| l == ql[i]).count();
                QueryMetrics::from_ranks(&ranks_by_full_sort(&scores, &rel), r_before, scores.len())
            })
            .collect()
    }

    #[test]
    fn engine_matches_full_sort_with_ties() {
        // Integer-valued vectors: every dot product is exact, so both paths see the same scores
        // and many exact ties between relevant and non-relevant items.
        for (seed, one_set) in [(1u64, true), (2, false), (3, true)] {
            let (q, ql) = random_set(70, 3, 5, seed, true);
            let (g, gl) = if one_set {
                (q.clone(), ql.clone())
            } else {
                random_set(90, 3, 7, seed + 10, true)
            };
            let layout = if one_set {
                Layout::OneSet {
                    items: &q,
                    labels: &ql,
                }
            } else {
                Layout::QueryGallery {
                    queries: &q,
                    query_labels: &ql,
                    gallery: &g,
                    gallery_labels: &gl,
                }
            };
            let out = evaluate(layout, RetrievalOptions::default()).unwrap();
            let want = naive(&q, &ql, &g, &gl, one_set);
            assert_eq!(out.per_query, want, "seed {seed}");
        }
    }

    #[test]
    fn engine_matches_full_sort_with_large_and_tiny_classes() {
        // Large classes (hundreds of relevant items, many exact ties at bucket edges) next to
        // classes of two (R = 1 after self-exclusion: one bucket) and singletons (R = 0).
        for (seed, quantise) in [(11u64, true), (12, false)] {
            let (q, _) = random_set(420, 4, 1, seed, quantise);
            let labels: Vec<i64> = (0..420)
                .map(|i| match i % 7 {
                    0..=3 => (i % 2) as i64,
                    4 | 5 => 100 + (i / 7) as i64,
                    _ => 1000 + i as i64,
                })
                .collect();
            let out = evaluate(
                Layout::OneSet {
                    items: &q,
                    labels: &labels,
                },
                RetrievalOptions::default(),
            )
            .unwrap();
            let want = naive(&q, &labels, &q, &labels, true);
            for (i, (a, b)) in out.per_query.iter().zip(&want).enumerate() {
                assert_eq!(a.relevant, b.relevant, "query {i}");
                assert!(
                    (a.ap - b.ap).abs() < 1e-12,
                    "query {i}: {} vs {}",
                    a.ap,
                    b.ap
                );
                assert!((a.ap_at_r - b.ap_at_r).abs() < 1e-12, "query {i}");
                assert_eq!(a.r_at_1, b.r_at_1, "query {i}");
            }
        }
    }

    #[test]
    fn engine_matches_full_sort_across_blocks() {
        // More queries than one block, continuous scores.
        let (q, ql) = random_set(300, 8, 12, 7, false);
        let out = evaluate(
            Layout::OneSet {
                items: &q,
                labels: &ql,
            },
            RetrievalOptions {
                curve_max_k: 20,
                histogram_bins: 10,
            },
        )
        .unwrap();
        let want = naive(&q, &ql, &q, &ql, true);
        for (a, b) in out.per_query.iter().zip(&want) {
            assert_eq!(a.relevant, b.relevant);
            assert!((a.ap - b.ap).abs() < 1e-12);
            assert!((a.ap_at_r - b.ap_at_r).abs() < 1e-12);
        }
        let h = out.histogram.unwrap();
        let pairs: u64 = h.positive.iter().chain(&h.negative).sum();
        assert_eq!(pairs, 300 * 299);
        let pos: u64 = h.positive.iter().sum();
        let want_pos: usize = want.iter().map(|m| m.relevant).sum();
        assert_eq!(pos, want_pos as u64);
    }

    #[test]
    fn perfectly_separated_classes_score_100() {
        // Each class is one orthogonal direction plus a little jitter inside the class.
        let (n, classes) = (40, 4);
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let c = i % classes;
            let mut v = vec![0.0f32; classes];
            v[c] = 1.0;
            v[(c + 1) % classes] = 0.01 * (i as f32 / n as f32);
            data.extend(v);
            labels.push(c as i64 * 10);
        }
        let e = Embeddings::new(n, classes, data);
        let s = evaluate(
            Layout::OneSet {
                items: &e,
                labels: &labels,
            },
            RetrievalOptions::default(),
        )
        .unwrap()
        .summary;
        for (name, v) in s.rows() {
            assert!((v - 100.0).abs() < 1e-9, "{name} = {v}");
        }
        // P@K: 9 relevant per query, so P@9 = 100 and P@10 = 90.
        assert!((s.precision_at_k[8] - 100.0).abs() < 1e-9);
        assert!((s.precision_at_k[9] - 90.0).abs() < 1e-9);
    }

    #[test]
    fn ties_between_relevant_and_not_follow_gallery_index() {
        // All gallery items score the same; relevance decides nothing, index order does.
        let q = Embeddings::new(1, 1, vec![1.0]);
        let g = Embeddings::new(4, 1, vec![1.0; 4]);
        let out = evaluate(
            Layout::QueryGallery {
                queries: &q,
                query_labels: &[1],
                gallery: &g,
                gallery_labels: &[0, 1, 0, 1],
            },
            RetrievalOptions::default(),
        )
        .unwrap();
        // Ranked g0 g1 g2 g3: relevant at 2 and 4.
        let m = out.per_query[0];
        assert!((m.ap - (0.5 + 0.5) / 2.0).abs() < 1e-12);
        assert_eq!(m.r_at_1, 0.0);
    }

    #[test]
    fn rejects_bad_layouts() {
        let e = Embeddings::new(1, 2, vec![1.0, 0.0]);
        assert!(evaluate(
            Layout::OneSet {
                items: &e,
                labels: &[0]
            },
            RetrievalOptions::default()
        )
        .is_err());
        let e2 = Embeddings::new(2, 2, vec![1.0, 0.0, f32::NAN, 0.0]);
        let err = evaluate(
            Layout::OneSet {
                items: &e2,
                labels: &[0, 0],
            },
            RetrievalOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("row 1"), "{err}");
    }

    #[test]
    fn histogram_overlap() {
        let mut h = PairHistogram::new(4);
        h.positive = vec![0, 0, 1, 1];
        h.negative = vec![1, 1, 0, 0];
        assert_eq!(h.overlap(), 0.0);
        h.negative = vec![0, 0, 1, 1];
        assert!((h.overlap() - 1.0).abs() < 1e-12);
        assert!((h.iou() - 1.0).abs() < 1e-12);
        h.negative = vec![0, 1, 1, 0];
        assert!((h.overlap() - 0.5).abs() < 1e-12);
        assert!((h.iou() - 0.5 / 1.5).abs() < 1e-12);
        assert_eq!(h.bin_of(-5.0), 0);
        assert_eq!(h.bin_of(1.0), 3);
        assert_eq!(h.bin_of(0.1), 2);
    }
}
