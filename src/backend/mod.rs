//! Backends project blocks of rows through a prepared map. The streaming engine, the C ABI and
//! the benchmarks talk only to the [`Backend`] trait; the CPU backend (SIMD + rayon) is always
//! available, the CUDA backend plugs in behind the same trait.
//!
//! A map is prepared once per backend ([`Backend::prepare`], giving a [`PreparedMap`] that owns
//! the backend's state for it, e.g. weights resident on a GPU) and then projected with any number
//! of times, from any thread. [`PreparedMaps`] keeps the maps of one projector prepared per
//! backend, lazily, for callers that pair projectors and backends per call (the C ABI, Python).

pub mod bf16;
pub mod cpu;
pub mod cuda;
pub mod packed_f32;
mod packing;
mod prepared;
pub mod select;

pub use prepared::PreparedMaps;
pub use select::{select_backend, DeviceChoice};

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::align::LinearMap;
use crate::error::{Error, Result};

/// What the input rows are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// Pre-projection features (d_in columns): the paper's route.
    Features,
    /// Already-projected CLIP embeddings (d columns, possibly L2-normalised): the exact
    /// embedding route of DESIGN.md §2.
    Embeddings,
}

impl InputKind {
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Features => "features",
            InputKind::Embeddings => "embeddings",
        }
    }
}

/// Which output form: compact (m dims, identical cosines) or full (d dims, the paper's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputForm {
    Compact,
    Full,
}

impl OutputForm {
    pub fn name(self) -> &'static str {
        match self {
            OutputForm::Compact => "compact",
            OutputForm::Full => "full",
        }
    }
}

/// Element type of input or output rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    F16,
    F32,
}

impl ElemType {
    pub fn size(self) -> usize {
        match self {
            ElemType::F16 => 2,
            ElemType::F32 => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ElemType::F16 => "f16",
            ElemType::F32 => "f32",
        }
    }
}

/// What to do with a row holding NaN or Inf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NonFinitePolicy {
    /// Stop with an error naming the row (default).
    Error,
    /// Write a zero row and count it.
    Zero,
}

/// The arithmetic of the GEMM at the heart of a projection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 inputs and weights, f32 sums: the reference path (default).
    #[default]
    F32,
    /// Inputs and weights rounded to bf16 (8 significant bits), f32 sums: the CPU backend's
    /// AVX-512 BF16 kernel ([`bf16`]), about twice the f32 rate; cosines move by up to about
    /// 1e-3. A CPU without AVX-512 BF16 refuses it (`Error::DeviceUnavailable`): it is never
    /// emulated, and never silently computed in another precision.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// How rows are projected, independent of where they come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProjectionOptions {
    pub input_kind: InputKind,
    pub form: OutputForm,
    pub output: ElemType,
    pub normalize: bool,
    pub nonfinite: NonFinitePolicy,
    pub precision: Precision,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            input_kind: InputKind::Features,
            form: OutputForm::Compact,
            output: ElemType::F16,
            normalize: true,
            nonfinite: NonFinitePolicy::Error,
            precision: Precision::F32,
        }
    }
}

/// Identifies one backend instance: a [`PreparedMap`] remembers the backend that prepared it,
/// and another backend refuses it with an error instead of reading another device's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendId(u64);

impl BackendId {
    /// A new id, different from every other one in this process.
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        BackendId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A map made ready for one backend by [`Backend::prepare`]: the shared [`LinearMap`] (never a
/// copy of its weights) and whatever the backend keeps for it (the CUDA backend: the packed
/// weights, resident on each GPU; the CPU backend: nothing today, a packed layout later). Cheap
/// to share behind an `Arc`; dropping it releases the backend's state (device memory).
///
/// Only the backend that prepared it can project with it: another one returns
/// `Error::InvalidArgument` (see [`PreparedMap::check_owner`]).
pub struct PreparedMap {
    map: Arc<LinearMap>,
    owner: BackendId,
    owner_name: String,
    state: Option<Arc<dyn Any + Send + Sync>>,
}

impl PreparedMap {
    /// For backend implementations: `map` prepared by the backend `owner` (its `describe()`
    /// text as `owner_name`, for errors), with its own `state` (read back with
    /// [`PreparedMap::state`]).
    pub fn new(
        owner: BackendId,
        owner_name: String,
        map: Arc<LinearMap>,
        state: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Self {
        PreparedMap {
            map,
            owner,
            owner_name,
            state,
        }
    }
    /// The map itself.
    pub fn linear(&self) -> &LinearMap {
        &self.map
    }
    /// The shared map (to prepare it for another backend).
    pub fn shared(&self) -> &Arc<LinearMap> {
        &self.map
    }
    pub fn d_in(&self) -> usize {
        self.map.d_in()
    }
    pub fn d_out(&self) -> usize {
        self.map.d_out()
    }
    pub fn owner(&self) -> BackendId {
        self.owner
    }
    /// The backend's state for this map, when it is a `T`.
    pub fn state<T: Any>(&self) -> Option<&T> {
        self.state.as_deref().and_then(|s| s.downcast_ref::<T>())
    }
    /// `Ok` when `backend` prepared this map; otherwise `Error::InvalidArgument` naming both.
    pub fn check_owner(&self, backend: &dyn Backend) -> Result<()> {
        if self.owner == backend.id() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "the map was prepared by another backend ({}) than the one projecting ({}): \
             prepare it with `Backend::prepare` of the backend that projects",
            self.owner_name,
            backend.describe()
        )))
    }
}

