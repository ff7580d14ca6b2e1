//! SIGINT and SIGTERM for the command line.
//!
//! The handler does no work beyond async-signal-safe calls: it records the signal and sets
//! [`CANCEL`]. What happens next depends on what the command is doing:
//! - inside [`cooperative`] (a `project`, `gallery` or the demo's long steps), the run polls
//!   [`CANCEL`] between chunks, removes its temporary file, keeps what is finished and returns
//!   `Error::Cancelled`; `cli::main` then exits 128 + the signal (130 for SIGINT, 143 for
//!   SIGTERM). The handler is one-shot: a second signal takes the default action at once.
//! - anywhere else (a fit, an evaluation), the handler removes the temporary file registered
//!   with [`remove_on_signal`] (`unlink` is async-signal-safe) and exits 128 + the signal at once,
//!   so an interrupted atomic write leaves neither a partial file nor its temporary.

use std::ffi::{c_char, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};

/// Set by the first SIGINT/SIGTERM; runs poll it between chunks.
pub static CANCEL: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static COOPERATIVE: AtomicBool = AtomicBool::new(false);
static CLEANUP: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
    CANCEL.store(true, Ordering::SeqCst);
    if COOPERATIVE.load(Ordering::SeqCst) {
        return;
    }
    let path = CLEANUP.load(Ordering::SeqCst);
    // SAFETY: `path` is null or a NUL-terminated string leaked by `remove_on_signal` (never
    // freed); unlink and _exit are async-signal-safe.
    unsafe {
        if !path.is_null() {
            libc::unlink(path);
        }
        libc::_exit(128 + sig);
    }
}

/// Installs the handler for SIGINT and SIGTERM (once, at start-up).
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // touches atomics and async-signal-safe calls. SA_RESETHAND makes a second signal take
        // the default action.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// The exit code for an interrupted command: 128 + the signal (130 when none was recorded).
pub fn exit_code() -> i32 {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => 128 + libc::SIGINT,
        s => 128 + s,
    }
}

/// While alive, a signal only sets [`CANCEL`]: the running job stops at its next chunk.
pub struct Cooperative(());

pub fn cooperative() -> Cooperative {
    COOPERATIVE.store(true, Ordering::SeqCst);
    Cooperative(())
}

impl Drop for Cooperative {
    fn drop(&mut self) {
        COOPERATIVE.store(false, Ordering::SeqCst);
    }
}

/// While alive, a signal (outside [`cooperative`]) removes `path` before exiting.
pub struct RemoveOnSignal(());

pub fn remove_on_signal(path: &Path) -> RemoveOnSignal {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // Leaked on purpose: the handler may read it at any moment, so it is never freed.
        CLEANUP.store(c.into_raw(), Ordering::SeqCst);
    }
    RemoveOnSignal(())
}

impl Drop for RemoveOnSignal {
    fn drop(&mut self) {
        CLEANUP.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

/// Writes `path` through `write` (an atomic writer that uses `formats::temporary_path(path)`)
/// so that a signal in the middle removes the temporary file.
pub fn atomic_output<T>(path: &Path, write: impl FnOnce() -> T) -> T {
    let _guard = remove_on_signal(&isoclip::formats::temporary_path(path));
    write()
}
