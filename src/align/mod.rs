//! The core of IsoCLIP: from projector weights to aligned maps.
//!
//! weights (P_i: d_i x d, P_t: d_t x d, optional biases)
//!   -> Ψ = P_i P_tᵀ  -> thin SVD in f64 (signs fixed)  -> band [k_top, r − k_bottom)
//!   -> per modality: full map (the paper's), compact map (m dims, same cosines),
//!      embedding route (from already-projected embeddings), plain map (CLIP, for comparison).
//!
//! Everything here is pure, deterministic Rust: the same weights and band give the same bytes.
//! See `docs/METHOD.md` for the math.

pub mod presets;
pub mod synthetic;

use std::sync::Arc;

use faer::{Mat, MatRef, Par};
use sha2::{Digest, Sha256};

use crate::backend::{InputKind, OutputForm};
use crate::error::{Error, Result};

/// Which side of the model a map serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Modality {
    Image,
    Text,
}

impl Modality {
    pub fn name(self) -> &'static str {
        match self {
            Modality::Image => "image",
            Modality::Text => "text",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "image" => Some(Modality::Image),
            "text" => Some(Modality::Text),
            _ => None,
        }
    }
}

impl std::fmt::Display for Modality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A dense row-major f32 matrix, "input x output": a row vector `x` maps to `x · M`.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixF32 {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl MatrixF32 {
    fn from_faer(m: MatRef<'_, f64>) -> Self {
        let (rows, cols) = (m.nrows(), m.ncols());
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(m[(i, j)] as f32);
            }
        }
        MatrixF32 { rows, cols, data }
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// An affine map `y = x · weight + bias` (bias present only for bias-augmented projectors).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearMap {
    pub weight: MatrixF32,
    pub bias: Option<Vec<f32>>,
}

impl LinearMap {
    /// A map without bias.
    pub fn unbiased(weight: MatrixF32) -> Self {
        LinearMap { weight, bias: None }
    }
    pub fn d_in(&self) -> usize {
        self.weight.rows
    }
    pub fn d_out(&self) -> usize {
        self.weight.cols
    }

    /// Splits an augmented map (d_in + 1 rows, the last being the bias) when `augmented`.
    fn from_augmented(m: MatRef<'_, f64>, augmented: bool) -> Self {
        if augmented {
            let d_in = m.nrows() - 1;
            let weight = MatrixF32::from_faer(m.subrows(0, d_in));
            let bias = (0..m.ncols()).map(|j| m[(d_in, j)] as f32).collect();
            LinearMap {
                weight,
                bias: Some(bias),
            }
        } else {
            LinearMap {
                weight: MatrixF32::from_faer(m),
                bias: None,
            }
        }
    }

    /// Applies the map to one row in f64 (reference path for tests and small jobs).
    pub fn apply_row(&self, x: &[f32]) -> Vec<f64> {
        let mut y: Vec<f64> = match &self.bias {
            Some(b) => b.iter().map(|&v| v as f64).collect(),
            None => vec![0.0; self.d_out()],
        };
        for (i, &xi) in x.iter().enumerate() {
            let xi = xi as f64;
            if xi == 0.0 {
                continue;
            }
            for (yj, &w) in y.iter_mut().zip(self.weight.row(i)) {
                *yj += xi * w as f64;
            }
        }
        y
    }
}

/// The projector weights of one CLIP-like model, in "input x output" orientation, in f64.
#[derive(Clone, Debug)]
pub struct ProjectorWeights {
    /// P_i, d_i x d (row-major).
    pub image: Mat<f64>,
    /// P_t, d_t x d.
    pub text: Mat<f64>,
    pub image_bias: Option<Vec<f64>>,
    pub text_bias: Option<Vec<f64>>,
    /// Where the weights came from, for humans.
    pub source: String,
    /// SHA-256 of the weights (shapes and values), independent of the file format they came in.
    pub fingerprint: String,
}

