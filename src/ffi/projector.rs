//! The projector handle: an immutable, reference-counted [`AlignedProjector`] with the maps the
//! projection calls need, prepared once per backend by the library's [`PreparedMaps`].

use std::collections::BTreeMap;
use std::ffi::c_char;
use std::sync::{Arc, OnceLock};

use super::job::isoclip_job_options;
use super::status::isoclip_status;
use super::status::{
    copy_string_out, element_count, guard, guard_infallible, location_arg, path_arg, require_out,
    slice_arg, write_out, Failure, FfiResult,
};
use crate::align::{
    fit, AlignedProjector, BandSpec, LinearMap, Modality, ModalityMaps, ProjectorWeights,
};
use crate::backend::{Backend, InputKind, OutputForm, PreparedMap, PreparedMaps};
use crate::error::Error;
use crate::formats::projector_file;
use crate::storage;

/// Which side of the model: a value of `ISOCLIP_MODALITY_*`.
pub type isoclip_modality = i32;
/// The projector's only modality; an error (`ISOCLIP_ERR_INVALID_ARGUMENT`) when it holds both.
pub const ISOCLIP_MODALITY_AUTO: isoclip_modality = 0;
/// Image features or image embeddings.
pub const ISOCLIP_MODALITY_IMAGE: isoclip_modality = 1;
/// Text features or text embeddings.
pub const ISOCLIP_MODALITY_TEXT: isoclip_modality = 2;

/// What the input rows of a projection are: a value of `ISOCLIP_INPUT_*`.
pub type isoclip_input_kind = i32;
/// Pre-projection features (`d_in` columns): the paper's route. The default.
pub const ISOCLIP_INPUT_FEATURES: isoclip_input_kind = 1;
/// Already-projected CLIP embeddings (`d` columns, L2-normalised or not): the exact embedding
/// route. Unavailable for bias-augmented projectors (`ISOCLIP_ERR_INVALID_ARGUMENT`).
pub const ISOCLIP_INPUT_EMBEDDINGS: isoclip_input_kind = 2;

/// Which output form: a value of `ISOCLIP_FORM_*`.
pub type isoclip_form = i32;
/// `m = r - k_top - k_bottom` columns (at most `d`) with exactly the inner products of the full
/// form. The default.
pub const ISOCLIP_FORM_COMPACT: isoclip_form = 1;
/// `d` columns: the paper's map `U_m U_m^T P`.
pub const ISOCLIP_FORM_FULL: isoclip_form = 2;

pub(crate) fn parse_modality(v: isoclip_modality) -> FfiResult<Option<Modality>> {
    match v {
        ISOCLIP_MODALITY_AUTO => Ok(None),
        ISOCLIP_MODALITY_IMAGE => Ok(Some(Modality::Image)),
        ISOCLIP_MODALITY_TEXT => Ok(Some(Modality::Text)),
        _ => Err(Failure::InvalidArgument(format!(
            "unknown modality {v} (expected ISOCLIP_MODALITY_AUTO, _IMAGE or _TEXT)"
        ))),
    }
}

/// A concrete modality: AUTO is not accepted where the call defines one side.
fn parse_side(v: isoclip_modality) -> FfiResult<Modality> {
    parse_modality(v)?.ok_or_else(|| {
        Failure::InvalidArgument(
            "this call needs ISOCLIP_MODALITY_IMAGE or ISOCLIP_MODALITY_TEXT, not AUTO".into(),
        )
    })
}

pub(crate) fn parse_input_kind(v: isoclip_input_kind) -> FfiResult<InputKind> {
    match v {
        ISOCLIP_INPUT_FEATURES => Ok(InputKind::Features),
        ISOCLIP_INPUT_EMBEDDINGS => Ok(InputKind::Embeddings),
        _ => Err(Failure::InvalidArgument(format!(
            "unknown input kind {v} (expected ISOCLIP_INPUT_FEATURES or ISOCLIP_INPUT_EMBEDDINGS)"
        ))),
    }
}

