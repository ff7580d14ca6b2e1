//! The CPU backend: rayon over fixed row blocks; per block, in cache: f16→f32 conversion (F16C
//! via `half`'s runtime-dispatched slice conversion), an exact power-of-two pre-scale of rows
//! whose magnitude could overflow or underflow the GEMM, a GEMM (sequential inside a block), bias,
//! row normalisation, conversion of the output, and a finiteness check of every converted output
//! row.
//!
//! The GEMM: on a CPU with AVX-512F, `packed_f32` over weights packed once at prepare (each
//! output element one in-order FMA chain, so a row's bits do not depend on its block); elsewhere
//! the `gemm` crate's SIMD kernels; under [`Precision::Bf16`], the AVX-512 BF16 kernel (`bf16`).
//!
//! The numeric contract (the same one `tests/backend_conformance.rs` holds every backend to):
//! - any finite input row gives a finite output row, L2-normalised to f32 rounding when
//!   normalising: the norm's squares are accumulated in f64 (no f32 row can overflow or underflow
//!   them), and a row whose largest |value| lies outside [2^-64, 2^64] is multiplied by an exact
//!   power of two before the GEMM (cosines unchanged; undone after it when not normalising);
//! - a result the output type cannot hold (an unnormalised value beyond ±65504 in f16, or beyond
//!   f32) is `Error::Unrepresentable { row }`, or under `NonFinitePolicy::Zero` a zero row counted
//!   in `nonfinite_rows`, exactly like a NaN/Inf input row; zero-norm rows are zeros, counted in
//!   `zero_norm_rows`.
//!
//! Block boundaries are fixed multiples of `BLOCK_ROWS` (128) from the start of each call, so a row's
//! result never depends on the thread count: reruns are byte-identical.
//!
//! Memory: without AVX-512F the GEMM runs through `gemm::gemm`, which allocates a small packing
//! buffer per call (about `k x n` floats), instead of faer's x86 path, whose thread-local scratch
//! reserves twice the L3 cache size per compute thread (520 MiB on a 260 MiB-L3 server) and
//! aborts the process when that reservation fails. Our own per-thread scratch is reserved with `try_reserve`, so a
//! refusal is `Error::ResourceExhausted`, not an abort.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use std::sync::{Arc, OnceLock};

use super::bf16::{Bf16Kernel, PackedBf16Weights};
use super::packed_f32::{F32Kernel, PackedF32Weights};
use super::{
    check_shapes, try_zeroed, Backend, BackendId, BlockStats, ElemType, NonFinitePolicy, Precision,
    PreparedMap, ProjectionOptions, RowsIn, RowsOut,
};
use crate::align::LinearMap;
use crate::error::{Error, Result};

/// Rows per block: the f32 input block (128 x 768 x 4 = 384 KiB) and output block stay in L2.
pub(crate) const BLOCK_ROWS: usize = 128;

/// The most compute threads a CPU backend starts. Far above any useful count (the work is
/// memory-bound beyond a few dozen cores), low enough that a typo cannot make the process spend
/// minutes spawning threads or exhaust the host's thread limit.
pub(crate) const MAX_THREADS: usize = 1024;

/// Rows whose largest |value| lies in [2^-SAFE_EXP, 2^SAFE_EXP] go through the GEMM unscaled;
/// others are first scaled by an exact power of two into [1, 2). With projector weights below
/// 2^40 (what `fit` accepts) and up to 2^16 input columns, no such row overflows f32 in the GEMM.
const SAFE_EXP: i32 = 64;

pub struct CpuBackend {
    id: BackendId,
    pool: Option<rayon::ThreadPool>,
    threads: usize,
    /// The AVX-512F f32 kernel, when this CPU has it (otherwise the `gemm` crate's).
    f32: Option<F32Kernel>,
    /// The AVX-512 BF16 kernel, when this CPU has it ([`Precision::Bf16`]).
    bf16: Option<Bf16Kernel>,
}

/// What the CPU backend keeps for a prepared map: the weights in the f32 kernel's layout (packed
/// at prepare, on a CPU with AVX-512F) and in the bf16 kernel's (packed on the first bf16 call:
/// f32 projections never pay for them).
#[derive(Debug)]
pub(crate) struct CpuPrepared {
    f32: Option<PackedF32Weights>,
    bf16: OnceLock<PackedBf16Weights>,
}

