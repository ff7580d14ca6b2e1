//! Inputs that change under a running `project` job: truncated while read, or written between
//! the up-front checks and the read. Each is a clean error naming the shard (and the row), exit
//! code 1 from the CLI, no temporary or partial output, and never a crash (a memory-mapped
//! reader died of SIGBUS here).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use isoclip::align::synthetic::{SyntheticModel, SYNTHETIC_IMAGE_BAND};
use isoclip::align::{fit, AlignedProjector, BandSpec, Modality};
use isoclip::backend::cpu::CpuBackend;
use isoclip::engine::gallery::write_random_shard;
use isoclip::engine::reader::ShardReader;
use isoclip::engine::{run_job, JobSpec, ProgressSink};
use isoclip::error::Error;
use isoclip::formats::npy::NpyDtype;

const DIM: usize = 768;
const ROW_BYTES: u64 = (DIM * 2) as u64;

fn synthetic_projector() -> AlignedProjector {
    let model = SyntheticModel::vit_b().unwrap();
    let band = BandSpec::new(SYNTHETIC_IMAGE_BAND.0, SYNTHETIC_IMAGE_BAND.1);
    fit(&model.weights, &[(Modality::Image, band)], None).unwrap()
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// File names in `dir` (empty when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Asserts the run left neither a temporary file nor an output shard.
fn assert_no_output(out: &Path, shard_name: &str) {
    let names = names_in(out);
    assert!(
        !names
            .iter()
            .any(|n| n.contains("isoclip-tmp") || n == shard_name),
        "left behind: {names:?}"
    );
}

/// Truncates the shard to `keep_rows` rows at a chosen moment of the run.
struct TruncateDuringRun {
    path: PathBuf,
    keep_bytes: u64,
    /// Truncate in `start` (after the up-front checks, before any read) instead of after the
    /// first chunk.
    before_reading: bool,
    done: AtomicBool,
}

impl TruncateDuringRun {
    fn fire(&self) {
        if !self.done.swap(true, Ordering::SeqCst) {
            truncate(&self.path, self.keep_bytes);
        }
    }
}

impl ProgressSink for TruncateDuringRun {
    fn start(&self, _rows: u64, _shards: usize) {
        if self.before_reading {
            self.fire();
        }
    }
    fn advance(&self, _rows: u64) {
        self.fire();
    }
}

/// What a truncated run left: its directory (removed on drop), shard, output directory, the
/// shard's data offset and the run's result.
struct TruncatedRun {
    _dir: tempfile::TempDir,
    shard: PathBuf,
    out: PathBuf,
    data_offset: u64,
    result: Result<(), Error>,
}

/// Runs a job over one 4096-row shard in 128-row chunks, truncating it to 300 rows.
fn run_with_truncation(before_reading: bool) -> TruncatedRun {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let shard = dir.join("img_emb_0000.npy");
    write_random_shard(&shard, 4096, DIM, NpyDtype::F16, 7, &AtomicBool::new(false)).unwrap();
    // Dated back, so that truncating it in the same clock tick still changes its mtime.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
        .unwrap();
    let data_offset = ShardReader::inspect(&shard).unwrap().data_offset;
    let out = dir.join("out");
    let mut spec = JobSpec::new(&shard, &out);
    spec.chunk_bytes = 1; // the smallest chunk: 128 rows
    let sink = TruncateDuringRun {
        path: shard.clone(),
        keep_bytes: data_offset + 300 * ROW_BYTES,
        before_reading,
        done: AtomicBool::new(false),
    };
    let backend = CpuBackend::new(Some(1)).unwrap();
    let result = run_job(
        &spec,
        &synthetic_projector(),
        &backend,
        &sink,
        &AtomicBool::new(false),
    )
    .map(|_| ());
    TruncatedRun {
        _dir: tmp,
        shard,
        out,
        data_offset,
        result,
    }
}

#[test]
fn truncated_while_read_is_an_error_naming_shard_and_row() {
    let run = run_with_truncation(false);
    let (shard, out, offset) = (&run.shard, &run.out, run.data_offset);
    let err = run.result.unwrap_err();
    assert!(matches!(err.root(), Error::Format { .. }), "{err:?}");
    let (p, had, has) = (
        shard.display(),
        offset + 4096 * ROW_BYTES,
        offset + 300 * ROW_BYTES,
    );
    // Chunk 0's buffer is held while the sink truncates, so of the three ring buffers the reader
    // can have filled only chunks 1 (rows 128..256) and 2 (256..384) before; whichever chunk it
    // reads first afterwards reports: chunk 1 still fits (the size change is noticed), chunks 2
    // and 3 are short reads.
    // (A stat racing the truncation may see the new size before the new mtime.)
    let allowed = [
        format!("{p}: changed while it was being read, noticed at row 128 (its size went from {had} to {has} bytes, it was written to)"),
        format!("{p}: changed while it was being read, noticed at row 128 (its size went from {had} to {has} bytes)"),
        format!("{p}: truncated while it was being read: row 256 is past its end (it had {had} bytes, it now has {has} bytes)"),
        format!("{p}: truncated while it was being read: row 384 is past its end (it had {had} bytes, it now has {has} bytes)"),
    ];
    assert!(allowed.contains(&err.to_string()), "{err}");
    assert_no_output(out, "img_emb_0000.npy");
}

#[test]
fn written_between_checks_and_read_is_refused_before_reading() {
    let run = run_with_truncation(true);
    let (shard, out, offset) = (&run.shard, &run.out, run.data_offset);
    let err = run.result.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: changed since the run started (its size went from {} to {} bytes, it was written to); rerun to process it as it is now",
            shard.display(),
            offset + 4096 * ROW_BYTES,
            offset + 300 * ROW_BYTES
        )
    );
    assert_no_output(out, "img_emb_0000.npy");
}

