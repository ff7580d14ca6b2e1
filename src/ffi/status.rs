//! Status codes, the last-error message of each thread, and the panic boundary every export
//! goes through.
//!
//! The boundary is silent: a panic it catches becomes `ISOCLIP_ERR_PANIC` with the panic text as
//! the last-error message, and nothing is printed on the host's stderr (Rust's default panic
//! hook would print the message and, with `RUST_BACKTRACE` set, a backtrace). The first export
//! called installs, once per process, a panic hook that is quiet on a thread running an export
//! and on the CPU backend's own compute threads (`isoclip-cpu-*`, whose panics reach the export
//! that started them), and hands every other panic to the hook that was installed before.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use crate::backend::cpu::BF16_UNAVAILABLE;
use crate::error::Error;
use crate::storage::Location;

/// The outcome of a call. Every function that can fail returns one; `ISOCLIP_OK` (0) is success,
/// anything else is a failure whose message can be read with `isoclip_last_error_message`.
///
/// The values are part of the ABI: they are never renumbered and never reused. New codes may be
/// added, so treat an unknown non-zero value as a failure.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum isoclip_status {
    /// Success.
    ISOCLIP_OK = 0,
    /// An argument is out of range or inconsistent with the others (an unknown enum value, a
    /// row stride smaller than a row, overlapping input and output, an option that does not
    /// apply to this projector).
    ISOCLIP_ERR_INVALID_ARGUMENT = 1,
    /// A pointer argument that must not be NULL was NULL.
    ISOCLIP_ERR_NULL_POINTER = 2,
    /// A caller buffer is too small for the string to copy; the required size was written to the
    /// size out-parameter and, when the buffer has room for at least one byte, a NUL-terminated
    /// prefix was copied.
    ISOCLIP_ERR_BUFFER_TOO_SMALL = 3,
    /// The operating system refused a read, write, rename or sync (the message names the path).
    ISOCLIP_ERR_IO = 4,
    /// A file is not what its format promises (truncated, bad header, checksum mismatch).
    ISOCLIP_ERR_FORMAT = 5,
    /// A well-formed file uses something this version does not support (dtype, layout, format
    /// version).
    ISOCLIP_ERR_UNSUPPORTED = 6,
    /// Two dimensions that must agree do not (the message names both numbers).
    ISOCLIP_ERR_SHAPE = 7,
    /// A checkpoint lacks the tensors needed.
    ISOCLIP_ERR_TENSOR_NOT_FOUND = 8,
    /// NaN or Inf in projector weights or biases.
    ISOCLIP_ERR_NON_FINITE = 9,
    /// An input row holds NaN or Inf under `ISOCLIP_NONFINITE_ERROR`: of `isoclip_project`, the
    /// message names the lowest such row (0-based; the output buffer's content is then
    /// unspecified); of a job, the shard and its row.
    ISOCLIP_ERR_NON_FINITE_ROW = 10,
    /// The band keeps no direction (`k_top + k_bottom >= r`), or keeps directions whose singular
    /// value is zero (Ψ has rank below r; the message names the rank).
    ISOCLIP_ERR_BAND = 11,
    /// A numerical routine failed (the SVD did not converge), or the weights cannot give finite
    /// f32 maps (all zero, or a largest |weight| outside [2^-40, 2^40]).
    ISOCLIP_ERR_NUMERICAL = 12,
    /// The job was cancelled with `isoclip_job_cancel`.
    ISOCLIP_ERR_CANCELLED = 13,
    /// The requested device (a GPU) is not usable in this build or on this machine, or the CPU
    /// lacks what the requested precision needs (`ISOCLIP_PRECISION_BF16`: AVX-512 BF16).
    ISOCLIP_ERR_DEVICE_UNAVAILABLE = 14,
    /// The call is not valid in the object's current state (running a job that is already
    /// running, reading the summary of a job that has not finished a run).
    ISOCLIP_ERR_INVALID_STATE = 15,
    /// A finite row's result cannot be represented in the output type (an unnormalised value
    /// beyond ±65504 in f16, or beyond the f32 range); the message names the row (and the shard,
    /// in a job). Under `ISOCLIP_NONFINITE_ZERO` such rows are zeros counted in `nonfinite_rows`.
    ISOCLIP_ERR_UNREPRESENTABLE = 16,
    /// Memory or threads could not be obtained (an allocation failed under an address-space
    /// limit, the system refused to start the requested threads).
    ISOCLIP_ERR_RESOURCE_EXHAUSTED = 17,
    /// A bug: the library panicked. The message holds the panic text. The objects passed to the
    /// call remain valid to free, but their state is unspecified.
    ISOCLIP_ERR_PANIC = 255,
}

