//! Benchmark timing on one GPU (`examples/gpu_bench.rs`): the projection kernel alone, from
//! device memory to device memory, and host-to-device bandwidth. Launches go through the same
//! typed launcher as the pipeline (`cuda/launch.rs`).

use std::sync::Arc;

use cudarc::driver::result as cu;
use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, DevicePtr, DevicePtrMut};

use super::super::launch::{
    launch_convert, launch_project, ConvertArgs, ProjectArgs, ProjectBuffers,
};
use super::super::plan::{Layout, CONVERT_KERNEL};
use super::{drv, lock, pinned, CudaBackend, CudaPrepared, DeviceWeights, Worker};
use crate::backend::{ElemType, PreparedMap, ProjectionOptions};
use crate::error::{Error, Result};

/// Timing of the projection kernel alone, from device memory to device memory.
#[derive(Clone, Copy, Debug)]
pub struct KernelTiming {
    pub rows: usize,
    pub seconds_per_launch: f64,
}

impl KernelTiming {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds_per_launch
    }
}

impl CudaBackend {
    /// Times the projection kernel (plus the f32 conversion for f32 input) on GPU 0 from
    /// device memory to device memory: `rows` random rows, `iters` launches after a warm-up.
    /// `map` comes from this backend's `prepare`.
    pub fn time_kernel(
        &self,
        map: &PreparedMap,
        opts: &ProjectionOptions,
        input: ElemType,
        rows: usize,
        iters: usize,
    ) -> Result<KernelTiming> {
        let CudaPrepared::Device {
            layout,
            stages,
            per_gpu,
        } = self.prepared(map)?
        else {
            return Err(Error::DeviceUnavailable(format!(
                "the CUDA kernels do not cover a {} x {} map on this GPU",
                map.d_in(),
                map.d_out()
            )));
        };
        let mut w = lock(&self.workers[0]);
        w.time_kernel(
            &per_gpu[0],
            opts,
            layout,
            *stages,
            input,
            rows,
            iters.max(1),
        )
    }