pub(crate) fn parse_form(v: isoclip_form) -> FfiResult<OutputForm> {
    match v {
        ISOCLIP_FORM_COMPACT => Ok(OutputForm::Compact),
        ISOCLIP_FORM_FULL => Ok(OutputForm::Full),
        _ => Err(Failure::InvalidArgument(format!(
            "unknown form {v} (expected ISOCLIP_FORM_COMPACT or ISOCLIP_FORM_FULL)"
        ))),
    }
}

/// An aligned projector: the IsoCLIP maps of one or both modalities of one model.
///
/// Created by `isoclip_projector_load` or `isoclip_projector_fit`, released by
/// `isoclip_projector_free`. Immutable: a `const isoclip_projector *` may be used from any number
/// of threads at once, by every function that takes one. Jobs keep their own reference, so a
/// projector may be freed while jobs created from it are still alive.
pub struct isoclip_projector {
    pub(crate) aligned: AlignedProjector,
    digest: OnceLock<String>,
    /// The maps prepared for each backend that projected with this projector.
    prepared: PreparedMaps,
}

impl isoclip_projector {
    fn new(aligned: AlignedProjector) -> Self {
        isoclip_projector {
            aligned,
            digest: OnceLock::new(),
            prepared: PreparedMaps::new(),
        }
    }

    /// The modality's maps; AUTO resolves to the projector's only modality.
    pub(crate) fn maps(&self, modality: Option<Modality>) -> FfiResult<&ModalityMaps> {
        let p = &self.aligned;
        if modality.is_none() && p.image.is_some() && p.text.is_some() {
            return Err(Failure::InvalidArgument(
                "the projector holds both image and text maps: choose one with \
                 ISOCLIP_MODALITY_IMAGE or ISOCLIP_MODALITY_TEXT instead of AUTO"
                    .into(),
            ));
        }
        Ok(p.only_modality(modality)?)
    }

    /// The map for a modality, input kind and form (the embedding route where it is not exact
    /// is `Error::InvalidArgument` with the reason).
    pub(crate) fn selected(
        &self,
        modality: Option<Modality>,
        kind: InputKind,
        form: OutputForm,
    ) -> FfiResult<(Modality, Arc<LinearMap>)> {
        let maps = self.maps(modality)?;
        Ok((maps.modality, maps.select(kind, form)?))
    }

    /// That map prepared for `backend`, shared by every call that uses both.
    pub(crate) fn prepared(
        &self,
        backend: &Arc<dyn Backend>,
        modality: Option<Modality>,
        kind: InputKind,
        form: OutputForm,
    ) -> FfiResult<Arc<PreparedMap>> {
        let maps = self.maps(modality)?;
        Ok(self.prepared.get(backend, maps, kind, form)?)
    }

    pub(crate) fn content_digest(&self) -> &str {
        self.digest
            .get_or_init(|| projector_file::content_digest(&self.aligned))
    }
}

/// Borrows a projector handle argument.
///
/// # Safety
/// `p` is NULL or a live handle from `isoclip_projector_load`/`_fit`.
pub(crate) unsafe fn projector_arg<'a>(
    p: *const isoclip_projector,
    name: &'static str,
) -> FfiResult<&'a isoclip_projector> {
    if p.is_null() {
        return Err(Failure::NullPointer(name));
    }
    // SAFETY: a live handle per the contract; handles are only read through shared references.
    Ok(unsafe { &*p })
}

