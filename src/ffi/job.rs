//! Jobs: the streaming engine over galleries (`isoclip project`), with a progress callback,
//! cancellation from another thread, shard selection for several workers and object-store
//! options.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use super::project::{
    backend_arg, isoclip_backend, isoclip_dtype, isoclip_precision, isoclip_projection_options,
    parse_dtype, parse_precision, projection_options_arg,
};
use super::projector::{isoclip_projector, projector_arg, projector_clone_arc};
use super::status::isoclip_status;
use super::status::{
    copy_string_out, guard, guard_infallible, location_arg, require_out, set_option, utf8_arg,
    write_out, Failure, FfiResult,
};
use crate::backend::{ElemType, Precision};
use crate::engine::{run_job, JobSpec, JobSummary, ProgressSink, ShardSelection};

/// Progress of a running job, called on the thread that runs it (inside `isoclip_job_run`):
/// once when the work is planned (`rows_done == 0`), after each chunk of rows, and after each
/// shard. Counts cover the shards this run processes; shards skipped because a previous run
/// finished them are not counted. `user_data` is the pointer given to
/// `isoclip_job_options_set_progress`.
///
/// The callback must return normally: it must not unwind (a C++ exception, `longjmp`) through the
/// library. It may call `isoclip_job_cancel` on its job, and any function that does not use the
/// job; it must not run or free the job. It should be cheap: the job waits for it.
pub type isoclip_progress_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        rows_done: u64,
        rows_total: u64,
        shards_done: u64,
        shards_total: u64,
    ),
>;

/// A counter of a finished run: a value of `ISOCLIP_JOB_STAT_*`, for `isoclip_job_stat`.
pub type isoclip_job_stat_id = i32;
/// Shards found in the input.
pub const ISOCLIP_JOB_STAT_SHARDS_TOTAL: isoclip_job_stat_id = 1;
/// Shards projected by the run.
pub const ISOCLIP_JOB_STAT_SHARDS_PROCESSED: isoclip_job_stat_id = 2;
/// Shards skipped because the output directory already held them, finished and matching.
pub const ISOCLIP_JOB_STAT_SHARDS_SKIPPED: isoclip_job_stat_id = 3;
/// Rows projected by the run.
pub const ISOCLIP_JOB_STAT_ROWS_PROCESSED: isoclip_job_stat_id = 4;
/// Rows in skipped shards.
pub const ISOCLIP_JOB_STAT_ROWS_SKIPPED: isoclip_job_stat_id = 5;
/// Rows whose projection had zero norm, over every shard of the output (skipped ones included).
pub const ISOCLIP_JOB_STAT_ZERO_NORM_ROWS: isoclip_job_stat_id = 6;
/// Rows with NaN/Inf written as zeros (`ISOCLIP_NONFINITE_ZERO`), over every shard of the output.
pub const ISOCLIP_JOB_STAT_NONFINITE_ROWS: isoclip_job_stat_id = 7;
/// Input bytes read by the run.
pub const ISOCLIP_JOB_STAT_BYTES_READ: isoclip_job_stat_id = 8;
/// Output bytes written by the run.
pub const ISOCLIP_JOB_STAT_BYTES_WRITTEN: isoclip_job_stat_id = 9;

/// The caller's callback and its user data.
#[derive(Clone, Copy)]
struct Callback {
    function: unsafe extern "C" fn(*mut c_void, u64, u64, u64, u64),
    user_data: *mut c_void,
}

// SAFETY: the library never dereferences `user_data`; it only hands it back to the callback, and
// only on the thread that called `isoclip_job_run` (see `CallbackSink::emit`), which is what the
// header promises the caller.
unsafe impl Send for Callback {}
// SAFETY: as above; sharing the pair between threads never calls the callback off the run thread.
unsafe impl Sync for Callback {}

/// Options of a job. Created by `isoclip_job_options_new`, released by
/// `isoclip_job_options_free`; a job copies them when it is created (storage options included),
/// so they may be changed or freed afterwards. Not thread-safe: one thread at a time.
///
/// Defaults: output `ISOCLIP_DTYPE_F16`, the precision of the job's projection options
/// (`ISOCLIP_PRECISION_F32` unless set there), finished shards skipped (no overwrite), chunks of
/// 16 MiB of output, no progress callback, every shard (one worker), no storage options (the
/// defaults of `isoclip project`).
#[derive(Clone)]
pub struct isoclip_job_options {
    output_dtype: ElemType,
    /// Set by `isoclip_job_options_set_precision`; `None`: the projection options' precision.
    precision: Option<Precision>,
    overwrite: bool,
    chunk_bytes: usize,
    progress: Option<Callback>,
    shards: ShardSelection,
    storage_options: Vec<(String, String)>,
}

