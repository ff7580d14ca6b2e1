//! [`CudaBackend`]: one worker per visible GPU, each with a ring of pipeline slots.
//!
//! A `project` call splits its rows into contiguous ranges, one per GPU, run on scoped threads.
//! On each GPU the range is cut into sub-chunks (at most [`MAX_SUB_ROWS`] rows, fewer when the
//! device-memory budget says so) that flow through [`SLOTS`] slots, each with its own stream,
//! pinned staging buffers and device buffers:
//!
//! ```text
//! host: pack i -> |          | drain i-2 (sync, flags, unpack) | pack i+1 ...
//! slot stream i%3:  H2D i -> [convert i] -> project i -> D2H i
//! ```
//!
//! so the host packs and unpacks while the copy engines and the SMs work on the other slots,
//! and copies in both directions overlap kernels of other slots. Device memory is bounded by
//! the ring (default 1 GiB per GPU, `ISOCLIP_CUDA_MEM_MB`). The weights are packed and uploaded
//! to every GPU once, by [`Backend::prepare`]; the [`PreparedMap`] owns them (a `CudaPrepared`),
//! so a call never looks for its map. cudarc's automatic event tracking is disabled: every buffer
//! of a slot is used only on that slot's stream, the weights are uploaded and synchronised
//! before the prepared map exists, every call waits for all its streams before it returns (so a
//! prepared map, borrowed by the call, is never freed under a running kernel), and the context
//! is synchronised before any shared buffer is replaced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::result as cu;
use cudarc::driver::sys;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DriverError, PinnedHostSlice,
};
use cudarc::nvrtc::Ptx;

mod bench;

pub use bench::KernelTiming;

use super::compile::{arch_name, kernel_ptx_for_arch, probe_libraries};
use super::launch::{launch_convert, launch_project, ConvertArgs, ProjectArgs, ProjectBuffers};
use super::plan::{
    pack_input_rows, pack_weights, read_flags, row_error, schedule, split_rows, sub_chunk_rows,
    sub_chunks, unpack_output_rows, BadRow, Layout, Step, CONVERT_KERNEL, KERNEL_NAMES, MAX_BM,
};
use crate::align::LinearMap;
use crate::backend::cpu::{CpuBackend, CpuPrepared};
use crate::backend::{
    check_shapes, Backend, BackendId, BlockStats, ElemType, NonFinitePolicy, Precision,
    PreparedMap, ProjectionOptions, RowsIn, RowsOut,
};
use crate::error::{Error, Result};

/// Pipeline slots (and streams) per GPU.
pub const SLOTS: usize = 3;
/// Largest sub-chunk: 8192 rows of 768 f16 are 12.6 MB per copy, enough to reach full PCIe
/// bandwidth, and a 64K-row engine chunk still gives 8 sub-chunks to overlap.
pub const MAX_SUB_ROWS: usize = 8192;
/// Device memory for one GPU's ring of slots, unless `ISOCLIP_CUDA_MEM_MB` says otherwise.
pub const DEFAULT_RING_BYTES: usize = 1 << 30;
pub const MEM_ENV: &str = "ISOCLIP_CUDA_MEM_MB";

fn drv(what: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| Error::DeviceUnavailable(format!("CUDA {what} failed: {e:?}"))
}

pub struct CudaBackend {
    id: BackendId,
    workers: Vec<Mutex<Worker>>,
    description: String,
    /// Shapes the kernels do not cover (more than 1024 outputs, or a GPU whose shared memory
    /// is too small for the widest variant) run here, with the same semantics.
    cpu: CpuBackend,
}

/// What [`CudaBackend::prepare`] keeps for a map (the state of its [`PreparedMap`]).
enum CudaPrepared {
    /// The kernels do not cover this shape (more than 1024 outputs, no input column, a GPU whose
    /// shared memory is too small): the CPU backend projects it, with its own state.
    Cpu(CpuPrepared),
    /// The packed weights on every GPU, `per_gpu[i]` on worker `i`.
    Device {
        layout: Layout,
        stages: usize,
        per_gpu: Vec<DeviceWeights>,
    },
}

