//! Backends, projection options and the projection of caller buffers.

use std::ffi::c_char;
use std::sync::{Arc, OnceLock};

use super::projector::{
    isoclip_form, isoclip_input_kind, isoclip_modality, isoclip_projector, parse_form,
    parse_input_kind, parse_modality, projector_arg,
};
use super::status::isoclip_status;
use super::status::{
    copy_string_out, guard, guard_infallible, require_out, set_option, write_out, Failure,
    FfiResult,
};
use crate::align::Modality;
use crate::backend::cpu::{CpuBackend, MAX_THREADS};
use crate::backend::{
    select_backend, Backend, DeviceChoice, ElemType, InputKind, NonFinitePolicy, OutputForm,
    ProjectionOptions, RowsIn, RowsOut,
};

/// Element type of a buffer: a value of `ISOCLIP_DTYPE_*`. Little-endian, as the host stores it.
pub type isoclip_dtype = i32;
/// IEEE 754 half precision, passed as `uint16_t` bit patterns.
pub const ISOCLIP_DTYPE_F16: isoclip_dtype = 1;
/// IEEE 754 single precision (`float`).
pub const ISOCLIP_DTYPE_F32: isoclip_dtype = 2;

/// What to do with an input row holding NaN or Inf, or a finite row whose result the output type
/// cannot hold: a value of `ISOCLIP_NONFINITE_*`.
pub type isoclip_nonfinite = i32;
/// Fail with `ISOCLIP_ERR_NON_FINITE_ROW` (or `ISOCLIP_ERR_UNREPRESENTABLE`) naming the lowest
/// such row. The default.
pub const ISOCLIP_NONFINITE_ERROR: isoclip_nonfinite = 1;
/// Write a zero row and count it in `isoclip_projection_stats.nonfinite_rows`.
pub const ISOCLIP_NONFINITE_ZERO: isoclip_nonfinite = 2;

/// Where projections run: a value of `ISOCLIP_DEVICE_*`.
pub type isoclip_device = i32;
/// The GPU when one is usable, otherwise the CPU.
pub const ISOCLIP_DEVICE_AUTO: isoclip_device = 0;
/// The CPU (every core, or the threads set with `isoclip_backend_options_set_threads`). The
/// default, and always available.
pub const ISOCLIP_DEVICE_CPU: isoclip_device = 1;
/// A CUDA GPU, or `ISOCLIP_ERR_DEVICE_UNAVAILABLE` saying why not.
pub const ISOCLIP_DEVICE_CUDA: isoclip_device = 2;

pub(crate) fn parse_dtype(v: isoclip_dtype, which: &str) -> FfiResult<ElemType> {
    match v {
        ISOCLIP_DTYPE_F16 => Ok(ElemType::F16),
        ISOCLIP_DTYPE_F32 => Ok(ElemType::F32),
        _ => Err(Failure::InvalidArgument(format!(
            "unknown {which} dtype {v} (expected ISOCLIP_DTYPE_F16 or ISOCLIP_DTYPE_F32)"
        ))),
    }
}

fn parse_nonfinite(v: isoclip_nonfinite) -> FfiResult<NonFinitePolicy> {
    match v {
        ISOCLIP_NONFINITE_ERROR => Ok(NonFinitePolicy::Error),
        ISOCLIP_NONFINITE_ZERO => Ok(NonFinitePolicy::Zero),
        _ => Err(Failure::InvalidArgument(format!(
            "unknown non-finite policy {v} (expected ISOCLIP_NONFINITE_ERROR or _ZERO)"
        ))),
    }
}

/// A device that runs projections, with its resources (a CPU thread pool; a GPU context).
///
/// Created by `isoclip_backend_new`, released by `isoclip_backend_free`. A `const
/// isoclip_backend *` may be used by any number of threads at once; jobs keep their own
/// reference, so a backend may be freed while jobs created with it are alive. Passing NULL where a
/// backend is expected uses a shared CPU backend over every core.
pub struct isoclip_backend {
    backend: Box<dyn Backend>,
    device: isoclip_device,
}

impl isoclip_backend {
    pub(crate) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
}