impl Default for isoclip_job_options {
    fn default() -> Self {
        isoclip_job_options {
            output_dtype: ElemType::F16,
            precision: None,
            overwrite: false,
            chunk_bytes: 0,
            progress: None,
            shards: ShardSelection::default(),
            storage_options: Vec::new(),
        }
    }
}

impl isoclip_job_options {
    /// The object-store options (`KEY`, `VALUE`) in the order they were first set.
    pub(crate) fn storage_options(&self) -> &[(String, String)] {
        &self.storage_options
    }

    /// Sets a storage option; a key set again keeps its place and takes the new value.
    fn set_storage_option(&mut self, key: String, value: String) {
        match self.storage_options.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.storage_options.push((key, value)),
        }
    }
}

/// A projection run over a gallery on disk or in an object store: the same work, files and
/// resume semantics as `isoclip project` (one `.npy` per input shard in the output, visible only
/// once complete, and a record of each finished shard so that a later run skips it).
///
/// Created by `isoclip_job_new`, released by `isoclip_job_free`. `isoclip_job_run` runs it on the
/// calling thread; `isoclip_job_cancel` may be called from any thread at any time, including
/// during the run and from the progress callback. The other functions must not be called while
/// the job runs (they report `ISOCLIP_ERR_INVALID_STATE`), and the job must not be freed while
/// it runs.
pub struct isoclip_job {
    projector: Arc<isoclip_projector>,
    backend: Arc<isoclip_backend>,
    spec: JobSpec,
    progress: Option<Callback>,
    cancel: AtomicBool,
    running: AtomicBool,
    summary: Mutex<Option<JobSummary>>,
}

/// Forwards engine progress to the C callback, on the run's own thread only.
struct CallbackSink {
    callback: Option<Callback>,
    run_thread: ThreadId,
    rows_done: AtomicU64,
    rows_total: AtomicU64,
    shards_done: AtomicU64,
    shards_total: AtomicU64,
}

impl CallbackSink {
    fn emit(&self) {
        let Some(cb) = self.callback else { return };
        // The header promises the callback runs on the thread inside isoclip_job_run; an event
        // from another thread only updates the counts, reported with the next event.
        if std::thread::current().id() != self.run_thread {
            return;
        }
        // SAFETY: the caller registered this function for this user data, and we are on the
        // thread that runs the job, as documented for `isoclip_progress_fn`.
        unsafe {
            (cb.function)(
                cb.user_data,
                self.rows_done.load(Ordering::Relaxed),
                self.rows_total.load(Ordering::Relaxed),
                self.shards_done.load(Ordering::Relaxed),
                self.shards_total.load(Ordering::Relaxed),
            )
        }
    }
}

impl ProgressSink for CallbackSink {
    fn start(&self, rows_to_process: u64, shards_to_process: usize) {
        self.rows_total.store(rows_to_process, Ordering::Relaxed);
        self.shards_total
            .store(shards_to_process as u64, Ordering::Relaxed);
        self.emit();
    }
    fn advance(&self, rows: u64) {
        self.rows_done.fetch_add(rows, Ordering::Relaxed);
        self.emit();
    }
    fn shard_done(&self, _name: &str, skipped: bool) {
        if !skipped {
            self.shards_done.fetch_add(1, Ordering::Relaxed);
            self.emit();
        }
    }
}

/// Clears the running flag when a run ends, however it ends.
struct RunningGuard<'a>(&'a AtomicBool);
impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Creates job options with the defaults. `*out` receives a handle the caller owns.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_options_new(
    out: *mut *mut isoclip_job_options,
) -> isoclip_status {
    guard("isoclip_job_options_new", || {
        require_out(out, "out")?;
        let o = Box::new(isoclip_job_options::default());
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", Box::into_raw(o)) }
    })
}

/// Releases job options and the storage options they hold. NULL is a no-op. Jobs created with
/// them are unaffected (they hold their own copy).
///
/// # Safety
/// `options` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_options_free(options: *mut isoclip_job_options) {
    guard_infallible("isoclip_job_options_free", (), || {
        if !options.is_null() {
            // SAFETY: a live `Box::into_raw` handle, released once per the contract.
            drop(unsafe { Box::from_raw(options) });
        }
    })
}