impl CpuPrepared {
    fn bf16_weights(&self, map: &LinearMap) -> Result<&PackedBf16Weights> {
        if let Some(w) = self.bf16.get() {
            return Ok(w);
        }
        // Two threads may both pack on a first call; one result is kept, both are the same.
        let packed = PackedBf16Weights::pack(&map.weight.data, map.d_in(), map.d_out())?;
        Ok(self.bf16.get_or_init(|| packed))
    }
}

/// The GEMM of a call: the packed f32 weights (AVX-512F), the f32 weights as they are (the
/// `gemm` crate, on other CPUs), or the packed bf16 ones.
#[derive(Clone, Copy)]
enum Gemm<'a> {
    F32Packed(F32Kernel, &'a PackedF32Weights),
    F32(&'a [f32]),
    Bf16(Bf16Kernel, &'a PackedBf16Weights),
}

impl Gemm<'_> {
    /// `y = x · w` for row-major `x` (n x d_in), `y` (n x d_out).
    fn run(&self, x: &[f32], y: &mut [f32], n: usize, d_in: usize, d_out: usize) {
        match self {
            Gemm::F32Packed(kernel, w) => kernel.gemm_rows(x, w, y, n, d_in, d_out),
            Gemm::F32(w) => gemm_rows(x, w, y, n, d_in, d_out),
            Gemm::Bf16(kernel, w) => kernel.gemm_rows(x, w, y, n, d_in, d_out),
        }
    }
}

/// The message of [`Error::DeviceUnavailable`] when this CPU cannot compute at bf16 precision
/// (front ends recognise it to name their own f32 option).
pub const BF16_UNAVAILABLE: &str =
    "bf16 precision needs a CPU with AVX-512 BF16 (AMD Zen 4 or later, Intel Cooper Lake, \
     Sapphire Rapids or later); this one lacks it, and isoclip does not emulate it: use f32";

/// The arithmetic name of the `gemm` crate's f32 kernels (CPUs without AVX-512F; every CPU
/// before the packed f32 kernel, so also what output records without the field were made with).
pub const GEMM_CRATE_ARITHMETIC: &str = "f32-gemm";

/// Why bf16 precision is refused on this CPU.
pub fn bf16_unavailable() -> Error {
    Error::DeviceUnavailable(BF16_UNAVAILABLE.into())
}

impl CpuBackend {
    /// `threads = None` (or `Some(0)`) uses every core (rayon's global pool). More than
    /// `MAX_THREADS` (1024) is `Error::InvalidArgument`; a pool the system refuses to start is
    /// `Error::ResourceExhausted`.
    pub fn new(threads: Option<usize>) -> Result<Self> {
        match threads {
            None | Some(0) => Ok(CpuBackend {
                id: BackendId::fresh(),
                pool: None,
                threads: rayon::current_num_threads(),
                f32: F32Kernel::new(),
                bf16: Bf16Kernel::new(),
            }),
            Some(n) if n > MAX_THREADS => Err(Error::invalid(format!(
                "{n} compute threads requested; at most {MAX_THREADS} are allowed (0 uses every \
                 core)"
            ))),
            Some(n) => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("isoclip-cpu-{i}"))
                    .build()
                    .map_err(|e| {
                        Error::ResourceExhausted(format!("cannot start {n} compute threads: {e}"))
                    })?;
                Ok(CpuBackend {
                    id: BackendId::fresh(),
                    pool: Some(pool),
                    threads: n,
                    f32: F32Kernel::new(),
                    bf16: Bf16Kernel::new(),
                })
            }
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// This backend's state for `map` (what [`Backend::prepare`] keeps; the CUDA backend keeps
    /// one for the shapes it leaves to the CPU).
    pub(crate) fn prepare_state(&self, map: &LinearMap) -> Result<CpuPrepared> {
        let f32 = match self.f32 {
            Some(_) => Some(PackedF32Weights::pack(
                &map.weight.data,
                map.d_in(),
                map.d_out(),
            )?),
            None => None,
        };
        Ok(CpuPrepared {
            f32,
            bf16: OnceLock::new(),
        })
    }

    /// [`Backend::project`] on a map and this backend's state for it (the CUDA backend runs the
    /// shapes its kernels do not cover through this, with a state of its own).
    pub(crate) fn project_prepared(
        &self,
        map: &LinearMap,
        state: &CpuPrepared,
        opts: &ProjectionOptions,
        input: RowsIn<'_>,
        output: RowsOut<'_>,
    ) -> Result<BlockStats> {
        check_shapes(map, &input, &output)?;
        let gemm = match opts.precision {
            Precision::F32 => match (self.f32, &state.f32) {
                (Some(kernel), Some(w)) => Gemm::F32Packed(kernel, w),
                _ => Gemm::F32(&map.weight.data),
            },
            Precision::Bf16 => {
                let kernel = self.bf16.ok_or_else(bf16_unavailable)?;
                Gemm::Bf16(kernel, state.bf16_weights(map)?)
            }
        };
        if input.rows == 0 {
            return Ok(BlockStats::default());
        }
        // One block (a search query, a small batch): on the caller's thread, with its reused
        // scratch. Dispatching to a pool costs more than the work at this size, and the block
        // goes through the same code, so its bytes are the same as in a pooled call.
        if input.rows <= BLOCK_ROWS {
            return project_inline(map, gemm, opts, input, output);
        }
        let run = || project_blocks(map, gemm, opts, input, output);
        match &self.pool {
            Some(p) => p.install(run),
            None => run(),
        }
    }
}

fn simd_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "AVX2";
        }
    }
    "portable SIMD"
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({} threads, {})", self.threads, simd_name())
    }

    fn id(&self) -> BackendId {
        self.id
    }

    /// Packs the f32 weights for the AVX-512F kernel (on other CPUs the blocks read the shared
    /// weights directly); the bf16 layout is packed on first use.
    fn prepare(&self, map: Arc<LinearMap>) -> Result<PreparedMap> {
        let state = Arc::new(self.prepare_state(&map)?);
        Ok(PreparedMap::new(self.id, self.describe(), map, Some(state)))
    }

    fn arithmetic(&self, _map: &LinearMap, opts: &ProjectionOptions) -> Result<&'static str> {
        match opts.precision {
            // The two f32 kernels sum in different orders: their last bits differ.
            Precision::F32 if self.f32.is_some() => Ok("f32"),
            Precision::F32 => Ok(GEMM_CRATE_ARITHMETIC),
            Precision::Bf16 if self.bf16.is_some() => Ok("bf16"),
            Precision::Bf16 => Err(bf16_unavailable()),
        }
    }

    fn row_block(&self) -> usize {
        BLOCK_ROWS
    }

    fn project(
        &self,
        map: &PreparedMap,
        opts: &ProjectionOptions,
        input: RowsIn<'_>,
        output: RowsOut<'_>,
    ) -> Result<BlockStats> {
        map.check_owner(self)?;
        let state = map.state::<CpuPrepared>().ok_or_else(|| {
            Error::invalid("the map carries no CPU state although this backend prepared it")
        })?;
        self.project_prepared(map.linear(), state, opts, input, output)
    }
}