/// A new reference to the projector behind a handle (for jobs, which outlive the call).
///
/// # Safety
/// `p` is a live handle (non-NULL).
pub(crate) unsafe fn projector_clone_arc(p: *const isoclip_projector) -> Arc<isoclip_projector> {
    // SAFETY: handles are `Arc::into_raw` pointers; the caller's reference stays alive across this
    // call, so the count is at least one when we add ours.
    unsafe {
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

fn into_handle(aligned: AlignedProjector) -> *const isoclip_projector {
    Arc::into_raw(Arc::new(isoclip_projector::new(aligned)))
}

/// Loads a projector file written by `isoclip fit` (or `isoclip_projector_save`).
///
/// `path` is a NUL-terminated path (bytes as they are, on Unix). The file is read whole and
/// verified (format version, shapes, checksum, finite values, compact/full consistency). On
/// success `*out` receives a new handle that the caller owns and must release with
/// `isoclip_projector_free`; on failure `*out` is not written.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER` (`path` or `out`), `ISOCLIP_ERR_IO` (cannot
/// read), `ISOCLIP_ERR_FORMAT` (not a projector file, corrupt), `ISOCLIP_ERR_UNSUPPORTED` (format
/// version), `ISOCLIP_ERR_PANIC`.
///
/// Thread-safety: any thread.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_load(
    path: *const c_char,
    out: *mut *const isoclip_projector,
) -> isoclip_status {
    guard("isoclip_projector_load", || {
        // SAFETY: per this function's contract.
        let path = unsafe { path_arg(path, "path") }?;
        require_out(out, "out")?;
        let aligned = projector_file::load(&path)?;
        // SAFETY: `out` is valid for a write per the contract.
        unsafe { write_out(out, "out", into_handle(aligned)) }
    })
}

/// Loads a projector file from a path or a URL (`s3://`, `gs://`, `az://`, `http(s)://`,
/// `file://`; see `isoclip_job_new`), with the verification of `isoclip_projector_load`. A
/// plain path is read exactly as `isoclip_projector_load` reads it. `storage_options` NULL means
/// none; otherwise the storage options of those job options are used
/// (`isoclip_job_options_add_storage_option`; the other job options are ignored). On success
/// `*out` receives a new handle the caller owns (`isoclip_projector_free`); on failure `*out` is
/// not written.
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_NULL_POINTER` (`location`, `out`);
/// `ISOCLIP_ERR_INVALID_ARGUMENT` (a malformed URL, named in the message; a scheme no store
/// supports); `ISOCLIP_ERR_IO` (cannot read: the message names the path or URL);
/// `ISOCLIP_ERR_FORMAT` (not a projector file, corrupt, no such object);
/// `ISOCLIP_ERR_UNSUPPORTED` (format version); `ISOCLIP_ERR_PANIC`.
///
/// Thread-safety: any thread; `storage_options` must not be changed during the call.
///
/// # Safety
/// `location` is NULL or a NUL-terminated string; `storage_options` is NULL or a live handle;
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_load_url(
    location: *const c_char,
    storage_options: *const isoclip_job_options,
    out: *mut *const isoclip_projector,
) -> isoclip_status {
    guard("isoclip_projector_load_url", || {
        // SAFETY: per this function's contract.
        let location = unsafe { location_arg(location, "location") }?;
        require_out(out, "out")?;
        // SAFETY: NULL or a live handle, only read, per the contract.
        let options = unsafe { storage_options.as_ref() }
            .map_or(&[][..], isoclip_job_options::storage_options);
        let aligned = storage::load_projector(&location, options)?;
        // SAFETY: `out` is valid for a write per the contract.
        unsafe { write_out(out, "out", into_handle(aligned)) }
    })
}

/// The name memory buffers go by in error messages.
const MEMORY_SOURCE: &str = "(projector in memory)";

/// Loads a projector from the bytes of a projector file already in memory (as
/// `isoclip_projector_load` does from a path): `data` holds `len` bytes, read during the call
/// only (the handle keeps a copy of what it needs). The same verification as a file; messages
/// call the buffer "(projector in memory)". On success `*out` receives a new handle the caller
/// owns (`isoclip_projector_free`); on failure `*out` is not written.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER` (`data` with `len > 0`, `out`),
/// `ISOCLIP_ERR_FORMAT` (not a projector file, corrupt, truncated, empty),
/// `ISOCLIP_ERR_UNSUPPORTED` (format version), `ISOCLIP_ERR_PANIC`. Thread-safety: any thread.
///
/// # Safety
/// `data` is readable for `len` bytes (any pointer when `len == 0`) and not modified during the
/// call; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_load_from_memory(
    data: *const std::ffi::c_void,
    len: usize,
    out: *mut *const isoclip_projector,
) -> isoclip_status {
    guard("isoclip_projector_load_from_memory", || {
        // SAFETY: per this function's contract.
        let bytes = unsafe { slice_arg(data.cast::<u8>(), len, "data") }?;
        require_out(out, "out")?;
        let aligned = projector_file::from_bytes(bytes, std::path::Path::new(MEMORY_SOURCE))?;
        // SAFETY: `out` is valid for a write per the contract.
        unsafe { write_out(out, "out", into_handle(aligned)) }
    })
}