impl ProjectorWeights {
    /// Validates and wraps weights given as (rows, cols, row-major data).
    pub fn new(
        image: (usize, usize, Vec<f64>),
        text: (usize, usize, Vec<f64>),
        image_bias: Option<Vec<f64>>,
        text_bias: Option<Vec<f64>>,
        source: String,
    ) -> Result<Self> {
        let (di, d_img, img) = image;
        let (dt, d_txt, txt) = text;
        if di == 0 || d_img == 0 || dt == 0 || d_txt == 0 {
            return Err(Error::Shape(format!(
                "projectors must be non-empty: image is {di} x {d_img}, text is {dt} x {d_txt}"
            )));
        }
        assert_eq!(img.len(), di * d_img);
        assert_eq!(txt.len(), dt * d_txt);
        if d_img != d_txt {
            return Err(Error::Shape(format!(
                "the projectors map into different spaces: image projector is {di} x {d_img} \
                 (output dim {d_img}), text projector is {dt} x {d_txt} (output dim {d_txt}); \
                 both must share the output dimension (check the orientation: we expect \
                 input x output)"
            )));
        }
        check_finite("image projector", &img)?;
        check_finite("text projector", &txt)?;
        for (name, b) in [("image bias", &image_bias), ("text bias", &text_bias)] {
            if let Some(b) = b {
                if b.len() != d_img {
                    return Err(Error::Shape(format!(
                        "{name} has {} entries but the output dimension is {d_img}",
                        b.len()
                    )));
                }
                check_finite(name, b)?;
            }
        }
        let fingerprint = fingerprint_weights(
            (di, d_img, &img),
            (dt, d_txt, &txt),
            image_bias.as_deref(),
            text_bias.as_deref(),
        );
        Ok(ProjectorWeights {
            image: Mat::from_fn(di, d_img, |i, j| img[i * d_img + j]),
            text: Mat::from_fn(dt, d_txt, |i, j| txt[i * d_txt + j]),
            image_bias,
            text_bias,
            source,
            fingerprint,
        })
    }

    pub fn d(&self) -> usize {
        self.image.ncols()
    }
    pub fn d_in(&self, modality: Modality) -> usize {
        match modality {
            Modality::Image => self.image.nrows(),
            Modality::Text => self.text.nrows(),
        }
    }
    pub fn has_bias(&self, modality: Modality) -> bool {
        match modality {
            Modality::Image => self.image_bias.is_some(),
            Modality::Text => self.text_bias.is_some(),
        }
    }

    /// The projector with its bias appended as a last row (DESIGN.md §1, bias-augmented form).
    fn augmented(&self, modality: Modality) -> Mat<f64> {
        let (p, b) = match modality {
            Modality::Image => (&self.image, &self.image_bias),
            Modality::Text => (&self.text, &self.text_bias),
        };
        match b {
            None => p.clone(),
            Some(b) => Mat::from_fn(p.nrows() + 1, p.ncols(), |i, j| {
                if i < p.nrows() {
                    p[(i, j)]
                } else {
                    b[j]
                }
            }),
        }
    }

    /// The plain CLIP projector of one modality (for baselines).
    pub fn plain_map(&self, modality: Modality) -> LinearMap {
        let aug = self.augmented(modality);
        LinearMap::from_augmented(aug.as_ref(), self.has_bias(modality))
    }
}

fn check_finite(name: &str, v: &[f64]) -> Result<()> {
    if let Some(pos) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite(format!(
            "{name} contains a non-finite value ({}) at flat index {pos}",
            v[pos]
        )));
    }
    Ok(())
}