thread_local! {
    /// The scratch of inline calls on this thread, kept between calls (no allocation per query).
    static INLINE_SCRATCH: std::cell::RefCell<Option<(usize, usize, Scratch)>> =
        const { std::cell::RefCell::new(None) };
}

/// Projects at most one block on the calling thread.
fn project_inline(
    map: &LinearMap,
    gemm: Gemm<'_>,
    opts: &ProjectionOptions,
    input: RowsIn<'_>,
    output: RowsOut<'_>,
) -> Result<BlockStats> {
    let (d_in, d_out) = (map.d_in(), map.d_out());
    INLINE_SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !matches!(&*slot, Some((i, o, _)) if (*i, *o) == (d_in, d_out)) {
            *slot = None; // free the old buffers before reserving new ones
            *slot = Some((d_in, d_out, Scratch::try_new(d_in, d_out)?));
        }
        let (_, _, scratch) = slot.as_mut().expect("set above");
        let block = Block {
            start: 0,
            n: input.rows,
            out_stride: output.row_stride,
            out_elem: output.elem,
        };
        project_one_block(map, gemm, opts, &input, &block, output.bytes, scratch)
            .map_err(BlockFailure::into_error)
    })
}

/// Per-thread buffers for one block: f32 input rows, f32 results, each row's pre-scale exponent.
struct Scratch {
    x: Vec<f32>,
    y: Vec<f32>,
    exponents: Vec<i32>,
}