/// One GPU's copy of a map's packed weights (`plan::PackedWeights`).
struct DeviceWeights {
    /// Bound before the slices are freed: a prepared map may be dropped on any thread.
    ctx: Arc<CudaContext>,
    wt: CudaSlice<u16>,
    bias: Option<CudaSlice<f32>>,
    w_inv: f32,
}

impl Drop for DeviceWeights {
    fn drop(&mut self) {
        // The slices (dropped after this) free on the upload stream of their context; cudarc
        // records rather than panics on errors.
        let _ = self.ctx.bind_to_thread();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct RingKey {
    layout: Layout,
    input: ElemType,
    out: ElemType,
}

struct Slot {
    pin_in: PinnedHostSlice<u8>,
    pin_out: PinnedHostSlice<u8>,
    pin_flags: PinnedHostSlice<u8>,
    /// Dense f32 rows and their scales (f32 input only).
    d_raw: Option<(CudaSlice<u8>, CudaSlice<f32>)>,
    d_x: CudaSlice<u16>,
    d_out: CudaSlice<u8>,
    d_flags: CudaSlice<u8>,
}

struct Ring {
    key: RingKey,
    sub_rows: usize,
    slots: Vec<Slot>,
}

struct Worker {
    ctx: Arc<CudaContext>,
    label: String,
    max_smem_optin: usize,
    _module: Arc<CudaModule>,
    funcs: HashMap<&'static str, CudaFunction>,
    /// Dynamic shared memory each function has been allowed so far.
    smem_allowed: HashMap<&'static str, usize>,
    streams: Vec<Arc<CudaStream>>,
    ring: Option<Ring>,
    ring_budget: usize,
}

/// (stats, first row with NaN/Inf within the worker's range, under the Error policy)
type Outcome = (BlockStats, Option<BadRow>);

impl CudaBackend {
    /// Opens every visible GPU (`gpu` None) or the GPU of that ordinal alone. `Err` is a
    /// one-line reason ("libcuda not found", "no CUDA device", "cuda:3 does not exist: 2 CUDA
    /// devices are visible", ...) for the caller's notice; nothing here panics when CUDA is absent.
    pub fn new(
        cpu_threads: Option<usize>,
        gpu: Option<usize>,
    ) -> std::result::Result<CudaBackend, String> {
        probe_libraries()?;
        // cudarc panics when an entry point is missing from an old driver: keep that a reason.
        let opened = std::panic::catch_unwind(move || open_workers(gpu))
            .map_err(|p| format!("CUDA initialisation panicked: {}", panic_text(&p)))??;
        let description = opened
            .iter()
            .map(|w| w.label.clone())
            .collect::<Vec<_>>()
            .join(" + ");
        let cpu = CpuBackend::new(cpu_threads).map_err(|e| e.to_string())?;
        Ok(CudaBackend {
            id: BackendId::fresh(),
            workers: opened.into_iter().map(Mutex::new).collect(),
            description,
            cpu,
        })
    }

    pub fn device_count(&self) -> usize {
        self.workers.len()
    }

    fn smallest_smem_optin(&self) -> usize {
        self.workers
            .iter()
            .map(|w| lock(w).max_smem_optin)
            .min()
            .unwrap_or(0)
    }

    /// The kernel layout and pipeline depth for a map, or None when the kernels do not cover
    /// it (the CPU backend runs it then).
    fn plan(&self, map: &LinearMap) -> Option<(Layout, usize)> {
        let layout = Layout::new(map.d_in(), map.d_out()).ok()?;
        let stages = layout.stages_for(self.smallest_smem_optin())?;
        Some((layout, stages))
    }

    /// The device state of a map this backend prepared.
    fn prepared<'m>(&self, map: &'m PreparedMap) -> Result<&'m CudaPrepared> {
        map.check_owner(self)?;
        map.state::<CudaPrepared>().ok_or_else(|| {
            Error::invalid("the map carries no CUDA state although this backend prepared it")
        })
    }
}

