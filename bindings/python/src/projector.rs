//! `isoclip.Projector`: an immutable, shareable fitted projector (the `isoclip fit` file's
//! content), with `fit`, `fit_checkpoint`, `load`, `save`, its properties and pickling (so
//! Spark and Ray can ship it to their workers).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use isoclip::align::presets::{self, Preset};
use isoclip::align::LinearMap;
use isoclip::align::ModalityMaps;
use isoclip::backend::{Backend, InputKind, OutputForm, PreparedMap, PreparedMaps};
use isoclip::formats::{checkpoint, projector_file};
use isoclip::storage::{self, Location};
use isoclip::{AlignedProjector, BandSpec, Error, Modality, ProjectorWeights};
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors::IntoPy;
use crate::options;

/// A fitted IsoCLIP projector: the band's maps for one or both modalities. Immutable; share it
/// freely between threads.
#[pyclass(module = "isoclip._native", frozen)]
pub struct Projector {
    pub(crate) inner: Arc<AlignedProjector>,
    /// Where it was loaded from (for error messages), if from a file.
    origin: Option<String>,
    digest: OnceLock<String>,
    /// The maps prepared for each backend that projected with this projector.
    prepared: PreparedMaps,
}

impl Projector {
    pub fn new(inner: AlignedProjector, origin: Option<String>) -> Self {
        Projector {
            inner: Arc::new(inner),
            origin,
            digest: OnceLock::new(),
            prepared: PreparedMaps::new(),
        }
    }

    /// The maps of `modality` (None: the only one), errors naming the file it came from.
    pub fn maps(&self, modality: Option<Modality>) -> isoclip::Result<&ModalityMaps> {
        self.inner
            .only_modality(modality)
            .map_err(|e| match &self.origin {
                Some(o) => e.in_file(o),
                None => e,
            })
    }

    /// The map for a modality, input kind and form.
    pub fn selected(
        &self,
        modality: Option<Modality>,
        kind: InputKind,
        form: OutputForm,
    ) -> isoclip::Result<Arc<LinearMap>> {
        self.maps(modality)?.select(kind, form)
    }

    /// That map prepared for `backend`, shared by every call that uses both.
    pub fn prepared(
        &self,
        backend: &Arc<dyn Backend>,
        modality: Option<Modality>,
        kind: InputKind,
        form: OutputForm,
    ) -> isoclip::Result<Arc<PreparedMap>> {
        let maps = self.maps(modality)?;
        self.prepared.get(backend, maps, kind, form)
    }

    fn content_digest(&self) -> &str {
        self.digest
            .get_or_init(|| projector_file::content_digest(&self.inner))
    }
}

fn band_tuple(m: &ModalityMaps) -> (usize, usize) {
    (m.band.k_top, m.band.k_bottom)
}

#[pymethods]
impl Projector {
    /// Loads a projector file written by `isoclip fit` or `Projector.save`, from a path or a URL
    /// (file://, s3://, gs://, az://, http(s)://). `storage_options`: object_store options
    /// (e.g. {"aws_endpoint": "http://127.0.0.1:9000"}) over the environment's.
    #[staticmethod]
    #[pyo3(signature = (path_or_url, storage_options=None))]
    fn load(
        py: Python<'_>,
        path_or_url: PathBuf,
        storage_options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let text = path_or_url.to_string_lossy().into_owned();
        let opts = options::storage_options(storage_options)?;
        let aligned = py
            .detach(|| {
                let location = Location::parse(&text)?;
                storage::load_projector(&location, &opts)
            })
            .py(py)?;
        Ok(Projector::new(aligned, Some(text)))
    }