impl Scratch {
    /// Reserves the buffers fallibly: a refused allocation is an error, not an abort.
    fn try_new(d_in: usize, d_out: usize) -> Result<Scratch> {
        Ok(Scratch {
            x: try_zeroed(BLOCK_ROWS * d_in)?,
            y: try_zeroed(BLOCK_ROWS * d_out)?,
            exponents: try_zeroed(BLOCK_ROWS)?,
        })
    }
}

/// Why a block stopped: a row that fails the call (the lowest one wins), or no memory.
#[derive(Debug)]
enum BlockFailure {
    Row(usize, RowFailure),
    Memory(Error),
}

/// What is wrong with one row.
#[derive(Debug)]
enum RowFailure {
    /// The input row holds NaN or Inf.
    NonFiniteInput,
    /// The input is finite but the result does not fit the output type.
    Unrepresentable(String),
}

impl BlockFailure {
    fn into_error(self) -> Error {
        match self {
            BlockFailure::Row(row, RowFailure::NonFiniteInput) => Error::NonFiniteRow { row },
            BlockFailure::Row(row, RowFailure::Unrepresentable(message)) => {
                Error::Unrepresentable { row, message }
            }
            BlockFailure::Memory(e) => e,
        }
    }
    /// The failure to report when two blocks fail: memory first, else the lowest row.
    fn first(a: BlockFailure, b: BlockFailure) -> BlockFailure {
        match (a, b) {
            (m @ BlockFailure::Memory(_), _) | (_, m @ BlockFailure::Memory(_)) => m,
            (BlockFailure::Row(i, x), BlockFailure::Row(j, y)) => {
                if i <= j {
                    BlockFailure::Row(i, x)
                } else {
                    BlockFailure::Row(j, y)
                }
            }
        }
    }
}

type BlockOutcome = std::result::Result<BlockStats, BlockFailure>;

fn project_blocks(
    map: &LinearMap,
    gemm: Gemm<'_>,
    opts: &ProjectionOptions,
    input: RowsIn<'_>,
    output: RowsOut<'_>,
) -> Result<BlockStats> {
    let (d_in, d_out) = (map.d_in(), map.d_out());
    let out_stride = output.row_stride;
    let out_elem = output.elem;
    let rows = input.rows;
    let outcome = output
        .bytes
        .par_chunks_mut(BLOCK_ROWS * out_stride)
        .take(rows.div_ceil(BLOCK_ROWS))
        .enumerate()
        .map_init(
            || Scratch::try_new(d_in, d_out),
            |scratch, (block, out_bytes)| -> BlockOutcome {
                let scratch = scratch
                    .as_mut()
                    .map_err(|e| BlockFailure::Memory(Error::ResourceExhausted(e.to_string())))?;
                let start = block * BLOCK_ROWS;
                let block = Block {
                    start,
                    n: BLOCK_ROWS.min(rows - start),
                    out_stride,
                    out_elem,
                };
                project_one_block(map, gemm, opts, &input, &block, out_bytes, scratch)
            },
        )
        .reduce(
            || Ok(BlockStats::default()),
            |a, b| match (a, b) {
                (Ok(mut x), Ok(y)) => {
                    x += y;
                    Ok(x)
                }
                (Err(i), Err(j)) => Err(BlockFailure::first(i, j)),
                (Err(i), _) | (_, Err(i)) => Err(i),
            },
        );
    outcome.map_err(BlockFailure::into_error)
}

/// Where one block lies in the call and how its output is laid out.
struct Block {
    start: usize,
    n: usize,
    out_stride: usize,
    out_elem: ElemType,
}

/// Marks, in the exponent array, a row whose input held NaN/Inf.
const NONFINITE_INPUT: i32 = i32::MIN;

