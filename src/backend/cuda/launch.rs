//! The kernels' argument contracts, written once: every launch of the projection kernel and of
//! the f32 conversion kernel (the pipeline's and the benchmark's) goes through [`launch_project`]
//! and [`launch_convert`], whose argument structs mirror `kernels/project.cu` field by field.

use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig, PushKernelArg};

use super::plan::{Layout, CONVERT_ROWS_PER_CTA, THREADS};
use crate::error::{Error, Result};

/// A device address as the kernels take it (0 for NULL).
pub(super) type DevPtr = u64;

/// Arguments of `ISO_PROJECT_VARIANT` (`project_n<width>_<dtype>`) in `kernels/project.cu`, in
/// the kernel's order.
pub(super) struct ProjectArgs {
    /// Staged f16 rows, `ldx` halves each.
    pub x: DevPtr,
    pub ldx: i32,
    /// Per-row scales from the f32 conversion (0: none, f16 input).
    pub row_inv: DevPtr,
    /// Packed Wᵀ, `npad x kpad` halves.
    pub wt: DevPtr,
    pub kpad: i32,
    /// Bias padded to `npad` floats (0: none).
    pub bias: DevPtr,
    pub w_inv: f32,
    /// Results, `ldo` elements per row.
    pub out: DevPtr,
    pub ldo: i32,
    /// One flag byte per row.
    pub flags: DevPtr,
    pub rows: i32,
    pub d_out: i32,
    pub nt: i32,
    pub stages: i32,
    pub normalize: i32,
}

/// Device buffers of one projection launch.
pub(super) struct ProjectBuffers {
    pub x: DevPtr,
    pub row_inv: DevPtr,
    pub wt: DevPtr,
    pub bias: DevPtr,
    pub w_inv: f32,
    pub out: DevPtr,
    pub flags: DevPtr,
}

impl ProjectArgs {
    /// The arguments for `rows` rows of `layout` with a pipeline of `stages`.
    pub fn new(
        layout: &Layout,
        stages: usize,
        normalize: bool,
        rows: usize,
        b: ProjectBuffers,
    ) -> Self {
        ProjectArgs {
            x: b.x,
            ldx: layout.ldx as i32,
            row_inv: b.row_inv,
            wt: b.wt,
            kpad: layout.kpad as i32,
            bias: b.bias,
            w_inv: b.w_inv,
            out: b.out,
            ldo: layout.ldo as i32,
            flags: b.flags,
            rows: rows as i32,
            d_out: layout.d_out as i32,
            nt: layout.nt as i32,
            stages: stages as i32,
            normalize: i32::from(normalize),
        }
    }
}

/// Enqueues the projection kernel `f` on `stream`.
///
/// # Safety
/// `f` is a `project_n*` kernel of `kernels/project.cu` for `layout.variant`; every pointer in
/// `a` is a live device buffer of the stream's context with the size `plan::Layout` gives for
/// `a.rows` rows (or 0 where the kernel allows NULL), not freed before the kernel completes; the
/// function was allowed `layout.smem_bytes(a.stages)` bytes of dynamic shared memory.
pub(super) unsafe fn launch_project(
    stream: &CudaStream,
    f: &CudaFunction,
    layout: &Layout,
    a: &ProjectArgs,
) -> Result<()> {
    let cfg = LaunchConfig {
        grid_dim: (layout.grid(a.rows as usize), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: layout.smem_bytes(a.stages as usize) as u32,
    };
    let mut b = stream.launch_builder(f);
    b.arg(&a.x)
        .arg(&a.ldx)
        .arg(&a.row_inv)
        .arg(&a.wt)
        .arg(&a.kpad)
        .arg(&a.bias)
        .arg(&a.w_inv)
        .arg(&a.out)
        .arg(&a.ldo)
        .arg(&a.flags)
        .arg(&a.rows)
        .arg(&a.d_out)
        .arg(&a.nt)
        .arg(&a.stages)
        .arg(&a.normalize);
    // SAFETY: the arguments match ISO_PROJECT_VARIANT in number, order and type (pointers as
    // 64-bit device addresses); the buffers and shared memory are as this function's contract
    // requires.
    unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| {
        Error::DeviceUnavailable(format!("CUDA projection kernel launch failed: {e:?}"))
    })
}

/// Arguments of `convert_rows_f32` in `kernels/project.cu`, in the kernel's order.
pub(super) struct ConvertArgs {
    /// Dense f32 rows, `d_in` floats each.
    pub raw: DevPtr,
    pub d_in: i32,
    /// Staged f16 rows written, `ldx` halves each.
    pub x: DevPtr,
    pub ldx: i32,
    /// One scale per row written.
    pub inv: DevPtr,
    pub rows: i32,
}

impl ConvertArgs {
    pub fn new(layout: &Layout, rows: usize, raw: DevPtr, x: DevPtr, inv: DevPtr) -> Self {
        ConvertArgs {
            raw,
            d_in: layout.d_in as i32,
            x,
            ldx: layout.ldx as i32,
            inv,
            rows: rows as i32,
        }
    }
}

/// Enqueues the f32 → f16 conversion kernel `f` on `stream`.
///
/// # Safety
/// `f` is `convert_rows_f32`; `raw` holds `rows · d_in` floats, `x` `rows · ldx` halves and
/// `inv` `rows` floats, live device buffers of the stream's context not freed before the kernel
/// completes.
pub(super) unsafe fn launch_convert(
    stream: &CudaStream,
    f: &CudaFunction,
    a: &ConvertArgs,
) -> Result<()> {
    let cfg = LaunchConfig {
        grid_dim: (
            (a.rows as usize).div_ceil(CONVERT_ROWS_PER_CTA) as u32,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(f);
    b.arg(&a.raw)
        .arg(&a.d_in)
        .arg(&a.x)
        .arg(&a.ldx)
        .arg(&a.inv)
        .arg(&a.rows);
    // SAFETY: the arguments match `convert_rows_f32` in number, order and type; the buffers are
    // as this function's contract requires.
    unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| {
        Error::DeviceUnavailable(format!("CUDA convert_rows_f32 launch failed: {e:?}"))
    })
}