fn fingerprint_weights(
    image: (usize, usize, &[f64]),
    text: (usize, usize, &[f64]),
    image_bias: Option<&[f64]>,
    text_bias: Option<&[f64]>,
) -> String {
    let mut h = Sha256::new();
    h.update(b"isoclip-weights-v1\0");
    for (tag, rows, cols, data) in [
        (&b"image"[..], image.0, image.1, image.2),
        (&b"text"[..], text.0, text.1, text.2),
    ] {
        h.update(tag);
        h.update((rows as u64).to_le_bytes());
        h.update((cols as u64).to_le_bytes());
        for v in data {
            h.update(v.to_le_bytes());
        }
    }
    for (tag, b) in [
        (&b"image_bias"[..], image_bias),
        (&b"text_bias"[..], text_bias),
    ] {
        if let Some(b) = b {
            h.update(tag);
            h.update((b.len() as u64).to_le_bytes());
            for v in b {
                h.update(v.to_le_bytes());
            }
        }
    }
    hex(&h.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which directions of Ψ's spectrum are kept: indices `[k_top, r − k_bottom)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BandSpec {
    pub k_top: usize,
    pub k_bottom: usize,
}

impl BandSpec {
    pub fn new(k_top: usize, k_bottom: usize) -> Self {
        BandSpec { k_top, k_bottom }
    }
    /// Number of kept directions for a spectrum of length `r`, or an error if none is kept
    /// (the reference raises when k_top + k_bottom ≥ r). Sizes of any magnitude are safe: the sum
    /// is checked, never wrapped.
    pub fn kept(&self, r: usize) -> Result<usize> {
        let dropped = self.k_top.checked_add(self.k_bottom);
        match dropped.and_then(|d| r.checked_sub(d)) {
            Some(m) if m >= 1 => Ok(m),
            _ => {
                Err(Error::Band(format!(
                "empty band: k_top {} + k_bottom {} = {} leaves no direction of the {r} singular \
                 directions of Ψ; k_top + k_bottom must be < {r}",
                self.k_top,
                self.k_bottom,
                dropped.map_or_else(|| "more than the largest size".to_string(), |d| d.to_string())
            )))
            }
        }
    }
}

impl std::fmt::Display for BandSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "k_top {} / k_bottom {}", self.k_top, self.k_bottom)
    }
}

/// The SVD of Ψ = P_i,aug · P_t,augᵀ with a fixed sign convention: in every left singular vector,
/// the entry of largest magnitude (the first such, on ties) is positive.
pub struct PsiSpectrum {
    /// d_i' x r, columns u_j.
    pub u: Mat<f64>,
    /// d_t' x r, columns v_j.
    pub v: Mat<f64>,
    /// r singular values, descending.
    pub sigma: Vec<f64>,
}

impl PsiSpectrum {
    pub fn compute(weights: &ProjectorWeights) -> Result<Self> {
        check_weight_scale(weights)?;
        // Sequential kernels: the fit is small (< 1 s) and the result must not depend on the
        // number of threads, so two fits give byte-identical files on any machine.
        faer::set_global_parallelism(Par::Seq);
        let pi = weights.augmented(Modality::Image);
        let pt = weights.augmented(Modality::Text);
        let psi = &pi * pt.transpose();
        let svd = psi
            .thin_svd()
            .map_err(|e| Error::Numerical(format!("the SVD of Ψ did not converge: {e:?}")))?;
        let r = svd.S().dim();
        let mut u = svd.U().to_owned();
        let mut v = svd.V().to_owned();
        let sigma: Vec<f64> = (0..r).map(|j| svd.S()[j]).collect();
        for j in 0..r {
            let mut best = 0usize;
            let mut best_abs = -1.0f64;
            for i in 0..u.nrows() {
                let a = u[(i, j)].abs();
                if a > best_abs {
                    best_abs = a;
                    best = i;
                }
            }
            if u[(best, j)] < 0.0 {
                for i in 0..u.nrows() {
                    u[(i, j)] = -u[(i, j)];
                }
                for i in 0..v.nrows() {
                    v[(i, j)] = -v[(i, j)];
                }
            }
        }
        if let Some(j) = sigma.iter().position(|s| !s.is_finite()) {
            return Err(Error::Numerical(format!(
                "the SVD of Ψ gave a non-finite singular value σ_{} = {}",
                j + 1,
                sigma[j]
            )));
        }
        Ok(PsiSpectrum { u, v, sigma })
    }