/// One block: read and pre-scale the rows, GEMM, then finish, convert and check row by row in
/// order, so the first failing row of the block is the lowest.
///
/// The work around the GEMM (finiteness and magnitude of each input row, f64 norms, scaling) is
/// compiled twice: for the baseline x86-64 (SSE2) and, chosen at run time, with AVX2. Both run
/// the same operations in the same order (no fused multiply-adds, no reassociation), so they
/// give the same bits; AVX2 only makes them wider.
fn project_one_block(
    map: &LinearMap,
    gemm: Gemm<'_>,
    opts: &ProjectionOptions,
    input: &RowsIn<'_>,
    block: &Block,
    out_bytes: &mut [u8],
    scratch: &mut Scratch,
) -> BlockOutcome {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected on this CPU just above (the feature the function is
        // compiled for); it has no other precondition.
        return unsafe {
            project_one_block_avx2(map, gemm, opts, input, block, out_bytes, scratch)
        };
    }
    project_one_block_body(map, gemm, opts, input, block, out_bytes, scratch)
}

/// [`project_one_block_body`] compiled with AVX2.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn project_one_block_avx2(
    map: &LinearMap,
    gemm: Gemm<'_>,
    opts: &ProjectionOptions,
    input: &RowsIn<'_>,
    block: &Block,
    out_bytes: &mut [u8],
    scratch: &mut Scratch,
) -> BlockOutcome {
    project_one_block_body(map, gemm, opts, input, block, out_bytes, scratch)
}

/// The body of [`project_one_block`]; it and the helpers it calls are inlined into each
/// compiled variant.
#[inline(always)]
fn project_one_block_body(
    map: &LinearMap,
    gemm: Gemm<'_>,
    opts: &ProjectionOptions,
    input: &RowsIn<'_>,
    block: &Block,
    out_bytes: &mut [u8],
    scratch: &mut Scratch,
) -> BlockOutcome {
    let (d_in, d_out) = (map.d_in(), map.d_out());
    let n = block.n;
    let x = &mut scratch.x[..n * d_in];
    let exponents = &mut scratch.exponents[..n];
    read_block(input, block.start, map.bias.is_some(), x, exponents);
    let y = &mut scratch.y[..n * d_out];
    gemm.run(x, y, n, d_in, d_out);
    let mut stats = BlockStats::default();
    let out_row_bytes = d_out * block.out_elem.size();
    for (r, row) in y.chunks_exact_mut(d_out.max(1)).take(n).enumerate() {
        let at = r * block.out_stride;
        let out = &mut out_bytes[at..at + out_row_bytes];
        let outcome = if exponents[r] == NONFINITE_INPUT {
            Err(RowFailure::NonFiniteInput)
        } else {
            finish_and_write(
                row,
                map.bias.as_deref(),
                exponents[r],
                opts,
                block.out_elem,
                out,
            )
        };
        match outcome {
            Ok(RowResult::ZeroNorm) => stats.zero_norm_rows += 1,
            Ok(RowResult::Done) => {}
            Err(failure) if opts.nonfinite == NonFinitePolicy::Error => {
                return Err(BlockFailure::Row(block.start + r, failure));
            }
            Err(_) => {
                out.fill(0);
                stats.nonfinite_rows += 1;
            }
        }
    }
    Ok(stats)
}

/// Converts the block's input rows to f32 in `x`, zeroing rows with NaN/Inf (marked
/// [`NONFINITE_INPUT`]) and pre-scaling rows of extreme magnitude (their exponent recorded).
#[inline(always)]
fn read_block(
    input: &RowsIn<'_>,
    start: usize,
    has_bias: bool,
    x: &mut [f32],
    exponents: &mut [i32],
) {
    let d_in = input.cols;
    for (r, exponent) in exponents.iter_mut().enumerate() {
        let dst = &mut x[r * d_in..(r + 1) * d_in];
        read_row(input.row(start + r), input.elem, dst);
        *exponent = match max_abs_if_finite(dst) {
            Some(max_abs) => prescale_exponent(max_abs, has_bias),
            None => {
                dst.fill(0.0);
                NONFINITE_INPUT
            }
        };
        if *exponent != 0 && *exponent != NONFINITE_INPUT {
            scale_by_pow2(dst, *exponent);
        }
    }
}