/// The kernels compute with fp16 operands and f32 sums; a reduced CPU precision is not theirs.
fn check_precision(opts: &ProjectionOptions) -> Result<()> {
    match opts.precision {
        Precision::F32 => Ok(()),
        other => Err(Error::invalid(format!(
            "{} precision is a CPU path (AVX-512 BF16); the CUDA backend computes with fp16 \
             operands and f32 sums: project on the CPU for {0}",
            other.name()
        ))),
    }
}

fn lock(w: &Mutex<Worker>) -> std::sync::MutexGuard<'_, Worker> {
    // A panic while holding the lock leaves nothing half-written that a later call relies on:
    // every call re-validates the cached weights and ring.
    w.lock().unwrap_or_else(|p| p.into_inner())
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

fn open_workers(gpu: Option<usize>) -> std::result::Result<Vec<Worker>, String> {
    let n = CudaContext::device_count().map_err(|e| format!("cuInit failed: {e:?}"))?;
    if n <= 0 {
        return Err("no CUDA device".into());
    }
    if let Some(ordinal) = gpu {
        let n = n as usize;
        if ordinal >= n {
            return Err(format!(
                "cuda:{ordinal} does not exist: {n} CUDA device{} visible (cuda:0 to cuda:{})",
                if n == 1 { " is" } else { "s are" },
                n - 1
            ));
        }
        return Worker::open(ordinal)
            .map(|w| vec![w])
            .map_err(|e| format!("cuda:{ordinal}: {e}"));
    }
    let mut workers = Vec::new();
    let mut refused = Vec::new();
    for ordinal in 0..n as usize {
        match Worker::open(ordinal) {
            Ok(w) => workers.push(w),
            Err(e) => refused.push(format!("cuda:{ordinal}: {e}")),
        }
    }
    if workers.is_empty() {
        return Err(refused.join("; "));
    }
    Ok(workers)
}