/// The backend NULL stands for: the CPU over rayon's global pool, created on first use.
pub(crate) fn default_backend() -> FfiResult<Arc<isoclip_backend>> {
    static DEFAULT: OnceLock<Arc<isoclip_backend>> = OnceLock::new();
    if let Some(b) = DEFAULT.get() {
        return Ok(b.clone());
    }
    let b = Arc::new(isoclip_backend {
        backend: Box::new(CpuBackend::new(None)?),
        device: ISOCLIP_DEVICE_CPU,
    });
    Ok(DEFAULT.get_or_init(|| b).clone())
}

/// The backend behind a handle argument, or the default for NULL, as a new reference.
///
/// # Safety
/// `b` is NULL or a live backend handle.
pub(crate) unsafe fn backend_arg(b: *const isoclip_backend) -> FfiResult<Arc<isoclip_backend>> {
    if b.is_null() {
        return default_backend();
    }
    // SAFETY: handles are `Arc::into_raw` pointers and the caller's reference is alive during the
    // call, so adding one of ours is sound.
    unsafe {
        Arc::increment_strong_count(b);
        Ok(Arc::from_raw(b))
    }
}

/// Options for `isoclip_backend_new`. Created by `isoclip_backend_options_new` (device
/// `ISOCLIP_DEVICE_CPU`, every core), released by `isoclip_backend_options_free`. Not
/// thread-safe: one thread at a time.
pub struct isoclip_backend_options {
    device: isoclip_device,
    threads: usize,
}

/// Creates backend options with the defaults. `*out` receives a handle the caller owns.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_backend_options_new(
    out: *mut *mut isoclip_backend_options,
) -> isoclip_status {
    guard("isoclip_backend_options_new", || {
        require_out(out, "out")?;
        let o = Box::new(isoclip_backend_options {
            device: ISOCLIP_DEVICE_CPU,
            threads: 0,
        });
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", Box::into_raw(o)) }
    })
}

/// Releases backend options. NULL is a no-op.
///
/// # Safety
/// `options` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn isoclip_backend_options_free(options: *mut isoclip_backend_options) {
    guard_infallible("isoclip_backend_options_free", (), || {
        if !options.is_null() {
            // SAFETY: a live `Box::into_raw` handle, released once per the contract.
            drop(unsafe { Box::from_raw(options) });
        }
    })
}

/// # Safety
/// `o` is NULL or a live handle used by no other thread.
unsafe fn backend_options_mut<'a>(
    o: *mut isoclip_backend_options,
) -> FfiResult<&'a mut isoclip_backend_options> {
    if o.is_null() {
        return Err(Failure::NullPointer("options"));
    }
    // SAFETY: live and exclusively ours for this call per the contract.
    Ok(unsafe { &mut *o })
}

/// Chooses the device (`ISOCLIP_DEVICE_AUTO`, `_CPU` or `_CUDA`).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT` (unknown
/// value), `ISOCLIP_ERR_PANIC`. Availability is checked by `isoclip_backend_new`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_backend_options_set_device(
    options: *mut isoclip_backend_options,
    device: isoclip_device,
) -> isoclip_status {
    guard("isoclip_backend_options_set_device", || {
        // SAFETY: per this function's contract.
        let o = unsafe { backend_options_mut(options) }?;
        if !matches!(
            device,
            ISOCLIP_DEVICE_AUTO | ISOCLIP_DEVICE_CPU | ISOCLIP_DEVICE_CUDA
        ) {
            return Err(Failure::InvalidArgument(format!(
                "unknown device {device} (expected ISOCLIP_DEVICE_AUTO, _CPU or _CUDA)"
            )));
        }
        o.device = device;
        Ok(())
    })
}

/// Sets the number of CPU worker threads (0, the default: every core, shared with other
/// backends created with 0). A non-zero count gives the backend its own thread pool; at most
/// 1024 threads.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT` (more than
/// 1024 threads; the options keep their previous count), `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_backend_options_set_threads(
    options: *mut isoclip_backend_options,
    threads: usize,
) -> isoclip_status {
    guard("isoclip_backend_options_set_threads", || {
        // SAFETY: per this function's contract.
        let o = unsafe { backend_options_mut(options) }?;
        if threads > MAX_THREADS {
            return Err(Failure::InvalidArgument(format!(
                "{threads} threads requested; at most {MAX_THREADS} are allowed (0 uses every core)"
            )));
        }
        o.threads = threads;
        Ok(())
    })
}

