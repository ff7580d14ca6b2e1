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

/// The axes the CLIP and IsoCLIP histograms share, so they can be compared by eye: the same x
/// range (the bins either occupies), the same bins and the same y scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistogramAxes {
    pub x_range: (f64, f64),
    pub y_max: f64,
}

impl HistogramAxes {
    pub fn shared(hists: &[&PairHistogram]) -> Self {
        let y_max = hists
            .iter()
            .map(|h| {
                let (p, n) = h.densities();
                p.iter().chain(&n).cloned().fold(0.0, f64::max)
            })
            .fold(0.0, f64::max);
        HistogramAxes {
            x_range: occupied_range(hists),
            y_max: (y_max * 1.08).max(1e-9),
        }
    }
}

/// Positive and negative pair densities (each sums to 1 over the bins) as overlapping bars, on
/// `axes` (shared with the other histogram of the comparison).
pub fn similarity_histogram(h: &PairHistogram, title: &str, axes: &HistogramAxes) -> String {
    let (p, n) = h.densities();
    let x_range = axes.x_range;
    let pts = |v: &[f64]| {
        v.iter()
            .enumerate()
            .map(|(b, d)| (h.bin_centre(b), *d))
            .filter(|(x, _)| *x >= x_range.0 && *x <= x_range.1)
            .collect::<Vec<_>>()
    };
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
        y_range: Some((0.0, axes.y_max)),
        bar_width: Some((h.hi - h.lo) / h.bins() as f64),
        notes: vec![
            format!("overlap coefficient {:.3}", h.overlap()),
            format!("IoU of distributions {:.3}", h.iou()),
        ],
        ..Default::default()
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tick labels along the axes (every `text-anchor="middle"` or `"end"` number).
    fn tick_labels(svg: &str) -> Vec<String> {
        svg.lines()
            .filter(|l| l.starts_with("<line"))
            .map(|l| {
                let t = &l[l.find("<text").unwrap()..];
                t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()].to_string()
            })
            .collect()
    }

    fn histogram(pos: &[(usize, u64)], neg: &[(usize, u64)]) -> PairHistogram {
        let mut h = PairHistogram::new(200);
        for &(b, c) in pos {
            h.positive[b] = c;
        }
        for &(b, c) in neg {
            h.negative[b] = c;
        }
        h
    }

    #[test]
    fn both_histograms_share_x_range_bins_and_y_scale() {
        // CLIP's pairs sit high (bins 150..160), IsoCLIP's spread lower (bins 90..140).
        let clip = histogram(&[(155, 10), (158, 30)], &[(150, 40), (152, 20)]);
        let iso = histogram(&[(130, 5), (139, 5)], &[(90, 50), (100, 10)]);
        let axes = HistogramAxes::shared(&[&clip, &iso]);
        // Bins 90..=158 widened by one bin each side: [-0.11, 0.60].
        assert!(
            (axes.x_range.0 - (-0.11)).abs() < 1e-12,
            "{:?}",
            axes.x_range
        );
        assert!((axes.x_range.1 - 0.60).abs() < 1e-12, "{:?}", axes.x_range);
        // The tallest density of either: IsoCLIP's negative bin 90 (50 of 60).
        assert!((axes.y_max - 50.0 / 60.0 * 1.08).abs() < 1e-12);
        let a = similarity_histogram(&clip, "CLIP", &axes);
        let b = similarity_histogram(&iso, "IsoCLIP", &axes);
        assert_eq!(tick_labels(&a), tick_labels(&b));
        assert!(!tick_labels(&a).is_empty());
        // One bin (0.01 wide) is drawn equally wide in both.
        let width = |svg: &str| {
            let l = svg
                .lines()
                .find(|l| l.contains("fill-opacity=\"0.45\""))
                .unwrap();
            let w = &l[l.find("width=\"").unwrap() + 7..];
            w[..w.find('"').unwrap()].to_string()
        };
        assert_eq!(width(&a), width(&b));
    }
}
