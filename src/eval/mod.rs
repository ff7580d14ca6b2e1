//! Evaluation: does IsoCLIP retrieve and classify better than plain CLIP on your data?
//!
//! * [`retrieval`]: mAP, mAP@R, P@R, R@1/5/10 with the reference's semantics (see
//!   [`metrics`] for the exact definitions, the mAP@R quirk and the tie rule), computed in
//!   blocks on all cores without materialising the N x N similarity matrix;
//! * [`ncm`]: nearest-class-mean classification (IsoNCM);
//! * [`mod@embed`]: features or stored CLIP embeddings -> normalised CLIP / IsoCLIP embeddings,
//!   projected through a [`Backend`];
//! * [`band_search`]: which band (k_top, k_bottom) retrieves best, from one SVD of Ψ;
//! * [`labels`]: integer label files; [`plots`]: precision@K curves and similarity histograms.

pub mod band_search;
pub mod embed;
pub mod labels;
pub mod metrics;
pub mod ncm;
pub mod plots;
pub mod retrieval;

pub use band_search::{
    search_bands, BandGrid, BandMetrics, BandRow, BandSearch, BandSearchReport, BandSearchSpec,
};
pub use embed::{embed, open_rows, open_rows_from, Projection, Rows};
pub use labels::{labels_from_file, load_labels};
pub use metrics::{QueryMetrics, RetrievalSummary};
pub use retrieval::{
    evaluate, Embeddings, Layout, PairHistogram, RetrievalOptions, RetrievalOutcome,
};

use crate::backend::{Backend, InputKind};
use crate::error::{Error, Result};

/// The rows of a retrieval task, before projection.
#[derive(Clone, Copy)]
pub enum Sets<'a> {
    /// One set: every item queries all the others.
    One { rows: Rows<'a>, labels: &'a [i64] },
    /// Queries searched against a separate gallery.
    QueryGallery {
        queries: Rows<'a>,
        query_labels: &'a [i64],
        gallery: Rows<'a>,
        gallery_labels: &'a [i64],
    },
}

impl Sets<'_> {
    fn check(&self) -> Result<()> {
        let count = |rows: &Rows<'_>, labels: &[i64]| {
            if rows.rows() != labels.len() {
                Err(Error::Shape(format!(
                    "{} has {} rows but its labels hold {} entries",
                    rows.name(),
                    rows.rows(),
                    labels.len()
                )))
            } else {
                Ok(())
            }
        };
        match self {
            Sets::One { rows, labels } => {
                count(rows, labels)?;
                if rows.rows() < 2 {
                    return Err(Error::invalid(format!(
                        "{}: one-set retrieval needs at least 2 rows (each queries the others), found {}",
                        rows.name(),
                        rows.rows()
                    )));
                }
            }
            Sets::QueryGallery {
                queries,
                query_labels,
                gallery,
                gallery_labels,
            } => {
                count(queries, query_labels)?;
                count(gallery, gallery_labels)?;
                if queries.cols() != gallery.cols() {
                    return Err(Error::Shape(format!(
                        "{} has {} dims per row but {} has {}",
                        queries.name(),
                        queries.cols(),
                        gallery.name(),
                        gallery.cols()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Total rows (for progress messages).
    pub fn rows(&self) -> usize {
        match self {
            Sets::One { rows, .. } => rows.rows(),
            Sets::QueryGallery {
                queries, gallery, ..
            } => queries.rows() + gallery.rows(),
        }
    }
}

/// Projects the sets with `proj` on `backend`, normalises, and evaluates retrieval.
pub fn evaluate_sets(
    backend: &dyn Backend,
    sets: Sets<'_>,
    proj: &Projection,
    kind: InputKind,
    opts: RetrievalOptions,
) -> Result<RetrievalOutcome> {
    sets.check()?;
    match sets {
        Sets::One { rows, labels } => {
            let e = embed(backend, rows, proj, kind)?;
            evaluate(Layout::OneSet { items: &e, labels }, opts)
        }
        Sets::QueryGallery {
            queries,
            query_labels,
            gallery,
            gallery_labels,
        } => {
            let q = embed(backend, queries, proj, kind)?;
            let g = embed(backend, gallery, proj, kind)?;
            evaluate(
                Layout::QueryGallery {
                    queries: &q,
                    query_labels,
                    gallery: &g,
                    gallery_labels,
                },
                opts,
            )
        }
    }
}