impl std::fmt::Debug for PreparedMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedMap")
            .field("d_in", &self.d_in())
            .field("d_out", &self.d_out())
            .field("bias", &self.map.bias.is_some())
            .field("owner", &self.owner)
            .field("owner_name", &self.owner_name)
            .field("state", &self.state.is_some())
            .finish()
    }
}

/// Input rows: `rows` rows of `cols` elements, row `i` starting at byte `i * row_stride`.
#[derive(Clone, Copy, Debug)]
pub struct RowsIn<'a> {
    pub bytes: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub elem: ElemType,
}

/// Output rows, same conventions.
#[derive(Debug)]
pub struct RowsOut<'a> {
    pub bytes: &'a mut [u8],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub elem: ElemType,
}

impl<'a> RowsIn<'a> {
    /// Densely packed rows.
    pub fn dense(bytes: &'a [u8], rows: usize, cols: usize, elem: ElemType) -> Self {
        RowsIn {
            bytes,
            rows,
            cols,
            row_stride: cols * elem.size(),
            elem,
        }
    }
    pub fn validate(&self) -> Result<()> {
        validate_view(
            self.bytes.len(),
            self.rows,
            self.cols,
            self.row_stride,
            self.elem,
            "input",
        )
    }
    pub fn row(&self, i: usize) -> &'a [u8] {
        let s = i * self.row_stride;
        &self.bytes[s..s + self.cols * self.elem.size()]
    }
}

impl<'a> RowsOut<'a> {
    pub fn dense(bytes: &'a mut [u8], rows: usize, cols: usize, elem: ElemType) -> Self {
        RowsOut {
            bytes,
            rows,
            cols,
            row_stride: cols * elem.size(),
            elem,
        }
    }
    pub fn validate(&self) -> Result<()> {
        validate_view(
            self.bytes.len(),
            self.rows,
            self.cols,
            self.row_stride,
            self.elem,
            "output",
        )
    }
}

/// The bytes a strided view of `rows` rows of `cols` elements spans (`(rows - 1) * row_stride +
/// cols * size`, 0 for no rows), or `Error::InvalidArgument` when the stride is smaller than a
/// row or the span does not fit in memory. The one shape check of strided views: the backends'
/// [`RowsIn::validate`]/[`RowsOut::validate`] and the C ABI's raw pointers both use it. `what`
/// names the view in messages ("input", "output").
pub fn view_span(
    rows: usize,
    cols: usize,
    row_stride: usize,
    elem: ElemType,
    what: &str,
) -> Result<usize> {
    if rows == 0 {
        return Ok(0);
    }
    let row_bytes = cols
        .checked_mul(elem.size())
        .ok_or_else(|| Error::invalid(format!("{what}: {cols} columns overflow")))?;
    if row_stride < row_bytes {
        return Err(Error::invalid(format!(
            "{what} row stride {row_stride} bytes is smaller than a row ({cols} x {} = \
             {row_bytes} bytes)",
            elem.name()
        )));
    }
    (rows - 1)
        .checked_mul(row_stride)
        .and_then(|v| v.checked_add(row_bytes))
        .filter(|&v| v <= isize::MAX as usize)
        .ok_or_else(|| {
            Error::invalid(format!(
                "{what}: {rows} rows with a stride of {row_stride} bytes do not fit in memory"
            ))
        })
}

fn validate_view(
    len: usize,
    rows: usize,
    cols: usize,
    stride: usize,
    elem: ElemType,
    what: &str,
) -> Result<()> {
    let need = view_span(rows, cols, stride, elem, what)?;
    if len < need {
        return Err(Error::invalid(format!(
            "{what} buffer holds {len} bytes but {rows} rows with stride {stride} need {need}"
        )));
    }
    Ok(())
}

/// Counts from one call, summed over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Rows whose projection had zero norm (written as zeros when normalising).
    pub zero_norm_rows: u64,
    /// Rows written as zeros under `NonFinitePolicy::Zero`: input rows with NaN/Inf, and finite
    /// rows whose result the output type cannot hold (`Error::Unrepresentable` otherwise).
    pub nonfinite_rows: u64,
}