/// `y = x · w` for row-major `x` (n x d_in), `w` (d_in x d_out), `y` (n x d_out).
fn gemm_rows(x: &[f32], w: &[f32], y: &mut [f32], n: usize, d_in: usize, d_out: usize) {
    assert!(x.len() == n * d_in && w.len() == d_in * d_out && y.len() == n * d_out);
    if n == 0 || d_out == 0 {
        return;
    }
    if d_in == 0 {
        y.fill(0.0);
        return;
    }
    // SAFETY: the assertion above shows every index the GEMM touches is inside its slice: `x` is
    // n rows of d_in contiguous floats (row stride d_in, column stride 1), `w` d_in rows of d_out,
    // `y` n rows of d_out; `y` is a unique borrow, so it aliases neither input; with
    // `read_dst = false` the GEMM only writes `y` (alpha is ignored), y = 1 · x · w.
    unsafe {
        gemm::gemm(
            n,
            d_out,
            d_in,
            y.as_mut_ptr(),
            1,
            d_out as isize,
            false,
            x.as_ptr(),
            1,
            d_in as isize,
            w.as_ptr(),
            1,
            d_out as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// What finishing a row found.
#[derive(Debug, PartialEq, Eq)]
enum RowResult {
    Done,
    /// The projection is zero: written as zeros (any sign) and counted.
    ZeroNorm,
}

/// Bias, normalisation (or undoing the pre-scale), conversion into `out`, and the check that
/// the converted row is finite.
#[inline(always)]
fn finish_and_write(
    row: &mut [f32],
    bias: Option<&[f32]>,
    exponent: i32,
    opts: &ProjectionOptions,
    elem: ElemType,
    out: &mut [u8],
) -> std::result::Result<RowResult, RowFailure> {
    let result = finish_row(row, bias, exponent, opts.normalize);
    write_row(row, elem, out);
    if output_row_is_finite(out, elem) {
        return Ok(result);
    }
    let message = if elem == ElemType::F16 && row.iter().all(|v| v.is_finite()) {
        "the unnormalised result exceeds the f16 range (largest finite value 65504)"
    } else {
        "the result overflows f32 although the input row is finite"
    };
    Err(RowFailure::Unrepresentable(message.to_string()))
}

/// Adds the bias (scaled like the row), then normalises the row, or undoes its pre-scale when
/// not normalising. The squares are summed in f64: exact for any finite f32 row.
#[inline(always)]
fn finish_row(row: &mut [f32], bias: Option<&[f32]>, exponent: i32, normalize: bool) -> RowResult {
    if let Some(b) = bias {
        if exponent == 0 {
            row.iter_mut().zip(b).for_each(|(v, bv)| *v += bv);
        } else {
            let f = pow2(exponent);
            row.iter_mut()
                .zip(b)
                .for_each(|(v, bv)| *v += (f64::from(*bv) * f) as f32);
        }
    }
    let sum_sq = sum_squares_f64(row);
    if sum_sq == 0.0 {
        row.fill(0.0);
        return RowResult::ZeroNorm;
    }
    if normalize {
        if sum_sq.is_finite() {
            let inv = 1.0 / sum_sq.sqrt();
            row.iter_mut()
                .for_each(|v| *v = (f64::from(*v) * inv) as f32);
        }
    } else if exponent != 0 {
        scale_by_pow2(row, -exponent);
    }
    RowResult::Done
}

/// Σ v² in f64 over eight partial sums (vectorised); no finite f32 row overflows or underflows.
#[inline(always)]
fn sum_squares_f64(v: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            let x = f64::from(c[k]);
            acc[k] += x * x;
        }
    }
    let mut s: f64 = acc.iter().sum();
    for r in rem {
        s += f64::from(*r) * f64::from(*r);
    }
    s
}

/// The largest |value| of a row, or None when it holds NaN or Inf.
///
/// On the bits: with the sign cleared, IEEE 754 orders non-negative values like unsigned
/// integers, and Inf and every NaN lie above the largest finite value, so one integer maximum
/// (which vectorises, unlike a float maximum with NaN semantics) gives both answers.
#[inline(always)]
fn max_abs_if_finite(v: &[f32]) -> Option<f32> {
    let max_bits = v.iter().fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff));
    (max_bits < f32::INFINITY.to_bits()).then(|| f32::from_bits(max_bits))
}

/// The exact power-of-two exponent `s` that brings a row with this largest |value| into [1, 2)
/// before the GEMM, or 0 when the row is safe as it is. Tiny rows with a bias are left alone
/// (their result is the bias plus a negligible term, and scaling the bias up could overflow).
fn prescale_exponent(max_abs: f32, has_bias: bool) -> i32 {
    if max_abs == 0.0 {
        return 0;
    }
    // Every f32, subnormals included, is a normal f64: its f64 exponent is floor(log2 |x|).
    let e = ((f64::from(max_abs).to_bits() >> 52) & 0x7ff) as i32 - 1023;
    if (-SAFE_EXP..=SAFE_EXP).contains(&e) || (has_bias && e < 0) {
        0
    } else {
        -e
    }
}

