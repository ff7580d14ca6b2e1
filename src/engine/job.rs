//! One projection run over a gallery.
//!
//! Order of work, chosen so that bad input never costs finished work:
//! 1. resolve and open every shard (headers only) and check dtype, layout, size and dimension;
//! 2. check the output directory before creating it (not the input, not inside it, not the
//!    folder of any input shard: [`super::outdir`]), create it and lock it;
//! 3. per shard, skip it when the manifest records this input (same identity) with these options
//!    and the output on disk is verified to be the recorded one ([`super::commit`]); else: reopen
//!    the input (refused if it changed since step 1), project fixed-size row chunks on the
//!    backend as a read-ahead thread delivers them ([`super::reader`]) while a writer thread
//!    appends the previous chunk to a temporary file and hashes it, fsync, then commit (retract
//!    the old record, rename into place, record).
//!
//! A run killed at any moment leaves at worst a temporary file (removed by the next run) or a
//! finished output with no record (redone, byte-identical): a rerun always ends with the same
//! bytes as an uninterrupted run. A cancelled run stops at the next chunk, removes its temporary
//! file and returns `Error::Cancelled`; every shard reported through
//! [`ProgressSink::shard_done`] with `skipped == false` is finished and recorded.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

use super::commit::{output_is_intact, Committer, FaultPlan};
use super::manifest::{FileIdentity, OutputManifest, ShardRecord};
use super::outdir::{check_output_dir, OutputDirLock};
use super::reader::{InputMatrix, ShardReader, READ_CHUNK_BYTES};
use super::selection::ShardSelection;
use super::shards;
use crate::align::{AlignedProjector, Modality};
use crate::backend::{
    Backend, BlockStats, ElemType, NonFinitePolicy, PreparedMap, ProjectionOptions, RowsIn, RowsOut,
};
use crate::error::{Error, Result};
use crate::formats::npy::{self, NpyDtype};
use crate::formats::rows::RowChunk;
use crate::formats::{create_temporary, projector_file, temporary_path};
use crate::storage::{Location, RemoteShardReader};

/// What to run.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// A `.npy` shard, a directory (or prefix) of shards, or a local text file listing shards.
    pub input: Location,
    /// The output directory or prefix.
    pub output: Location,
    /// Which shards of the sorted listing this worker takes (all by default).
    pub shards: ShardSelection,
    /// Object-store options (`KEY=VALUE`, as `object_store` names them) over the environment's.
    pub storage_options: Vec<(String, String)>,
    /// Which of the projector's modalities (needed when it holds both).
    pub modality: Option<Modality>,
    pub options: ProjectionOptions,
    /// Redo every shard even when the manifest says it is finished.
    pub overwrite: bool,
    /// On resume, accept a recorded output whose identity (device, inode, size, mtime, ctime)
    /// is unchanged without reading it back; by default its xxh3 is verified.
    pub trust_outputs: bool,
    /// Output bytes per chunk (the unit of I/O, progress and cancellation); 0 = default. Input
    /// chunks are further capped at `reader::READ_CHUNK_BYTES`.
    pub chunk_bytes: usize,
}

impl JobSpec {
    pub fn new(input: impl Into<Location>, output: impl Into<Location>) -> Self {
        JobSpec {
            input: input.into(),
            output: output.into(),
            shards: ShardSelection::default(),
            storage_options: Vec::new(),
            modality: None,
            options: ProjectionOptions::default(),
            overwrite: false,
            trust_outputs: false,
            chunk_bytes: 0,
        }
    }
}

const MAX_CHUNK_ROWS: usize = 1 << 16;

/// Rows per compute chunk: about `chunk_bytes` of output (the backend's preferred size when 0),
/// a multiple of the backend's [`Backend::row_block`] between one block and [`MAX_CHUNK_ROWS`]
/// (rounded down to a whole number of blocks).
pub(crate) fn chunk_rows(backend: &dyn Backend, chunk_bytes: usize, out_row_bytes: usize) -> usize {
    let block = backend.row_block().max(1);
    let chunk_bytes = if chunk_bytes == 0 {
        backend.preferred_chunk_bytes()
    } else {
        chunk_bytes
    };
    let max_rows = (MAX_CHUNK_ROWS / block * block).max(block);
    ((chunk_bytes / out_row_bytes.max(1)).clamp(block, max_rows) / block) * block
}
/// Output chunk buffers circulating between compute and the writer thread: enough slack that a
/// writer blocked in a periodic sync does not stall the compute side.
const WRITE_BUFFERS: usize = 4;
/// The writer thread syncs data to disk every this many bytes (see `write_shard`).
const SYNC_EVERY_BYTES: usize = 64 << 20;