use isoclip_status::*;

/// Every status, for tests and for `isoclip_status_name`.
pub(crate) const ALL_STATUSES: [isoclip_status; 19] = [
    ISOCLIP_OK,
    ISOCLIP_ERR_INVALID_ARGUMENT,
    ISOCLIP_ERR_NULL_POINTER,
    ISOCLIP_ERR_BUFFER_TOO_SMALL,
    ISOCLIP_ERR_IO,
    ISOCLIP_ERR_FORMAT,
    ISOCLIP_ERR_UNSUPPORTED,
    ISOCLIP_ERR_SHAPE,
    ISOCLIP_ERR_TENSOR_NOT_FOUND,
    ISOCLIP_ERR_NON_FINITE,
    ISOCLIP_ERR_NON_FINITE_ROW,
    ISOCLIP_ERR_BAND,
    ISOCLIP_ERR_NUMERICAL,
    ISOCLIP_ERR_CANCELLED,
    ISOCLIP_ERR_DEVICE_UNAVAILABLE,
    ISOCLIP_ERR_INVALID_STATE,
    ISOCLIP_ERR_UNREPRESENTABLE,
    ISOCLIP_ERR_RESOURCE_EXHAUSTED,
    ISOCLIP_ERR_PANIC,
];

impl isoclip_status {
    /// The status's identifier as a NUL-terminated static string.
    pub fn name(self) -> &'static CStr {
        match self {
            ISOCLIP_OK => c"ISOCLIP_OK",
            ISOCLIP_ERR_INVALID_ARGUMENT => c"ISOCLIP_ERR_INVALID_ARGUMENT",
            ISOCLIP_ERR_NULL_POINTER => c"ISOCLIP_ERR_NULL_POINTER",
            ISOCLIP_ERR_BUFFER_TOO_SMALL => c"ISOCLIP_ERR_BUFFER_TOO_SMALL",
            ISOCLIP_ERR_IO => c"ISOCLIP_ERR_IO",
            ISOCLIP_ERR_FORMAT => c"ISOCLIP_ERR_FORMAT",
            ISOCLIP_ERR_UNSUPPORTED => c"ISOCLIP_ERR_UNSUPPORTED",
            ISOCLIP_ERR_SHAPE => c"ISOCLIP_ERR_SHAPE",
            ISOCLIP_ERR_TENSOR_NOT_FOUND => c"ISOCLIP_ERR_TENSOR_NOT_FOUND",
            ISOCLIP_ERR_NON_FINITE => c"ISOCLIP_ERR_NON_FINITE",
            ISOCLIP_ERR_NON_FINITE_ROW => c"ISOCLIP_ERR_NON_FINITE_ROW",
            ISOCLIP_ERR_BAND => c"ISOCLIP_ERR_BAND",
            ISOCLIP_ERR_NUMERICAL => c"ISOCLIP_ERR_NUMERICAL",
            ISOCLIP_ERR_CANCELLED => c"ISOCLIP_ERR_CANCELLED",
            ISOCLIP_ERR_DEVICE_UNAVAILABLE => c"ISOCLIP_ERR_DEVICE_UNAVAILABLE",
            ISOCLIP_ERR_INVALID_STATE => c"ISOCLIP_ERR_INVALID_STATE",
            ISOCLIP_ERR_UNREPRESENTABLE => c"ISOCLIP_ERR_UNREPRESENTABLE",
            ISOCLIP_ERR_RESOURCE_EXHAUSTED => c"ISOCLIP_ERR_RESOURCE_EXHAUSTED",
            ISOCLIP_ERR_PANIC => c"ISOCLIP_ERR_PANIC",
        }
    }
}

