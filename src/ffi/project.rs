//! Backends, projection options and the projection of caller buffers.

use std::ffi::c_char;
use std::mem::offset_of;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

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
    select_backend, view_span, Backend, BlockStats, DeviceChoice, ElemType, InputKind,
    NonFinitePolicy, OutputForm, Precision, PreparedMap, ProjectionOptions, RowsIn, RowsOut,
};
use crate::error::Error;

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

/// The arithmetic of a projection's GEMM: a value of `ISOCLIP_PRECISION_*`.
pub type isoclip_precision = i32;
/// f32 inputs, weights and sums: the reference path, on every backend. The default.
pub const ISOCLIP_PRECISION_F32: isoclip_precision = 1;
/// Inputs and weights rounded to bf16 (8 significant bits), f32 sums: the CPU backend's AVX-512
/// BF16 kernel, about twice the f32 rate; normalised outputs move by up to about 1e-3. Only a
/// CPU backend on a CPU with AVX-512 BF16 computes it: on another CPU a projection (or a job
/// run) fails with `ISOCLIP_ERR_DEVICE_UNAVAILABLE`, on a CUDA backend with
/// `ISOCLIP_ERR_INVALID_ARGUMENT`. It is never emulated, and never silently computed in another
/// precision.
pub const ISOCLIP_PRECISION_BF16: isoclip_precision = 2;

/// Where projections run: a value of `ISOCLIP_DEVICE_*`.
pub type isoclip_device = i32;
/// The GPU when one is usable, otherwise the CPU.
pub const ISOCLIP_DEVICE_AUTO: isoclip_device = 0;
/// The CPU (every core, or the threads set with `isoclip_backend_options_set_threads`). The
/// default, and always available.
pub const ISOCLIP_DEVICE_CPU: isoclip_device = 1;
/// A CUDA GPU, or `ISOCLIP_ERR_DEVICE_UNAVAILABLE` saying why not.
pub const ISOCLIP_DEVICE_CUDA: isoclip_device = 2;

/// The device index that lets the backend use every device of its kind (every visible GPU; the
/// CPU). The default of `isoclip_backend_options_set_device_index`.
pub const ISOCLIP_DEVICE_INDEX_ALL: i32 = -1;

pub(crate) fn parse_dtype(v: isoclip_dtype, which: &str) -> FfiResult<ElemType> {
    match v {
        ISOCLIP_DTYPE_F16 => Ok(ElemType::F16),
        ISOCLIP_DTYPE_F32 => Ok(ElemType::F32),
        _ => Err(Failure::InvalidArgument(format!(
            "unknown {which} dtype {v} (expected ISOCLIP_DTYPE_F16 or ISOCLIP_DTYPE_F32)"
        ))),
    }
}