/// Receives progress; implementations must be cheap (called once per chunk).
pub trait ProgressSink: Sync {
    /// Called once before any work: total rows and shards that will be processed (skipped
    /// shards excluded).
    fn start(&self, _rows_to_process: u64, _shards_to_process: usize) {}
    /// Rows just finished (cumulative count is the caller's business).
    fn advance(&self, _rows: u64) {}
    /// A shard finished (or was skipped). A shard reported with `skipped == false` is complete
    /// and recorded: a caller counting them knows how many a cancelled or failed run kept.
    fn shard_done(&self, _name: &str, _skipped: bool) {}
    /// Called once at the end, on success or failure.
    fn finish(&self) {}
}

/// A sink that ignores everything.
pub struct SilentProgress;
impl ProgressSink for SilentProgress {}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobSummary {
    pub backend: String,
    pub output_dir: String,
    pub shards_total: usize,
    pub shards_processed: usize,
    pub shards_skipped: usize,
    pub rows_processed: u64,
    pub rows_skipped: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub bytes_read: u64,
    pub gb_per_second_read: f64,
    pub bytes_written: u64,
    pub zero_norm_rows: u64,
    pub nonfinite_rows: u64,
    pub d_in: usize,
    pub d_out: usize,
    pub form: String,
    pub dtype: String,
    pub normalized: bool,
    pub input_kind: String,
    pub modality: String,
    pub projector: String,
    /// The arithmetic of the projection (`Backend::arithmetic`): "f32", "bf16", "cuda-fp16".
    pub arithmetic: String,
}

struct OpenShard {
    path: PathBuf,
    name: String,
    /// Shape, dtype and file identity, checked in step 1; the file is reopened to be read.
    matrix: InputMatrix,
    identity: FileIdentity,
}

