//! Pictures of an evaluation: precision@K curves and positive/negative similarity histograms.

use super::retrieval::PairHistogram;
use crate::report::svg::{Plot, Series};

const CLIP_COLOR: &str = "#1f77b4";
const ISO_COLOR: &str = "#d62728";

/// Mean precision@K (x100) for K = 1..=len, CLIP and IsoCLIP on one plot.
pub fn precision_at_k(clip: &[f64], isoclip: &[f64], title: &str) -> String {
    let pts = |v: &[f64]| {
        v.iter()
            .enumerate()
            .map(|(k, p)| ((k + 1) as f64, *p))
            .collect::<Vec<_>>()
    };
    Plot {
        title: title.to_string(),
        x_label: "K (results inspected)".into(),
        y_label: "mean precision@K (%)".into(),
        series: vec![
            Series {
                label: "CLIP".into(),
                color: CLIP_COLOR.into(),
                points: pts(clip),
                bars: false,
            },
            Series {
                label: "IsoCLIP".into(),
                color: ISO_COLOR.into(),
                points: pts(isoclip),
                bars: false,
            },
        ],
        x_range: Some((1.0, clip.len().max(2) as f64)),
        y_range: Some((0.0, 100.0)),
        ..Default::default()
    }
    .render()
}

/// The bins holding any mass in either histogram, widened by one bin on each side.
pub fn occupied_range(hists: &[&PairHistogram]) -> (f64, f64) {
    let mut lo = usize::MAX;
    let mut hi = 0;
    for h in hists {
        for b in 0..h.bins() {
            if h.positive[b] + h.negative[b] > 0 {
                lo = lo.min(b);
                hi = hi.max(b);
            }
        }
    }
    match hists.first() {
        Some(h) if lo <= hi => {
            let w = (h.hi - h.lo) / h.bins() as f64;
            (
                (h.lo + lo as f64 * w - w).max(h.lo),
                (h.lo + (hi + 1) as f64 * w + w).min(h.hi),
            )
        }
        _ => (-1.0, 1.0),
    }
}

/// Positive and negative pair densities (each sums to 1 over the bins) as overlapping bars.
pub fn similarity_histogram(h: &PairHistogram, title: &str, x_range: (f64, f64)) -> String {
    let (p, n) = h.densities();
    let pts = |v: &[f64]| {
        v.iter()
            .enumerate()
            .map(|(b, d)| (h.bin_centre(b), *d))
            .filter(|(x, _)| *x >= x_range.0 && *x <= x_range.1)
            .collect::<Vec<_>>()
    };
    let ymax = p.iter().chain(&n).cloned().fold(0.0, f64::max) * 1.08;
    Plot {
        title: title.to_string(),
        x_label: "cosine similarity".into(),
        y_label: "fraction of pairs per bin".into(),
        series: vec![
            Series {
                label: "positive pairs (same label)".into(),
                color: "#2ca02c".into(),
                points: pts(&p),
                bars: true,
            },
            Series {
                label: "negative pairs".into(),
                color: "#7f7f7f".into(),
                points: pts(&n),
                bars: true,
            },
        ],
        x_range: Some(x_range),
        y_range: Some((0.0, ymax.max(1e-9))),
        notes: vec![
            format!("overlap coefficient {:.3}", h.overlap()),
            format!("IoU of distributions {:.3}", h.iou()),
        ],
        ..Default::default()
    }
    .render()
}