/// Why an exported call failed: a core error, or something only the C boundary can get wrong.
#[derive(Debug)]
pub enum Failure {
    Core(Error),
    /// A required pointer argument (named) was NULL.
    NullPointer(&'static str),
    /// A string did not fit the caller's buffer.
    BufferTooSmall {
        what: &'static str,
        have: usize,
        need: usize,
    },
    /// An argument the core never sees is invalid (unknown enum value, a NUL-free string, ...).
    InvalidArgument(String),
    InvalidState(String),
    Panic(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Core(e)
    }
}

pub type FfiResult<T> = Result<T, Failure>;

impl Failure {
    /// The one place where errors become C statuses.
    pub fn status(&self) -> isoclip_status {
        match self {
            Failure::Core(e) => match e.root() {
                Error::Io { .. } | Error::Storage { .. } => ISOCLIP_ERR_IO,
                Error::Format { .. } => ISOCLIP_ERR_FORMAT,
                Error::Unsupported { .. } => ISOCLIP_ERR_UNSUPPORTED,
                Error::Shape(_) => ISOCLIP_ERR_SHAPE,
                Error::TensorNotFound { .. } => ISOCLIP_ERR_TENSOR_NOT_FOUND,
                Error::NonFinite(_) => ISOCLIP_ERR_NON_FINITE,
                Error::NonFiniteRow { .. } => ISOCLIP_ERR_NON_FINITE_ROW,
                Error::Band(_) => ISOCLIP_ERR_BAND,
                Error::Numerical(_) => ISOCLIP_ERR_NUMERICAL,
                Error::InvalidArgument(_) => ISOCLIP_ERR_INVALID_ARGUMENT,
                Error::Cancelled => ISOCLIP_ERR_CANCELLED,
                Error::DeviceUnavailable(_) => ISOCLIP_ERR_DEVICE_UNAVAILABLE,
                Error::Unrepresentable { .. } => ISOCLIP_ERR_UNREPRESENTABLE,
                Error::ResourceExhausted(_) => ISOCLIP_ERR_RESOURCE_EXHAUSTED,
                Error::InFile { .. } => unreachable!("root() looks through InFile"),
            },
            Failure::NullPointer(_) => ISOCLIP_ERR_NULL_POINTER,
            Failure::BufferTooSmall { .. } => ISOCLIP_ERR_BUFFER_TOO_SMALL,
            Failure::InvalidArgument(_) => ISOCLIP_ERR_INVALID_ARGUMENT,
            Failure::InvalidState(_) => ISOCLIP_ERR_INVALID_STATE,
            Failure::Panic(_) => ISOCLIP_ERR_PANIC,
        }
    }

    /// The message for a C caller, prefixed with the function that failed.
    fn message(&self, function: &str) -> String {
        let text = match self {
            // The core's wording is front-end neutral; C callers get the option that applies.
            Failure::Core(e) => match e.root() {
                Error::NonFiniteRow { .. } | Error::Unrepresentable { .. } => format!(
                    "{e} (set ISOCLIP_NONFINITE_ZERO with \
                     isoclip_projection_options_set_nonfinite to write zeros for such rows instead)"
                ),
                // bf16 on a CPU without AVX-512 BF16: no other device helps, f32 does.
                Error::DeviceUnavailable(m) if m == BF16_UNAVAILABLE => format!(
                    "{e} (set ISOCLIP_PRECISION_F32 with isoclip_projection_options_set_precision \
                     or isoclip_job_options_set_precision)"
                ),
                Error::DeviceUnavailable(_) => {
                    format!("{e} (ISOCLIP_DEVICE_AUTO falls back to the CPU)")
                }
                _ => e.to_string(),
            },
            Failure::NullPointer(arg) => format!("argument `{arg}` must not be NULL"),
            Failure::BufferTooSmall { what, have, need } => format!(
                "the buffer for the {what} holds {have} bytes but {need} are needed \
                 (including the terminating NUL)"
            ),
            Failure::InvalidArgument(m) | Failure::InvalidState(m) => m.clone(),
            Failure::Panic(m) => format!("isoclip panicked (this is a bug, please report it): {m}"),
        };
        format!("{function}: {text}")
    }
}

thread_local! {
    /// The message of the last failed call on this thread ("" before any failure).
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    /// The OS error code (errno) behind the last failed call on this thread, 0 if none.
    static LAST_OS_CODE: Cell<i32> = const { Cell::new(0) };
}

impl Failure {
    /// The `errno` of the operating-system error at the bottom of this failure, 0 if there is
    /// none: the first `std::io::Error` with a raw OS code in the core error's source chain.
    fn os_code(&self) -> i32 {
        let Failure::Core(e) = self else { return 0 };
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e.root());
        while let Some(err) = next {
            if let Some(code) = err
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
            {
                return code;
            }
            next = err.source();
        }
        0
    }