/// Copies the linear map a projection applies, `y = x W + b` before normalisation, so that it can
/// be applied elsewhere (a FAISS `LinearTransform`, a GPU GEMM): `W` into `out`, row-major,
/// `rows x cols` floats, and `b` into `bias_out` (`cols` floats). `modality`, `input_kind` and
/// `form` select the map as the projection options do (`ISOCLIP_MODALITY_AUTO` allowed);
/// `rows` must be `isoclip_projector_input_dim` and `cols` `isoclip_projector_output_dim` for
/// them. `isoclip_project` with normalisation then divides `y` by its L2 norm (a zero `y` stays
/// zero).
///
/// `bias_out` may be NULL when the map has no bias (only bias-augmented projectors, on the
/// feature route, have one); when it is not NULL it receives the bias, or zeros when there is
/// none. The matrices are written only on success.
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_NULL_POINTER` (`projector`, `out`);
/// `ISOCLIP_ERR_INVALID_ARGUMENT` (an unknown value, AUTO with two modalities, a modality the
/// projector lacks, the embedding route of a bias-augmented projector, a NULL `bias_out` for a
/// map with a bias, a size overflow, a misaligned pointer); `ISOCLIP_ERR_SHAPE` (`rows` or
/// `cols` do not match the map; the message gives both); `ISOCLIP_ERR_PANIC`.
/// Thread-safety: any thread.
///
/// # Safety
/// `projector` is NULL or a live handle; `out` is NULL or valid for `rows * cols` floats;
/// `bias_out` is NULL or valid for `cols` floats; they do not overlap.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn isoclip_projector_matrix(
    projector: *const isoclip_projector,
    modality: isoclip_modality,
    input_kind: isoclip_input_kind,
    form: isoclip_form,
    out: *mut f32,
    rows: usize,
    cols: usize,
    bias_out: *mut f32,
) -> isoclip_status {
    guard("isoclip_projector_matrix", || {
        // SAFETY: per this function's contract.
        let p = unsafe { projector_arg(projector, "projector") }?;
        let (_, map) = p.selected(
            parse_modality(modality)?,
            parse_input_kind(input_kind)?,
            parse_form(form)?,
        )?;
        if (rows, cols) != (map.d_in(), map.d_out()) {
            return Err(Failure::Core(Error::Shape(format!(
                "the map is {} x {} (input x output) but the buffer is {rows} x {cols}",
                map.d_in(),
                map.d_out()
            ))));
        }
        if bias_out.is_null() && map.bias.is_some() {
            return Err(Failure::InvalidArgument(format!(
                "this map has a bias of {cols} values: pass `bias_out` to receive it"
            )));
        }
        let n = element_count(rows, cols, "rows x cols")?;
        // SAFETY: per this function's contract, `out` is valid for `n` floats.
        let weight = unsafe { slice_out_arg(out, n, "out") }?;
        let bias = if bias_out.is_null() {
            None
        } else {
            // SAFETY: per this function's contract, `bias_out` is valid for `cols` floats.
            Some(unsafe { slice_out_arg(bias_out, cols, "bias_out") }?)
        };
        weight.copy_from_slice(&map.weight.data);
        if let Some(bias) = bias {
            match &map.bias {
                Some(b) => bias.copy_from_slice(b),
                None => bias.fill(0.0),
            }
        }
        Ok(())
    })
}

/// Borrows a caller array of `len` elements for writing; `len == 0` is valid with any pointer.
///
/// # Safety
/// When `len > 0`, `p` is NULL or valid for `len` writes of `T`, used by nothing else during the
/// returned borrow.
unsafe fn slice_out_arg<'a, T>(
    p: *mut T,
    len: usize,
    name: &'static str,
) -> FfiResult<&'a mut [T]> {
    // SAFETY: the checks of `slice_arg` (NULL, alignment, size) apply; the contract adds that
    // the memory is writable and unaliased.
    let checked = unsafe { slice_arg(p.cast_const(), len, name) }?;
    if checked.is_empty() {
        return Ok(&mut []);
    }
    // SAFETY: as above: non-NULL, aligned, `len` elements, writable and unaliased.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// Writes the projector to a projector file (atomically: a temporary name, then a rename), which
/// `isoclip_projector_load` and the `isoclip` command line read back identically.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_IO`, `ISOCLIP_ERR_PANIC`.
/// Thread-safety: any thread; two threads must not write the same path at once.
///
/// # Safety
/// `projector` is NULL or a live handle; `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_save(
    projector: *const isoclip_projector,
    path: *const c_char,
) -> isoclip_status {
    guard("isoclip_projector_save", || {
        // SAFETY: per this function's contract.
        let p = unsafe { projector_arg(projector, "projector") }?;
        // SAFETY: per this function's contract.
        let path = unsafe { path_arg(path, "path") }?;
        Ok(projector_file::save(&p.aligned, &path)?)
    })
}