    /// The numerical rank of Ψ: how many σ_j exceed [`SIGMA_FLOOR`]·σ_1 (0 when Ψ = 0). Ψ has
    /// rank at most d, so r = min(d_i', d_t') can exceed it (a bias-augmented model, a projector
    /// with more inputs than outputs on both sides, degenerate weights).
    pub fn rank(&self) -> usize {
        let s1 = self.sigma.first().copied().unwrap_or(0.0);
        if s1 <= 0.0 {
            return 0;
        }
        self.sigma
            .iter()
            .take_while(|&&s| s > SIGMA_FLOOR * s1)
            .count()
    }

    /// Checks a band against this spectrum: it must keep at least one direction
    /// ([`BandSpec::kept`]) and every kept direction must have a non-zero singular value
    /// (index < [`rank`](Self::rank)); a direction with σ = 0 carries no alignment, only noise.
    /// Returns the number of kept directions.
    pub fn check_band(&self, band: BandSpec) -> Result<usize> {
        let r = self.r();
        let m = band.kept(r)?;
        let rank = self.rank();
        let end = r - band.k_bottom; // kept() guarantees k_bottom < r
        if end <= rank {
            return Ok(m);
        }
        if rank == 0 {
            return Err(Error::Band(format!(
                "Ψ = P_i P_tᵀ is zero (all {r} singular values are 0): the image and text \
                 projectors are orthogonal, so there is no aligned direction to keep"
            )));
        }
        let min_bottom = r - rank;
        Err(Error::Band(format!(
            "Ψ has rank {rank}: only {rank} of its {r} singular values exceed {SIGMA_FLOOR:e}·σ_1, \
             but the band {band} keeps directions [{}, {end}), which reach singular values that \
             are zero; a band must end by direction {rank}: k_bottom >= {min_bottom} (r − rank) \
             and k_top + k_bottom < {r}",
            band.k_top,
        )))
    }

    /// r = min(d_i', d_t'): the number of singular values of Ψ.
    pub fn r(&self) -> usize {
        self.sigma.len()
    }

    /// σ_j / σ_1 for every j.
    pub fn normalized(&self) -> Vec<f64> {
        let s1 = self.sigma.first().copied().unwrap_or(0.0);
        if s1 <= 0.0 {
            return vec![0.0; self.sigma.len()];
        }
        self.sigma.iter().map(|s| s / s1).collect()
    }

    /// The gaps σ_{k_top−1} − σ_{k_top} and σ_{r−k_bottom−1} − σ_{r−k_bottom} at the band edges
    /// (None where the band touches the end of the spectrum).
    pub fn edge_gaps(&self, band: BandSpec) -> (Option<f64>, Option<f64>) {
        let r = self.sigma.len();
        let top = (band.k_top > 0 && band.k_top < r)
            .then(|| self.sigma[band.k_top - 1] - self.sigma[band.k_top]);
        let lo = r.checked_sub(band.k_bottom);
        let bottom = match lo {
            Some(lo) if band.k_bottom > 0 && lo >= 1 => Some(self.sigma[lo - 1] - self.sigma[lo]),
            _ => None,
        };
        (top, bottom)
    }
}