pub(crate) fn parse_precision(v: isoclip_precision) -> FfiResult<Precision> {
    match v {
        ISOCLIP_PRECISION_F32 => Ok(Precision::F32),
        ISOCLIP_PRECISION_BF16 => Ok(Precision::Bf16),
        _ => Err(Failure::InvalidArgument(format!(
            "unknown precision {v} (expected ISOCLIP_PRECISION_F32 or ISOCLIP_PRECISION_BF16)"
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
/// backend is expected uses the default backend: the CPU, one thread per available core (see
/// `isoclip_set_default_threads`), created on first use, and created anew in the child of a
/// `fork` (a backend handle made before a `fork` must not be used in the child).
pub struct isoclip_backend {
    backend: Arc<dyn Backend>,
    device: isoclip_device,
}

impl isoclip_backend {
    pub(crate) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
    /// The backend as a shared reference (what prepared maps are cached for).
    pub(crate) fn shared(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
}

/// The default backend (what a NULL backend stands for) of the current process, with the fork
/// generation it was made in.
struct DefaultBackend {
    generation: u64,
    backend: Arc<isoclip_backend>,
    /// The entry this one replaced in a forked child (NULL for the first): kept reachable, never
    /// freed, see [`DEFAULT_BACKEND`]. Never read: it only keeps the old entry reachable.
    #[allow(dead_code)]
    superseded: *mut DefaultBackend,
}

/// The default backend, created on first use; NULL before. A backend made before a `fork` is
/// never freed (its pool's threads do not exist in the child, so it cannot be shut down there):
/// the child makes a fresh one, which links to the old one so that it stays reachable.
static DEFAULT_BACKEND: AtomicPtr<DefaultBackend> = AtomicPtr::new(std::ptr::null_mut());
/// Incremented in the child of every `fork` (async-signal-safe: one atomic add).
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
/// Threads of the default backend (`isoclip_set_default_threads`); 0: one per available core.
static DEFAULT_THREADS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn mark_default_backend_stale_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Registers the `fork` child handler, once per process.
fn register_fork_handler() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: the handler only performs an atomic add, which is async-signal-safe, and it
        // stays valid for the life of the process (a static function).
        unsafe { libc::pthread_atfork(None, None, Some(mark_default_backend_stale_in_child)) };
    });
}

/// The default backend of this process, if it was created since the last `fork`.
fn current_default_backend() -> Option<Arc<isoclip_backend>> {
    let entry = DEFAULT_BACKEND.load(Ordering::Acquire);
    // SAFETY: entries are leaked boxes, never freed once published (see DEFAULT_BACKEND).
    let entry = unsafe { entry.as_ref() }?;
    (entry.generation == FORK_GENERATION.load(Ordering::Acquire)).then(|| entry.backend.clone())
}

/// The number of threads the default backend gets.
fn default_thread_count() -> usize {
    match DEFAULT_THREADS.load(Ordering::Acquire) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The backend NULL stands for: the CPU on a thread pool of its own (not rayon's global pool,
/// whose threads a forked child lacks), created on first use and again in a forked child.
pub(crate) fn default_backend() -> FfiResult<Arc<isoclip_backend>> {
    register_fork_handler();
    loop {
        if let Some(b) = current_default_backend() {
            return Ok(b);
        }
        let seen = DEFAULT_BACKEND.load(Ordering::Acquire);
        let generation = FORK_GENERATION.load(Ordering::Acquire);
        let fresh = Box::into_raw(Box::new(DefaultBackend {
            generation,
            backend: Arc::new(isoclip_backend {
                backend: Arc::new(CpuBackend::new(Some(default_thread_count()))?),
                device: ISOCLIP_DEVICE_CPU,
            }),
            superseded: seen,
        }));
        match DEFAULT_BACKEND.compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // The entry replaced (from before a fork, or NULL) is left allocated on purpose.
            Ok(_) => {}
            // SAFETY: `fresh` was never published; another thread installed its own first.
            // Dropping it leaves `superseded`, a raw pointer, alone.
            Err(_) => drop(unsafe { Box::from_raw(fresh) }),
        }
    }
}

/// Sets the number of threads of the default backend (the one a NULL backend stands for) to
/// `threads`, or back to one per available core with 0 (the default: the cores this process may
/// run on, `sched_getaffinity` and cgroup quotas included). `RAYON_NUM_THREADS` does not size it,
/// and `OMP_NUM_THREADS` does not either: a program that also runs OpenMP code (FAISS) should
/// size both so that they do not oversubscribe the cores.
///
/// Call it before the first call that uses the default backend; in the child of a `fork`, the
/// default backend is made anew and this may be called again before its first use.
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_INVALID_STATE` (the default backend already exists in this
/// process); `ISOCLIP_ERR_PANIC`. Thread-safety: any thread, but not concurrently with a first
/// use of the default backend.
#[no_mangle]
pub extern "C" fn isoclip_set_default_threads(threads: usize) -> isoclip_status {
    guard("isoclip_set_default_threads", || {
        register_fork_handler();
        if current_default_backend().is_some() {
            return Err(Failure::InvalidState(
                "the default backend already exists (an earlier call used a NULL backend): \
                 set its threads before the first such call, or pass a backend of your own \
                 made with isoclip_backend_new"
                    .into(),
            ));
        }
        DEFAULT_THREADS.store(threads, Ordering::Release);
        Ok(())
    })
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
    device_index: i32,
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
            device_index: ISOCLIP_DEVICE_INDEX_ALL,
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

/// Sets the number of CPU worker threads of the backend's own pool (0, the default: as many as
/// the default backend, `isoclip_set_default_threads`, else one per available core); at most
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

/// Chooses which device of the kind set with `isoclip_backend_options_set_device` the backend
/// runs on: `ISOCLIP_DEVICE_INDEX_ALL` (-1, the default: every visible GPU; the CPU) or a
/// 0-based index (a CUDA device ordinal, as `nvidia-smi` numbers them under the current
/// `CUDA_VISIBLE_DEVICES`): the backend then opens that GPU alone. The CPU is device 0. The index
/// is checked by `isoclip_backend_new`: an index other than -1 or 0 with `ISOCLIP_DEVICE_CPU` is
/// `ISOCLIP_ERR_INVALID_ARGUMENT` there, a GPU index that is missing or unusable with
/// `ISOCLIP_DEVICE_CUDA` is `ISOCLIP_ERR_DEVICE_UNAVAILABLE` naming it; with
/// `ISOCLIP_DEVICE_AUTO` the index applies to the GPU, and a fall back to the CPU ignores it.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT` (an index
/// below -1), `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_backend_options_set_device_index(
    options: *mut isoclip_backend_options,
    index: i32,
) -> isoclip_status {
    guard("isoclip_backend_options_set_device_index", || {
        // SAFETY: per this function's contract.
        let o = unsafe { backend_options_mut(options) }?;
        if index < ISOCLIP_DEVICE_INDEX_ALL {
            return Err(Failure::InvalidArgument(format!(
                "device index {index} is negative (expected ISOCLIP_DEVICE_INDEX_ALL or an \
                 index from 0)"
            )));
        }
        o.device_index = index;
        Ok(())
    })
}

/// The library's device choice for a device kind and index (`ISOCLIP_DEVICE_INDEX_ALL` or an
/// index from 0, as `isoclip_backend_options_set_device_index` accepts): the CPU is device 0
/// alone; for a GPU the index is the CUDA ordinal.
fn device_choice(device: isoclip_device, index: i32) -> FfiResult<DeviceChoice> {
    let gpu = usize::try_from(index).ok(); // ISOCLIP_DEVICE_INDEX_ALL: every GPU
    match device {
        ISOCLIP_DEVICE_AUTO => Ok(DeviceChoice::Auto(gpu)),
        ISOCLIP_DEVICE_CUDA => Ok(DeviceChoice::Cuda(gpu)),
        ISOCLIP_DEVICE_CPU if matches!(index, ISOCLIP_DEVICE_INDEX_ALL | 0) => {
            Ok(DeviceChoice::Cpu)
        }
        ISOCLIP_DEVICE_CPU => Err(Failure::InvalidArgument(format!(
            "device index {index} with the CPU: the CPU is device 0 (or use \
             ISOCLIP_DEVICE_INDEX_ALL)"
        ))),
        other => Err(Failure::InvalidArgument(format!("unknown device {other}"))),
    }
}

/// Opens the backend for a device choice. Returns the backend and the device it actually runs on.
fn open_backend(
    choice: DeviceChoice,
    threads: Option<usize>,
) -> FfiResult<(Box<dyn Backend>, isoclip_device)> {
    let (backend, fallback_notice) = select_backend(choice, threads)?;
    let resolved = match choice {
        DeviceChoice::Cpu => ISOCLIP_DEVICE_CPU,
        DeviceChoice::Cuda(_) => ISOCLIP_DEVICE_CUDA,
        // `select_backend` explains a fall back to the CPU with a notice, and only then.
        DeviceChoice::Auto(_) if fallback_notice.is_some() => ISOCLIP_DEVICE_CPU,
        DeviceChoice::Auto(_) => ISOCLIP_DEVICE_CUDA,
    };
    Ok((backend, resolved))
}

/// Opens a backend. `options` may be NULL (the defaults: the CPU, every core). On success `*out`
/// receives a new handle the caller owns (`isoclip_backend_free`). With `ISOCLIP_DEVICE_AUTO` the
/// backend falls back to the CPU when no GPU is usable; `isoclip_backend_device` says which.
///
/// With 0 threads (the default) the backend gets its own pool of as many threads as the default
/// backend (`isoclip_set_default_threads`, else one per available core).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER` (`out`), `ISOCLIP_ERR_DEVICE_UNAVAILABLE`
/// (`ISOCLIP_DEVICE_CUDA` without a usable GPU, or without the GPU of the index chosen; the
/// message says why), `ISOCLIP_ERR_INVALID_ARGUMENT` (a device index other than -1 or 0 with the
/// CPU), `ISOCLIP_ERR_RESOURCE_EXHAUSTED` (the system refused to start the
/// threads; the message says why), `ISOCLIP_ERR_PANIC`.
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
        let (device, threads, index) = if options.is_null() {
            (ISOCLIP_DEVICE_CPU, 0, ISOCLIP_DEVICE_INDEX_ALL)
        } else {
            // SAFETY: a live handle, only read, per the contract.
            let o = unsafe { &*options };
            (o.device, o.threads, o.device_index)
        };
        let choice = device_choice(device, index)?;
        // Never rayon's global pool: its threads do not exist in a forked child.
        let threads = if threads == 0 {
            default_thread_count()
        } else {
            threads
        };
        // AUTO that falls back to the CPU ignores the index, which was meant for a GPU.
        let (backend, device) = open_backend(choice, Some(threads))?;
        let b = Arc::new(isoclip_backend {
            backend: Arc::from(backend),
            device,
        });
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
/// `ISOCLIP_NONFINITE_ERROR`, `ISOCLIP_PRECISION_F32` (the defaults of `isoclip project`).
#[derive(Clone, Copy, Debug)]
pub struct isoclip_projection_options {
    pub(crate) modality: Option<Modality>,
    pub(crate) input_kind: InputKind,
    pub(crate) form: OutputForm,
    pub(crate) normalize: bool,
    pub(crate) nonfinite: NonFinitePolicy,
    pub(crate) precision: Precision,
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
            precision: d.precision,
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
            precision: self.precision,
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

/// Chooses the arithmetic of the projection (`ISOCLIP_PRECISION_F32`, the default, or
/// `ISOCLIP_PRECISION_BF16`), for `isoclip_project`, `isoclip_project_with_cancel` and jobs made
/// with these options (unless their job options set a precision of their own:
/// `isoclip_job_options_set_precision`).
///
/// Whether the backend can compute at this precision is checked when projecting:
/// `ISOCLIP_PRECISION_BF16` needs the CPU backend on a CPU with AVX-512 BF16. On a CPU without
/// it, `isoclip_project` (and `isoclip_job_run`) return `ISOCLIP_ERR_DEVICE_UNAVAILABLE` (the
/// message says the CPU lacks AVX-512 BF16); on a CUDA backend, `ISOCLIP_ERR_INVALID_ARGUMENT`
/// (a backend opened with `ISOCLIP_DEVICE_AUTO` that runs on a GPU too: `isoclip_backend_device`
/// says where it runs). For bf16, project on a CPU backend or the default one (NULL).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT` (unknown
/// value; the options keep their previous precision), `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_projection_options_set_precision(
    options: *mut isoclip_projection_options,
    precision: isoclip_precision,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_projection_options_set_precision", options, |o| {
            o.precision = parse_precision(precision)?;
            Ok(())
        })
    }
}

/// Counts from one `isoclip_project` call. Size-tagged: set `struct_size` to
/// `sizeof(isoclip_projection_stats)` before the call (`ISOCLIP_PROJECTION_STATS_INIT` does), so
/// that later 1.x versions can append fields: the library writes only the fields that lie within
/// `struct_size` bytes, and never `struct_size` itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct isoclip_projection_stats {
    /// Set by the caller: `sizeof(isoclip_projection_stats)` of the header it was compiled with.
    pub struct_size: usize,
    /// Rows whose projection had zero norm (written as zeros).
    pub zero_norm_rows: u64,
    /// Rows written as zeros under `ISOCLIP_NONFINITE_ZERO`: input rows with NaN or Inf, and
    /// finite rows whose result the output type cannot hold.
    pub nonfinite_rows: u64,
}