/// Releases a projector handle. NULL is a no-op. Each handle must be freed exactly once; jobs
/// created from it hold their own reference and stay valid.
///
/// Thread-safety: any thread, but no other call may be using this handle at the same time.
///
/// # Safety
/// `projector` is NULL or a live handle that is not used after this call.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_free(projector: *const isoclip_projector) {
    guard_infallible("isoclip_projector_free", (), || {
        if !projector.is_null() {
            // SAFETY: a live `Arc::into_raw` handle, released once per the contract.
            drop(unsafe { Arc::from_raw(projector) });
        }
    })
}

/// Options for `isoclip_projector_fit`: which modalities to fit with which band, and optional
/// biases. Created by `isoclip_fit_options_new`, released by `isoclip_fit_options_free`.
/// Not thread-safe: use one from one thread at a time (a fit only reads it).
pub struct isoclip_fit_options {
    bands: BTreeMap<Modality, BandSpec>,
    image_bias: Option<Vec<f64>>,
    text_bias: Option<Vec<f64>>,
}

/// Creates fit options with no band set (set at least one with `isoclip_fit_options_set_band`)
/// and no biases. `*out` receives a handle the caller owns (`isoclip_fit_options_free`).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_fit_options_new(
    out: *mut *mut isoclip_fit_options,
) -> isoclip_status {
    guard("isoclip_fit_options_new", || {
        require_out(out, "out")?;
        let o = Box::new(isoclip_fit_options {
            bands: BTreeMap::new(),
            image_bias: None,
            text_bias: None,
        });
        // SAFETY: `out` is valid for a write per the contract.
        unsafe { write_out(out, "out", Box::into_raw(o)) }
    })
}

/// Releases fit options. NULL is a no-op.
///
/// # Safety
/// `options` is NULL or a live handle from `isoclip_fit_options_new`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn isoclip_fit_options_free(options: *mut isoclip_fit_options) {
    guard_infallible("isoclip_fit_options_free", (), || {
        if !options.is_null() {
            // SAFETY: a live `Box::into_raw` handle, released once per the contract.
            drop(unsafe { Box::from_raw(options) });
        }
    })
}

/// # Safety
/// `o` is NULL or a live fit-options handle used by no other thread.
unsafe fn fit_options_mut<'a>(
    o: *mut isoclip_fit_options,
) -> FfiResult<&'a mut isoclip_fit_options> {
    if o.is_null() {
        return Err(Failure::NullPointer("options"));
    }
    // SAFETY: live and exclusively ours for this call per the contract.
    Ok(unsafe { &mut *o })
}

