//! Runs kept by per-shard completion records ([`super::records`]): galleries or outputs named by
//! URL (object stores, `file://`), and several workers sharing one output (`--num-shards`).
//!
//! Each worker, independently and with no lock:
//! 1. lists the input (a `.npy`, a local directory or shard list, or an object prefix), takes its
//!    shards (k mod N = I, [`super::selection`]) and checks their headers (concurrently on a
//!    store) before any work;
//! 2. checks the output is not the input, writes `_isoclip/job.json` when it differs;
//! 3. skips each shard whose record matches (input identity, projector, options) and whose
//!    output is still the recorded object (size and entity tag; a local output's checksum is also
//!    read back unless outputs are trusted, as local writes are not synced);
//! 4. per remaining shard: retracts a stale record (`record-retracted`), streams the rows through
//!    the backend into an atomic upload of the output, checks the input did not change, completes
//!    the upload (`uploaded`: visible whole, never partly), then creates the record with a
//!    create-only PUT (`recorded`). A worker racing on the same shard (the same index started
//!    twice, a retry) writes the same bytes; the second record creation finds the first and
//!    keeps it, pointing it at the output object that is there now.
//!
//! A kill at any moment leaves at worst an incomplete upload (never visible under the output
//! name; removed by the store's lifecycle rule, or by `abort` when the run fails cleanly) or a
//! complete output with no record (redone, byte-identical, by any rerun). The step names are the
//! fault-injection points of [`super::commit::FaultPlan`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::commit::{file_has_content, CommitStep, FaultPlan};
use super::job::{
    check_columns, chunk_rows, project_shard, JobSpec, JobSummary, ProgressSink, RowSource,
    ShardShape, ShardSink, ShardWork,
};
use super::manifest::FileIdentity;
use super::reader::{InputMatrix, ShardReader};
use super::records::{
    record_name, CompletionRecord, JobDescription, RunOptions, SourceIdentity, JOB_NAME,
    MAX_RECORD_BYTES,
};
use super::shards;
use crate::align::AlignedProjector;
use crate::backend::{Backend, NonFinitePolicy, ProjectionOptions};
use crate::error::{Error, Result};
use crate::formats::projector_file;
use crate::storage::{
    Location, ObjectInfo, ObjectUpload, PutOutcome, RemoteMatrix, StorageContext, Store,
};

/// Concurrent requests when reading many records or heads.
const METADATA_REQUESTS_IN_FLIGHT: usize = 32;

/// The input gallery of a run: local files, or objects under a prefix.
pub(crate) enum Gallery {
    Files {
        /// The shards, in listing order.
        paths: Vec<PathBuf>,
    },
    Objects {
        store: Store,
        /// The shards, in listing order.
        objects: Vec<ObjectInfo>,
    },
}

/// One shard this worker takes, its header checked.
pub(crate) struct InputShard {
    pub name: String,
    /// The input as recorded: a canonical path or a URL.
    pub input: String,
    pub identity: SourceIdentity,
    pub shape: ShardShape,
    source: ShardOrigin,
}

enum ShardOrigin {
    File { path: PathBuf, matrix: InputMatrix },
    Object { matrix: RemoteMatrix },
}

impl Gallery {
    /// Lists `input`: a plain path as the local engine does ([`shards::discover`]); a URL ending
    /// in `.npy` as one object; any other URL as a prefix of `.npy` objects.
    pub(crate) fn list(context: &StorageContext, input: &Location) -> Result<Gallery> {
        if let Some(path) = input.as_plain_path() {
            return Ok(Gallery::Files {
                paths: shards::discover(path)?,
            });
        }
        let one_object = input.file_name().is_some_and(|n| n.ends_with(".npy"));
        if one_object {
            let (store, name) = context.open_object(input)?;
            let info = store.head(&name)?.ok_or_else(|| {
                Error::io(
                    input.to_string(),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })?;
            return Ok(Gallery::Objects {
                store,
                objects: vec![info],
            });
        }
        let store = context.open(input)?;
        let objects = store.list_npy()?;
        Ok(Gallery::Objects { store, objects })
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Gallery::Files { paths } => paths.len(),
            Gallery::Objects { objects, .. } => objects.len(),
        }
    }