/// The smallest `struct_size` accepted: the struct of ABI 1.0 (every field up to
/// `nonfinite_rows`).
const STATS_MIN_SIZE: usize =
    offset_of!(isoclip_projection_stats, nonfinite_rows) + size_of::<u64>();

/// A caller's stats struct whose `struct_size` was checked.
struct StatsOut {
    ptr: *mut isoclip_projection_stats,
    size: usize,
}

impl StatsOut {
    /// Checks the caller's struct before any work; NULL means no stats are wanted.
    ///
    /// # Safety
    /// `ptr` is NULL or valid for reads and writes of the caller's `struct_size` bytes.
    unsafe fn new(ptr: *mut isoclip_projection_stats) -> FfiResult<Option<StatsOut>> {
        if ptr.is_null() {
            return Ok(None);
        }
        if !ptr.is_aligned() {
            return Err(Failure::InvalidArgument(
                "argument `stats` is not aligned for isoclip_projection_stats".into(),
            ));
        }
        // SAFETY: non-NULL, aligned, and the leading `size_t` is readable per the contract.
        let size = unsafe { std::ptr::addr_of!((*ptr).struct_size).read() };
        if size < STATS_MIN_SIZE {
            return Err(Failure::InvalidArgument(format!(
                "stats->struct_size is {size}, less than the {STATS_MIN_SIZE} bytes of \
                 isoclip_projection_stats: initialise it with ISOCLIP_PROJECTION_STATS_INIT"
            )));
        }
        Ok(Some(StatsOut { ptr, size }))
    }