    /// Host-to-device bandwidth from pinned memory on GPU 0, in bytes per second.
    pub fn measure_h2d(&self, bytes: usize, iters: usize) -> Result<f64> {
        lock(&self.workers[0]).measure_h2d(bytes, iters.max(1))
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn time_kernel(
        &mut self,
        weights: &DeviceWeights,
        opts: &ProjectionOptions,
        layout: &Layout,
        stages: usize,
        input: ElemType,
        rows: usize,
        iters: usize,
    ) -> Result<KernelTiming> {
        self.ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        let kernel = layout.variant.kernel_name(opts.output);
        self.allow_smem(kernel, layout.smem_bytes(stages))?;
        let s = self.streams[0].clone();
        let e = drv("benchmark setup");
        // Random rows, generated on the host once (deterministic xorshift, values ~ N(0,1)-ish).
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.4
        };
        let mut raw = None;
        let mut d_x: CudaSlice<u16>;
        let mut d_inv = s.alloc_zeros::<f32>(rows).map_err(&e)?;
        match input {
            ElemType::F16 => {
                let host: Vec<u16> = (0..rows * layout.ldx)
                    .map(|i| {
                        if i % layout.ldx < layout.d_in {
                            half::f16::from_f32(next()).to_bits()
                        } else {
                            0
                        }
                    })
                    .collect();
                d_x = s.clone_htod(&host).map_err(&e)?;
            }
            ElemType::F32 => {
                let host: Vec<f32> = (0..rows * layout.d_in).map(|_| next()).collect();
                raw = Some(s.clone_htod(&host).map_err(&e)?);
                d_x = s.alloc_zeros::<u16>(rows * layout.ldx).map_err(&e)?;
            }
        }
        let mut d_out = s
            .alloc_zeros::<u8>(rows * layout.out_row_bytes(opts.output))
            .map_err(&e)?;
        let mut d_flags = s.alloc_zeros::<u8>(rows).map_err(&e)?;
        let (x_ptr, _g1) = d_x.device_ptr_mut(&s);
        let (inv_ptr, _g2) = d_inv.device_ptr_mut(&s);
        let (wt_ptr, _g3) = weights.wt.device_ptr(&s);
        let bias_ptr: u64 = weights.bias.as_ref().map_or(0, |b| b.device_ptr(&s).0);
        let (out_ptr, _g4) = d_out.device_ptr_mut(&s);
        let (flags_ptr, _g5) = d_flags.device_ptr_mut(&s);
        let raw_ptr: u64 = raw
            .as_ref()
            .map_or(0, |r: &CudaSlice<f32>| r.device_ptr(&s).0);
        let convert = ConvertArgs::new(layout, rows, raw_ptr, x_ptr, inv_ptr);
        let project = ProjectArgs::new(
            layout,
            stages,
            opts.normalize,
            rows,
            ProjectBuffers {
                x: x_ptr,
                row_inv: if input == ElemType::F32 { inv_ptr } else { 0 },
                wt: wt_ptr,
                bias: bias_ptr,
                w_inv: weights.w_inv,
                out: out_ptr,
                flags: flags_ptr,
            },
        );
        let funcs = &self.funcs;
        let launch_once = || -> Result<()> {
            if input == ElemType::F32 {
                // SAFETY: the buffers above are sized for `rows` rows and live until after the
                // final synchronise below.
                unsafe { launch_convert(&s, &funcs[CONVERT_KERNEL], &convert) }?;
            }
            // SAFETY: as above; the weights are the prepared map's for `layout`, borrowed for the
            // whole call; the shared memory was allowed above.
            unsafe { launch_project(&s, &funcs[kernel], layout, &project) }
        };
        launch_once()?;
        s.synchronize().map_err(drv("synchronize"))?;
        let (start, stop) = timing_events(&self.ctx)?;
        start.record(&s).map_err(drv("event"))?;
        for _ in 0..iters {
            launch_once()?;
        }
        stop.record(&s).map_err(drv("event"))?;
        stop.synchronize().map_err(drv("event"))?;
        let ms = start.elapsed_ms(&stop).map_err(drv("event"))?;
        s.synchronize().map_err(drv("synchronize"))?;
        Ok(KernelTiming {
            rows,
            seconds_per_launch: ms as f64 / 1e3 / iters as f64,
        })
    }

    fn measure_h2d(&mut self, bytes: usize, iters: usize) -> Result<f64> {
        self.ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        let s = self.streams[0].clone();
        let host = pinned(&self.ctx, bytes, 0)?;
        let mut dev = s.alloc_zeros::<u8>(bytes).map_err(drv("allocation"))?;
        let (start, stop) = timing_events(&self.ctx)?;
        let src = host.as_slice().map_err(drv("pinned access"))?;
        let (dst, _g) = dev.device_ptr_mut(&s);
        // SAFETY: (both copies) `dev` holds `bytes`, the pinned source outlives the stream
        // synchronisation below.
        unsafe { cu::memcpy_htod_async(dst, src, s.cu_stream()) }.map_err(drv("copy"))?;
        start.record(&s).map_err(drv("event"))?;
        for _ in 0..iters {
            // SAFETY: see above.
            unsafe { cu::memcpy_htod_async(dst, src, s.cu_stream()) }.map_err(drv("copy"))?;
        }
        stop.record(&s).map_err(drv("event"))?;
        stop.synchronize().map_err(drv("event"))?;
        let ms = start.elapsed_ms(&stop).map_err(drv("event"))?;
        s.synchronize().map_err(drv("synchronize"))?;
        Ok(bytes as f64 * iters as f64 / (ms as f64 / 1e3))
    }
}

fn timing_events(ctx: &Arc<CudaContext>) -> Result<(CudaEvent, CudaEvent)> {
    let f = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    Ok((
        ctx.new_event(f).map_err(drv("event"))?,
        ctx.new_event(f).map_err(drv("event"))?,
    ))
}