/// Opens the backend for a device. Returns the backend and the device it actually runs on.
fn open_backend(
    device: isoclip_device,
    threads: Option<usize>,
) -> FfiResult<(Box<dyn Backend>, isoclip_device)> {
    let choice = match device {
        ISOCLIP_DEVICE_AUTO => DeviceChoice::Auto,
        ISOCLIP_DEVICE_CPU => DeviceChoice::Cpu,
        ISOCLIP_DEVICE_CUDA => DeviceChoice::Cuda,
        other => return Err(Failure::InvalidArgument(format!("unknown device {other}"))),
    };
    let (backend, fallback_notice) = select_backend(choice, threads)?;
    let resolved = match choice {
        DeviceChoice::Cpu => ISOCLIP_DEVICE_CPU,
        DeviceChoice::Cuda => ISOCLIP_DEVICE_CUDA,
        // `select_backend` explains a fall back to the CPU with a notice, and only then.
        DeviceChoice::Auto if fallback_notice.is_some() => ISOCLIP_DEVICE_CPU,
        DeviceChoice::Auto => ISOCLIP_DEVICE_CUDA,
    };
    Ok((backend, resolved))
}

/// Opens a backend. `options` may be NULL (the defaults: the CPU, every core). On success `*out`
/// receives a new handle the caller owns (`isoclip_backend_free`). With `ISOCLIP_DEVICE_AUTO` the
/// backend falls back to the CPU when no GPU is usable; `isoclip_backend_device` says which.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER` (`out`), `ISOCLIP_ERR_DEVICE_UNAVAILABLE`
/// (`ISOCLIP_DEVICE_CUDA` without a usable GPU; the message says why),
/// `ISOCLIP_ERR_RESOURCE_EXHAUSTED` (the system refused to start the threads; the message says
/// why), `ISOCLIP_ERR_PANIC`.
/// Thread-safety: any thread.
///
/// # Safety
/// `options` is NULL or a live handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_backend_new(
    options: *const isoclip_backend_options,
    out: *mut *const isoclip_backend,
) -> isoclip_status {
    guard("isoclip_backend_new", || {
        require_out(out, "out")?;
        let (device, threads) = if options.is_null() {
            (ISOCLIP_DEVICE_CPU, 0)
        } else {
            // SAFETY: a live handle, only read, per the contract.
            let o = unsafe { &*options };
            (o.device, o.threads)
        };
        let (backend, device) = open_backend(device, (threads > 0).then_some(threads))?;
        let b = Arc::new(isoclip_backend { backend, device });
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", Arc::into_raw(b)) }
    })
}

/// Releases a backend handle. NULL is a no-op. Jobs created with it keep it alive until they are
/// freed.
///
/// # Safety
/// `backend` is NULL or a live handle, not used afterwards by the caller.
#[no_mangle]
pub unsafe extern "C" fn isoclip_backend_free(backend: *const isoclip_backend) {
    guard_infallible("isoclip_backend_free", (), || {
        if !backend.is_null() {
            // SAFETY: a live `Arc::into_raw` handle, released once per the contract.
            drop(unsafe { Arc::from_raw(backend) });
        }
    })
}

/// Sets `*out` to the device the backend runs on: `ISOCLIP_DEVICE_CPU` or `ISOCLIP_DEVICE_CUDA`
/// (never AUTO). NULL `backend` is the default CPU backend.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER` (`out`), `ISOCLIP_ERR_PANIC`.
/// Thread-safety: any thread.
///
/// # Safety
/// `backend` is NULL or a live handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_backend_device(
    backend: *const isoclip_backend,
    out: *mut isoclip_device,
) -> isoclip_status {
    guard("isoclip_backend_device", || {
        // SAFETY: per this function's contract.
        let b = unsafe { backend_arg(backend) }?;
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", b.device) }
    })
}