/// Fits `modality` (`ISOCLIP_MODALITY_IMAGE` or `_TEXT`) keeping the singular directions
/// `[k_top, r - k_bottom)` of Ψ; setting a modality again replaces its band. The band is checked
/// by the fit (`ISOCLIP_ERR_BAND` there when it keeps nothing, including sizes whose sum
/// overflows, or reaches zero singular values).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT` (modality),
/// `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_fit_options_set_band(
    options: *mut isoclip_fit_options,
    modality: isoclip_modality,
    k_top: usize,
    k_bottom: usize,
) -> isoclip_status {
    guard("isoclip_fit_options_set_band", || {
        // SAFETY: per this function's contract.
        let o = unsafe { fit_options_mut(options) }?;
        let m = parse_side(modality)?;
        o.bands.insert(m, BandSpec::new(k_top, k_bottom));
        Ok(())
    })
}

/// Sets the bias `b` of a modality's affine projector `e = x P + b` (`len` = the embedding
/// dimension `d`), making it bias-augmented. The values are copied. `len == 0` removes the bias
/// (`bias` is then ignored and may be NULL).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT`,
/// `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle; `bias` points to `len` doubles when `len > 0`.
#[no_mangle]
pub unsafe extern "C" fn isoclip_fit_options_set_bias(
    options: *mut isoclip_fit_options,
    modality: isoclip_modality,
    bias: *const f64,
    len: usize,
) -> isoclip_status {
    guard("isoclip_fit_options_set_bias", || {
        // SAFETY: per this function's contract.
        let o = unsafe { fit_options_mut(options) }?;
        let m = parse_side(modality)?;
        // SAFETY: per this function's contract.
        let values = unsafe { slice_arg(bias, len, "bias") }?;
        let v = (len > 0).then(|| values.to_vec());
        match m {
            Modality::Image => o.image_bias = v,
            Modality::Text => o.text_bias = v,
        }
        Ok(())
    })
}