fn elem_of(d: NpyDtype) -> ElemType {
    match d {
        NpyDtype::F16 => ElemType::F16,
        _ => ElemType::F32,
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Runs the job. `cancel` is polled between chunks; a cancelled run removes its temporary file
/// and returns `Error::Cancelled` with every finished shard kept.
pub fn run_job(
    spec: &JobSpec,
    projector: &AlignedProjector,
    backend: &dyn Backend,
    progress: &dyn ProgressSink,
    cancel: &AtomicBool,
) -> Result<JobSummary> {
    let result = match local_paths(spec) {
        Some((input, out_dir)) => {
            run_local_job(spec, input, out_dir, projector, backend, progress, cancel)
        }
        None => super::distributed::run_job(spec, projector, backend, progress, cancel),
    };
    progress.finish();
    result
}

/// The input and output of a run the local engine does (one manifest, a locked directory):
/// plain paths, one worker, and an output directory that is not already kept by completion
/// records (a previous run with several workers or through a URL). Every other run keeps
/// per-shard completion records ([`super::distributed`]).
fn local_paths(spec: &JobSpec) -> Option<(&Path, &Path)> {
    if !spec.shards.is_all() {
        return None;
    }
    let input = spec.input.as_plain_path()?;
    let out_dir = spec.output.as_plain_path()?;
    let kept_by_records = std::fs::symlink_metadata(out_dir.join(super::records::RECORDS_DIR))
        .is_ok_and(|m| m.is_dir());
    (!kept_by_records).then_some((input, out_dir))
}

#[allow(clippy::too_many_arguments)]
fn run_local_job(
    spec: &JobSpec,
    input: &Path,
    out_dir: &Path,
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

    // 1. Every shard, validated before any work.
    let paths = shards::discover(input)?;
    let mut open = Vec::with_capacity(paths.len());
    for path in paths {
        let matrix = ShardReader::inspect(&path)?;
        check_columns(&path, matrix.cols, maps, &map, &opts)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let identity = matrix.identity;
        open.push(OpenShard {
            path,
            name,
            matrix,
            identity,
        });
    }

    // 2. The output directory: checked before it is created, then locked.
    let shard_paths: Vec<PathBuf> = open.iter().map(|s| s.path.clone()).collect();
    check_output_dir(out_dir, input, &shard_paths)?;
    let fault = FaultPlan::from_env()?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let lock = OutputDirLock::acquire(out_dir)?;
    remove_stale_temporaries(out_dir, &open);

    // 3. Plan: which shards are already done.
    let (manifest, warning) = OutputManifest::load(out_dir)?;
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    let mut committer = Committer::new(out_dir, manifest, fault);
    let out_elem = opts.output;
    let run_record = run_record(
        &projector_id,
        maps.modality.name(),
        &opts,
        arithmetic,
        map.d_out(),
    );
    let mut todo = Vec::new();
    let mut summary = JobSummary {
        backend: backend.describe(),
        output_dir: out_dir.display().to_string(),
        shards_total: open.len(),
        d_in: map.d_in(),
        d_out: map.d_out(),
        form: opts.form.name().into(),
        dtype: out_elem.name().into(),
        normalized: opts.normalize,
        input_kind: opts.input_kind.name().into(),
        modality: maps.modality.name().into(),
        projector: projector_id.clone(),
        arithmetic: arithmetic.into(),
        ..Default::default()
    };
    for (i, s) in open.iter().enumerate() {
        let want = shard_record(&run_record, s);
        let done = !spec.overwrite
            && committer.manifest.shards.get(&s.name).is_some_and(|r| {
                r.matches(&want) && output_is_intact(&out_dir.join(&s.name), r, spec.trust_outputs)
            });
        if done {
            let r = &committer.manifest.shards[&s.name];
            summary.shards_skipped += 1;
            summary.rows_skipped += s.matrix.rows as u64;
            summary.zero_norm_rows += r.zero_norm_rows;
            summary.nonfinite_rows += r.nonfinite_rows;
            progress.shard_done(&s.name, true);
        } else {
            todo.push(i);
        }
    }
    progress.start(
        todo.iter().map(|&i| open[i].matrix.rows as u64).sum(),
        todo.len(),
    );

    // 4. Work.
    let map = backend.prepare(map)?;
    let chunk_rows = chunk_rows(backend, spec.chunk_bytes, map.d_out() * out_elem.size());
    for i in todo {
        let s = &open[i];
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let out_path = out_dir.join(&s.name);
        let tmp = temporary_path(&out_path);
        let (stats, size) = write_shard(
            s, &tmp, &out_path, &map, &opts, backend, chunk_rows, progress, cancel,
        )
        .and_then(|(stats, size, hash)| {
            check_input_unchanged(s)?;
            let mut rec = shard_record(&run_record, s);
            rec.output_xxh3 = format!("{hash:016x}");
            rec.zero_norm_rows = stats.zero_norm_rows;
            rec.nonfinite_rows = stats.nonfinite_rows;
            committer.commit(&s.name, &tmp, &out_path, rec)?;
            Ok((stats, size))
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        summary.shards_processed += 1;
        summary.rows_processed += s.matrix.rows as u64;
        summary.bytes_read += s.matrix.data_bytes();
        summary.bytes_written += size;
        summary.zero_norm_rows += stats.zero_norm_rows;
        summary.nonfinite_rows += stats.nonfinite_rows;
        progress.shard_done(&s.name, false);
    }
    drop(lock);
    summary.seconds = t0.elapsed().as_secs_f64();
    if summary.seconds > 0.0 {
        summary.rows_per_second = summary.rows_processed as f64 / summary.seconds;
        summary.gb_per_second_read = summary.bytes_read as f64 / summary.seconds / 1e9;
    }
    Ok(summary)
}

/// Refuses a shard whose rows do not have the dimension the projector's map takes, saying what
/// was expected (and when the rows look like the other input kind).
pub(crate) fn check_columns(
    path: &Path,
    cols: usize,
    maps: &crate::align::ModalityMaps,
    map: &crate::align::LinearMap,
    opts: &ProjectionOptions,
) -> Result<()> {
    if cols != map.d_in() {
        let what = match opts.input_kind {
            crate::backend::InputKind::Features => format!(
                "{} features of dimension {} (pre-projection)",
                maps.modality,
                map.d_in()
            ),
            crate::backend::InputKind::Embeddings => format!(
                "{} embeddings of dimension {} (already projected)",
                maps.modality,
                map.d_in()
            ),
        };
        return Err(Error::Shape(format!(
            "{}: rows have {} dimensions but the projector expects {what}{}",
            path.display(),
            cols,
            if cols == maps.d && opts.input_kind == crate::backend::InputKind::Features {
                "; these look like already-projected embeddings: project them with the embedding route (input kind 'embeddings')"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// The record fields every shard of a run shares: projector and options.
fn run_record(
    projector_id: &str,
    modality: &str,
    opts: &ProjectionOptions,
    arithmetic: &str,
    d_out: usize,
) -> ShardRecord {
    ShardRecord {
        input: String::new(),
        input_identity: FileIdentity::default(),
        rows: 0,
        cols_in: 0,
        cols_out: d_out as u64,
        output_identity: FileIdentity::default(),
        output_xxh3: String::new(),
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
        arithmetic: arithmetic.into(),
        zero_norm_rows: 0,
        nonfinite_rows: 0,
    }
}

/// The record this run would write for shard `s` (output fields still empty).
fn shard_record(run: &ShardRecord, s: &OpenShard) -> ShardRecord {
    ShardRecord {
        input: canonical(&s.path).display().to_string(),
        input_identity: s.identity,
        rows: s.matrix.rows as u64,
        cols_in: s.matrix.cols as u64,
        ..run.clone()
    }
}

/// Refuses to record an output whose input changed (rewritten, replaced, touched) while it was
/// read: the record would vouch for bytes made from something else.
fn check_input_unchanged(s: &OpenShard) -> Result<()> {
    let now = std::fs::metadata(&s.path).map_err(|e| Error::io(&s.path, e))?;
    if FileIdentity::of(&now) != s.identity {
        return Err(Error::format(
            &s.path,
            "changed while it was being read (size, time stamps or inode differ); its output was discarded",
        ));
    }
    Ok(())
}

/// Removes temporary files a killed run may have left (ours: we hold the lock).
fn remove_stale_temporaries(out_dir: &Path, shards: &[OpenShard]) {
    let names = shards
        .iter()
        .map(|s| s.name.as_str())
        .chain([super::manifest::MANIFEST_NAME]);
    for name in names {
        let _ = std::fs::remove_file(temporary_path(&out_dir.join(name)));
    }
}

/// Projects one shard into the temporary file `tmp` (created exclusively) and syncs it. Returns
/// the stats, the output size and its xxh3-64.
#[allow(clippy::too_many_arguments)]
fn write_shard(
    s: &OpenShard,
    tmp: &Path,
    out_path: &Path,
    map: &PreparedMap,
    opts: &ProjectionOptions,
    backend: &dyn Backend,
    chunk_rows: usize,
    progress: &dyn ProgressSink,
    cancel: &AtomicBool,
) -> Result<(BlockStats, u64, u64)> {
    let reader = ShardReader::reopen(&s.path, &s.matrix.identity)?;
    let shape = ShardShape {
        rows: s.matrix.rows,
        cols: s.matrix.cols,
        dtype: s.matrix.dtype,
    };
    let mut sink = FileSink {
        writer: ShardWriter::create(tmp).map_err(|e| Error::io(out_path, e))?,
        path: out_path,
    };
    let work = ShardWork {
        map,
        opts,
        backend,
        chunk_rows,
        progress,
        cancel,
    };
    let (stats, size, hash) = project_shard(
        RowSource::File(reader),
        shape,
        &s.path,
        &mut sink,
        out_path,
        &work,
    )?;
    sink.writer.finish().map_err(|e| Error::io(out_path, e))?;
    Ok((stats, size, hash))
}

/// Where a shard's rows come from: a local file (`pread` read-ahead) or an object (ranged GETs).
pub(crate) enum RowSource {
    File(ShardReader),
    Object(RemoteShardReader),
}

impl RowSource {
    fn stream(
        self,
        chunk_rows: usize,
        consume: impl FnMut(RowChunk<'_>) -> Result<bool>,
    ) -> Result<()> {
        match self {
            RowSource::File(r) => r.stream(chunk_rows, consume),
            RowSource::Object(r) => r.stream(chunk_rows, consume),
        }
    }
}

/// Where a shard's output bytes go, in order (a temporary file, an upload); fed by the writer
/// thread, so implementations must be `Send`.
pub(crate) trait ShardSink: Send {
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// Called after every [`SYNC_EVERY_BYTES`] written: a chance to push data towards durable
    /// storage while the next chunks compute.
    fn checkpoint(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A temporary output file.
struct FileSink<'a> {
    writer: ShardWriter,
    path: &'a Path,
}

impl ShardSink for FileSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .map_err(|e| Error::io(self.path, e))
    }
    fn checkpoint(&mut self) -> Result<()> {
        self.writer
            .sync_progress()
            .map_err(|e| Error::io(self.path, e))
    }
}

/// An input shard's shape, from its header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShardShape {
    pub rows: usize,
    pub cols: usize,
    pub dtype: NpyDtype,
}

/// What every shard of a run is projected with.
pub(crate) struct ShardWork<'a> {
    pub map: &'a PreparedMap,
    pub opts: &'a ProjectionOptions,
    pub backend: &'a dyn Backend,
    /// Rows per chunk before the input cap ([`cap_chunk_rows`]).
    pub chunk_rows: usize,
    pub progress: &'a dyn ProgressSink,
    pub cancel: &'a AtomicBool,
}

/// Streams a shard's rows from `source` through the backend into `sink`: the `.npy` header,
/// then every row, computed on this thread while a writer thread feeds the previous chunk to
/// the sink and hashes it. Returns the stats, the output size and its xxh3-64. `input` and
/// `output` name the shard and its output in errors.
pub(crate) fn project_shard(
    source: RowSource,
    shape: ShardShape,
    input: &Path,
    sink: &mut dyn ShardSink,
    output: &Path,
    work: &ShardWork<'_>,
) -> Result<(BlockStats, u64, u64)> {
    let ShardWork {
        map,
        opts,
        backend,
        chunk_rows,
        progress,
        cancel,
    } = *work;
    let out_elem = opts.output;
    let d_out = map.d_out();
    let rows = shape.rows;
    let in_elem = elem_of(shape.dtype);
    let chunk_rows = cap_chunk_rows(
        chunk_rows,
        shape.cols * shape.dtype.size(),
        READ_CHUNK_BYTES,
        backend.row_block(),
    );
    let out_npy = match out_elem {
        ElemType::F16 => NpyDtype::F16,
        ElemType::F32 => NpyDtype::F32,
    };
    let mut hasher = Xxh3::new();
    let header = npy::header_bytes(out_npy, &[rows, d_out]);
    sink.write(&header)?;
    hasher.update(&header);

    let out_row_bytes = d_out * out_elem.size();
    let mut stats = BlockStats::default();
    // Compute on this thread, write on another: WRITE_BUFFERS chunk buffers circulate.
    let (to_writer, writer_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(WRITE_BUFFERS);
    let (to_compute, compute_rx) = mpsc::sync_channel::<Vec<u8>>(WRITE_BUFFERS);
    for _ in 0..WRITE_BUFFERS {
        // Fallible: under an address-space limit this is a clean error, never an abort.
        let buf = crate::backend::try_zeroed::<u8>(chunk_rows * out_row_bytes)?;
        to_compute.send(buf).expect("channel open");
    }
    let hashed: Result<Xxh3> = std::thread::scope(|scope| {
        let writer_thread = scope.spawn(move || -> Result<Xxh3> {
            let mut failure = None;
            let mut unwritten_since_checkpoint = 0usize;
            for (buf, len) in writer_rx {
                if failure.is_none() {
                    let written = sink.write(&buf[..len]).and_then(|()| {
                        hasher.update(&buf[..len]);
                        // Push data out while the next chunks compute, so the final sync is
                        // short and writeback never piles up in RAM.
                        unwritten_since_checkpoint += len;
                        if unwritten_since_checkpoint >= SYNC_EVERY_BYTES {
                            unwritten_since_checkpoint = 0;
                            sink.checkpoint()?;
                        }
                        Ok(())
                    });
                    if let Err(e) = written {
                        failure = Some(e);
                    }
                }
                // Return the buffer even after a failure so the compute side never blocks.
                let _ = to_compute.send(buf);
            }
            match failure {
                Some(e) => Err(e),
                None => Ok(hasher),
            }
        });
        // Rows arrive from the reader; each chunk is projected straight into an output buffer,
        // which then goes to the writer.
        let compute = source.stream(chunk_rows, |chunk| {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let n = chunk.rows;
            let mut buf = compute_rx
                .recv()
                .map_err(|_| Error::io(output, std::io::Error::other("writer stopped")))?;
            let rows_in = RowsIn::dense(chunk.bytes, n, shape.cols, in_elem);
            let out = RowsOut::dense(&mut buf[..n * out_row_bytes], n, d_out, out_elem);
            match backend.project(map, opts, rows_in, out) {
                Ok(st) => stats += st,
                Err(e) => return Err(e.offset_rows(chunk.start).in_file(input)),
            }
            if to_writer.send((buf, n * out_row_bytes)).is_err() {
                return Ok(false); // the writer failed; its error is reported below
            }
            progress.advance(n as u64);
            Ok(true)
        });
        drop(to_writer);
        let written = writer_thread.join().expect("writer thread does not panic");
        match (compute, written) {
            (Err(e), _) => Err(e),
            (Ok(()), w) => w,
        }
    });
    let hasher = hashed?;
    let size = header.len() as u64 + (rows * out_row_bytes) as u64;
    Ok((stats, size, hasher.digest()))
}

/// `chunk_rows` lowered so that a chunk of input rows of `in_row_bytes` stays within
/// `max_input_bytes`; still a multiple of the backend's row block `block` (chunk boundaries never
/// change a row's result, as blocks start at multiples of `block` from the start of the shard
/// either way).
fn cap_chunk_rows(
    chunk_rows: usize,
    in_row_bytes: usize,
    max_input_bytes: usize,
    block: usize,
) -> usize {
    let block = block.max(1);
    let fit = (max_input_bytes / in_row_bytes.max(1)) / block * block;
    chunk_rows.min(fit.max(block))
}

/// Where an output shard's bytes go. Direct I/O (O_DIRECT) skips the page cache: on a 2-core
/// machine the copies into it and the kernel's writeback otherwise take CPU time from the GEMM.
/// File systems that refuse O_DIRECT (tmpfs on older kernels) get ordinary buffered writes.
enum ShardWriter {
    Buffered(BufWriter<File>),
    Direct(DirectWriter),
}

/// O_DIRECT needs aligned buffers, offsets and lengths; 4096 satisfies every common device.
const DIRECT_ALIGN: usize = 4096;
const DIRECT_STAGING_BYTES: usize = 8 << 20;

struct DirectWriter {
    file: File,
    /// Over-allocated so that `staging[offset..offset + DIRECT_STAGING_BYTES]` is aligned.
    staging: Vec<u8>,
    offset: usize,
    pending: usize,
    logical_len: u64,
}

impl ShardWriter {
    fn create(path: &Path) -> std::io::Result<Self> {
        let direct = create_temporary(path, libc::O_DIRECT);
        match direct {
            Ok(file) => {
                let staging = crate::backend::try_zeroed::<u8>(DIRECT_STAGING_BYTES + DIRECT_ALIGN)
                    .map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::OutOfMemory, e.to_string())
                    })?;
                let misalignment = staging.as_ptr() as usize % DIRECT_ALIGN;
                let offset = (DIRECT_ALIGN - misalignment) % DIRECT_ALIGN;
                Ok(ShardWriter::Direct(DirectWriter {
                    file,
                    staging,
                    offset,
                    pending: 0,
                    logical_len: 0,
                }))
            }
            Err(_) => Ok(ShardWriter::Buffered(BufWriter::with_capacity(
                1 << 20,
                create_temporary(path, 0)?,
            ))),
        }
    }

    fn write_all(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        match self {
            ShardWriter::Buffered(w) => w.write_all(data),
            ShardWriter::Direct(d) => {
                d.logical_len += data.len() as u64;
                while !data.is_empty() {
                    let room = DIRECT_STAGING_BYTES - d.pending;
                    let n = room.min(data.len());
                    let at = d.offset + d.pending;
                    d.staging[at..at + n].copy_from_slice(&data[..n]);
                    d.pending += n;
                    data = &data[n..];
                    if d.pending == DIRECT_STAGING_BYTES {
                        d.file
                            .write_all(&d.staging[d.offset..d.offset + DIRECT_STAGING_BYTES])?;
                        d.pending = 0;
                    }
                }
                Ok(())
            }
        }
    }

    /// Pushes written data towards the disk during the run (buffered writes only; direct writes
    /// are already there).
    fn sync_progress(&mut self) -> std::io::Result<()> {
        match self {
            ShardWriter::Buffered(w) => {
                w.flush()?;
                w.get_ref().sync_data()
            }
            ShardWriter::Direct(_) => Ok(()),
        }
    }

    /// Writes what is left and makes the file durable.
    fn finish(self) -> std::io::Result<()> {
        let file = match self {
            ShardWriter::Buffered(w) => w.into_inner().map_err(|e| e.into_error())?,
            ShardWriter::Direct(mut d) => {
                if d.pending > 0 {
                    // The last block is written whole (zero-padded), then the file is cut to
                    // its real length.
                    let padded = d.pending.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
                    let start = d.offset + d.pending;
                    d.staging[start..d.offset + padded].fill(0);
                    d.file.write_all(&d.staging[d.offset..d.offset + padded])?;
                    d.file.set_len(d.logical_len)?;
                }
                d.file
            }
        };
        file.sync_all()
    }
}