    /// A string query with `buf_len == 0`: the caller asks for the size, which is not an error
    /// worth replacing the thread's last message for.
    fn is_size_query(&self) -> bool {
        matches!(self, Failure::BufferTooSmall { have: 0, .. })
    }
}

/// Records a failure as the calling thread's last error (message and OS code), except a size
/// query, which leaves both alone.
fn record_failure(failure: &Failure, function: &str) {
    if failure.is_size_query() {
        return;
    }
    set_last_error(failure.message(function));
    LAST_OS_CODE.with(|c| c.set(failure.os_code()));
}

fn set_last_error(message: String) {
    // Interior NULs (from a path, say) would cut the C string short: make them visible instead.
    let bytes: Vec<u8> = message
        .into_bytes()
        .into_iter()
        .map(|b| if b == 0 { b'?' } else { b })
        .collect();
    let c = CString::new(bytes).expect("NUL bytes were replaced");
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

thread_local! {
    /// How many exports are running on this thread (an export may call another).
    static EXPORTS_RUNNING: Cell<u32> = const { Cell::new(0) };
}

/// Whether a panic on the current thread will be caught by the FFI boundary.
fn panic_is_caught_here() -> bool {
    EXPORTS_RUNNING.with(|c| c.get() > 0)
        || std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("isoclip-cpu-"))
}

fn install_quiet_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !panic_is_caught_here() {
                previous(info);
            }
        }));
    });
}

/// `catch_unwind` without output: the panic's text travels in the payload only.
fn catch_quietly<R>(body: impl FnOnce() -> R) -> std::thread::Result<R> {
    install_quiet_panic_hook();
    EXPORTS_RUNNING.with(|c| c.set(c.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(body));
    EXPORTS_RUNNING.with(|c| c.set(c.get() - 1));
    result
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs the body of an export: catches panics, turns failures into a status and stores their
/// message for this thread. `function` is the export's C name, used in the message.
pub fn guard(function: &str, body: impl FnOnce() -> FfiResult<()>) -> isoclip_status {
    let failure = match catch_quietly(body) {
        Ok(Ok(())) => return ISOCLIP_OK,
        Ok(Err(f)) => f,
        Err(payload) => Failure::Panic(panic_text(payload.as_ref())),
    };
    record_failure(&failure, function);
    failure.status()
}

/// Like [`guard`] for functions that cannot report a status (`*_free`, pure queries): a panic is
/// swallowed, leaving its message as the thread's last error, and `fallback` is returned.
pub fn guard_infallible<T>(function: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_quietly(body) {
        Ok(v) => v,
        Err(payload) => {
            record_failure(&Failure::Panic(panic_text(payload.as_ref())), function);
            fallback
        }
    }
}

/// Writes `value` to a required out-parameter.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub unsafe fn write_out<T>(out: *mut T, name: &'static str, value: T) -> FfiResult<()> {
    if out.is_null() {
        return Err(Failure::NullPointer(name));
    }
    // SAFETY: non-NULL and, per this function's contract, valid for a write.
    unsafe { out.write(value) };
    Ok(())
}

/// Checks a required out-parameter before the work that produces its value, so that a NULL is
/// reported before anything is computed or allocated.
pub fn require_out<T>(out: *mut T, name: &'static str) -> FfiResult<()> {
    if out.is_null() {
        Err(Failure::NullPointer(name))
    } else {
        Ok(())
    }
}

/// Borrows a required NUL-terminated string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the returned borrow.
pub unsafe fn c_str_arg<'a>(p: *const c_char, name: &'static str) -> FfiResult<&'a CStr> {
    if p.is_null() {
        return Err(Failure::NullPointer(name));
    }
    // SAFETY: non-NULL and NUL-terminated per this function's contract.
    Ok(unsafe { CStr::from_ptr(p) })
}

/// A path from a NUL-terminated string: its bytes as they are on Unix, UTF-8 elsewhere.
///
/// # Safety
/// As for [`c_str_arg`].
pub unsafe fn path_arg(p: *const c_char, name: &'static str) -> FfiResult<std::path::PathBuf> {
    // SAFETY: forwarded contract.
    let s = unsafe { c_str_arg(p, name) }?;
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::ffi::OsStr::from_bytes(s.to_bytes()).into())
    }
    #[cfg(not(unix))]
    {
        s.to_str()
            .map(Into::into)
            .map_err(|_| Failure::InvalidArgument(format!("argument `{name}` is not valid UTF-8")))
    }
}