/// Copies a one-line description of the backend (`"cpu (8 threads, AVX2)"`) into `buf`, with the
/// string convention of `isoclip_projector_fingerprint`. NULL `backend` describes the default.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_BUFFER_TOO_SMALL`, `ISOCLIP_ERR_NULL_POINTER`,
/// `ISOCLIP_ERR_PANIC`. Thread-safety: any thread.
///
/// # Safety
/// `backend` is NULL or a live handle; `buf` is valid for `buf_len` bytes; `out_len` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_backend_describe(
    backend: *const isoclip_backend,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> isoclip_status {
    guard("isoclip_backend_describe", || {
        // SAFETY: per this function's contract.
        let b = unsafe { backend_arg(backend) }?;
        let text = b.backend.describe();
        // SAFETY: per this function's contract.
        unsafe { copy_string_out(&text, "description", buf, buf_len, out_len) }
    })
}

/// How rows are projected. Created by `isoclip_projection_options_new`, released by
/// `isoclip_projection_options_free`. Setters must not run concurrently with any use of the same
/// options; a `const isoclip_projection_options *` that nobody modifies may be shared by threads.
///
/// Defaults: `ISOCLIP_MODALITY_AUTO`, `ISOCLIP_INPUT_FEATURES`, `ISOCLIP_FORM_COMPACT`, normalise,
/// `ISOCLIP_NONFINITE_ERROR` (the defaults of `isoclip project`).
#[derive(Clone, Copy, Debug)]
pub struct isoclip_projection_options {
    pub(crate) modality: Option<Modality>,
    pub(crate) input_kind: InputKind,
    pub(crate) form: OutputForm,
    pub(crate) normalize: bool,
    pub(crate) nonfinite: NonFinitePolicy,
}

impl Default for isoclip_projection_options {
    fn default() -> Self {
        let d = ProjectionOptions::default();
        isoclip_projection_options {
            modality: None,
            input_kind: d.input_kind,
            form: d.form,
            normalize: d.normalize,
            nonfinite: d.nonfinite,
        }
    }
}

impl isoclip_projection_options {
    pub(crate) fn with_output(&self, output: ElemType) -> ProjectionOptions {
        ProjectionOptions {
            input_kind: self.input_kind,
            form: self.form,
            output,
            normalize: self.normalize,
            nonfinite: self.nonfinite,
        }
    }
}

/// Reads a projection-options argument; NULL means the defaults.
///
/// # Safety
/// `o` is NULL or a live handle not being modified.
pub(crate) unsafe fn projection_options_arg(
    o: *const isoclip_projection_options,
) -> isoclip_projection_options {
    if o.is_null() {
        isoclip_projection_options::default()
    } else {
        // SAFETY: live and not modified during the call per the contract.
        unsafe { *o }
    }
}

/// Creates projection options with the defaults. `*out` receives a handle the caller owns.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projection_options_new(
    out: *mut *mut isoclip_projection_options,
) -> isoclip_status {
    guard("isoclip_projection_options_new", || {
        require_out(out, "out")?;
        let o = Box::new(isoclip_projection_options::default());
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", Box::into_raw(o)) }
    })
}

/// Releases projection options. NULL is a no-op.
///
/// # Safety
/// `options` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projection_options_free(options: *mut isoclip_projection_options) {
    guard_infallible("isoclip_projection_options_free", (), || {
        if !options.is_null() {
            // SAFETY: a live `Box::into_raw` handle, released once per the contract.
            drop(unsafe { Box::from_raw(options) });
        }
    })
}

/// Chooses the modality (`ISOCLIP_MODALITY_AUTO`: the projector's only one).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT` (unknown
/// value), `ISOCLIP_ERR_PANIC`. Whether the projector has it is checked when projecting.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projection_options_set_modality(
    options: *mut isoclip_projection_options,
    modality: isoclip_modality,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_projection_options_set_modality", options, |o| {
            o.modality = parse_modality(modality)?;
            Ok(())
        })
    }
}