fn ring_budget() -> usize {
    std::env::var(MEM_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(|mb| mb.max(1) << 20)
        .unwrap_or(DEFAULT_RING_BYTES)
}

impl Worker {
    fn open(ordinal: usize) -> std::result::Result<Worker, String> {
        let ctx =
            CudaContext::new(ordinal).map_err(|e| format!("cannot create a context: {e:?}"))?;
        // SAFETY: no slice or stream of this context exists yet, and this worker orders every
        // cross-stream use itself (see the module documentation).
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| format!("cannot query the device: {e:?}"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        if major < 8 {
            return Err(format!(
                "{name} has compute capability {major}.{minor}; the kernels need 8.0 or newer"
            ));
        }
        let arch = arch_name(major, minor);
        let ptx = kernel_ptx_for_arch(arch)?;
        let module = ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| format!("cannot load the kernels for {arch}: {e:?}"))?;
        let mut funcs = HashMap::new();
        for name in KERNEL_NAMES {
            let f = module
                .load_function(name)
                .map_err(|e| format!("kernel {name} missing: {e:?}"))?;
            funcs.insert(name, f);
        }
        let max_smem_optin =
            ctx.attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(|e| format!("cannot query shared memory: {e:?}"))? as usize;
        let streams = (0..SLOTS)
            .map(|_| ctx.new_stream())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot create streams: {e:?}"))?;
        let mem_gib = ctx.total_mem().unwrap_or(0) as f64 / (1u64 << 30) as f64;
        Ok(Worker {
            label: format!("cuda:{ordinal} {name} ({arch}, {mem_gib:.0} GiB)"),
            ctx,
            max_smem_optin,
            _module: module,
            funcs,
            smem_allowed: HashMap::new(),
            streams,
            ring: None,
            ring_budget: ring_budget(),
        })
    }

    /// Uploads packed weights (`wt` as f16 bits) to this GPU and waits for the copy, so every
    /// slot stream may read them as soon as this returns.
    fn upload(&mut self, wt: &[u16], bias: Option<&[f32]>, w_inv: f32) -> Result<DeviceWeights> {
        self.ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        let s = &self.streams[0];
        let wt = s.clone_htod(wt).map_err(drv("weight upload"))?;
        let bias = match bias {
            Some(b) => Some(s.clone_htod(b).map_err(drv("bias upload"))?),
            None => None,
        };
        s.synchronize().map_err(drv("synchronize"))?;
        Ok(DeviceWeights {
            ctx: self.ctx.clone(),
            wt,
            bias,
            w_inv,
        })
    }

    fn ensure_ring(&mut self, key: RingKey) -> Result<()> {
        if self.ring.as_ref().is_some_and(|r| r.key == key) {
            return Ok(());
        }
        self.ctx.synchronize().map_err(drv("synchronize"))?;
        self.ring = None;
        let l = &key.layout;
        let sub = sub_chunk_rows(l, key.input, key.out, SLOTS, self.ring_budget, MAX_SUB_ROWS);
        let mut slots = Vec::with_capacity(SLOTS);
        for s in &self.streams {
            let alloc_err = drv("device allocation");
            let d_raw = if key.input == ElemType::F32 {
                Some((
                    s.alloc_zeros::<u8>(sub * l.d_in * 4).map_err(&alloc_err)?,
                    s.alloc_zeros::<f32>(sub).map_err(&alloc_err)?,
                ))
            } else {
                None
            };
            let slot = Slot {
                // Write-combined: the host only writes staged input, never reads it.
                pin_in: pinned(
                    &self.ctx,
                    sub * l.staged_row_bytes(key.input),
                    sys::CU_MEMHOSTALLOC_WRITECOMBINED,
                )?,
                // Cached: the host reads results back.
                pin_out: pinned(&self.ctx, sub * l.out_row_bytes(key.out), 0)?,
                pin_flags: pinned(&self.ctx, sub, 0)?,
                d_raw,
                d_x: s.alloc_zeros::<u16>(sub * l.ldx).map_err(&alloc_err)?,
                d_out: s
                    .alloc_zeros::<u8>(sub * l.out_row_bytes(key.out))
                    .map_err(&alloc_err)?,
                d_flags: s.alloc_zeros::<u8>(sub).map_err(&alloc_err)?,
            };
            slots.push(slot);
        }
        self.ctx.synchronize().map_err(drv("synchronize"))?;
        self.ring = Some(Ring {
            key,
            sub_rows: sub,
            slots,
        });
        Ok(())
    }

    fn allow_smem(&mut self, name: &'static str, bytes: usize) -> Result<()> {
        if self.smem_allowed.get(name).copied().unwrap_or(0) >= bytes {
            return Ok(());
        }
        self.funcs[name]
            .set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(drv("setting the shared-memory limit"))?;
        self.smem_allowed.insert(name, bytes);
        Ok(())
    }

    /// Runs this worker's share of a call; on any CUDA error the pipeline state is dropped so
    /// the next call starts clean.
    fn run(
        &mut self,
        weights: &DeviceWeights,
        opts: &ProjectionOptions,
        layout: &Layout,
        stages: usize,
        input: RowsIn<'_>,
        output: &mut RowsOut<'_>,
    ) -> Result<Outcome> {
        let r = self.run_inner(weights, opts, layout, stages, input, output);
        if r.is_err() {
            let _ = self.ctx.synchronize();
            self.ring = None;
        }
        r
    }

    fn run_inner(
        &mut self,
        weights: &DeviceWeights,
        opts: &ProjectionOptions,
        layout: &Layout,
        stages: usize,
        input: RowsIn<'_>,
        output: &mut RowsOut<'_>,
    ) -> Result<Outcome> {
        self.ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        self.ensure_ring(RingKey {
            layout: *layout,
            input: input.elem,
            out: output.elem,
        })?;
        let kernel = layout.variant.kernel_name(output.elem);
        let smem = layout.smem_bytes(stages);
        self.allow_smem(kernel, smem)?;

        let sub_rows = self.ring.as_ref().map_or(MAX_BM, |r| r.sub_rows);
        let subs = sub_chunks(input.rows, sub_rows);
        let mut launched = vec![false; subs.len()];
        let mut stats = BlockStats::default();
        let mut first_bad = None;
        for step in schedule(subs.len(), SLOTS) {
            match step {
                Step::Stage(i) if first_bad.is_none() => {
                    let slot = &mut self.ring_mut().slots[i % SLOTS];
                    let dst = slot.pin_in.as_mut_slice().map_err(drv("pinned access"))?;
                    pack_input_rows(&input, subs[i].clone(), layout, dst);
                }
                Step::Launch(i) if first_bad.is_none() => {
                    self.launch(
                        weights,
                        i % SLOTS,
                        subs[i].len(),
                        opts,
                        layout,
                        stages,
                        kernel,
                        input.elem,
                    )?;
                    launched[i] = true;
                }
                Step::Drain(i) if launched[i] => {
                    let k = i % SLOTS;
                    // Always wait, even after a NaN row stopped the run: nothing may still be
                    // in flight on this slot's pinned buffers when the call returns.
                    self.streams[k].synchronize().map_err(drv("stream"))?;
                    if first_bad.is_some() {
                        continue;
                    }
                    let n = subs[i].len();
                    let slot = &self.ring_mut().slots[k];
                    let flags = slot.pin_flags.as_slice().map_err(drv("pinned access"))?;
                    let (s, bad) = read_flags(&flags[..n]);
                    if let (Some(b), NonFinitePolicy::Error) = (bad, opts.nonfinite) {
                        // Sub-chunks drain in order, so this is the lowest such row.
                        first_bad = Some(b.offset(subs[i].start));
                        continue;
                    }
                    stats += s;
                    let res = slot.pin_out.as_slice().map_err(drv("pinned access"))?;
                    unpack_output_rows(
                        &res[..n * layout.out_row_bytes(output.elem)],
                        layout,
                        subs[i].clone(),
                        output,
                    );
                }
                _ => {}
            }
        }
        Ok((stats, first_bad))
    }

    fn ring_mut(&mut self) -> &mut Ring {
        self.ring.as_mut().expect("ensure_ring ran")
    }

    /// Enqueues, on slot `k`'s stream: H2D of the staged rows, the f32 conversion when needed,
    /// the projection kernel, D2H of results and flags.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &mut self,
        weights: &DeviceWeights,
        k: usize,
        n: usize,
        opts: &ProjectionOptions,
        layout: &Layout,
        stages: usize,
        kernel: &'static str,
        input: ElemType,
    ) -> Result<()> {
        let stream = self.streams[k].clone();
        let ring = self.ring.as_mut().expect("ensure_ring ran");
        let out_elem = ring.key.out;
        let slot = &mut ring.slots[k];
        let cs = stream.cu_stream();
        let in_bytes = n * layout.staged_row_bytes(input);
        let (x_ptr, _gx) = slot.d_x.device_ptr_mut(&stream);
        let staged = slot.pin_in.as_slice().map_err(drv("pinned access"))?;
        let mut row_inv_ptr: u64 = 0;
        match (&mut slot.d_raw, input) {
            (Some((raw, inv)), ElemType::F32) => {
                let (raw_ptr, _gr) = raw.device_ptr_mut(&stream);
                let (inv_ptr, _gi) = inv.device_ptr_mut(&stream);
                // SAFETY: `raw` holds sub_rows · d_in f32 and `in_bytes` ≤ that; the pinned
                // source lives in the ring, which is only freed after a context synchronise,
                // and the host does not write it again before this slot is drained.
                unsafe { cu::memcpy_htod_async(raw_ptr, &staged[..in_bytes], cs) }
                    .map_err(drv("host-to-device copy"))?;
                let args = ConvertArgs::new(layout, n, raw_ptr, x_ptr, inv_ptr);
                // SAFETY: `raw` has sub_rows · d_in floats, `d_x` sub_rows · ldx halves, `inv`
                // sub_rows floats (n ≤ sub_rows), all of this slot, freed only after a context
                // synchronise.
                unsafe { launch_convert(&stream, &self.funcs[CONVERT_KERNEL], &args) }?;
                row_inv_ptr = inv_ptr;
            }
            _ => {
                // SAFETY: `d_x` holds sub_rows · ldx halves and `in_bytes` = n · ldx · 2; the
                // pinned source outlives the copy as above.
                unsafe { cu::memcpy_htod_async(x_ptr, &staged[..in_bytes], cs) }
                    .map_err(drv("host-to-device copy"))?;
            }
        }
        let (wt_ptr, _gw) = weights.wt.device_ptr(&stream);
        let bias_ptr: u64 = match &weights.bias {
            Some(b) => b.device_ptr(&stream).0,
            None => 0,
        };
        let (out_ptr, _go) = slot.d_out.device_ptr_mut(&stream);
        let (flags_ptr, _gf) = slot.d_flags.device_ptr_mut(&stream);
        let args = ProjectArgs::new(
            layout,
            stages,
            opts.normalize,
            n,
            ProjectBuffers {
                x: x_ptr,
                row_inv: row_inv_ptr,
                wt: wt_ptr,
                bias: bias_ptr,
                w_inv: weights.w_inv,
                out: out_ptr,
                flags: flags_ptr,
            },
        );
        // SAFETY: every buffer has the size plan::Layout promises for n ≤ sub_rows rows (the
        // weights for this layout, checked by `prepare`); the slot's buffers are freed only after
        // a context synchronise and the weights only after the call returns, when every stream
        // was waited for; the dynamic shared memory was allowed in `run_inner`.
        unsafe { launch_project(&stream, &self.funcs[kernel], layout, &args) }?;

        let out_bytes = n * layout.out_row_bytes(out_elem);
        let res = slot.pin_out.as_mut_slice().map_err(drv("pinned access"))?;
        // SAFETY: `d_out` holds at least `out_bytes`; the pinned destination is not read by the
        // host before this stream is synchronised in the slot's drain.
        unsafe { cu::memcpy_dtoh_async(&mut res[..out_bytes], out_ptr, cs) }
            .map_err(drv("device-to-host copy"))?;
        let fl = slot
            .pin_flags
            .as_mut_slice()
            .map_err(drv("pinned access"))?;
        // SAFETY: as above, n flag bytes.
        unsafe { cu::memcpy_dtoh_async(&mut fl[..n], flags_ptr, cs) }
            .map_err(drv("device-to-host copy"))?;
        Ok(())
    }
}