/// A place from a NUL-terminated string: a URL when it starts with `scheme://` (checked by
/// [`Location::parse`]: a malformed URL is an invalid argument naming it), a path otherwise
/// (its bytes as they are, on Unix, even when they are not UTF-8).
///
/// # Safety
/// As for [`c_str_arg`].
pub unsafe fn location_arg(p: *const c_char, name: &'static str) -> FfiResult<Location> {
    // SAFETY: forwarded contract.
    let s = unsafe { c_str_arg(p, name) }?;
    match s.to_str() {
        Ok(text) => Ok(Location::parse(text)?),
        // SAFETY: forwarded contract.
        Err(_) => Ok(Location::Path(unsafe { path_arg(p, name) }?)),
    }
}

/// A copy of a required NUL-terminated UTF-8 string argument.
///
/// # Safety
/// As for [`c_str_arg`].
pub unsafe fn utf8_arg(p: *const c_char, name: &'static str) -> FfiResult<String> {
    // SAFETY: forwarded contract.
    let s = unsafe { c_str_arg(p, name) }?;
    s.to_str()
        .map(str::to_owned)
        .map_err(|_| Failure::InvalidArgument(format!("argument `{name}` is not valid UTF-8")))
}

/// Borrows `len` elements at `p` (a caller array). `len == 0` is valid with any pointer, NULL
/// included; otherwise `p` must be non-NULL and aligned for `T`, and the array must fit in memory.
///
/// # Safety
/// When `len > 0`, `p` points to `len` initialised elements that stay valid and unmodified for
/// the returned borrow.
pub unsafe fn slice_arg<'a, T>(p: *const T, len: usize, name: &'static str) -> FfiResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::NullPointer(name));
    }
    if !p.is_aligned() {
        return Err(Failure::InvalidArgument(format!(
            "argument `{name}` is not aligned to {} bytes",
            align_of::<T>()
        )));
    }
    if len
        .checked_mul(size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Failure::InvalidArgument(format!(
            "argument `{name}`: {len} elements do not fit in memory"
        )));
    }
    // SAFETY: non-NULL, aligned, size checked above; validity and lifetime per the contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// `rows * cols`, or an error naming the argument when it overflows.
pub fn element_count(rows: usize, cols: usize, name: &'static str) -> FfiResult<usize> {
    rows.checked_mul(cols).ok_or_else(|| {
        Failure::InvalidArgument(format!(
            "`{name}`: {rows} x {cols} elements overflow size_t"
        ))
    })
}

/// Copies `s` and a terminating NUL into a caller buffer, the string convention of the whole API:
/// `*out_len` (when `out_len` is not NULL) receives the size needed, NUL included; if `buf_len`
/// is smaller, the call fails with `BufferTooSmall` after copying the longest prefix that fits
/// (cut at a UTF-8 boundary, NUL-terminated) when `buf_len > 0`.
///
/// # Safety
/// `buf` is valid for `buf_len` bytes of writes (any pointer when `buf_len == 0`); `out_len` is
/// NULL or valid for a write.
pub unsafe fn copy_string_out(
    s: &str,
    what: &'static str,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> FfiResult<()> {
    let need = s.len() + 1;
    if !out_len.is_null() {
        // SAFETY: non-NULL and valid for a write per the contract.
        unsafe { out_len.write(need) };
    }
    if buf_len == 0 {
        return Err(Failure::BufferTooSmall {
            what,
            have: 0,
            need,
        });
    }
    if buf.is_null() {
        return Err(Failure::NullPointer("buf"));
    }
    let fits = if need <= buf_len {
        s.len()
    } else {
        let mut n = buf_len - 1;
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        n
    };
    // SAFETY: `buf` is valid for `buf_len >= fits + 1` bytes and cannot overlap `s`, which the
    // library owns.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), fits);
        buf.add(fits).write(0);
    }
    if need <= buf_len {
        Ok(())
    } else {
        Err(Failure::BufferTooSmall {
            what,
            have: buf_len,
            need,
        })
    }
}

