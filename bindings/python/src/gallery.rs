//! `isoclip.project_gallery`: the resumable job of `isoclip project`, run by `engine::run_job`
//! on a Rust thread while the calling thread (GIL released between polls) polls it every
//! 100 ms: it hands the progress to the Python-side reporter (a tqdm bar, or log lines) and
//! calls `check_signals`, so Ctrl-C sets the job's cancel flag, waits for the job to stop at its
//! next chunk (finished shards kept) and re-raises KeyboardInterrupt.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isoclip::backend::{DeviceChoice, ElemType, Precision, ProjectionOptions};
use isoclip::engine::{run_job, JobSpec, JobSummary, ProgressSink, ShardSelection};
use isoclip::storage::Location;
use isoclip::{AlignedProjector, Error};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::IntoPy;
use crate::options;
use crate::projector::Projector;

const POLL: Duration = Duration::from_millis(100);

/// Progress of the job, read by the polling Python thread.
#[derive(Default)]
struct Progress {
    started: AtomicBool,
    rows_total: AtomicU64,
    shards_total: AtomicUsize,
    rows_done: AtomicU64,
    /// Shards finished (name, skipped) since the last poll.
    finished: Mutex<Vec<(String, bool)>>,
}

impl ProgressSink for Progress {
    fn start(&self, rows: u64, shards: usize) {
        self.rows_total.store(rows, Ordering::SeqCst);
        self.shards_total.store(shards, Ordering::SeqCst);
        self.started.store(true, Ordering::SeqCst);
    }
    fn advance(&self, rows: u64) {
        self.rows_done.fetch_add(rows, Ordering::SeqCst);
    }
    fn shard_done(&self, name: &str, skipped: bool) {
        let mut f = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        f.push((name.to_string(), skipped));
    }
}

/// Hands what happened since the last poll to the Python reporter (`isoclip._progress`).
fn report(reporter: &Bound<'_, PyAny>, p: &Progress, announced: &mut bool) -> PyResult<()> {
    if !p.started.load(Ordering::SeqCst) {
        return Ok(());
    }
    if !*announced {
        *announced = true;
        reporter.call_method1(
            "start",
            (
                p.rows_total.load(Ordering::SeqCst),
                p.shards_total.load(Ordering::SeqCst),
            ),
        )?;
    }
    let finished = std::mem::take(&mut *p.finished.lock().unwrap_or_else(|e| e.into_inner()));
    reporter.call_method1("update", (p.rows_done.load(Ordering::SeqCst), finished))?;
    Ok(())
}

/// The projector argument: a `Projector`, or a path or URL to load.
fn resolve_projector(
    py: Python<'_>,
    projector: &Bound<'_, PyAny>,
    storage_options: &[(String, String)],
) -> PyResult<(Arc<AlignedProjector>, Option<String>)> {
    if let Ok(p) = projector.cast::<Projector>() {
        return Ok((p.get().inner.clone(), None));
    }
    let text: String = match projector.extract::<std::path::PathBuf>() {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(_) => {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "projector must be an isoclip.Projector, a path or a URL",
            ))
        }
    };
    let opts = storage_options.to_vec();
    let t = text.clone();
    let loaded = py
        .detach(move || isoclip::storage::load_projector(&Location::parse(&t)?, &opts))
        .py(py)?;
    Ok((Arc::new(loaded), Some(text)))
}

/// The summary as the CLI's `--json` prints it, as a dict.
fn summary_dict<'py>(
    py: Python<'py>,
    s: &JobSummary,
    synthetic: bool,
    notice: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut v = serde_json::to_value(s).expect("serialises");
    v["synthetic"] = synthetic.into();
    if let Some(n) = notice {
        v["notice"] = n.into();
    }
    let text = serde_json::to_string(&v).expect("serialises");
    py.import("json")?.call_method1("loads", (text,))
}