/// Fits an aligned projector from the model's projector matrices, in "input x output"
/// orientation, row-major, f64: `image` is `image_rows x image_cols` (`d_i x d`, OpenAI's
/// `visual.proj`), `text` is `text_rows x text_cols` (`d_t x d`). The arrays are read during the
/// call only. The SVD runs in f64 and is deterministic: the same inputs give identical maps.
///
/// On success `*out` receives a new handle the caller owns (`isoclip_projector_free`).
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_NULL_POINTER` (a matrix pointer with a non-zero size,
/// `options`, `out`); `ISOCLIP_ERR_INVALID_ARGUMENT` (no band set, a size overflow, a misaligned
/// pointer); `ISOCLIP_ERR_SHAPE` (an empty matrix, output dimensions that differ, a bias of the
/// wrong length); `ISOCLIP_ERR_NON_FINITE`; `ISOCLIP_ERR_BAND` (a band that keeps nothing, band
/// sizes whose sum overflows, or a band reaching singular values of Ψ that are zero: the message
/// names the rank and the bands possible); `ISOCLIP_ERR_NUMERICAL` (all-zero weights, a largest
/// |weight| outside [2^-40, 2^40], an SVD that failed, maps that are not finite in f32);
/// `ISOCLIP_ERR_PANIC`.
///
/// Thread-safety: any thread; `options` must not be modified during the call.
///
/// # Safety
/// `image` and `text` point to `rows * cols` doubles each (any pointer when that is 0);
/// `options` is NULL or a live handle; `out` is NULL or valid for a write.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn isoclip_projector_fit(
    image: *const f64,
    image_rows: usize,
    image_cols: usize,
    text: *const f64,
    text_rows: usize,
    text_cols: usize,
    options: *const isoclip_fit_options,
    out: *mut *const isoclip_projector,
) -> isoclip_status {
    guard("isoclip_projector_fit", || {
        let n_image = element_count(image_rows, image_cols, "image")?;
        let n_text = element_count(text_rows, text_cols, "text")?;
        // SAFETY: per this function's contract.
        let image = unsafe { slice_arg(image, n_image, "image") }?;
        // SAFETY: per this function's contract.
        let text = unsafe { slice_arg(text, n_text, "text") }?;
        if options.is_null() {
            return Err(Failure::NullPointer("options"));
        }
        // SAFETY: a live handle, only read here, per the contract.
        let o = unsafe { &*options };
        require_out(out, "out")?;
        if o.bands.is_empty() {
            return Err(Failure::InvalidArgument(
                "no modality to fit: set a band with isoclip_fit_options_set_band".into(),
            ));
        }
        let weights = ProjectorWeights::new(
            (image_rows, image_cols, image.to_vec()),
            (text_rows, text_cols, text.to_vec()),
            o.image_bias.clone(),
            o.text_bias.clone(),
            "C API (isoclip_projector_fit)".into(),
        )?;
        let bands: Vec<(Modality, BandSpec)> = o.bands.iter().map(|(m, b)| (*m, *b)).collect();
        let aligned = fit(&weights, &bands, None)?;
        // SAFETY: `out` is valid for a write per the contract.
        unsafe { write_out(out, "out", into_handle(aligned)) }
    })
}

/// Sets `*out` to whether the projector holds maps for `modality` (`_IMAGE` or `_TEXT`).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT` (AUTO or an
/// unknown value), `ISOCLIP_ERR_PANIC`. Thread-safety: any thread.
///
/// # Safety
/// `projector` is NULL or a live handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_has_modality(
    projector: *const isoclip_projector,
    modality: isoclip_modality,
    out: *mut bool,
) -> isoclip_status {
    guard("isoclip_projector_has_modality", || {
        // SAFETY: per this function's contract.
        let p = unsafe { projector_arg(projector, "projector") }?;
        let m = parse_side(modality)?;
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", p.aligned.maps(m).is_some()) }
    })
}

/// Sets `*out` to the number of columns the input rows of `modality` must have for `input_kind`:
/// `d_in` (the pre-projection feature dimension) for `ISOCLIP_INPUT_FEATURES`, `d` for
/// `ISOCLIP_INPUT_EMBEDDINGS`.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT` (unknown
/// value; AUTO on a projector with both modalities; a modality the projector lacks; the
/// embedding route for a bias-augmented projector), `ISOCLIP_ERR_PANIC`.
/// Thread-safety: any thread.
///
/// # Safety
/// `projector` is NULL or a live handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_input_dim(
    projector: *const isoclip_projector,
    modality: isoclip_modality,
    input_kind: isoclip_input_kind,
    out: *mut usize,
) -> isoclip_status {
    guard("isoclip_projector_input_dim", || {
        // SAFETY: per this function's contract.
        let p = unsafe { projector_arg(projector, "projector") }?;
        let maps = p.maps(parse_modality(modality)?)?;
        let dim = match parse_input_kind(input_kind)? {
            InputKind::Features => maps.d_in,
            InputKind::Embeddings => match &maps.embedding_compact {
                Ok(_) => maps.d,
                Err(reason) => return Err(Failure::Core(Error::InvalidArgument(reason.clone()))),
            },
        };
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", dim) }
    })
}

/// Sets `*out` to the number of columns a projection of `modality` writes in `form`: the compact
/// dimension `min(m, d)` for `ISOCLIP_FORM_COMPACT`, `d` for `ISOCLIP_FORM_FULL`.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT` (as for
/// `isoclip_projector_input_dim`), `ISOCLIP_ERR_PANIC`. Thread-safety: any thread.
///
/// # Safety
/// `projector` is NULL or a live handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_output_dim(
    projector: *const isoclip_projector,
    modality: isoclip_modality,
    form: isoclip_form,
    out: *mut usize,
) -> isoclip_status {
    guard("isoclip_projector_output_dim", || {
        // SAFETY: per this function's contract.
        let p = unsafe { projector_arg(projector, "projector") }?;
        let maps = p.maps(parse_modality(modality)?)?;
        let dim = match parse_form(form)? {
            OutputForm::Compact => maps.compact_dim(),
            OutputForm::Full => maps.d,
        };
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", dim) }
    })
}

