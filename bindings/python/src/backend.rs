//! The CPU backend `Projector.project` uses: one per process, on a thread pool of its own (never
//! rayon's global pool, whose threads a forked child lacks), made on first use and made again
//! in the child of a `fork` — Spark's Python worker daemon forks its workers from a process that
//! may already have projected. The C ABI's default backend follows the same rule
//! (`src/ffi/project.rs`); this one is keyed on the process id, which changes at every fork.

use std::sync::{Arc, Mutex};

use isoclip::backend::cpu::CpuBackend;
use isoclip::backend::{select_backend, Backend, DeviceChoice};

/// The backend and the process it was made in.
struct Current {
    pid: u32,
    backend: Arc<dyn Backend>,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);

/// One compute thread per core this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The process's CPU backend, made on first use and after every `fork`.
pub fn shared_cpu() -> isoclip::Result<Arc<dyn Backend>> {
    let pid = std::process::id();
    // A panic while holding the lock cannot leave the slot half-written: take it anyway.
    let mut slot = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = slot.as_ref().filter(|c| c.pid == pid) {
        return Ok(c.backend.clone());
    }
    let fresh: Arc<dyn Backend> = Arc::new(CpuBackend::new(Some(default_threads()))?);
    if let Some(stale) = slot.replace(Current {
        pid,
        backend: fresh.clone(),
    }) {
        // Made before a fork: its pool's threads do not exist here, so it cannot be shut down
        // (rayon would wait for them). Leaked on purpose, once per fork.
        std::mem::forget(stale);
    }
    Ok(fresh)
}

/// A backend for one job: `device` as the CLI's `--device`, with `threads` compute threads
/// (default: one per core; always a pool of the job's own, so a forked child works).
pub fn for_job(
    device: &str,
    threads: Option<usize>,
) -> isoclip::Result<(Box<dyn Backend>, Option<String>)> {
    let choice = DeviceChoice::parse(device).ok_or_else(|| {
        isoclip::Error::invalid(format!(
            "unknown device {device:?} (expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\")"
        ))
    })?;
    let threads = match threads {
        None | Some(0) => default_threads(),
        Some(n) => n,
    };
    select_backend(choice, Some(threads))
}