/// Chooses the element type of the output shards (`ISOCLIP_DTYPE_F16`, the default, or `_F32`).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT`,
/// `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_options_set_output_dtype(
    options: *mut isoclip_job_options,
    dtype: isoclip_dtype,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_job_options_set_output_dtype", options, |o| {
            o.output_dtype = parse_dtype(dtype, "output")?;
            Ok(())
        })
    }
}

/// Chooses the arithmetic of the job's projection (`ISOCLIP_PRECISION_F32` or
/// `ISOCLIP_PRECISION_BF16`), in place of the precision of the projection options given to
/// `isoclip_job_new` (which is used while this is not called; `ISOCLIP_PRECISION_F32` by
/// default).
///
/// Each finished shard records the arithmetic that computed it (`"arithmetic"` in the output's
/// manifest or completion records: `"f32"`, `"bf16"`, `"cuda-fp16"`), so a rerun at another
/// precision redoes the shards instead of mixing outputs. `ISOCLIP_PRECISION_BF16` needs the
/// CPU backend on a CPU with AVX-512 BF16: `isoclip_job_run` checks it before any work and
/// returns `ISOCLIP_ERR_DEVICE_UNAVAILABLE` on a CPU without it (`ISOCLIP_ERR_INVALID_ARGUMENT`
/// on a CUDA backend).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_INVALID_ARGUMENT` (unknown
/// value; the options are unchanged), `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_options_set_precision(
    options: *mut isoclip_job_options,
    precision: isoclip_precision,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_job_options_set_precision", options, |o| {
            o.precision = Some(parse_precision(precision)?);
            Ok(())
        })
    }
}

/// Whether to redo every shard even when the output directory says it is finished (default
/// false: finished shards are skipped, so a rerun after a failure or a cancel resumes).
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_options_set_overwrite(
    options: *mut isoclip_job_options,
    overwrite: bool,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_job_options_set_overwrite", options, |o| {
            o.overwrite = overwrite;
            Ok(())
        })
    }
}

/// Sets the output bytes per chunk, the unit of I/O, progress and cancellation (0, the default:
/// 16 MiB). Chunks are rounded to whole blocks of 128 rows, so outputs do not depend on it.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_options_set_chunk_bytes(
    options: *mut isoclip_job_options,
    chunk_bytes: usize,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_job_options_set_chunk_bytes", options, |o| {
            o.chunk_bytes = chunk_bytes;
            Ok(())
        })
    }
}

/// Sets the progress callback and the pointer passed back to it (NULL `callback` removes it).
/// `user_data` is never dereferenced by the library; it must stay valid for as long as jobs
/// created with these options can run.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER` (`options`), `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle; `callback` is NULL or a function with the documented
/// behaviour.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_options_set_progress(
    options: *mut isoclip_job_options,
    callback: isoclip_progress_fn,
    user_data: *mut c_void,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_job_options_set_progress", options, |o| {
            o.progress = callback.map(|function| Callback {
                function,
                user_data,
            });
            Ok(())
        })
    }
}

/// Makes the jobs created with these options one worker of `num_shards`: worker `shard_index`
/// takes shard k of the input's sorted listing when `k % num_shards == shard_index`. Every worker
/// writes into the same output (directory or URL prefix), each finished shard with its own
/// completion record, so workers may run at the same time, on different machines, and a
/// worker run again (a retry, a requeue) skips what it finished. `(1, 0)` is the default: every
/// shard. Replaces what `isoclip_job_options_set_shards_from_env` set.
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_INVALID_ARGUMENT` (`num_shards` is 0, or `shard_index` is
/// not below it; the message gives the range); `ISOCLIP_ERR_NULL_POINTER`; `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_options_set_shards(
    options: *mut isoclip_job_options,
    num_shards: u32,
    shard_index: u32,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_job_options_set_shards", options, |o| {
            o.shards = ShardSelection::new(num_shards as usize, shard_index as usize)?;
            Ok(())
        })
    }
}