/// Page-locked host memory, zero-filled (so no uninitialised byte is ever read).
fn pinned(ctx: &Arc<CudaContext>, len: usize, flags: u32) -> Result<PinnedHostSlice<u8>> {
    // SAFETY: the allocation is uninitialised; it is zero-filled right here before any read.
    let mut p = unsafe { ctx.alloc_pinned_with_flags::<u8>(len.max(1), flags) }
        .map_err(drv("pinned host allocation"))?;
    p.as_mut_slice().map_err(drv("pinned access"))?.fill(0);
    Ok(p)
}

impl Backend for CudaBackend {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn id(&self) -> BackendId {
        self.id
    }

    /// Packs the weights once and uploads them to every GPU (or, for a shape the kernels do not
    /// cover, keeps nothing: the CPU backend projects it).
    fn prepare(&self, map: Arc<LinearMap>) -> Result<PreparedMap> {
        let state = match self.plan(&map) {
            None => CudaPrepared::Cpu(self.cpu.prepare_state(&map)?),
            Some((layout, stages)) => {
                let packed = pack_weights(&map, &layout)?;
                let bits: Vec<u16> = packed.wt.iter().map(|h| h.to_bits()).collect();
                let per_gpu = self
                    .workers
                    .iter()
                    .map(|w| lock(w).upload(&bits, packed.bias.as_deref(), packed.w_inv))
                    .collect::<Result<Vec<_>>>()?;
                CudaPrepared::Device {
                    layout,
                    stages,
                    per_gpu,
                }
            }
        };
        Ok(PreparedMap::new(
            self.id,
            self.describe(),
            map,
            Some(Arc::new(state)),
        ))
    }