#[pyfunction]
#[pyo3(signature = (input, output, projector, *, form="compact", dtype=None, kind="features", modality=None, normalize=true, nonfinite="error", precision="f32", num_shards=None, shard_index=None, storage_options=None, overwrite=false, trust_outputs=false, device="auto", threads=None, progress=true, chunk_bytes=0))]
#[allow(clippy::too_many_arguments)]
pub fn project_gallery<'py>(
    py: Python<'py>,
    input: std::path::PathBuf,
    output: std::path::PathBuf,
    projector: &Bound<'py, PyAny>,
    form: &str,
    dtype: Option<&Bound<'py, PyAny>>,
    kind: &str,
    modality: Option<&str>,
    normalize: bool,
    nonfinite: &str,
    precision: &str,
    num_shards: Option<usize>,
    shard_index: Option<usize>,
    storage_options: Option<&Bound<'py, PyDict>>,
    overwrite: bool,
    trust_outputs: bool,
    device: &str,
    threads: Option<usize>,
    progress: bool,
    chunk_bytes: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let storage = options::storage_options(storage_options)?;
    let output_elem = match dtype {
        Some(d) => options::output_dtype(py, d)?,
        None => ElemType::F16,
    };
    let mut spec = JobSpec::new(
        Location::parse(&input.to_string_lossy()).py(py)?,
        Location::parse(&output.to_string_lossy()).py(py)?,
    );
    spec.shards =
        ShardSelection::resolve(num_shards, shard_index, |k| std::env::var(k).ok()).py(py)?;
    spec.storage_options = storage.clone();
    spec.modality = options::modality(modality)?;
    spec.options = ProjectionOptions {
        input_kind: options::kind(kind)?,
        form: options::form(form)?,
        output: output_elem,
        normalize,
        nonfinite: options::nonfinite(nonfinite)?,
        precision: options::precision(precision)?,
    };
    spec.overwrite = overwrite;
    spec.trust_outputs = trust_outputs;
    spec.chunk_bytes = chunk_bytes;
    let (aligned, origin) = resolve_projector(py, projector, &storage)?;
    aligned
        .only_modality(spec.modality)
        .map_err(|e| match &origin {
            Some(o) => e.in_file(o),
            None => e,
        })
        .py(py)?;
    // bf16 is a CPU kernel: "auto" means the CPU then (as the CLI's --device auto); an explicit
    // GPU is refused by the backend.
    let auto = matches!(DeviceChoice::parse(device), Some(DeviceChoice::Auto(_)));
    let device = if spec.options.precision == Precision::Bf16 && auto {
        "cpu"
    } else {
        device
    };
    let (backend, notice) = crate::backend::for_job(device, threads).py(py)?;
    let reporter = py
        .import("isoclip._progress")?
        .call_method1("reporter", (progress, notice.clone()))?;
    let state = Arc::new(Progress::default());
    let cancel = Arc::new(AtomicBool::new(false));
    let job = {
        let (state, cancel, aligned) = (state.clone(), cancel.clone(), aligned.clone());
        std::thread::Builder::new()
            .name("isoclip-job".into())
            .spawn(move || run_job(&spec, &aligned, backend.as_ref(), state.as_ref(), &cancel))
            .map_err(|e| Error::ResourceExhausted(format!("cannot start the job's thread: {e}")))
            .py(py)?
    };
    let mut announced = false;
    let mut interrupted: Option<PyErr> = None;
    while !job.is_finished() {
        py.detach(|| std::thread::sleep(POLL));
        let polled = report(&reporter, &state, &mut announced).and_then(|_| py.check_signals());
        if let Err(e) = polled {
            // Ctrl-C (or a failing reporter): stop the job at its next chunk, then re-raise.
            cancel.store(true, Ordering::SeqCst);
            interrupted = Some(e);
            break;
        }
    }
    let result = py.detach(|| job.join());
    let _ = report(&reporter, &state, &mut announced);
    reporter.call_method0("close")?;
    if let Some(e) = interrupted {
        return Err(e);
    }
    let summary = match result {
        Ok(r) => r.py(py)?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    summary_dict(py, &summary, aligned.synthetic, notice.as_deref())
}