/// Sets `*k_top` and `*k_bottom` to the band of `modality`: the kept singular directions of Ψ are
/// `[k_top, r - k_bottom)`.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT`,
/// `ISOCLIP_ERR_PANIC`. Both out-parameters are written only on success.
/// Thread-safety: any thread.
///
/// # Safety
/// `projector` is NULL or a live handle; `k_top`, `k_bottom` are NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_band(
    projector: *const isoclip_projector,
    modality: isoclip_modality,
    k_top: *mut usize,
    k_bottom: *mut usize,
) -> isoclip_status {
    guard("isoclip_projector_band", || {
        // SAFETY: per this function's contract.
        let p = unsafe { projector_arg(projector, "projector") }?;
        require_out(k_top, "k_top")?;
        require_out(k_bottom, "k_bottom")?;
        let band = p.maps(parse_modality(modality)?)?.band;
        // SAFETY: both checked non-NULL above, valid per the contract.
        unsafe {
            write_out(k_top, "k_top", band.k_top)?;
            write_out(k_bottom, "k_bottom", band.k_bottom)
        }
    })
}

/// Sets `*out` to the model's embedding dimension `d` (the columns of a CLIP embedding).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`.
/// Thread-safety: any thread.
///
/// # Safety
/// `projector` is NULL or a live handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_embedding_dim(
    projector: *const isoclip_projector,
    out: *mut usize,
) -> isoclip_status {
    guard("isoclip_projector_embedding_dim", || {
        // SAFETY: per this function's contract.
        let p = unsafe { projector_arg(projector, "projector") }?;
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", p.aligned.d) }
    })
}

/// Copies the fingerprint of the model weights the projector was fitted from (64 lowercase hex
/// digits of a SHA-256 over shapes and values, independent of the file format; 65 bytes with the
/// NUL) into `buf`.
///
/// String convention of the whole API: `buf` must be valid for `buf_len` bytes (any pointer when
/// `buf_len == 0`); `*out_len`, if `out_len` is not NULL, receives the size needed including the
/// NUL, so `buf_len == 0` queries it. Returns `ISOCLIP_OK`; `ISOCLIP_ERR_BUFFER_TOO_SMALL` (a
/// NUL-terminated prefix is copied when `buf_len > 0`); `ISOCLIP_ERR_NULL_POINTER`
/// (`projector`, or `buf` with `buf_len > 0`); `ISOCLIP_ERR_PANIC`. Thread-safety: any thread.
///
/// # Safety
/// `projector` is NULL or a live handle; `buf` is valid for `buf_len` bytes; `out_len` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_fingerprint(
    projector: *const isoclip_projector,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> isoclip_status {
    guard("isoclip_projector_fingerprint", || {
        // SAFETY: per this function's contract.
        let p = unsafe { projector_arg(projector, "projector") }?;
        // SAFETY: per this function's contract.
        unsafe { copy_string_out(&p.aligned.fingerprint, "fingerprint", buf, buf_len, out_len) }
    })
}

/// Copies the projector's content digest (64 hex digits: SHA-256 over every map and every metadata
/// entry but the tool version, so it changes with the band; output manifests of jobs record it)
/// into `buf`, with the string convention of
/// `isoclip_projector_fingerprint` and the same statuses.
///
/// # Safety
/// As for `isoclip_projector_fingerprint`.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projector_content_digest(
    projector: *const isoclip_projector,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> isoclip_status {
    guard("isoclip_projector_content_digest", || {
        // SAFETY: per this function's contract.
        let p = unsafe { projector_arg(projector, "projector") }?;
        // SAFETY: per this function's contract.
        unsafe { copy_string_out(p.content_digest(), "content digest", buf, buf_len, out_len) }
    })
}