/// The size in bytes, terminating NUL included, of the message of the last failed call on the
/// calling thread: always at least 1 (an empty message before any failure).
///
/// Allocate that many bytes and pass them to `isoclip_last_error_message`. Successful calls leave
/// the message alone (like `errno`), and so do size queries (any string function called with
/// `buf_len == 0`, which returns `ISOCLIP_ERR_BUFFER_TOO_SMALL` and the size); read it right
/// after the failing call, on the same thread.
///
/// Thread-safety: each thread has its own message. Never fails.
#[no_mangle]
pub extern "C" fn isoclip_last_error_length() -> usize {
    guard_infallible("isoclip_last_error_length", 1, || {
        LAST_ERROR.with(|e| e.borrow().as_bytes_with_nul().len())
    })
}

/// Copies the message of the last failed call on the calling thread into `buf` (UTF-8,
/// NUL-terminated).
///
/// `buf` must be valid for `buf_len` bytes (any pointer, even NULL, when `buf_len == 0`). If
/// `out_len` is not NULL it receives the size needed, NUL included. The stored message is never
/// changed by this function: a copy into a buffer that is too small can be retried with a larger
/// one.
///
/// Returns:
/// - `ISOCLIP_OK`: the whole message was copied;
/// - `ISOCLIP_ERR_BUFFER_TOO_SMALL`: `buf_len` is smaller than the message; if `buf_len > 0`,
///   `buf` holds the longest NUL-terminated prefix that fits (cut at a UTF-8 boundary);
/// - `ISOCLIP_ERR_NULL_POINTER`: `buf` is NULL with `buf_len > 0`.
///
/// Thread-safety: each thread has its own message.
///
/// # Safety
/// `buf` is valid for `buf_len` bytes of writes; `out_len` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn isoclip_last_error_message(
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> isoclip_status {
    // Not through `guard`: a failure here must not replace the message being read.
    let copy = || {
        LAST_ERROR.with(|e| {
            let message = e.borrow();
            let text = message.to_str().unwrap_or("(message is not UTF-8)");
            // SAFETY: the caller's contract is this function's.
            match unsafe { copy_string_out(text, "error message", buf, buf_len, out_len) } {
                Ok(()) => ISOCLIP_OK,
                Err(f) => f.status(),
            }
        })
    };
    catch_quietly(copy).unwrap_or(ISOCLIP_ERR_PANIC)
}

/// The operating-system error code (`errno`, such as `ENOENT`) behind the last failed call on
/// the calling thread, or 0 when that failure did not come from the operating system (or before
/// any failure). It is set together with the message, so read both after the same failure;
/// `ISOCLIP_ERR_IO` failures usually have one.
///
/// Thread-safety: each thread has its own. Never fails.
#[no_mangle]
pub extern "C" fn isoclip_last_error_os_code() -> i32 {
    guard_infallible("isoclip_last_error_os_code", 0, || {
        LAST_OS_CODE.with(Cell::get)
    })
}

/// The identifier of a status as a static NUL-terminated string (`"ISOCLIP_ERR_IO"`), or
/// `"ISOCLIP_UNKNOWN_STATUS"` for a value this version does not define.
///
/// The string is owned by the library and valid for the life of the process; do not free it.
/// Thread-safety: any thread. Never fails.
#[no_mangle]
pub extern "C" fn isoclip_status_name(status: i32) -> *const c_char {
    guard_infallible("isoclip_status_name", c"ISOCLIP_ERR_PANIC".as_ptr(), || {
        ALL_STATUSES
            .iter()
            .find(|s| **s as i32 == status)
            .map_or(c"ISOCLIP_UNKNOWN_STATUS", |s| s.name())
            .as_ptr()
    })
}