    fn arithmetic(&self, map: &LinearMap, opts: &ProjectionOptions) -> Result<&'static str> {
        check_precision(opts)?;
        if self.plan(map).is_some() {
            Ok("cuda-fp16")
        } else {
            self.cpu.arithmetic(map, opts)
        }
    }

    /// The kernels compute every row on its own, but the shapes they do not cover run on the
    /// CPU backend, whose blocks are the coarser grain.
    fn row_block(&self) -> usize {
        self.cpu.row_block().max(MAX_BM)
    }

    fn project(
        &self,
        map: &PreparedMap,
        opts: &ProjectionOptions,
        input: RowsIn<'_>,
        mut output: RowsOut<'_>,
    ) -> Result<BlockStats> {
        let state = self.prepared(map)?;
        check_precision(opts)?;
        check_shapes(map.linear(), &input, &output)?;
        if input.rows == 0 {
            return Ok(BlockStats::default());
        }
        let (layout, stages, per_gpu) = match state {
            CudaPrepared::Device {
                layout,
                stages,
                per_gpu,
            } => (layout, stages, per_gpu),
            CudaPrepared::Cpu(cpu_state) => {
                return self
                    .cpu
                    .project_prepared(map.linear(), cpu_state, opts, input, output);
            }
        };
        let (layout, stages) = (*layout, *stages);
        let parts = split_rows(input.rows, self.workers.len(), MAX_BM);
        let outcomes: Vec<(usize, Result<Outcome>)> = if parts.len() == 1 {
            let mut w = lock(&self.workers[0]);
            vec![(
                0,
                w.run(&per_gpu[0], opts, &layout, stages, input, &mut output),
            )]
        } else {
            let (in_stride, out_stride) = (input.row_stride, output.row_stride);
            let mut rest: &mut [u8] = output.bytes;
            let mut jobs = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let bytes = std::mem::take(&mut rest);
                let (mine, tail) = if i + 1 < parts.len() {
                    bytes.split_at_mut(part.len() * out_stride)
                } else {
                    (bytes, &mut [][..])
                };
                rest = tail;
                let sub_in = RowsIn {
                    bytes: &input.bytes[part.start * in_stride..],
                    rows: part.len(),
                    ..input
                };
                let sub_out = RowsOut {
                    bytes: mine,
                    rows: part.len(),
                    cols: output.cols,
                    row_stride: out_stride,
                    elem: output.elem,
                };
                jobs.push((part.start, sub_in, sub_out, &self.workers[i], &per_gpu[i]));
            }
            std::thread::scope(|scope| {
                let handles: Vec<_> = jobs
                    .into_iter()
                    .map(|(start, sub_in, mut sub_out, worker, weights)| {
                        let layout = &layout;
                        scope.spawn(move || {
                            let mut w = lock(worker);
                            (
                                start,
                                w.run(weights, opts, layout, stages, sub_in, &mut sub_out),
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| match h.join() {
                        Ok(r) => r,
                        Err(p) => (
                            0,
                            Err(Error::DeviceUnavailable(format!(
                                "a GPU worker panicked: {}",
                                panic_text(&p)
                            ))),
                        ),
                    })
                    .collect()
            })
        };
        let mut stats = BlockStats::default();
        let mut first_bad: Option<BadRow> = None;
        for (start, r) in outcomes {
            let (s, bad) = r?;
            stats += s;
            if let Some(b) = bad {
                first_bad = BadRow::lowest(first_bad, Some(b.offset(start)));
            }
        }
        match first_bad {
            Some(bad) => Err(row_error(bad)),
            None => Ok(stats),
        }
    }
}