    /// The input string a shard is recorded under.
    fn input_of(&self, k: usize) -> String {
        match self {
            Gallery::Files { paths } => canonical(&paths[k]).display().to_string(),
            Gallery::Objects { store, objects } => store.url_of(&objects[k].name),
        }
    }

    /// The identity of every shard now, without reading headers (for `status`).
    pub(crate) fn identities(&self) -> Result<Vec<(String, String, SourceIdentity)>> {
        match self {
            Gallery::Files { paths } => paths
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
                    Ok((
                        file_name(p),
                        self.input_of(k),
                        SourceIdentity::File(FileIdentity::of(&meta)),
                    ))
                })
                .collect(),
            Gallery::Objects { objects, .. } => Ok(objects
                .iter()
                .enumerate()
                .map(|(k, o)| (o.name.clone(), self.input_of(k), object_identity(o)))
                .collect()),
        }
    }

    /// Opens and checks the headers of the shards at `positions`.
    pub(crate) fn inspect(&self, positions: &[usize]) -> Result<Vec<InputShard>> {
        match self {
            Gallery::Files { paths } => positions
                .iter()
                .map(|&k| {
                    let path = &paths[k];
                    let matrix = ShardReader::inspect(path)?;
                    Ok(InputShard {
                        name: file_name(path),
                        input: self.input_of(k),
                        identity: SourceIdentity::File(matrix.identity),
                        shape: ShardShape {
                            rows: matrix.rows,
                            cols: matrix.cols,
                            dtype: matrix.dtype,
                        },
                        source: ShardOrigin::File {
                            path: path.clone(),
                            matrix,
                        },
                    })
                })
                .collect(),
            Gallery::Objects { store, objects } => {
                let chosen: Vec<ObjectInfo> =
                    positions.iter().map(|&k| objects[k].clone()).collect();
                let matrices = store.inspect_shards(&chosen)?;
                Ok(positions
                    .iter()
                    .zip(matrices)
                    .map(|(&k, matrix)| InputShard {
                        name: objects[k].name.clone(),
                        input: self.input_of(k),
                        identity: object_identity(&matrix.object),
                        shape: ShardShape {
                            rows: matrix.rows,
                            cols: matrix.cols,
                            dtype: matrix.dtype,
                        },
                        source: ShardOrigin::Object { matrix },
                    })
                    .collect())
            }
        }
    }

    /// A reader of `shard`'s rows, refused if the input changed since it was inspected.
    fn reader(&self, shard: &InputShard) -> Result<RowSource> {
        match (&shard.source, self) {
            (ShardOrigin::File { path, matrix }, _) => Ok(RowSource::File(ShardReader::reopen(
                path,
                &matrix.identity,
            )?)),
            (ShardOrigin::Object { matrix }, Gallery::Objects { store, .. }) => {
                Ok(RowSource::Object(store.reader(matrix)))
            }
            (ShardOrigin::Object { .. }, Gallery::Files { .. }) => {
                unreachable!("object shards come from object galleries")
            }
        }
    }

    /// Refuses to record an output whose input changed while it was read.
    fn check_unchanged(&self, shard: &InputShard) -> Result<()> {
        let now = match (&shard.source, self) {
            (ShardOrigin::File { path, .. }, _) => {
                let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
                Some(SourceIdentity::File(FileIdentity::of(&meta)))
            }
            (ShardOrigin::Object { matrix }, Gallery::Objects { store, .. }) => store
                .head(&matrix.object.name)?
                .map(|info| object_identity(&info)),
            (ShardOrigin::Object { .. }, Gallery::Files { .. }) => None,
        };
        if now.as_ref() != Some(&shard.identity) {
            return Err(Error::format(
                &shard.input,
                "changed while it was being read (size, entity tag or time stamps differ); its output was discarded",
            ));
        }
        Ok(())
    }

    fn local_paths(&self, positions: &[usize]) -> Vec<PathBuf> {
        match self {
            Gallery::Files { paths } => positions.iter().map(|&k| paths[k].clone()).collect(),
            Gallery::Objects { .. } => Vec::new(),
        }
    }
}