    /// Writes the counts that fit the caller's `struct_size`.
    fn write(&self, counts: BlockStats) {
        let fields = [
            (
                offset_of!(isoclip_projection_stats, zero_norm_rows),
                counts.zero_norm_rows,
            ),
            (
                offset_of!(isoclip_projection_stats, nonfinite_rows),
                counts.nonfinite_rows,
            ),
        ];
        for (offset, value) in fields {
            if offset + size_of::<u64>() <= self.size {
                // SAFETY: the field lies within the caller's `struct_size` bytes, which are
                // writable per `new`'s contract, and is aligned as the struct is.
                unsafe { self.ptr.cast::<u8>().add(offset).cast::<u64>().write(value) };
            }
        }
    }
}

/// The bytes a strided view spans, or an error (the backends' own check, `view_span`).
fn view_bytes(
    rows: usize,
    cols: usize,
    row_stride: usize,
    elem: ElemType,
    what: &str,
) -> FfiResult<usize> {
    view_span(rows, cols, row_stride, elem, what).map_err(|e| match e {
        Error::InvalidArgument(m) => Failure::InvalidArgument(m),
        other => Failure::Core(other),
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
/// pointers. `options` NULL means the defaults; `backend` NULL the default backend. If `stats`
/// is not NULL its `struct_size` must be set (`ISOCLIP_PROJECTION_STATS_INIT`) and it receives
/// the counts on success.
///
/// Results are deterministic: the same rows give the same bytes whatever the thread count or the
/// number of concurrent callers. On the CPU backend a row's bytes depend only on the row and on
/// the number of rows of its 128-row block (rows `128 k .. 128 k + 127` of the call, the last
/// block holding the remainder): two calls give a row identical bytes when it falls in a full
/// block in both (any batch of at least 128 rows split at multiples of 128), or in blocks of
/// equal size (a single row alone gives the same bytes every time). A row projected alone and
/// the same row inside a larger batch may differ in the last bit (the GEMM shape differs).
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_NULL_POINTER` (`projector`; `input` or `output` with
/// `rows > 0`); `ISOCLIP_ERR_INVALID_ARGUMENT` (unknown dtype, a stride smaller than a row, sizes
/// that overflow, overlapping input and output, a modality the projector lacks or AUTO on one with
/// both, the embedding route of a bias-augmented projector); `ISOCLIP_ERR_SHAPE` (`input_cols` or
/// `output_cols` do not match the projector); `ISOCLIP_ERR_INVALID_ARGUMENT` also for a
/// `stats->struct_size` smaller than ABI 1.0's struct; `ISOCLIP_ERR_NON_FINITE_ROW` (the message
/// names the row); `ISOCLIP_ERR_UNREPRESENTABLE` (a finite row whose unnormalised result does
/// not fit the output type; the message names the row); `ISOCLIP_ERR_RESOURCE_EXHAUSTED`
/// (working memory could not be allocated); `ISOCLIP_ERR_DEVICE_UNAVAILABLE` (the GPU failed;
/// `ISOCLIP_PRECISION_BF16` on a CPU without AVX-512 BF16); `ISOCLIP_ERR_INVALID_ARGUMENT` also
/// for `ISOCLIP_PRECISION_BF16` on a CUDA backend; `ISOCLIP_ERR_PANIC`. On failure
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
        let views = ProjectionViews {
            rows,
            input,
            input_dtype,
            input_cols,
            input_row_stride,
            output,
            output_dtype,
            output_cols,
            output_row_stride,
        };
        // SAFETY: this function's contract is `project_views`'s, with no cancel token.
        unsafe { project_views(projector, backend, options, &views, stats, None) }
    })
}

/// `isoclip_project` that can be stopped from another thread: `token` (NULL: never cancelled)
/// is checked before the first row and then every 65536 rows (the call projects in slices of
/// that many rows, a multiple of 128, so the bytes are those of `isoclip_project`). Once
/// `isoclip_cancel_token_cancel` was called the call returns `ISOCLIP_ERR_CANCELLED`, having
/// written some rows (the output's content is then unspecified, and `stats` is not written).
///
/// The other arguments, the results and the other statuses are those of `isoclip_project`.
/// Thread-safety: as `isoclip_project`; any number of calls may share one token.
///
/// # Safety
/// As `isoclip_project`; `token` is NULL or a live token, not freed during the call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn isoclip_project_with_cancel(
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
    token: *const isoclip_cancel_token,
) -> isoclip_status {
    guard("isoclip_project_with_cancel", || {
        let views = ProjectionViews {
            rows,
            input,
            input_dtype,
            input_cols,
            input_row_stride,
            output,
            output_dtype,
            output_cols,
            output_row_stride,
        };
        // SAFETY: per this function's contract, a live token or NULL.
        let token = unsafe { token.as_ref() };
        // SAFETY: per this function's contract.
        unsafe { project_views(projector, backend, options, &views, stats, token) }
    })
}

/// The caller's input and output views, as passed to `isoclip_project`.
struct ProjectionViews {
    rows: usize,
    input: *const std::ffi::c_void,
    input_dtype: isoclip_dtype,
    input_cols: usize,
    input_row_stride: usize,
    output: *mut std::ffi::c_void,
    output_dtype: isoclip_dtype,
    output_cols: usize,
    output_row_stride: usize,
}

/// Rows per slice of a cancellable projection: the token is checked between slices. A multiple
/// of the CPU backend's block, so that slicing changes no byte.
const CANCEL_SLICE_ROWS: usize = 64 * 1024;

/// The body of `isoclip_project` and `isoclip_project_with_cancel`.
///
/// # Safety
/// As `isoclip_project`.
unsafe fn project_views(
    projector: *const isoclip_projector,
    backend: *const isoclip_backend,
    options: *const isoclip_projection_options,
    v: &ProjectionViews,
    stats: *mut isoclip_projection_stats,
    token: Option<&isoclip_cancel_token>,
) -> FfiResult<()> {
    // SAFETY: per this function's contract.
    let p: &isoclip_projector = unsafe { projector_arg(projector, "projector") }?;
    // SAFETY: per this function's contract.
    let b = unsafe { backend_arg(backend) }?;
    // SAFETY: per this function's contract.
    let o = unsafe { projection_options_arg(options) };
    // SAFETY: per this function's contract.
    let stats = unsafe { StatsOut::new(stats) }?;
    let in_elem = parse_dtype(v.input_dtype, "input")?;
    let out_elem = parse_dtype(v.output_dtype, "output")?;
    let map = p.prepared(b.shared(), o.modality, o.input_kind, o.form)?;
    let rows = v.rows;
    let in_len = view_bytes(rows, v.input_cols, v.input_row_stride, in_elem, "input")?;
    let out_len = view_bytes(rows, v.output_cols, v.output_row_stride, out_elem, "output")?;
    let (in_bytes, out_bytes): (&[u8], &mut [u8]) = if rows == 0 {
        (&[], &mut [])
    } else {
        if v.input.is_null() {
            return Err(Failure::NullPointer("input"));
        }
        if v.output.is_null() {
            return Err(Failure::NullPointer("output"));
        }
        let (a, b) = (v.input as usize, v.output as usize);
        if a < b.saturating_add(out_len) && b < a.saturating_add(in_len) {
            return Err(Failure::InvalidArgument(
                "the input and output buffers overlap; project into a separate buffer".into(),
            ));
        }
        // SAFETY: non-NULL, spanning `in_len`/`out_len` bytes that the caller keeps valid for
        // the call, and disjoint (checked above), so a shared and a mutable borrow coexist.
        unsafe {
            (
                std::slice::from_raw_parts(v.input.cast::<u8>(), in_len),
                std::slice::from_raw_parts_mut(v.output.cast::<u8>(), out_len),
            )
        }
    };
    let input = RowsIn {
        bytes: in_bytes,
        rows,
        cols: v.input_cols,
        row_stride: v.input_row_stride,
        elem: in_elem,
    };
    let output = RowsOut {
        bytes: out_bytes,
        rows,
        cols: v.output_cols,
        row_stride: v.output_row_stride,
        elem: out_elem,
    };
    let opts = o.with_output(out_elem);
    let counts = match token {
        None => b.backend().project(&map, &opts, input, output)?,
        Some(t) => project_in_slices(b.backend(), &map, &opts, input, output, t)?,
    };
    if let Some(s) = stats {
        s.write(counts);
    }
    Ok(())
}

/// Projects `CANCEL_SLICE_ROWS` rows at a time, checking `token` before each slice.
fn project_in_slices(
    backend: &dyn Backend,
    map: &PreparedMap,
    opts: &ProjectionOptions,
    input: RowsIn<'_>,
    output: RowsOut<'_>,
    token: &isoclip_cancel_token,
) -> FfiResult<BlockStats> {
    // The shapes are checked on the whole call, so that a wrong shape is reported as such even
    // when the token is already cancelled.
    crate::backend::check_shapes(map.linear(), &input, &output)?;
    // Slices start at multiples of the backend's row block, so they give the bytes of one call.
    let block = backend.row_block().max(1);
    let slice_rows = (CANCEL_SLICE_ROWS / block).max(1) * block;
    let mut counts = BlockStats::default();
    let mut start = 0;
    loop {
        if token.cancelled.load(Ordering::Acquire) {
            return Err(Failure::Core(Error::Cancelled));
        }
        if start >= input.rows {
            return Ok(counts);
        }
        let n = slice_rows.min(input.rows - start);
        let slice_in = RowsIn {
            bytes: &input.bytes[start * input.row_stride..],
            rows: n,
            ..input
        };
        let out_from = start * output.row_stride;
        let out_to = (out_from + (n - 1) * output.row_stride + output.cols * output.elem.size())
            .min(output.bytes.len());
        let slice_out = RowsOut {
            bytes: &mut output.bytes[out_from..out_to],
            rows: n,
            cols: output.cols,
            row_stride: output.row_stride,
            elem: output.elem,
        };
        counts += backend
            .project(map, opts, slice_in, slice_out)
            .map_err(|e| e.offset_rows(start))?;
        start += n;
    }
}

/// A cancellation flag for `isoclip_project_with_cancel`. Created by `isoclip_cancel_token_new`,
/// released by `isoclip_cancel_token_free`. Any thread may cancel it at any time, while any
/// number of calls use it; once cancelled it stays cancelled (make a new token for new work).
pub struct isoclip_cancel_token {
    cancelled: AtomicBool,
}

/// Creates a token that is not cancelled. `*out` receives a handle the caller owns.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_cancel_token_new(
    out: *mut *mut isoclip_cancel_token,
) -> isoclip_status {
    guard("isoclip_cancel_token_new", || {
        require_out(out, "out")?;
        let t = Box::new(isoclip_cancel_token {
            cancelled: AtomicBool::new(false),
        });
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", Box::into_raw(t)) }
    })
}

/// Cancels the token: every call using it returns `ISOCLIP_ERR_CANCELLED` at its next check
/// (within 65536 rows), and later calls with it return that at once.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`. Thread-safety: any
/// thread, at any time.
///
/// # Safety
/// `token` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_cancel_token_cancel(
    token: *const isoclip_cancel_token,
) -> isoclip_status {
    guard("isoclip_cancel_token_cancel", || {
        // SAFETY: a live handle per the contract; only its atomic is touched.
        let t = unsafe { token.as_ref() }.ok_or(Failure::NullPointer("token"))?;
        t.cancelled.store(true, Ordering::Release);
        Ok(())
    })
}

/// Releases a token. NULL is a no-op. No call may be using it.
///
/// # Safety
/// `token` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn isoclip_cancel_token_free(token: *mut isoclip_cancel_token) {
    guard_infallible("isoclip_cancel_token_free", (), || {
        if !token.is_null() {
            // SAFETY: a live `Box::into_raw` handle, released once per the contract.
            drop(unsafe { Box::from_raw(token) });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::status::isoclip_status::{
        ISOCLIP_ERR_DEVICE_UNAVAILABLE, ISOCLIP_ERR_INVALID_ARGUMENT, ISOCLIP_OK,
    };
    use crate::ffi::status::{isoclip_last_error_length, isoclip_last_error_message};

    fn last_message() -> String {
        let n = isoclip_last_error_length();
        let mut buf = vec![0 as c_char; n];
        // SAFETY: `buf` holds `n` bytes.
        let s = unsafe { isoclip_last_error_message(buf.as_mut_ptr(), n, std::ptr::null_mut()) };
        assert_eq!(s, ISOCLIP_OK);
        // SAFETY: the library wrote a NUL-terminated string into `buf`.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_precision_is_checked_and_reaches_the_projection() {
        let mut o: *mut isoclip_projection_options = std::ptr::null_mut();
        // SAFETY: `o` is valid for a write; then a live handle, read while no setter runs, and
        // freed once at the end.
        unsafe {
            assert_eq!(isoclip_projection_options_new(&mut o), ISOCLIP_OK);
            assert_eq!((*o).with_output(ElemType::F16).precision, Precision::F32);
            let s = isoclip_projection_options_set_precision(o, ISOCLIP_PRECISION_BF16);
            assert_eq!(s, ISOCLIP_OK);
            assert_eq!((*o).with_output(ElemType::F32).precision, Precision::Bf16);
            let s = isoclip_projection_options_set_precision(o, 3);
            assert_eq!(s, ISOCLIP_ERR_INVALID_ARGUMENT);
            assert_eq!(
                last_message(),
                "isoclip_projection_options_set_precision: unknown precision 3 (expected \
                 ISOCLIP_PRECISION_F32 or ISOCLIP_PRECISION_BF16)"
            );
            // A refused value leaves the options as they were.
            assert_eq!((*o).with_output(ElemType::F16).precision, Precision::Bf16);
            let s = isoclip_projection_options_set_precision(o, ISOCLIP_PRECISION_F32);
            assert_eq!(s, ISOCLIP_OK);
            assert_eq!((*o).with_output(ElemType::F16).precision, Precision::F32);
            isoclip_projection_options_free(o);
        }
    }

    #[test]
    fn device_kinds_and_indexes_become_the_library_choice() {
        let ok = |d, i| device_choice(d, i).ok().unwrap();
        assert_eq!(ok(ISOCLIP_DEVICE_CPU, -1), DeviceChoice::Cpu);
        assert_eq!(ok(ISOCLIP_DEVICE_CPU, 0), DeviceChoice::Cpu);
        assert_eq!(ok(ISOCLIP_DEVICE_CUDA, -1), DeviceChoice::Cuda(None));
        assert_eq!(ok(ISOCLIP_DEVICE_CUDA, 0), DeviceChoice::Cuda(Some(0)));
        assert_eq!(ok(ISOCLIP_DEVICE_CUDA, 3), DeviceChoice::Cuda(Some(3)));
        assert_eq!(ok(ISOCLIP_DEVICE_AUTO, -1), DeviceChoice::Auto(None));
        assert_eq!(ok(ISOCLIP_DEVICE_AUTO, 2), DeviceChoice::Auto(Some(2)));
        match device_choice(ISOCLIP_DEVICE_CPU, 1) {
            Err(Failure::InvalidArgument(m)) => {
                assert!(m.starts_with("device index 1 with the CPU"))
            }
            _ => panic!("the CPU took device index 1"),
        }
    }

    /// Opens a backend for `device` and `index` with one thread; the status, the device it runs
    /// on (when opened) and the error message (when not).
    fn open(
        device: isoclip_device,
        index: i32,
    ) -> (isoclip_status, Option<isoclip_device>, String) {
        let mut o: *mut isoclip_backend_options = std::ptr::null_mut();
        // SAFETY: `o` is valid for a write; then a live handle, freed once at the end.
        unsafe {
            assert_eq!(isoclip_backend_options_new(&mut o), ISOCLIP_OK);
            assert_eq!(isoclip_backend_options_set_device(o, device), ISOCLIP_OK);
            assert_eq!(isoclip_backend_options_set_threads(o, 1), ISOCLIP_OK);
            assert_eq!(
                isoclip_backend_options_set_device_index(o, index),
                ISOCLIP_OK
            );
        }
        let mut b: *const isoclip_backend = std::ptr::null();
        // SAFETY: live options; `b` is valid for a write.
        let status = unsafe { isoclip_backend_new(o, &mut b) };
        let message = if status == ISOCLIP_OK {
            String::new()
        } else {
            last_message()
        };
        let mut resolved = None;
        if !b.is_null() {
            let mut d = -1;
            // SAFETY: a live handle from `isoclip_backend_new`, released once.
            unsafe {
                assert_eq!(isoclip_backend_device(b, &mut d), ISOCLIP_OK);
                isoclip_backend_free(b);
            }
            resolved = Some(d);
        }
        // SAFETY: a live handle, released once.
        unsafe { isoclip_backend_options_free(o) };
        (status, resolved, message)
    }

    #[test]
    fn a_gpu_index_is_honoured_or_named_in_a_device_error() {
        // No machine has 10000 GPUs: CUDA with that index fails naming it, with or without CUDA.
        let (status, b, message) = open(ISOCLIP_DEVICE_CUDA, 9999);
        assert_eq!(status, ISOCLIP_ERR_DEVICE_UNAVAILABLE);
        assert!(b.is_none());
        assert!(
            message.starts_with(
                "isoclip_backend_new: the CUDA device cuda:9999 was requested but is not usable ("
            ),
            "{message}"
        );
        // AUTO falls back to the CPU.
        let (status, b, _) = open(ISOCLIP_DEVICE_AUTO, 9999);
        assert_eq!((status, b), (ISOCLIP_OK, Some(ISOCLIP_DEVICE_CPU)));
        // The CPU is device 0 alone.
        let (status, _, message) = open(ISOCLIP_DEVICE_CPU, 1);
        assert_eq!(status, ISOCLIP_ERR_INVALID_ARGUMENT);
        assert!(message.contains("the CPU is device 0"), "{message}");
        // GPU 0: opened when this machine has a usable GPU, else unavailable, as without an index.
        let (status, b, message) = open(ISOCLIP_DEVICE_CUDA, 0);
        let (status_all, b_all, _) = open(ISOCLIP_DEVICE_CUDA, ISOCLIP_DEVICE_INDEX_ALL);
        assert_eq!(status, status_all, "{message}");
        assert_eq!(b, b_all);
        if status == ISOCLIP_OK {
            assert_eq!(b, Some(ISOCLIP_DEVICE_CUDA));
        } else {
            assert_eq!(status, ISOCLIP_ERR_DEVICE_UNAVAILABLE);
            assert!(message.contains("cuda:0"), "{message}");
        }
    }
}