/// Chooses what the input rows are (`ISOCLIP_INPUT_FEATURES` or `ISOCLIP_INPUT_EMBEDDINGS`).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT`,
/// `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projection_options_set_input_kind(
    options: *mut isoclip_projection_options,
    input_kind: isoclip_input_kind,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_projection_options_set_input_kind", options, |o| {
            o.input_kind = parse_input_kind(input_kind)?;
            Ok(())
        })
    }
}

/// Chooses the output form (`ISOCLIP_FORM_COMPACT` or `ISOCLIP_FORM_FULL`).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT`,
/// `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projection_options_set_form(
    options: *mut isoclip_projection_options,
    form: isoclip_form,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_projection_options_set_form", options, |o| {
            o.form = parse_form(form)?;
            Ok(())
        })
    }
}

/// Whether output rows are L2-normalised (default true). A row whose projection is zero is
/// written as zeros either way and counted in `isoclip_projection_stats.zero_norm_rows`.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projection_options_set_normalize(
    options: *mut isoclip_projection_options,
    normalize: bool,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_projection_options_set_normalize", options, |o| {
            o.normalize = normalize;
            Ok(())
        })
    }
}

/// Chooses what happens to input rows with NaN or Inf (`ISOCLIP_NONFINITE_ERROR` or `_ZERO`).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT`,
/// `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projection_options_set_nonfinite(
    options: *mut isoclip_projection_options,
    nonfinite: isoclip_nonfinite,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_projection_options_set_nonfinite", options, |o| {
            o.nonfinite = parse_nonfinite(nonfinite)?;
            Ok(())
        })
    }
}

/// Counts from one `isoclip_project` call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct isoclip_projection_stats {
    /// Rows whose projection had zero norm (written as zeros).
    pub zero_norm_rows: u64,
    /// Rows written as zeros under `ISOCLIP_NONFINITE_ZERO`: input rows with NaN or Inf, and
    /// finite rows whose result the output type cannot hold.
    pub nonfinite_rows: u64,
}

/// The bytes a strided view spans, or an error.
fn view_bytes(
    rows: usize,
    cols: usize,
    row_stride: usize,
    elem: ElemType,
    what: &str,
) -> FfiResult<usize> {
    if rows == 0 {
        return Ok(0);
    }
    let row_bytes = cols
        .checked_mul(elem.size())
        .ok_or_else(|| Failure::InvalidArgument(format!("{what}: {cols} columns overflow")))?;
    if row_stride < row_bytes {
        return Err(Failure::InvalidArgument(format!(
            "{what} row stride {row_stride} bytes is smaller than a row ({cols} x {} = \
             {row_bytes} bytes)",
            elem.name()
        )));
    }
    (rows - 1)
        .checked_mul(row_stride)
        .and_then(|v| v.checked_add(row_bytes))
        .filter(|&v| v <= isize::MAX as usize)
        .ok_or_else(|| {
            Failure::InvalidArgument(format!(
                "{what}: {rows} rows with a stride of {row_stride} bytes do not fit in memory"
            ))
        })
}