fn object_identity(o: &ObjectInfo) -> SourceIdentity {
    SourceIdentity::Object {
        size: o.size,
        e_tag: o.e_tag.clone(),
        version: o.version.clone(),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The options every record of a run shares.
pub(crate) fn run_options(
    projector_id: &str,
    modality: &str,
    opts: &ProjectionOptions,
    arithmetic: &str,
    d_out: usize,
) -> RunOptions {
    RunOptions {
        projector: projector_id.to_string(),
        modality: modality.to_string(),
        input_kind: opts.input_kind.name().into(),
        form: opts.form.name().into(),
        dtype: opts.output.name().into(),
        normalize: opts.normalize,
        nonfinite: match opts.nonfinite {
            NonFinitePolicy::Error => "error".into(),
            NonFinitePolicy::Zero => "zero".into(),
        },
        cols_out: d_out as u64,
        arithmetic: arithmetic.into(),
    }
}

/// How a gallery's input is recorded in `job.json`: the URL, or the canonical path.
pub(crate) fn input_string(input: &Location) -> String {
    match input.as_plain_path() {
        Some(p) => canonical(p).display().to_string(),
        None => input.to_string(),
    }
}

/// Refuses an output that is the input itself (outputs take their inputs' names).
fn check_output_location(
    input: &Location,
    output: &Location,
    local_shards: &[PathBuf],
) -> Result<()> {
    if let (Some(i), Some(o)) = (input.local_path(), output.local_path()) {
        return super::outdir::check_output_dir(&o, &i, local_shards);
    }
    let prefix = |l: &Location| {
        let s = l.to_string();
        let s = if l.file_name().is_some_and(|n| n.ends_with(".npy")) {
            s.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap_or(s)
        } else {
            s
        };
        s.trim_end_matches('/').to_string()
    };
    if input.is_url() && output.is_url() && prefix(input) == prefix(output) {
        return Err(Error::invalid(format!(
            "{output}: the output is the input's own prefix, and outputs take their inputs' names; give another output"
        )));
    }
    Ok(())
}

/// Runs `f` on every item with up to [`METADATA_REQUESTS_IN_FLIGHT`] at once (blocking store
/// calls from plain threads), results in order.
pub(crate) fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let workers = METADATA_REQUESTS_IN_FLIGHT.min(items.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= items.len() {
                    break;
                }
                let r = f(&items[k]);
                *results[k].lock().expect("not poisoned") = Some(r);
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("not poisoned")
                .expect("every item ran")
        })
        .collect()
}

/// A record as read from the store: absent, unreadable (with why), or parsed.
pub(crate) enum StoredRecord {
    Absent,
    Unreadable(String),
    Present(Box<CompletionRecord>),
}

/// Reads the records of `shards` (concurrently).
pub(crate) fn read_records(out: &Store, shards: &[String]) -> Result<Vec<StoredRecord>> {
    in_parallel(shards, |shard| -> Result<StoredRecord> {
        let name = record_name(shard);
        let url = out.url_of(&name);
        match out.get_bounded(&name, MAX_RECORD_BYTES, "a completion record") {
            Ok(None) => Ok(StoredRecord::Absent),
            Ok(Some(bytes)) => Ok(match CompletionRecord::parse(&bytes, &url) {
                Ok(r) => StoredRecord::Present(Box::new(r)),
                Err(e) => StoredRecord::Unreadable(e.root().to_string()),
            }),
            Err(e) if matches!(e.root(), Error::Format { .. }) => {
                Ok(StoredRecord::Unreadable(e.root().to_string()))
            }
            Err(e) => Err(e),
        }
    })
    .into_iter()
    .collect()
}

/// Whether the output object of `record` is still the one it describes. On a local file system
/// (where writes are not synced) its checksum is read back too, unless `trust_outputs`.
pub(crate) fn output_is_recorded_one(
    out: &Store,
    local_dir: Option<&Path>,
    record: &CompletionRecord,
    trust_outputs: bool,
) -> Result<Option<&'static str>> {
    let Some(now) = out.head(&record.shard)? else {
        return Ok(Some("its output is missing"));
    };
    // A local file's entity tag is made of its inode and mtime, which a plain copy of the
    // folder changes: local outputs are judged by size and checksum instead.
    let unchanged = match local_dir {
        Some(_) => now.size == record.output_size,
        None => record.describes_output(now.size, now.e_tag.as_deref()),
    };
    if !unchanged {
        return Ok(Some("its output changed since it was recorded"));
    }
    if let (Some(dir), false) = (local_dir, trust_outputs) {
        if !file_has_content(
            &dir.join(&record.shard),
            record.output_size,
            &record.output_xxh3,
        ) {
            return Ok(Some("its output does not match the recorded checksum"));
        }
    }
    Ok(None)
}