/// Every map the engine needs for one modality. The maps a projection applies are shared
/// (`Arc`): [`ModalityMaps::select`] hands one out without copying its weights, and a backend's
/// prepared map (`Backend::prepare`) keeps it alive.
#[derive(Clone, Debug, PartialEq)]
pub struct ModalityMaps {
    pub modality: Modality,
    pub band: BandSpec,
    /// Kept directions, r − k_top − k_bottom.
    pub m: usize,
    /// Feature dimension the user feeds (without the appended 1 of the bias-augmented form).
    pub d_in: usize,
    /// Embedding dimension of the model.
    pub d: usize,
    /// The paper's map `U_m U_mᵀ P`, d_in x d (+ bias).
    pub full: Arc<LinearMap>,
    /// Same cosines in min(m, d) dims: `U_m Rᵀ` (+ bias).
    pub compact: Arc<LinearMap>,
    /// From already-projected embeddings (d x min(m,d), no bias); `Err` with the reason where
    /// the route is not exact.
    pub embedding_compact: std::result::Result<Arc<LinearMap>, String>,
    /// The embedding route's full form (d x d, no bias).
    pub embedding_full: std::result::Result<Arc<LinearMap>, String>,
    /// Plain CLIP projector, for baselines in evaluation.
    pub plain: Arc<LinearMap>,
    /// σ gaps at the band edges (absolute).
    pub gap_top: Option<f64>,
    pub gap_bottom: Option<f64>,
}

impl ModalityMaps {
    pub fn compact_dim(&self) -> usize {
        self.compact.d_out()
    }

    /// The map a projection of `kind` rows into `form` applies, shared (no copy of the weights).
    /// The embedding route where it is not exact is `Error::InvalidArgument` with the reason.
    pub fn select(&self, kind: InputKind, form: OutputForm) -> Result<Arc<LinearMap>> {
        let chosen = match (kind, form) {
            (InputKind::Features, OutputForm::Compact) => return Ok(self.compact.clone()),
            (InputKind::Features, OutputForm::Full) => return Ok(self.full.clone()),
            (InputKind::Embeddings, OutputForm::Compact) => &self.embedding_compact,
            (InputKind::Embeddings, OutputForm::Full) => &self.embedding_full,
        };
        chosen
            .as_ref()
            .map(Arc::clone)
            .map_err(|reason| Error::invalid(reason.clone()))
    }

    /// Every map holds finite f32 values (weights inside [`WEIGHT_SCALE`] guarantee it; this
    /// catches what the scale check cannot, rather than writing Inf into a projector file).
    fn check_finite(&self) -> Result<()> {
        let mut named: Vec<(&str, &[f32])> = vec![
            ("full map", &self.full.weight.data),
            ("compact map", &self.compact.weight.data),
            ("plain map", &self.plain.weight.data),
        ];
        for (name, b) in [
            ("full map bias", &self.full.bias),
            ("compact map bias", &self.compact.bias),
        ] {
            if let Some(b) = b {
                named.push((name, b));
            }
        }
        if let Ok(e) = &self.embedding_compact {
            named.push(("embedding-route compact map", &e.weight.data));
        }
        if let Ok(e) = &self.embedding_full {
            named.push(("embedding-route full map", &e.weight.data));
        }
        for (name, data) in named {
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::Numerical(format!(
                    "the {} {name} is not finite in f32 (value {} at flat index {i})",
                    self.modality, data[i]
                )));
            }
        }
        Ok(())
    }
}

/// Relative σ at or below which a singular direction is numerically zero: it counts neither
/// towards the rank of Ψ nor as a direction the embedding route can divide by.
pub const SIGMA_FLOOR: f64 = 1e-9;

/// The range the largest |weight| (and |bias|) of each projector must lie in: far beyond any
/// real checkpoint (CLIP weights are of order 0.01–1) on both sides, and narrow enough that
/// every map stays finite in f32 (the embedding route scales by 1/|P|) and that the CPU
/// backend's GEMM cannot overflow for rows it leaves unscaled.
pub const WEIGHT_SCALE: (f64, f64) = (9.094947017729282e-13, 1.099511627776e12); // 2^-40, 2^40