impl std::ops::AddAssign for BlockStats {
    fn add_assign(&mut self, o: Self) {
        self.zero_norm_rows += o.zero_norm_rows;
        self.nonfinite_rows += o.nonfinite_rows;
    }
}

/// Output bytes per engine chunk when neither the user nor the backend says otherwise.
pub const DEFAULT_CHUNK_BYTES: usize = 16 << 20;

/// A device that projects rows. Implementations are shareable across threads.
pub trait Backend: Send + Sync {
    /// A short human name ("cpu (2 threads, AVX-512)", "cuda:0 NVIDIA H200").
    fn describe(&self) -> String;

    /// This instance's id (from [`BackendId::fresh`] at construction), recorded in the maps it
    /// prepares.
    fn id(&self) -> BackendId;

    /// Makes `map` ready for [`Backend::project`] on this backend: whatever the backend needs
    /// once per map (packing, uploading the weights to each device) happens here, not per call.
    /// Errors: weights the backend cannot use (`Error::NonFinite`), a device that fails
    /// (`Error::DeviceUnavailable`), memory (`Error::ResourceExhausted`).
    fn prepare(&self, map: Arc<LinearMap>) -> Result<PreparedMap>;

    /// Rows whose results are computed together: a row's bytes depend only on its offset within
    /// a call modulo this, so callers that cut a stream of rows into calls at multiples of it get
    /// the same bytes as one call (the CPU: its 128-row blocks).
    fn row_block(&self) -> usize;

    /// The arithmetic [`Backend::project`] uses for `map` under `opts`, as output records name
    /// it: on the CPU `"f32"` (the AVX-512F kernel), `"f32-gemm"` (the `gemm` crate's, on CPUs
    /// without AVX-512F) and `"bf16"`; `"cuda-fp16"` for the CUDA kernels (fp16 operands, f32
    /// sums). Outputs made with different arithmetic differ in their last bits, so the
    /// engine redoes a shard whose record names another. An error when this backend cannot
    /// compute at `opts.precision` (the same error `project` would give).
    fn arithmetic(&self, map: &LinearMap, opts: &ProjectionOptions) -> Result<&'static str>;

    /// Output bytes per call the engine aims for when the user does not set a chunk size.
    fn preferred_chunk_bytes(&self) -> usize {
        DEFAULT_CHUNK_BYTES
    }

    /// Projects every input row through `map` into `output` per `opts`. `map` must come from
    /// this backend's [`Backend::prepare`] (otherwise `Error::InvalidArgument`). The input has
    /// `map.d_in()` columns, the output `map.d_out()`. A row with NaN/Inf under
    /// `NonFinitePolicy::Error` fails the call with `Error::NonFiniteRow { row }`, and a finite
    /// row whose result the output type cannot hold with `Error::Unrepresentable { row }`: the
    /// lowest failing row index (0-based within this call); nothing is promised about the output
    /// then. Every finite input row otherwise gives a finite row, L2-normalised when asked (to
    /// the output type's rounding). `tests/backend_conformance.rs` checks these contracts.
    fn project(
        &self,
        map: &PreparedMap,
        opts: &ProjectionOptions,
        input: RowsIn<'_>,
        output: RowsOut<'_>,
    ) -> Result<BlockStats>;
}

/// A zero-filled vector of `len` elements, or `Error::ResourceExhausted` when the allocation is
/// refused (an address-space limit, strict overcommit): a host process is never aborted for a
/// buffer we size. Use it for every buffer whose size depends on the data or the options.
pub fn try_zeroed<T: Default + Clone>(len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        Error::ResourceExhausted(format!(
            "cannot allocate {} bytes of working memory",
            len.saturating_mul(size_of::<T>())
        ))
    })?;
    v.resize(len, T::default());
    Ok(v)
}

/// Checks that the views fit the map; shared by every backend.
pub fn check_shapes(map: &LinearMap, input: &RowsIn<'_>, output: &RowsOut<'_>) -> Result<()> {
    input.validate()?;
    output.validate()?;
    if input.cols != map.d_in() {
        return Err(Error::Shape(format!(
            "input rows have {} columns but the projector expects {}",
            input.cols,
            map.d_in()
        )));
    }
    if output.cols != map.d_out() {
        return Err(Error::Shape(format!(
            "output rows have {} columns but the projector produces {}",
            output.cols,
            map.d_out()
        )));
    }
    if input.rows != output.rows {
        return Err(Error::Shape(format!(
            "input has {} rows but output has {}",
            input.rows, output.rows
        )));
    }
    Ok(())
}