impl ShardSink for ObjectUpload {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all(bytes)
    }
}

/// Runs the job (see the module doc).
pub fn run_job(
    spec: &JobSpec,
    projector: &AlignedProjector,
    backend: &dyn Backend,
    progress: &dyn ProgressSink,
    cancel: &AtomicBool,
) -> Result<JobSummary> {
    let t0 = Instant::now();
    let opts = spec.options;
    let maps = projector.only_modality(spec.modality)?;
    // Selected now (its shape checks the inputs), prepared for the backend before the work.
    let map = maps.select(opts.input_kind, opts.form)?;
    // What computes it: refused here, before any work, when the backend cannot.
    let arithmetic = backend.arithmetic(&map, &opts)?;
    let projector_id = projector_file::content_digest(projector);
    let run = run_options(
        &projector_id,
        maps.modality.name(),
        &opts,
        arithmetic,
        map.d_out(),
    );
    let context = StorageContext::new(spec.storage_options.clone())?;
    let worker = format!("{}/{}", spec.shards.index, spec.shards.count);

    // 1. This worker's shards, checked before any work.
    let gallery = Gallery::list(&context, &spec.input)?;
    let positions: Vec<usize> = (0..gallery.len())
        .filter(|&k| spec.shards.takes(k))
        .collect();
    let shards = gallery.inspect(&positions)?;
    for s in &shards {
        check_columns(Path::new(&s.input), s.shape.cols, maps, &map, &opts)?;
    }

    // 2. The output.
    check_output_location(&spec.input, &spec.output, &gallery.local_paths(&positions))?;
    let local_dir = spec.output.local_path();
    let out = context.open_output(&spec.output)?;
    let mut fault = FaultPlan::from_env()?;
    let job = JobDescription::new(input_string(&spec.input), run.clone());
    let job_url = out.url_of(JOB_NAME);
    let recorded_job = out
        .get_bounded(JOB_NAME, MAX_RECORD_BYTES, "a job description")?
        .map(|b| JobDescription::parse(&b, &job_url));
    if !matches!(recorded_job, Some(Ok(ref j)) if *j == job) {
        out.put(JOB_NAME, job.to_bytes())?;
    }

    // 3. Plan: which shards are already done.
    let names: Vec<String> = shards.iter().map(|s| s.name.clone()).collect();
    let stored = read_records(&out, &names)?;
    let wanted: Vec<CompletionRecord> = shards
        .iter()
        .map(|s| {
            CompletionRecord::planned(
                &s.name,
                s.input.clone(),
                s.identity.clone(),
                s.shape.rows as u64,
                s.shape.cols as u64,
                run.clone(),
                worker.clone(),
            )
        })
        .collect();
    let verdicts = in_parallel(
        &(0..shards.len()).collect::<Vec<_>>(),
        |&i| -> Result<bool> {
            if spec.overwrite {
                return Ok(false);
            }
            match &stored[i] {
                StoredRecord::Present(r) if r.mismatch(&wanted[i]).is_none() => Ok(
                    output_is_recorded_one(&out, local_dir.as_deref(), r, spec.trust_outputs)?
                        .is_none(),
                ),
                _ => Ok(false),
            }
        },
    );
    let mut summary = JobSummary {
        backend: backend.describe(),
        output_dir: spec.output.to_string(),
        shards_total: shards.len(),
        d_in: map.d_in(),
        d_out: map.d_out(),
        form: opts.form.name().into(),
        dtype: opts.output.name().into(),
        normalized: opts.normalize,
        input_kind: opts.input_kind.name().into(),
        modality: maps.modality.name().into(),
        projector: projector_id.clone(),
        arithmetic: arithmetic.into(),
        ..Default::default()
    };
    let mut todo = Vec::new();
    for (i, done) in verdicts.into_iter().enumerate() {
        if done? {
            let StoredRecord::Present(r) = &stored[i] else {
                unreachable!("only present records are done")
            };
            summary.shards_skipped += 1;
            summary.rows_skipped += r.rows;
            summary.zero_norm_rows += r.zero_norm_rows;
            summary.nonfinite_rows += r.nonfinite_rows;
            progress.shard_done(&shards[i].name, true);
        } else {
            todo.push(i);
        }
    }
    progress.start(
        todo.iter().map(|&i| shards[i].shape.rows as u64).sum(),
        todo.len(),
    );

    // 4. Work.
    let map = backend.prepare(map)?;
    let chunk_rows = chunk_rows(backend, spec.chunk_bytes, map.d_out() * opts.output.size());
    let work = ShardWork {
        map: &map,
        opts: &opts,
        backend,
        chunk_rows,
        progress,
        cancel,
    };
    for i in todo {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let s = &shards[i];
        let output_url = out.url_of(&s.name);
        let record = record_name(&s.name);
        if !matches!(stored[i], StoredRecord::Absent) {
            out.delete(&record)?;
        }
        FaultPlan::fire(
            &mut fault,
            CommitStep::RecordRetracted,
            Path::new(&output_url),
        )?;
        let mut upload = out.upload(&s.name)?;
        let projected = gallery.reader(s).and_then(|source| {
            project_shard(
                source,
                s.shape,
                Path::new(&s.input),
                &mut upload,
                Path::new(&output_url),
                &work,
            )
        });
        let (stats, size, hash) = match projected.and_then(|r| {
            gallery.check_unchanged(s)?;
            Ok(r)
        }) {
            Ok(r) => r,
            Err(e) => {
                upload.abort();
                return Err(e);
            }
        };
        let info = upload.finish()?;
        if info.size != size {
            return Err(Error::format(
                &output_url,
                format!(
                    "the store reports {} bytes for the completed output, {size} were written",
                    info.size
                ),
            ));
        }
        FaultPlan::fire(&mut fault, CommitStep::Uploaded, Path::new(&output_url))?;
        let mut rec = wanted[i].clone();
        rec.output_size = info.size;
        rec.output_e_tag = info.e_tag;
        rec.output_version = info.version;
        rec.output_xxh3 = format!("{hash:016x}");
        rec.zero_norm_rows = stats.zero_norm_rows;
        rec.nonfinite_rows = stats.nonfinite_rows;
        create_record(&out, &rec)?;
        FaultPlan::fire(&mut fault, CommitStep::Recorded, Path::new(&output_url))?;
        summary.shards_processed += 1;
        summary.rows_processed += s.shape.rows as u64;
        summary.bytes_read += (s.shape.rows * s.shape.cols * s.shape.dtype.size()) as u64;
        summary.bytes_written += size;
        summary.zero_norm_rows += stats.zero_norm_rows;
        summary.nonfinite_rows += stats.nonfinite_rows;
        progress.shard_done(&s.name, false);
    }
    summary.seconds = t0.elapsed().as_secs_f64();
    if summary.seconds > 0.0 {
        summary.rows_per_second = summary.rows_processed as f64 / summary.seconds;
        summary.gb_per_second_read = summary.bytes_read as f64 / summary.seconds / 1e9;
    }
    Ok(summary)
}