/// Projects `rows` rows through the projector into the caller's output buffer, on `backend`.
///
/// Input: row `i` starts at byte `i * input_row_stride` of `input` and holds `input_cols`
/// elements of `input_dtype` (`input_cols` must equal `isoclip_projector_input_dim` for the
/// options' modality and input kind). Output: row `i` starts at byte `i * output_row_stride` of
/// `output` and receives `output_cols` elements of `output_dtype` (`output_cols` must equal
/// `isoclip_projector_output_dim` for the options' form); bytes between rows are not touched.
/// Strides are in bytes, at least a row, and need no alignment. `rows == 0` is valid with any
/// pointers. `options` NULL means the defaults; `backend` NULL the shared CPU backend. If `stats`
/// is not NULL it receives the counts on success.
///
/// Results are deterministic: the same rows give the same bytes whatever the thread count or the
/// number of concurrent callers (on the CPU backend, whatever the batch split too, for batches
/// split at multiples of 128 rows).
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_NULL_POINTER` (`projector`; `input` or `output` with
/// `rows > 0`); `ISOCLIP_ERR_INVALID_ARGUMENT` (unknown dtype, a stride smaller than a row, sizes
/// that overflow, overlapping input and output, a modality the projector lacks or AUTO on one with
/// both, the embedding route of a bias-augmented projector); `ISOCLIP_ERR_SHAPE` (`input_cols` or
/// `output_cols` do not match the projector); `ISOCLIP_ERR_NON_FINITE_ROW` (the message names
/// the row); `ISOCLIP_ERR_UNREPRESENTABLE` (a finite row whose unnormalised result does not fit
/// the output type; the message names the row); `ISOCLIP_ERR_RESOURCE_EXHAUSTED` (working memory
/// could not be allocated); `ISOCLIP_ERR_DEVICE_UNAVAILABLE` (the GPU failed); `ISOCLIP_ERR_PANIC`. On failure
/// the output buffer's content is unspecified and `stats` is not written.
///
/// Thread-safety: any number of threads may project at once with the same projector, backend
/// and options, each into its own output buffer.
///
/// # Safety
/// `projector` is NULL or a live handle; `backend`, `options` NULL or live handles; `input` is
/// readable and `output` writable for the bytes the views span (`(rows - 1) * stride + cols *
/// element size`) and they do not overlap; `stats` is NULL or valid for a write.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn isoclip_project(
    projector: *const isoclip_projector,
    backend: *const isoclip_backend,
    options: *const isoclip_projection_options,
    rows: usize,
    input: *const std::ffi::c_void,
    input_dtype: isoclip_dtype,
    input_cols: usize,
    input_row_stride: usize,
    output: *mut std::ffi::c_void,
    output_dtype: isoclip_dtype,
    output_cols: usize,
    output_row_stride: usize,
    stats: *mut isoclip_projection_stats,
) -> isoclip_status {
    guard("isoclip_project", || {
        // SAFETY: per this function's contract.
        let p: &isoclip_projector = unsafe { projector_arg(projector, "projector") }?;
        // SAFETY: per this function's contract.
        let b = unsafe { backend_arg(backend) }?;
        // SAFETY: per this function's contract.
        let o = unsafe { projection_options_arg(options) };
        let in_elem = parse_dtype(input_dtype, "input")?;
        let out_elem = parse_dtype(output_dtype, "output")?;
        let (_, map) = p.prepared(o.modality, o.input_kind, o.form)?;
        let in_len = view_bytes(rows, input_cols, input_row_stride, in_elem, "input")?;
        let out_len = view_bytes(rows, output_cols, output_row_stride, out_elem, "output")?;
        let (in_bytes, out_bytes): (&[u8], &mut [u8]) = if rows == 0 {
            (&[], &mut [])
        } else {
            if input.is_null() {
                return Err(Failure::NullPointer("input"));
            }
            if output.is_null() {
                return Err(Failure::NullPointer("output"));
            }
            let (a, b) = (input as usize, output as usize);
            if a < b.saturating_add(out_len) && b < a.saturating_add(in_len) {
                return Err(Failure::InvalidArgument(
                    "the input and output buffers overlap; project into a separate buffer".into(),
                ));
            }
            // SAFETY: non-NULL, spanning `in_len`/`out_len` bytes that the caller keeps valid for
            // the call, and disjoint (checked above), so a shared and a mutable borrow coexist.
            unsafe {
                (
                    std::slice::from_raw_parts(input.cast::<u8>(), in_len),
                    std::slice::from_raw_parts_mut(output.cast::<u8>(), out_len),
                )
            }
        };
        let input = RowsIn {
            bytes: in_bytes,
            rows,
            cols: input_cols,
            row_stride: input_row_stride,
            elem: in_elem,
        };
        let output = RowsOut {
            bytes: out_bytes,
            rows,
            cols: output_cols,
            row_stride: output_row_stride,
            elem: out_elem,
        };
        let counts = b
            .backend()
            .project(&map, &o.with_output(out_elem), input, output)?;
        if !stats.is_null() {
            // SAFETY: non-NULL and valid for a write per the contract.
            unsafe {
                stats.write(isoclip_projection_stats {
                    zero_norm_rows: counts.zero_norm_rows,
                    nonfinite_rows: counts.nonfinite_rows,
                })
            };
        }
        Ok(())
    })
}