/// Sets the worker's place (as `isoclip_job_options_set_shards` does) from the environment the
/// scheduler gives it, read during this call:
/// - a Slurm job array: `SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_MIN` and
///   `SLURM_ARRAY_TASK_COUNT` (index = id - min; an array whose `SLURM_ARRAY_TASK_STEP` is not 1
///   is refused, its ids have gaps);
/// - a Kubernetes Indexed Job: `JOB_COMPLETION_INDEX`, with the number of workers in
///   `ISOCLIP_NUM_SHARDS` (Kubernetes does not export it);
/// - otherwise `ISOCLIP_NUM_SHARDS` and `ISOCLIP_SHARD_INDEX`.
///
/// With none of them set, the options take every shard. On failure the options are unchanged.
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_INVALID_ARGUMENT` (a variable that is not a non-negative
/// integer, an index without a count or the reverse, an index out of range, a Slurm step other
/// than 1; the message names the variables); `ISOCLIP_ERR_NULL_POINTER`; `ISOCLIP_ERR_PANIC`.
/// Thread-safety: no other thread may change the environment (`setenv`) during the call.
///
/// # Safety
/// `options` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_options_set_shards_from_env(
    options: *mut isoclip_job_options,
) -> isoclip_status {
    // SAFETY: per this function's contract.
    unsafe {
        set_option("isoclip_job_options_set_shards_from_env", options, |o| {
            let shards = ShardSelection::resolve(None, None, environment_variable)?;
            if u32::try_from(shards.count).is_err() {
                return Err(Failure::InvalidArgument(format!(
                    "{} workers are more than this API counts (at most {})",
                    shards.count,
                    u32::MAX
                )));
            }
            o.shards = shards;
            Ok(())
        })
    }
}

/// Sets `*num_shards` and `*shard_index` to the worker's place the options hold (`1` and `0`
/// unless `isoclip_job_options_set_shards` or `_set_shards_from_env` set another): a worker
/// configured from its environment can log which part of the gallery it takes.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER` (any argument), `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle; `num_shards` and `shard_index` are NULL or valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_options_shards(
    options: *const isoclip_job_options,
    num_shards: *mut u32,
    shard_index: *mut u32,
) -> isoclip_status {
    guard("isoclip_job_options_shards", || {
        // SAFETY: NULL or a live handle, only read, per the contract.
        let o = unsafe { options.as_ref() }.ok_or(Failure::NullPointer("options"))?;
        require_out(num_shards, "num_shards")?;
        require_out(shard_index, "shard_index")?;
        // Both fit: `set_shards` takes u32 values and `set_shards_from_env` refuses larger ones.
        let count = u32::try_from(o.shards.count).expect("checked when set");
        let index = u32::try_from(o.shards.index).expect("below the count");
        // SAFETY: both are valid for a write per the contract (checked non-NULL above).
        unsafe {
            write_out(num_shards, "num_shards", count)?;
            write_out(shard_index, "shard_index", index)
        }
    })
}

/// A variable of the process environment; one that is not UTF-8 is passed on (lossily) so that
/// its parse fails with its name rather than being ignored.
fn environment_variable(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Adds an object-store option for the input, the output and projectors loaded with these
/// options (`isoclip_projector_load_url`): `key` and `value` as the `object_store` crate names
/// them (`aws_region`, `aws_endpoint`, `aws_allow_http`, `google_service_account`,
/// `azure_storage_account_name`, ...), over what the environment sets (`AWS_*`, `GOOGLE_*`,
/// `AZURE_*`). Both strings are copied; a key added again takes the new value. Options are
/// checked when a store is opened (`isoclip_job_run`), not here; plain paths and `file://` URLs
/// ignore them.
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_NULL_POINTER` (`options`, `key`, `value`);
/// `ISOCLIP_ERR_INVALID_ARGUMENT` (an empty key, a string that is not UTF-8);
/// `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `options` is NULL or a live handle; `key` and `value` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_options_add_storage_option(
    options: *mut isoclip_job_options,
    key: *const c_char,
    value: *const c_char,
) -> isoclip_status {
    guard("isoclip_job_options_add_storage_option", || {
        // SAFETY: NULL or a live handle that no other thread uses, per the contract.
        let o = unsafe { options.as_mut() }.ok_or(Failure::NullPointer("options"))?;
        // SAFETY: per this function's contract.
        let key = unsafe { utf8_arg(key, "key") }?;
        // SAFETY: per this function's contract.
        let value = unsafe { utf8_arg(value, "value") }?;
        if key.is_empty() {
            return Err(Failure::InvalidArgument(
                "the storage option key is empty".into(),
            ));
        }
        o.set_storage_option(key, value);
        Ok(())
    })
}