/// The CLI, truncated from outside while it runs: paused with SIGSTOP once its temporary output
/// exists (it is then reading the shard), truncated, resumed.
#[test]
fn cli_input_truncated_mid_run_exits_1_without_crash_or_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let o = isoclip(&["fit", "-o", "p.st"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = isoclip(
        &[
            "gallery", "--out", "g", "--shards", "1", "--rows", "60000", "--dim", "768",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let shard = dir.path().join("g/img_emb_0000.npy");
    let data_offset = ShardReader::inspect(&shard).unwrap().data_offset;
    let tmp = dir.path().join("o/.img_emb_0000.npy.isoclip-tmp");
    let child = Command::new(env!("CARGO_BIN_EXE_isoclip"))
        .args([
            "project",
            "--projector",
            "p.st",
            "--input",
            "g",
            "--output",
            "o",
            "--quiet",
            "--threads",
            "1",
            "--chunk-bytes",
            "1",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tmp.exists() {
        assert!(Instant::now() < deadline, "no temporary output appeared");
        std::thread::sleep(Duration::from_micros(200));
    }
    // SAFETY: kill only sends a signal to our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    truncate(&shard, data_offset + 1000 * ROW_BYTES);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let o = child.wait_with_output().unwrap();
    assert_fails_with(&o, &["img_emb_0000.npy", "while it was being read"]);
    assert_no_output(&dir.path().join("o"), "img_emb_0000.npy");
}

/// The streamed, chunked run writes exactly the bytes of one backend call over the whole shard
/// read in one piece (the memory-mapped reader's path), whatever the chunk size; for f16 and f32
/// inputs and a row count that is not a multiple of the block size.
#[test]
fn streamed_output_is_byte_identical_to_one_call_over_the_whole_shard() {
    use isoclip::backend::{Backend, ElemType, RowsIn, RowsOut};
    use isoclip::formats::npy::{header_bytes, Accept, NpyMatrix};

    let projector = synthetic_projector();
    let backend = CpuBackend::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (dtype, elem) in [
        (NpyDtype::F16, ElemType::F16),
        (NpyDtype::F32, ElemType::F32),
    ] {
        let shard = dir.path().join(format!("{dtype:?}.npy"));
        let rows = 3 * 1024 + 77;
        write_random_shard(&shard, rows, DIM, dtype, 11, &AtomicBool::new(false)).unwrap();
        let spec0 = JobSpec::new(&shard, dir.path());
        let opts = spec0.options;
        let maps = projector.only_modality(None).unwrap();
        let map = backend
            .prepare(maps.select(opts.input_kind, opts.form).unwrap())
            .unwrap();
        let whole = NpyMatrix::open(&shard, Accept::Embeddings).unwrap();
        let out_row = map.d_out() * opts.output.size();
        let mut expected = header_bytes(NpyDtype::F16, &[rows, map.d_out()]);
        let header_len = expected.len();
        expected.resize(header_len + rows * out_row, 0);
        backend
            .project(
                &map,
                &opts,
                RowsIn::dense(whole.row_bytes(0, rows), rows, DIM, elem),
                RowsOut::dense(&mut expected[header_len..], rows, map.d_out(), opts.output),
            )
            .unwrap();
        for chunk_bytes in [1, 300_000, 0] {
            let out = dir.path().join(format!("out_{dtype:?}_{chunk_bytes}"));
            let mut spec = JobSpec::new(&shard, &out);
            spec.chunk_bytes = chunk_bytes;
            run_job(
                &spec,
                &projector,
                &backend,
                &isoclip::engine::SilentProgress,
                &AtomicBool::new(false),
            )
            .unwrap();
            let got = std::fs::read(out.join(format!("{dtype:?}.npy"))).unwrap();
            assert!(
                got == expected,
                "{dtype:?}, chunk_bytes {chunk_bytes}: output differs from one call"
            );
        }
    }
}