/// Runs a setter on a live options handle of any kind, inside the panic guard; a NULL handle is
/// `ISOCLIP_ERR_NULL_POINTER`.
///
/// # Safety
/// `options` is NULL or a live handle that no other thread uses during the call.
pub(crate) unsafe fn set_option<T>(
    function: &str,
    options: *mut T,
    set: impl FnOnce(&mut T) -> FfiResult<()>,
) -> isoclip_status {
    guard(function, || {
        if options.is_null() {
            return Err(Failure::NullPointer("options"));
        }
        // SAFETY: live and exclusively ours for this call per the contract.
        set(unsafe { &mut *options })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_message() -> String {
        let n = isoclip_last_error_length();
        let mut buf = vec![0 as c_char; n];
        // SAFETY: `buf` holds `n` bytes.
        let s = unsafe { isoclip_last_error_message(buf.as_mut_ptr(), n, std::ptr::null_mut()) };
        assert_eq!(s, ISOCLIP_OK);
        // SAFETY: the library wrote a NUL-terminated string into `buf`.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_panic_becomes_the_panic_status_with_its_text() {
        let s = guard("isoclip_test", || panic!("boom {}", 42));
        assert_eq!(s, ISOCLIP_ERR_PANIC);
        assert_eq!(
            last_message(),
            "isoclip_test: isoclip panicked (this is a bug, please report it): boom 42"
        );
        let v = guard_infallible("isoclip_test_infallible", 7, || -> i32 { panic!("static") });
        assert_eq!(v, 7);
        assert!(last_message().ends_with(": static"));
    }

    #[test]
    fn statuses_have_distinct_values_and_names() {
        let mut values: Vec<i32> = ALL_STATUSES.iter().map(|s| *s as i32).collect();
        values.sort();
        values.dedup();
        assert_eq!(values.len(), ALL_STATUSES.len());
        for s in ALL_STATUSES {
            // SAFETY: the library returns static NUL-terminated strings.
            let name = unsafe { CStr::from_ptr(isoclip_status_name(s as i32)) };
            assert_eq!(name, s.name());
            assert!(format!("{s:?}") == name.to_str().unwrap());
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(isoclip_status_name(77)) };
        assert_eq!(unknown, c"ISOCLIP_UNKNOWN_STATUS");
    }

    #[test]
    fn a_cpu_without_bf16_is_device_unavailable_naming_the_f32_setting() {
        let s = guard("isoclip_test", || {
            Err(Failure::Core(crate::backend::cpu::bf16_unavailable()))
        });
        assert_eq!(s, ISOCLIP_ERR_DEVICE_UNAVAILABLE);
        let m = last_message();
        assert!(m.starts_with("isoclip_test: bf16 precision needs a CPU with AVX-512 BF16"));
        assert!(
            m.ends_with("(set ISOCLIP_PRECISION_F32 with isoclip_projection_options_set_precision or isoclip_job_options_set_precision)"),
            "{m}"
        );
        // Another device failure keeps the device hint.
        let s = guard("isoclip_test", || {
            Err(Failure::Core(Error::DeviceUnavailable("no GPU".into())))
        });
        assert_eq!(s, ISOCLIP_ERR_DEVICE_UNAVAILABLE);
        assert_eq!(
            last_message(),
            "isoclip_test: no GPU (ISOCLIP_DEVICE_AUTO falls back to the CPU)"
        );
    }

    #[test]
    fn a_short_buffer_gets_a_prefix_and_keeps_the_message() {
        let s = guard("isoclip_test", || {
            Err(Failure::Core(Error::Shape("héllo wörld".into())))
        });
        assert_eq!(s, ISOCLIP_ERR_SHAPE);
        let full = "isoclip_test: héllo wörld";
        assert_eq!(isoclip_last_error_length(), full.len() + 1);
        let mut buf = [0x55 as c_char; 17];
        let mut need = 0usize;
        // 16 bytes of text would cut "é" in half after "isoclip_test: h": the copy stops before it.
        // SAFETY: `buf` holds 17 bytes; `need` is a valid out-parameter.
        let s = unsafe { isoclip_last_error_message(buf.as_mut_ptr(), 17, &mut need) };
        assert_eq!(s, ISOCLIP_ERR_BUFFER_TOO_SMALL);
        assert_eq!(need, full.len() + 1);
        // SAFETY: NUL-terminated by the library.
        let prefix = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(prefix.to_str().unwrap(), "isoclip_test: h");
        // SAFETY: NULL with length 0 is allowed.
        let s = unsafe { isoclip_last_error_message(std::ptr::null_mut(), 0, &mut need) };
        assert_eq!(s, ISOCLIP_ERR_BUFFER_TOO_SMALL);
        // SAFETY: NULL with a non-zero length is reported, not dereferenced.
        let s = unsafe { isoclip_last_error_message(std::ptr::null_mut(), 4, &mut need) };
        assert_eq!(s, ISOCLIP_ERR_NULL_POINTER);
        assert_eq!(last_message(), full);
    }
}
