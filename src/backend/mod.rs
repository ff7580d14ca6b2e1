//! Backends project blocks of rows through a prepared map. The streaming engine, the C ABI and
//! the benchmarks talk only to the [`Backend`] trait; the CPU backend (SIMD + rayon) is always
//! available, the CUDA backend plugs in behind the same trait.

pub mod bf16;
pub mod cpu;
pub mod cuda;
pub mod select;

pub use select::{select_backend, DeviceChoice};

use crate::align::{LinearMap, MatrixF32, ModalityMaps};
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

/// How rows are projected, independent of where they come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProjectionOptions {
    pub input_kind: InputKind,
    pub form: OutputForm,
    pub output: ElemType,
    pub normalize: bool,
    pub nonfinite: NonFinitePolicy,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            input_kind: InputKind::Features,
            form: OutputForm::Compact,
            output: ElemType::F16,
            normalize: true,
            nonfinite: NonFinitePolicy::Error,
        }
    }
}

/// The one map a run applies: `y = x · weight (+ bias)`, weight row-major d_in x d_out, f32.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedMap {
    pub weight: MatrixF32,
    pub bias: Option<Vec<f32>>,
}

impl PreparedMap {
    /// Selects the map for an input kind and output form from a modality's maps.
    pub fn select(maps: &ModalityMaps, kind: InputKind, form: OutputForm) -> Result<Self> {
        let from_linear = |m: &LinearMap| PreparedMap {
            weight: m.weight.clone(),
            bias: m.bias.clone(),
        };
        Ok(match (kind, form) {
            (InputKind::Features, OutputForm::Compact) => from_linear(&maps.compact),
            (InputKind::Features, OutputForm::Full) => from_linear(&maps.full),
            (InputKind::Embeddings, form) => {
                let m = match form {
                    OutputForm::Compact => &maps.embedding_compact,
                    OutputForm::Full => &maps.embedding_full,
                };
                match m {
                    Ok(w) => PreparedMap {
                        weight: w.clone(),
                        bias: None,
                    },
                    Err(reason) => return Err(Error::invalid(reason.clone())),
                }
            }
        })
    }
    pub fn d_in(&self) -> usize {
        self.weight.rows
    }
    pub fn d_out(&self) -> usize {
        self.weight.cols
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

fn validate_view(
    len: usize,
    rows: usize,
    cols: usize,
    stride: usize,
    elem: ElemType,
    what: &str,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let row_bytes = cols * elem.size();
    if stride < row_bytes {
        return Err(Error::invalid(format!(
            "{what} row stride {stride} bytes is smaller than a row ({cols} x {} = {row_bytes} bytes)",
            elem.name()
        )));
    }
    let need = (rows - 1)
        .checked_mul(stride)
        .and_then(|v| v.checked_add(row_bytes))
        .ok_or_else(|| Error::invalid(format!("{what} buffer size overflows")))?;
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

/// A device that projects rows. Implementations are shareable across threads.
pub trait Backend: Send + Sync {
    /// A short human name ("cpu (2 threads, AVX-512)", "cuda:0 NVIDIA H200").
    fn describe(&self) -> String;

    /// Projects every input row through `map` into `output` per `opts`. The input has
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
            len.saturating_mul(std::mem::size_of::<T>())
        ))
    })?;
    v.resize(len, T::default());
    Ok(v)
}

/// Checks that the views fit the map; shared by every backend.
pub fn check_shapes(map: &PreparedMap, input: &RowsIn<'_>, output: &RowsOut<'_>) -> Result<()> {
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