/// Creates `rec` with a create-only PUT. When a record is already there, another worker
/// finished the same shard at the same time: with the same input, options and output bytes it
/// is kept (and pointed at the output object that is there now); anything else is an error.
fn create_record(out: &Store, rec: &CompletionRecord) -> Result<()> {
    let name = record_name(&rec.shard);
    if out.put_create(&name, rec.to_bytes())? == PutOutcome::Created {
        return Ok(());
    }
    let url = out.url_of(&name);
    let theirs = out
        .get_bounded(&name, MAX_RECORD_BYTES, "a completion record")?
        .map(|b| CompletionRecord::parse(&b, &url))
        .transpose()?;
    match theirs {
        Some(t) if t.mismatch(rec).is_none() && t.output_xxh3 == rec.output_xxh3 => {
            if let Some(now) = out.head(&rec.shard)? {
                if !t.describes_output(now.size, now.e_tag.as_deref()) {
                    let mut fixed = t;
                    fixed.output_size = now.size;
                    fixed.output_e_tag = now.e_tag;
                    fixed.output_version = now.version;
                    out.put(&name, fixed.to_bytes())?;
                }
            }
            Ok(())
        }
        _ => Err(Error::format(
            url,
            "another worker recorded this shard at the same time with a different input or options; rerun to redo it",
        )),
    }
}