/// 2^e as f64 (exact for |e| ≤ 1022).
fn pow2(e: i32) -> f64 {
    2f64.powi(e)
}

/// Multiplies a row by 2^e, rounding once to f32 (exact unless a value leaves the normal range).
#[inline(always)]
fn scale_by_pow2(v: &mut [f32], e: i32) {
    let f = pow2(e);
    v.iter_mut().for_each(|x| *x = (f64::from(*x) * f) as f32);
}

/// Whether every converted output element is finite.
#[inline(always)]
fn output_row_is_finite(out: &[u8], elem: ElemType) -> bool {
    match elem {
        ElemType::F16 => out
            .chunks_exact(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 != 0x7c00),
        ElemType::F32 => out
            .chunks_exact(4)
            .all(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 != 0x7f80_0000),
    }
}
/// Converts one little-endian row to f32.
pub(crate) fn read_row(bytes: &[u8], elem: ElemType, dst: &mut [f32]) {
    match elem {
        ElemType::F16 => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            Ok(h) => h.convert_to_f32_slice(dst),
            Err(_) => {
                for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        },
        ElemType::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(f) => dst.copy_from_slice(f),
            Err(_) => {
                for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        },
    }
}

/// Converts one f32 row to little-endian output bytes.
pub(crate) fn write_row(row: &[f32], elem: ElemType, out: &mut [u8]) {
    match elem {
        ElemType::F16 => match bytemuck::try_cast_slice_mut::<u8, f16>(out) {
            Ok(h) => h.convert_from_f32_slice(row),
            Err(_) => {
                for (c, v) in out.chunks_exact_mut(2).zip(row) {
                    c.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
                }
            }
        },
        ElemType::F32 => match bytemuck::try_cast_slice_mut::<u8, f32>(out) {
            Ok(f) => f.copy_from_slice(row),
            Err(_) => {
                for (c, v) in out.chunks_exact_mut(4).zip(row) {
                    c.copy_from_slice(&v.to_le_bytes());
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::synthetic::Rng;
    use crate::align::MatrixF32;

    fn map(d_in: usize, d_out: usize, bias: bool) -> Arc<LinearMap> {
        let mut rng = Rng::new(9);
        Arc::new(LinearMap {
            weight: MatrixF32 {
                rows: d_in,
                cols: d_out,
                data: (0..d_in * d_out).map(|_| rng.normal() as f32).collect(),
            },
            bias: bias.then(|| (0..d_out).map(|_| rng.normal() as f32).collect()),
        })
    }

    fn reference(map: &LinearMap, x: &[f32], normalize: bool) -> Vec<f64> {
        let y = map.apply_row(x);
        let n = y.iter().map(|v| v * v).sum::<f64>().sqrt();
        if normalize && n > 0.0 {
            y.iter().map(|v| v / n).collect()
        } else {
            y
        }
    }

    #[test]
    fn matches_the_f64_reference_with_tails_bias_and_strides() {
        for &(rows, d_in, d_out, bias) in
            &[(1, 7, 3, false), (129, 33, 17, true), (300, 64, 40, false)]
        {
            let m = map(d_in, d_out, bias);
            let mut rng = Rng::new(rows as u64);
            let x: Vec<f32> = (0..rows * d_in).map(|_| rng.normal() as f32).collect();
            // Input with padding between rows (stride > row), f32.
            let stride_in = (d_in + 3) * 4;
            let mut inb = vec![0u8; rows * stride_in];
            for r in 0..rows {
                for c in 0..d_in {
                    inb[r * stride_in + c * 4..r * stride_in + c * 4 + 4]
                        .copy_from_slice(&x[r * d_in + c].to_le_bytes());
                }
            }
            let mut out = vec![0u8; rows * d_out * 4];
            let opts = ProjectionOptions {
                output: ElemType::F32,
                ..Default::default()
            };
            let be = CpuBackend::new(Some(2)).unwrap();
            be.project(
                &be.prepare(m.clone()).unwrap(),
                &opts,
                RowsIn {
                    bytes: &inb,
                    rows,
                    cols: d_in,
                    row_stride: stride_in,
                    elem: ElemType::F32,
                },
                RowsOut::dense(&mut out, rows, d_out, ElemType::F32),
            )
            .unwrap();
            for r in 0..rows {
                let want = reference(&m, &x[r * d_in..(r + 1) * d_in], true);
                for c in 0..d_out {
                    let got = f32::from_le_bytes(
                        out[(r * d_out + c) * 4..(r * d_out + c) * 4 + 4]
                            .try_into()
                            .unwrap(),
                    );
                    assert!(
                        (got as f64 - want[c]).abs() < 1e-5,
                        "row {r} col {c}: {got} vs {}",
                        want[c]
                    );
                }
            }
        }
    }

    #[test]
    fn nonfinite_rows_error_or_zero_and_zero_rows_are_counted() {
        let m = map(8, 4, false);
        let rows = 300;
        let mut x = vec![1.0f32; rows * 8];
        x[250 * 8 + 3] = f32::NAN;
        x[140 * 8..141 * 8].fill(0.0);
        let xb: Vec<u8> = x
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let mut out = vec![0u8; rows * 4 * 2];
        let be = CpuBackend::new(None).unwrap();
        let m = be.prepare(m).unwrap();
        let opts = ProjectionOptions::default();
        let e = be
            .project(
                &m,
                &opts,
                RowsIn::dense(&xb, rows, 8, ElemType::F16),
                RowsOut::dense(&mut out, rows, 4, ElemType::F16),
            )
            .unwrap_err();
        assert!(e.to_string().contains("row 250"), "{e}");
        let opts = ProjectionOptions {
            nonfinite: NonFinitePolicy::Zero,
            ..opts
        };
        let s = be
            .project(
                &m,
                &opts,
                RowsIn::dense(&xb, rows, 8, ElemType::F16),
                RowsOut::dense(&mut out, rows, 4, ElemType::F16),
            )
            .unwrap();
        assert_eq!(
            s,
            BlockStats {
                zero_norm_rows: 1,
                nonfinite_rows: 1
            }
        );
        assert!(out[250 * 8..251 * 8].iter().all(|b| *b == 0));
        assert!(out[140 * 8..141 * 8].iter().all(|b| *b == 0));
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let m = map(48, 20, true);
        let rows = 1000;
        let mut rng = Rng::new(1);
        let xb: Vec<u8> = (0..rows * 48)
            .flat_map(|_| f16::from_f32(rng.normal() as f32).to_le_bytes())
            .collect();
        let run = |t| {
            let mut out = vec![0u8; rows * 20 * 2];
            let be = CpuBackend::new(Some(t)).unwrap();
            be.project(
                &be.prepare(m.clone()).unwrap(),
                &ProjectionOptions::default(),
                RowsIn::dense(&xb, rows, 48, ElemType::F16),
                RowsOut::dense(&mut out, rows, 20, ElemType::F16),
            )
            .unwrap();
            out
        };
        assert!(run(1) == run(3));
    }

    #[test]
    fn a_map_prepared_by_another_backend_is_refused() {
        let m = map(8, 4, false);
        let (a, b) = (
            CpuBackend::new(Some(1)).unwrap(),
            CpuBackend::new(Some(1)).unwrap(),
        );
        let prepared = a.prepare(m.clone()).unwrap();
        assert_eq!(prepared.owner(), a.id());
        assert_ne!(a.id(), b.id());
        // Shared, not copied.
        assert!(Arc::ptr_eq(prepared.shared(), &m));
        let xb = vec![0u8; 8 * 4];
        let mut out = vec![0u8; 4 * 4];
        let e = b
            .project(
                &prepared,
                &ProjectionOptions::default(),
                RowsIn::dense(&xb, 1, 8, ElemType::F32),
                RowsOut::dense(&mut out, 1, 4, ElemType::F16),
            )
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert!(e.to_string().contains("prepared by another backend"), "{e}");
        // The backend that prepared it takes it.
        a.project(
            &prepared,
            &ProjectionOptions::default(),
            RowsIn::dense(&xb, 1, 8, ElemType::F32),
            RowsOut::dense(&mut out, 1, 4, ElemType::F16),
        )
        .unwrap();
    }
}