/// Refuses projectors that are all zero or whose scale is outside [`WEIGHT_SCALE`].
fn check_weight_scale(weights: &ProjectorWeights) -> Result<()> {
    let max_abs = |v: &mut dyn Iterator<Item = f64>| v.fold(0.0f64, |m, x| m.max(x.abs()));
    let (lo, hi) = WEIGHT_SCALE;
    for modality in [Modality::Image, Modality::Text] {
        let (p, b) = match modality {
            Modality::Image => (&weights.image, &weights.image_bias),
            Modality::Text => (&weights.text, &weights.text_bias),
        };
        let w = max_abs(&mut (0..p.nrows()).flat_map(|i| (0..p.ncols()).map(move |j| p[(i, j)])));
        if w == 0.0 {
            return Err(Error::Numerical(format!(
                "the {modality} projector ({} x {}) is all zeros: Ψ = P_i P_tᵀ would be zero and \
                 have no singular direction to keep",
                p.nrows(),
                p.ncols()
            )));
        }
        let bias = b.as_ref().map_or(0.0, |b| max_abs(&mut b.iter().copied()));
        for (what, v) in [("weight", w), ("bias", bias)] {
            if v > hi || (what == "weight" && v < lo) {
                return Err(Error::Numerical(format!(
                    "the {modality} projector's largest |{what}| is {v:e}, outside the supported \
                     range [{lo:e}, {hi:e}] (CLIP projector weights are of order 0.01 to 1; is \
                     the tensor scaled or decoded wrongly?)"
                )));
            }
        }
    }
    Ok(())
}