    /// Writes the projector file (the format `isoclip project --projector` reads).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let inner = self.inner.clone();
        py.detach(|| projector_file::save(&inner, &path)).py(py)
    }

    /// The content digest of the projector file (what the resume records compare).
    #[getter]
    fn fingerprint(&self) -> &str {
        self.content_digest()
    }

    /// SHA-256 of the CLIP projector weights the band was fitted from.
    #[getter]
    fn weights_fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// Singular values of Ψ = P_i P_tᵀ, descending (float64).
    #[getter]
    fn spectrum<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, &self.inner.sigma)
    }

    /// The modalities this projector holds maps for: ["image"], ["text"] or both.
    #[getter]
    fn modalities(&self) -> Vec<&'static str> {
        self.inner.modalities().iter().map(|m| m.name()).collect()
    }

    /// (k_top, k_bottom) of the only modality; a projector with both raises (see `bands`).
    #[getter]
    fn band(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        self.maps(None).map(band_tuple).py(py)
    }

    /// {modality: (k_top, k_bottom)} for every modality held.
    #[getter]
    fn bands(&self) -> Vec<(&'static str, (usize, usize))> {
        self.inner
            .modalities()
            .iter()
            .filter_map(|m| self.inner.maps(*m).map(|x| (m.name(), band_tuple(x))))
            .collect()
    }

    /// The dimensions of each modality: {"image": {"d_in", "d", "compact"}, ...}; `d_in` is the
    /// width of features, `d` of CLIP embeddings and full outputs, `compact` of compact outputs.
    #[getter]
    fn dims<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for m in self.inner.modalities() {
            let maps = self.inner.maps(m).expect("listed");
            let d = PyDict::new(py);
            d.set_item("d_in", maps.d_in)?;
            d.set_item("d", maps.d)?;
            d.set_item("compact", maps.compact_dim())?;
            out.set_item(m.name(), d)?;
        }
        Ok(out)
    }

    /// The rank r of Ψ (the length of the spectrum).
    #[getter]
    fn r(&self) -> usize {
        self.inner.r()
    }

    /// The preset the band came from, if any.
    #[getter]
    fn preset(&self) -> Option<&str> {
        self.inner.preset.as_deref()
    }

    /// The width of `project`'s output for these options.
    #[pyo3(signature = (form="compact", kind="features", modality=None))]
    fn output_dim(
        &self,
        py: Python<'_>,
        form: &str,
        kind: &str,
        modality: Option<&str>,
    ) -> PyResult<usize> {
        let map = self
            .selected(
                options::modality(modality)?,
                options::kind(kind)?,
                options::form(form)?,
            )
            .py(py)?;
        Ok(map.d_out())
    }

    /// The width `project` expects for `kind` inputs.
    #[pyo3(signature = (kind="features", modality=None))]
    fn input_dim(&self, py: Python<'_>, kind: &str, modality: Option<&str>) -> PyResult<usize> {
        let maps = self.maps(options::modality(modality)?).py(py)?;
        Ok(match options::kind(kind)? {
            InputKind::Features => maps.d_in,
            InputKind::Embeddings => maps.d,
        })
    }

    fn __repr__(&self) -> String {
        let bands: Vec<String> = self
            .bands()
            .iter()
            .map(|(m, (t, b))| format!("{m}: k_top={t}, k_bottom={b}"))
            .collect();
        format!(
            "<isoclip.Projector r={} d={} {} fingerprint={}>",
            self.inner.r(),
            self.inner.d,
            bands.join("; "),
            &self.content_digest()[..self.content_digest().len().min(16)]
        )
    }

    /// Pickling: the projector file's bytes.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,))> {
        let py = slf.py();
        let bytes = projector_file::to_bytes(&slf.get().inner);
        let ctor = py.get_type::<Projector>().getattr("_from_bytes")?;
        Ok((ctor, (PyBytes::new(py, &bytes),)))
    }

    /// The inverse of pickling: a projector from the bytes of a projector file.
    #[staticmethod]
    fn _from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let aligned =
            projector_file::from_bytes(data, std::path::Path::new("<pickled projector>")).py(py)?;
        Ok(Projector::new(aligned, None))
    }

    /// Projects rows; see the package's documentation (`isoclip.Projector.project`).
    #[pyo3(signature = (x, form="compact", dtype=None, normalize=true, kind="features", modality=None, nonfinite="error", out=None, precision="f32"))]
    #[allow(clippy::too_many_arguments)]
    fn project<'py>(
        &self,
        x: &Bound<'py, PyAny>,
        form: &str,
        dtype: Option<&Bound<'py, PyAny>>,
        normalize: bool,
        kind: &str,
        modality: Option<&str>,
        nonfinite: &str,
        out: Option<&Bound<'py, PyAny>>,
        precision: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = crate::project::Request {
            form: options::form(form)?,
            kind: options::kind(kind)?,
            modality: options::modality(modality)?,
            nonfinite: options::nonfinite(nonfinite)?,
            normalize,
            precision: options::precision(precision)?,
        };
        crate::project::project(self, x, dtype, request, out)
    }
}

/// Which modalities a fit covers: "image" (default), "text" or "both".
fn fit_modalities(modality: Option<&str>) -> PyResult<Vec<Modality>> {
    match modality.unwrap_or("image") {
        "image" => Ok(vec![Modality::Image]),
        "text" => Ok(vec![Modality::Text]),
        "both" => Ok(vec![Modality::Image, Modality::Text]),
        other => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "unknown modality {other:?} (expected \"image\", \"text\" or \"both\")"
        ))),
    }
}

fn find_preset(name: Option<&str>) -> isoclip::Result<Option<&'static Preset>> {
    match name {
        None => Ok(None),
        Some(n) => presets::find(n).map(Some).ok_or_else(|| {
            Error::invalid(format!(
                "unknown preset '{n}'; known presets: {}",
                presets::names().join(", ")
            ))
        }),
    }
}