/// Creates a job projecting the shards at `input` into `output_dir`. Each is a path or a URL:
/// `s3://bucket/prefix`, `gs://`, `az://` (also `abfs://`, `azure://`), `http://`/`https://`
/// (reading only) or `file:///absolute/path`; anything that does not start with `scheme://` is
/// a path. `input` is a `.npy` file, a directory or URL prefix of them, or a local text file
/// listing them (2-D, C order, fp16 or fp32); `output_dir` is a directory (created if missing)
/// or a URL prefix. `projection` NULL means the default projection options, `job_options` NULL
/// the default job options, `backend` NULL the shared CPU backend. Only the arguments are
/// checked here: `isoclip_job_run` opens the stores and checks the files.
///
/// With plain paths and one worker the job is `isoclip project` (one manifest, a locked output
/// directory). With a URL, or several workers (`isoclip_job_options_set_shards`), each
/// finished shard gets its own completion record in the output, so workers can share it.
///
/// The job keeps its own references to the projector and the backend, and copies the options
/// (storage options included): all of them may be freed right after this call. On success
/// `*out` receives a new handle the caller owns (`isoclip_job_free`).
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_NULL_POINTER` (`projector`, `input`, `output_dir`, `out`);
/// `ISOCLIP_ERR_INVALID_ARGUMENT` (a malformed URL, named in the message; a modality the
/// projector lacks, or AUTO on one with both; the embedding route of a bias-augmented
/// projector); `ISOCLIP_ERR_PANIC`.
/// Thread-safety: any thread.
///
/// # Safety
/// `projector` is NULL or a live handle; `backend`, `projection`, `job_options` NULL or live
/// handles; `input`, `output_dir` NULL or NUL-terminated strings; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_new(
    projector: *const isoclip_projector,
    backend: *const isoclip_backend,
    projection: *const isoclip_projection_options,
    job_options: *const isoclip_job_options,
    input: *const c_char,
    output_dir: *const c_char,
    out: *mut *mut isoclip_job,
) -> isoclip_status {
    guard("isoclip_job_new", || {
        // SAFETY: per this function's contract.
        let p = unsafe { projector_arg(projector, "projector") }?;
        // SAFETY: per this function's contract.
        let input = unsafe { location_arg(input, "input") }?;
        // SAFETY: per this function's contract.
        let output = unsafe { location_arg(output_dir, "output_dir") }?;
        require_out(out, "out")?;
        // SAFETY: per this function's contract.
        let proj = unsafe { projection_options_arg(projection) };
        // SAFETY: a live handle or NULL, only read, per the contract.
        let jo = unsafe { job_options.as_ref() }.cloned().unwrap_or_default();
        // Check the options against the projector now, with the C API's wording.
        let (modality, _) = p.selected(proj.modality, proj.input_kind, proj.form)?;
        let mut spec = JobSpec::new(input, output);
        spec.shards = jo.shards;
        spec.storage_options = jo.storage_options;
        spec.modality = Some(modality);
        spec.options = proj.with_output(jo.output_dtype);
        if let Some(precision) = jo.precision {
            spec.options.precision = precision;
        }
        spec.overwrite = jo.overwrite;
        spec.chunk_bytes = jo.chunk_bytes;
        let job = Box::new(isoclip_job {
            // SAFETY: `projector` is a live handle (checked non-NULL above).
            projector: unsafe { projector_clone_arc(projector) },
            // SAFETY: per this function's contract.
            backend: unsafe { backend_arg(backend) }?,
            spec,
            progress: jo.progress,
            cancel: AtomicBool::new(false),
            running: AtomicBool::new(false),
            summary: Mutex::new(None),
        });
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", Box::into_raw(job)) }
    })
}

/// # Safety
/// `j` is NULL or a live job handle.
unsafe fn job_arg<'a>(j: *const isoclip_job) -> FfiResult<&'a isoclip_job> {
    if j.is_null() {
        return Err(Failure::NullPointer("job"));
    }
    // SAFETY: live per the contract; jobs are only used through shared references (their
    // mutable state is atomic or behind a mutex).
    Ok(unsafe { &*j })
}

/// Runs the job on the calling thread and returns when it is done, failed or cancelled. Every
/// input shard is checked before any work; then each unfinished shard is projected chunk by
/// chunk, written to a temporary file, synced and renamed. On failure or cancellation the shards
/// finished so far are kept and a later run (of this job after a failure, or of a new job with the
/// same arguments) skips them.
///
/// The progress callback, if any, is called on this thread during the call.
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_CANCELLED` (`isoclip_job_cancel` was called, before or
/// during the run: cancellation is permanent for the job); `ISOCLIP_ERR_IO` (the operating
/// system or an object store refused or failed a request, after the store's retries: the message
/// names the path or URL); `ISOCLIP_ERR_FORMAT`
/// (a shard is not a valid `.npy`); `ISOCLIP_ERR_NON_FINITE_ROW` (a NaN/Inf row under
/// `ISOCLIP_NONFINITE_ERROR`; the message names the shard and the row);
/// `ISOCLIP_ERR_UNREPRESENTABLE` (likewise, a result the output type cannot hold);
/// `ISOCLIP_ERR_RESOURCE_EXHAUSTED` (memory or threads could not be obtained);
/// `ISOCLIP_ERR_UNSUPPORTED` (dtype or layout); `ISOCLIP_ERR_SHAPE` (a shard's column count does
/// not match the projector); `ISOCLIP_ERR_INVALID_ARGUMENT` (output directory inside the input,
/// or locked by another run; `ISOCLIP_PRECISION_BF16` on a CUDA backend);
/// `ISOCLIP_ERR_INVALID_STATE` (the job is already running); `ISOCLIP_ERR_NULL_POINTER`;
/// `ISOCLIP_ERR_DEVICE_UNAVAILABLE` (the GPU failed; `ISOCLIP_PRECISION_BF16` on a CPU without
/// AVX-512 BF16, before any work); `ISOCLIP_ERR_PANIC`.
///
/// Thread-safety: one run of a job at a time; different jobs may run concurrently on different
/// threads (into different output directories).
///
/// # Safety
/// `job` is NULL or a live handle that is not freed during the call.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_run(job: *mut isoclip_job) -> isoclip_status {
    guard("isoclip_job_run", || {
        // SAFETY: per this function's contract.
        let j = unsafe { job_arg(job) }?;
        if j.running.swap(true, Ordering::AcqRel) {
            return Err(Failure::InvalidState(
                "the job is already running on another thread".into(),
            ));
        }
        let _running = RunningGuard(&j.running);
        let sink = CallbackSink {
            callback: j.progress,
            run_thread: std::thread::current().id(),
            rows_done: AtomicU64::new(0),
            rows_total: AtomicU64::new(0),
            shards_done: AtomicU64::new(0),
            shards_total: AtomicU64::new(0),
        };
        let summary = run_job(
            &j.spec,
            &j.projector.aligned,
            j.backend.backend(),
            &sink,
            &j.cancel,
        )?;
        *j.summary.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary);
        Ok(())
    })
}

