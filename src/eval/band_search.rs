//! Band search: which band (k_top, k_bottom) of Ψ retrieves best on a labelled set? One SVD of Ψ
//! serves the whole grid; each band is one [`fit_modality`] plus one evaluation, compared with
//! plain CLIP. `isoclip sweep` is this search plus argument parsing, progress and writing the
//! best band's projector.

use serde::{Serialize, Serializer};

use super::embed::Projection;
use super::metrics::RetrievalSummary;
use super::retrieval::RetrievalOptions;
use super::{evaluate_sets, Sets};
use crate::align::{fit_modality, BandSpec, Modality, ModalityMaps, ProjectorWeights, PsiSpectrum};
use crate::backend::{Backend, InputKind};
use crate::error::{Error, Result};

/// mAP differences below this (x100 points) are rounding, not a gain: band 0/0 is plain CLIP.
pub const MAP_TOLERANCE: f64 = 1e-6;

/// The default k_top values for a spectrum of `r` directions: 0, 50, 100, ... up to 0.6 r.
pub fn default_k_top_grid(r: usize) -> Vec<usize> {
    (0..=r * 6 / 10).step_by(50).collect()
}

/// The default k_bottom values: 0, 25, 50, then every 50 up to 0.4 r (each below r).
pub fn default_k_bottom_grid(r: usize) -> Vec<usize> {
    let mut g = vec![0, 25];
    g.extend((50..=r * 4 / 10).step_by(50));
    g.retain(|&k| k < r);
    g
}

/// The bands to try: every k_top with every k_bottom, k_top major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BandGrid {
    pub k_tops: Vec<usize>,
    pub k_bottoms: Vec<usize>,
    /// Leave out k_top 0 / k_bottom 0 (plain CLIP, already the baseline).
    pub skip_plain: bool,
}

impl BandGrid {
    /// The given values, the default grid of `r` for those not given; band 0/0 is left out
    /// only when both are the defaults.
    pub fn new(k_tops: Option<Vec<usize>>, k_bottoms: Option<Vec<usize>>, r: usize) -> Self {
        BandGrid {
            skip_plain: k_tops.is_none() && k_bottoms.is_none(),
            k_tops: k_tops.unwrap_or_else(|| default_k_top_grid(r)),
            k_bottoms: k_bottoms.unwrap_or_else(|| default_k_bottom_grid(r)),
        }
    }
}

/// The headline retrieval metrics of one projection (x100), as `sweep` reports each band and
/// plain CLIP; a subset of [`RetrievalSummary`] (what `eval` reports in full).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BandMetrics {
    pub map: f64,
    pub map_at_r: f64,
    pub p_at_r: f64,
    pub r_at_1: f64,
    pub map_at_r_exact: f64,
}

impl From<&RetrievalSummary> for BandMetrics {
    fn from(s: &RetrievalSummary) -> Self {
        BandMetrics {
            map: s.map,
            map_at_r: s.map_at_r,
            p_at_r: s.p_at_r,
            r_at_1: s.r_at_1,
            map_at_r_exact: s.map_at_r_exact,
        }
    }
}

/// One evaluated band: which directions it drops, how many it keeps (`m`), its metrics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BandRow {
    pub k_top: usize,
    pub k_bottom: usize,
    pub m: usize,
    #[serde(flatten)]
    pub metrics: BandMetrics,
}

/// What a band search found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BandSearchReport {
    /// Singular directions of Ψ.
    pub r: usize,
    /// Plain CLIP, the baseline.
    pub clip: BandMetrics,
    /// Every band that keeps a direction, in grid order.
    pub bands: Vec<BandRow>,
    /// The band with the highest mAP (ties: the first in grid order).
    pub best: BandRow,
    /// Its index in `bands`.
    #[serde(skip)]
    pub best_index: usize,
    /// Whether the best band's mAP exceeds plain CLIP's by more than [`MAP_TOLERANCE`].
    pub beats_clip: bool,
    /// Bands of the grid that keep no direction (k_top + k_bottom >= r), in grid order.
    #[serde(serialize_with = "serialize_bands")]
    pub skipped: Vec<BandSpec>,
}