/// The band for `modality`: explicit k's override the preset's (as `isoclip fit` does).
fn band_for(
    modality: Modality,
    preset: Option<&Preset>,
    k_top: Option<usize>,
    k_bottom: Option<usize>,
) -> isoclip::Result<BandSpec> {
    let from_preset = preset.and_then(|p| match modality {
        Modality::Image => p.image,
        Modality::Text => p.text,
    });
    match (k_top, k_bottom, from_preset) {
        (Some(t), Some(b), _) => Ok(BandSpec::new(t, b)),
        (t, b, Some(d)) => Ok(BandSpec::new(t.unwrap_or(d.k_top), b.unwrap_or(d.k_bottom))),
        (_, _, None) => Err(Error::invalid(match preset {
            Some(p) => format!(
                "preset '{}' has no {modality} band (the authors published none); give k_top and k_bottom",
                p.name
            ),
            None => format!(
                "no band for {modality}: give preset= or both k_top= and k_bottom= (known presets: {})",
                presets::names().join(", ")
            ),
        })),
    }
}

fn check_preset_shapes(preset: Option<&Preset>, w: &ProjectorWeights) -> isoclip::Result<()> {
    if let Some(p) = preset {
        let got = (w.d_in(Modality::Image), w.d_in(Modality::Text), w.d());
        let want = (p.d_image, p.d_text, p.d);
        if got != want {
            return Err(Error::Shape(format!(
                "preset '{}' is for projectors {}x{} (image) and {}x{} (text), but the weights are {}x{} and {}x{}",
                p.name, want.0, want.2, want.1, want.2, got.0, got.2, got.1, got.2
            )));
        }
    }
    Ok(())
}

/// Fits the requested modalities of `weights` (the GIL released).
fn fit_weights(
    py: Python<'_>,
    weights: ProjectorWeights,
    k_top: Option<usize>,
    k_bottom: Option<usize>,
    preset: Option<&str>,
    modality: Option<&str>,
) -> PyResult<Projector> {
    let modalities = fit_modalities(modality)?;
    let preset = find_preset(preset).py(py)?;
    check_preset_shapes(preset, &weights).py(py)?;
    let bands = modalities
        .into_iter()
        .map(|m| band_for(m, preset, k_top, k_bottom).map(|b| (m, b)))
        .collect::<isoclip::Result<Vec<_>>>()
        .py(py)?;
    let name = preset.map(|p| p.name);
    let aligned = py.detach(|| isoclip::fit(&weights, &bands, name)).py(py)?;
    Ok(Projector::new(aligned, None))
}

/// A 2-D array as (rows, cols, row-major f64 values).
fn matrix_f64(a: &PyReadonlyArray2<'_, f64>) -> (usize, usize, Vec<f64>) {
    let shape = a.shape();
    (shape[0], shape[1], a.as_array().iter().copied().collect())
}

/// Fits IsoCLIP from CLIP's projector weights given as arrays (input x output orientation:
/// image_proj is d_image x d, text_proj d_text x d).
#[pyfunction]
#[pyo3(signature = (image_proj, text_proj, k_top=None, k_bottom=None, preset=None, modality=None, image_bias=None, text_bias=None))]
#[allow(clippy::too_many_arguments)]
pub fn fit(
    py: Python<'_>,
    image_proj: PyReadonlyArray2<'_, f64>,
    text_proj: PyReadonlyArray2<'_, f64>,
    k_top: Option<usize>,
    k_bottom: Option<usize>,
    preset: Option<&str>,
    modality: Option<&str>,
    image_bias: Option<PyReadonlyArray1<'_, f64>>,
    text_bias: Option<PyReadonlyArray1<'_, f64>>,
) -> PyResult<Projector> {
    let vector = |b: Option<PyReadonlyArray1<'_, f64>>| b.map(|b| b.as_array().to_vec());
    let weights = ProjectorWeights::new(
        matrix_f64(&image_proj),
        matrix_f64(&text_proj),
        vector(image_bias),
        vector(text_bias),
        "arrays".to_string(),
    )
    .py(py)?;
    fit_weights(py, weights, k_top, k_bottom, preset, modality)
}

/// Fits IsoCLIP from a CLIP checkpoint (.safetensors, OpenAI or open_clip layout).
#[pyfunction]
#[pyo3(signature = (path, k_top=None, k_bottom=None, preset=None, modality=None))]
pub fn fit_checkpoint(
    py: Python<'_>,
    path: PathBuf,
    k_top: Option<usize>,
    k_bottom: Option<usize>,
    preset: Option<&str>,
    modality: Option<&str>,
) -> PyResult<Projector> {
    let weights = py.detach(|| checkpoint::load_safetensors(&path)).py(py)?;
    fit_weights(py, weights, k_top, k_bottom, preset, modality)
}