/// Asks the job to stop. Safe from any thread at any time, including from the progress callback
/// and before the run starts. The run stops at the next chunk boundary, removes its temporary
/// file, keeps finished shards and returns `ISOCLIP_ERR_CANCELLED`; every later run of this job
/// returns it too. Cancelling twice, or after the run finished, does nothing more.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `job` is NULL or a live handle that is not freed during the call.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_cancel(job: *const isoclip_job) -> isoclip_status {
    guard("isoclip_job_cancel", || {
        // SAFETY: per this function's contract.
        let j = unsafe { job_arg(job) }?;
        j.cancel.store(true, Ordering::Relaxed);
        Ok(())
    })
}

/// The summary of the job's last successful run.
fn finished_summary(j: &isoclip_job) -> FfiResult<JobSummary> {
    if j.running.load(Ordering::Acquire) {
        return Err(Failure::InvalidState(
            "the job is running; read its summary after isoclip_job_run returns".into(),
        ));
    }
    j.summary
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| Failure::InvalidState("the job has not finished a run successfully".into()))
}

/// Sets `*out` to a counter of the job's last successful run (`ISOCLIP_JOB_STAT_*`).
///
/// Returns `ISOCLIP_OK`; `ISOCLIP_ERR_INVALID_STATE` (no successful run yet, or the job is
/// running); `ISOCLIP_ERR_INVALID_ARGUMENT` (unknown counter); `ISOCLIP_ERR_NULL_POINTER`;
/// `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `job` is NULL or a live handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_stat(
    job: *const isoclip_job,
    stat: isoclip_job_stat_id,
    out: *mut u64,
) -> isoclip_status {
    guard("isoclip_job_stat", || {
        // SAFETY: per this function's contract.
        let j = unsafe { job_arg(job) }?;
        require_out(out, "out")?;
        let s = finished_summary(j)?;
        let v = match stat {
            ISOCLIP_JOB_STAT_SHARDS_TOTAL => s.shards_total as u64,
            ISOCLIP_JOB_STAT_SHARDS_PROCESSED => s.shards_processed as u64,
            ISOCLIP_JOB_STAT_SHARDS_SKIPPED => s.shards_skipped as u64,
            ISOCLIP_JOB_STAT_ROWS_PROCESSED => s.rows_processed,
            ISOCLIP_JOB_STAT_ROWS_SKIPPED => s.rows_skipped,
            ISOCLIP_JOB_STAT_ZERO_NORM_ROWS => s.zero_norm_rows,
            ISOCLIP_JOB_STAT_NONFINITE_ROWS => s.nonfinite_rows,
            ISOCLIP_JOB_STAT_BYTES_READ => s.bytes_read,
            ISOCLIP_JOB_STAT_BYTES_WRITTEN => s.bytes_written,
            other => {
                return Err(Failure::InvalidArgument(format!(
                    "unknown job statistic {other} (expected an ISOCLIP_JOB_STAT_* value)"
                )))
            }
        };
        // SAFETY: per this function's contract.
        unsafe { write_out(out, "out", v) }
    })
}