fn serialize_bands<S: Serializer>(
    bands: &[BandSpec],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Band {
        k_top: usize,
        k_bottom: usize,
    }
    s.collect_seq(bands.iter().map(|b| Band {
        k_top: b.k_top,
        k_bottom: b.k_bottom,
    }))
}

/// The search's report and the maps of its best band (to write as a projector).
pub struct BandSearch {
    pub report: BandSearchReport,
    pub best_maps: ModalityMaps,
}

/// What to search: the weights, their spectrum (one SVD for every band), the modality whose band
/// is searched, what the rows are, and the grid.
pub struct BandSearchSpec<'a> {
    pub weights: &'a ProjectorWeights,
    pub spectrum: &'a PsiSpectrum,
    pub modality: Modality,
    pub input_kind: InputKind,
    pub grid: &'a BandGrid,
}

/// Evaluates plain CLIP and every band of the grid that keeps a direction on `sets`, projecting
/// through `backend`. `progress(row, done, total)` is called after each band. Fails with
/// `Error::Band` when no band of the grid keeps a direction.
pub fn search_bands(
    backend: &dyn Backend,
    spec: &BandSearchSpec<'_>,
    sets: Sets<'_>,
    progress: &mut dyn FnMut(&BandRow, usize, usize),
) -> Result<BandSearch> {
    let (spectrum, kind) = (spec.spectrum, spec.input_kind);
    let r = spectrum.r();
    let mut bands = Vec::new();
    let mut skipped = Vec::new();
    for &k_top in &spec.grid.k_tops {
        for &k_bottom in &spec.grid.k_bottoms {
            if spec.grid.skip_plain && k_top == 0 && k_bottom == 0 {
                continue;
            }
            let band = BandSpec::new(k_top, k_bottom);
            if spectrum.check_band(band).is_ok() {
                bands.push(band);
            } else {
                skipped.push(band);
            }
        }
    }
    if bands.is_empty() {
        return Err(Error::Band(format!(
            "no band of the grid keeps a direction of the {r} singular directions of Ψ (every k_top + k_bottom >= {r})"
        )));
    }
    let opts = RetrievalOptions {
        curve_max_k: 10,
        histogram_bins: 0,
    };
    // Baseline: the plain projector (or the stored embeddings themselves).
    let plain = match kind {
        InputKind::Features => {
            Projection::Map(std::sync::Arc::new(spec.weights.plain_map(spec.modality)))
        }
        InputKind::Embeddings => Projection::IDENTITY,
    };
    let clip = BandMetrics::from(&evaluate_sets(backend, sets, &plain, kind, opts)?.summary);
    let mut rows: Vec<BandRow> = Vec::with_capacity(bands.len());
    let mut best: Option<(usize, ModalityMaps)> = None;
    for &band in &bands {
        let maps = fit_modality(spec.weights, spectrum, spec.modality, band)?;
        let (_, iso) = Projection::pair(&maps, kind)?;
        let summary = evaluate_sets(backend, sets, &iso, kind, opts)?.summary;
        let row = BandRow {
            k_top: band.k_top,
            k_bottom: band.k_bottom,
            m: maps.m,
            metrics: BandMetrics::from(&summary),
        };
        let better = match &best {
            None => true,
            Some((i, _)) => row.metrics.map > rows[*i].metrics.map,
        };
        rows.push(row);
        if better {
            best = Some((rows.len() - 1, maps));
        }
        progress(&row, rows.len(), bands.len());
    }
    let (best_index, best_maps) = best.expect("at least one band was evaluated");
    let best = rows[best_index];
    Ok(BandSearch {
        report: BandSearchReport {
            r,
            clip,
            beats_clip: best.metrics.map > clip.map + MAP_TOLERANCE,
            bands: rows,
            best,
            best_index,
            skipped,
        },
        best_maps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::eval::Rows;

    /// P_i = I (3 x 3), P_t = diag(3, 2, 1): Ψ = diag(3, 2, 1), so σ = (3, 2, 1), u_j = e_j, and
    /// the band [k_top, 3 - k_bottom) keeps exactly the image coordinates of those indices.
    fn weights() -> ProjectorWeights {
        let eye = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let diag = vec![3.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0];
        ProjectorWeights::new((3, 3, eye), (3, 3, diag), None, None, "test".into()).unwrap()
    }

    /// Class A = rows 0, 1 and class B = rows 2, 3: the class is the sign of coordinate 1, while
    /// coordinates 0 and 2 carry a larger nuisance shared across the classes.
    const ROWS: [f32; 12] = [
        5.0, 1.0, 5.0, //
        -5.0, 1.0, -5.0, //
        5.0, -1.0, 5.0, //
        -5.0, -1.0, -5.0,
    ];
    const LABELS: [i64; 4] = [0, 0, 1, 1];

    fn search(grid: BandGrid) -> Result<BandSearch> {
        let w = weights();
        let spectrum = PsiSpectrum::compute(&w)?;
        let cpu = CpuBackend::new(Some(1))?;
        let sets = Sets::One {
            rows: Rows::Memory {
                data: &ROWS,
                rows: 4,
                cols: 3,
                name: "rows",
            },
            labels: &LABELS,
        };
        let spec = BandSearchSpec {
            weights: &w,
            spectrum: &spectrum,
            modality: Modality::Image,
            input_kind: InputKind::Features,
            grid: &grid,
        };
        search_bands(&cpu, &spec, sets, &mut |_, _, _| {})
    }

    #[test]
    fn the_best_band_is_the_one_that_keeps_the_class_direction() {
        let grid = BandGrid {
            k_tops: vec![0, 1, 2, 3],
            k_bottoms: vec![0, 1],
            skip_plain: false,
        };
        let found = search(grid).unwrap();
        let report = &found.report;
        // Plain CLIP, by hand: query (5, 1, 5) against (-5, 1, -5), (5, -1, 5), (-5, -1, -5) has
        // cosines -49/51, 49/51, -1: its one relevant item ranks 2nd, AP 1/2; every query is
        // alike, so mAP = 50.
        assert!((report.clip.map - 50.0).abs() < 1e-9, "{:?}", report.clip);
        // Only band 1/1 keeps coordinate 1 alone: every relevant item scores 1, every other -1.
        assert_eq!(
            (report.best.k_top, report.best.k_bottom, report.best.m),
            (1, 1, 1)
        );
        assert!((report.best.metrics.map - 100.0).abs() < 1e-9);
        assert_eq!(report.bands[report.best_index], report.best);
        assert!(report.beats_clip);
        // Band 0/0 keeps everything: plain CLIP's numbers.
        assert_eq!((report.bands[0].k_top, report.bands[0].k_bottom), (0, 0));
        assert!((report.bands[0].metrics.map - 50.0).abs() < 1e-9);
        // 2 + 1, 3 + 0 and 3 + 1 keep none of the 3 directions.
        let skipped: Vec<_> = report
            .skipped
            .iter()
            .map(|b| (b.k_top, b.k_bottom))
            .collect();
        assert_eq!(skipped, vec![(2, 1), (3, 0), (3, 1)]);
        assert_eq!(report.bands.len(), 5);
        assert_eq!(found.best_maps.band, BandSpec::new(1, 1));
    }

    #[test]
    fn plain_clip_alone_does_not_beat_clip() {
        let grid = BandGrid {
            k_tops: vec![0],
            k_bottoms: vec![0],
            skip_plain: false,
        };
        let report = search(grid).unwrap().report;
        assert_eq!(report.bands.len(), 1);
        assert!(!report.beats_clip);
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["beats_clip"], false);
        assert_eq!(v["best"]["k_top"], 0);
        assert!(v["best"]["map"].is_number() && v.get("best_index").is_none());
    }

    #[test]
    fn a_grid_without_a_direction_is_an_error() {
        // The default grid of r = 3 is 0/0 only, and that is left out as plain CLIP.
        let grid = BandGrid::new(None, None, 3);
        assert_eq!(
            (grid.k_tops.clone(), grid.k_bottoms.clone()),
            (vec![0], vec![0])
        );
        let err = search(grid).err().expect("no band");
        assert!(matches!(err, Error::Band(_)), "{err}");
        assert!(err.to_string().contains("no band of the grid"), "{err}");
    }

    #[test]
    fn default_grids() {
        assert_eq!(
            default_k_top_grid(512),
            vec![0, 50, 100, 150, 200, 250, 300]
        );
        assert_eq!(default_k_bottom_grid(512), vec![0, 25, 50, 100, 150, 200]);
        assert_eq!(default_k_bottom_grid(20), vec![0]);
    }
}