/// Builds all maps of `modality` for `band` from a precomputed spectrum (one SVD serves many
/// bands, as in a sweep).
pub fn fit_modality(
    weights: &ProjectorWeights,
    spectrum: &PsiSpectrum,
    modality: Modality,
    band: BandSpec,
) -> Result<ModalityMaps> {
    faer::set_global_parallelism(Par::Seq);
    let m = spectrum.check_band(band)?;
    let lo = band.k_top;
    let (basis, other_basis, own, other, augmented) = match modality {
        Modality::Image => (
            &spectrum.u,
            &spectrum.v,
            weights.augmented(Modality::Image),
            weights.augmented(Modality::Text),
            weights.has_bias(Modality::Image),
        ),
        Modality::Text => (
            &spectrum.v,
            &spectrum.u,
            weights.augmented(Modality::Text),
            weights.augmented(Modality::Image),
            weights.has_bias(Modality::Text),
        ),
    };
    let d = weights.d();
    let u_m = basis.subcols(lo, m); // d_in' x m
    let w_m = other_basis.subcols(lo, m); // other d_in' x m

    // Full map: U_m U_mᵀ P  (d_in' x d).
    let full = u_m * (u_m.transpose() * &own);

    // Compact map: thin QR of B = Pᵀ U_m (d x m) = Q R, z = x U_m Rᵀ.
    let b = own.transpose() * u_m;
    let qr = b.qr();
    let mut q = qr.compute_thin_Q(); // d x k
    let mut rr = qr.thin_R().to_owned(); // k x m
    let k = rr.nrows();
    for j in 0..k {
        if rr[(j, j)] < 0.0 {
            for c in 0..rr.ncols() {
                rr[(j, c)] = -rr[(j, c)];
            }
            for i in 0..q.nrows() {
                q[(i, j)] = -q[(i, j)];
            }
        }
    }
    let compact = u_m * rr.transpose(); // d_in' x k

    // Embedding route: x U_m = e · P_otherᵀ W_m Σ_m⁻¹ (exact when e = x P, no bias).
    let sigma_m = &spectrum.sigma[lo..lo + m];
    let s1 = spectrum.sigma[0];
    let embedding = if augmented {
        Err(format!(
            "the embedding route is not exact for this model: its {modality} projector has a \
             bias, so a stored embedding is not x·P; project pre-projection features instead"
        ))
    } else if sigma_m.iter().any(|&s| s <= SIGMA_FLOOR * s1) {
        Err(format!(
            "the embedding route is ill-conditioned: the kept band reaches singular values of Ψ \
             below {SIGMA_FLOOR:e}·σ_1; raise k_bottom"
        ))
    } else {
        let mut t = other.transpose() * w_m; // d x m
        for (j, &s) in sigma_m.iter().enumerate() {
            for i in 0..t.nrows() {
                t[(i, j)] /= s;
            }
        }
        let e_compact = &t * rr.transpose(); // d x k
        let e_full = &e_compact * q.transpose(); // d x d
        Ok((e_compact, e_full))
    };
    let (gap_top, gap_bottom) = spectrum.edge_gaps(band);
    let (embedding_compact, embedding_full) = match embedding {
        Ok((c, f)) => (
            Ok(Arc::new(LinearMap::unbiased(MatrixF32::from_faer(
                c.as_ref(),
            )))),
            Ok(Arc::new(LinearMap::unbiased(MatrixF32::from_faer(
                f.as_ref(),
            )))),
        ),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    let maps = ModalityMaps {
        modality,
        band,
        m,
        d_in: weights.d_in(modality),
        d,
        full: Arc::new(LinearMap::from_augmented(full.as_ref(), augmented)),
        compact: Arc::new(LinearMap::from_augmented(compact.as_ref(), augmented)),
        embedding_compact,
        embedding_full,
        plain: Arc::new(weights.plain_map(modality)),
        gap_top,
        gap_bottom,
    };
    maps.check_finite()?;
    Ok(maps)
}

/// The result of a fit: the spectrum and the maps of one or both modalities.
#[derive(Clone, Debug, PartialEq)]
pub struct AlignedProjector {
    pub fingerprint: String,
    pub source: String,
    pub preset: Option<String>,
    /// Singular values of Ψ, descending.
    pub sigma: Vec<f64>,
    pub d: usize,
    pub image: Option<ModalityMaps>,
    pub text: Option<ModalityMaps>,
    /// Whether the weights are a labelled synthetic model rather than a real checkpoint.
    pub synthetic: bool,
}

impl AlignedProjector {
    pub fn r(&self) -> usize {
        self.sigma.len()
    }
    pub fn maps(&self, modality: Modality) -> Option<&ModalityMaps> {
        match modality {
            Modality::Image => self.image.as_ref(),
            Modality::Text => self.text.as_ref(),
        }
    }
    pub fn modalities(&self) -> Vec<Modality> {
        [Modality::Image, Modality::Text]
            .into_iter()
            .filter(|m| self.maps(*m).is_some())
            .collect()
    }
    /// The single modality of the file, or an error asking the user to choose.
    pub fn only_modality(&self, requested: Option<Modality>) -> Result<&ModalityMaps> {
        match requested {
            Some(m) => self.maps(m).ok_or_else(|| {
                Error::invalid(format!(
                    "the projector file holds no {m} maps (it has: {})",
                    self.modalities()
                        .iter()
                        .map(|m| m.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }),
            None => match (&self.image, &self.text) {
                (Some(i), None) => Ok(i),
                (None, Some(t)) => Ok(t),
                _ => Err(Error::invalid(
                    "the projector file holds both image and text maps; choose one modality (image or text)",
                )),
            },
        }
    }
}

/// Fits the requested modalities, each with its own band, from one SVD of Ψ.
pub fn fit(
    weights: &ProjectorWeights,
    bands: &[(Modality, BandSpec)],
    preset: Option<&str>,
) -> Result<AlignedProjector> {
    let spectrum = PsiSpectrum::compute(weights)?;
    let mut out = AlignedProjector {
        fingerprint: weights.fingerprint.clone(),
        source: weights.source.clone(),
        preset: preset.map(str::to_string),
        sigma: spectrum.sigma.clone(),
        d: weights.d(),
        image: None,
        text: None,
        synthetic: false,
    };
    for &(modality, band) in bands {
        let maps = fit_modality(weights, &spectrum, modality, band)?;
        match modality {
            Modality::Image => out.image = Some(maps),
            Modality::Text => out.text = Some(maps),
        }
    }
    Ok(out)
}