/// Copies the summary of the job's last successful run as a JSON object (the output of
/// `isoclip project --json`: counts, timings, throughput, backend, dimensions) into `buf`, with
/// the string convention of `isoclip_projector_fingerprint`.
///
/// Returns `ISOCLIP_OK`, `ISOCLIP_ERR_BUFFER_TOO_SMALL`, `ISOCLIP_ERR_INVALID_STATE` (as for
/// `isoclip_job_stat`), `ISOCLIP_ERR_NULL_POINTER`, `ISOCLIP_ERR_PANIC`.
///
/// # Safety
/// `job` is NULL or a live handle; `buf` is valid for `buf_len` bytes; `out_len` is NULL or valid
/// for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_summary_json(
    job: *const isoclip_job,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> isoclip_status {
    guard("isoclip_job_summary_json", || {
        // SAFETY: per this function's contract.
        let j = unsafe { job_arg(job) }?;
        let s = finished_summary(j)?;
        let json = serde_json::to_string(&s).expect("a summary serialises");
        // SAFETY: per this function's contract.
        unsafe { copy_string_out(&json, "summary", buf, buf_len, out_len) }
    })
}

/// Releases a job (and its references to the projector and backend). NULL is a no-op. The job
/// must not be running.
///
/// # Safety
/// `job` is NULL or a live handle that no other thread uses, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn isoclip_job_free(job: *mut isoclip_job) {
    guard_infallible("isoclip_job_free", (), || {
        if !job.is_null() {
            // SAFETY: a live `Box::into_raw` handle, released once per the contract.
            drop(unsafe { Box::from_raw(job) });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::status::isoclip_status::ISOCLIP_OK;

    #[test]
    fn storage_options_are_copied_and_a_key_set_again_takes_the_new_value() {
        let mut options: *mut isoclip_job_options = std::ptr::null_mut();
        // SAFETY: `options` is valid for a write.
        assert_eq!(unsafe { isoclip_job_options_new(&mut options) }, ISOCLIP_OK);
        let mut value = *b"eu-west-1\0";
        for (key, value) in [
            (c"aws_region".as_ptr(), value.as_ptr().cast::<c_char>()),
            (c"aws_allow_http".as_ptr(), c"true".as_ptr()),
            (c"aws_region".as_ptr(), c"us-east-2".as_ptr()),
        ] {
            // SAFETY: a live handle and NUL-terminated strings.
            let s = unsafe { isoclip_job_options_add_storage_option(options, key, value) };
            assert_eq!(s, ISOCLIP_OK);
        }
        value.fill(b'x'); // the caller's buffer, reused: the options hold a copy
                          // SAFETY: a live handle, read then released once.
        let copy = unsafe { (*options).clone() };
        // SAFETY: as above.
        unsafe { isoclip_job_options_free(options) };
        let want = [
            ("aws_region".to_string(), "us-east-2".to_string()),
            ("aws_allow_http".to_string(), "true".to_string()),
        ];
        assert_eq!(copy.storage_options(), &want[..]);
    }
}
