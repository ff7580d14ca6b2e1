//! Host-side planning for the CUDA backend, pure and testable without a GPU: which kernel
//! variant, the padded layouts the kernels expect (the contract at the top of
//! `kernels/project.cu`), launch geometry and shared memory, weight packing, sub-chunk sizes
//! under a device-memory budget, the order of the streaming pipeline, row splits across GPUs,
//! packing of input rows into staging buffers and unpacking of results.

use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use crate::align::LinearMap;
use crate::backend::{BlockStats, ElemType, RowsIn, RowsOut};
use crate::error::{Error, Result};

/// Threads per CTA of every kernel (8 warps).
pub const THREADS: u32 = 256;
/// K step of the projection kernel, in halves.
pub const BK: usize = 16;
/// Shared-memory row pitch of a staged tile, in halves (`ISO_SROW`).
pub const SROW: usize = 24;
/// Largest output width one CTA can hold (whole rows are normalised in one pass).
pub const MAX_D_OUT: usize = 1024;
/// Largest BM of any variant; sub-chunks are multiples of it so every CTA but the last is full.
pub const MAX_BM: usize = 64;
/// Static shared memory of the projection kernel (`red_sq` + `bad_row`), with slack.
pub const STATIC_SMEM: usize = 2048;
/// Rows per warp-sized group of the f32 conversion kernel's CTA (one warp per row).
pub const CONVERT_ROWS_PER_CTA: usize = THREADS as usize / 32;

/// Flag bits written per row by the kernel.
pub const FLAG_NONFINITE: u8 = 1;
pub const FLAG_ZERO_NORM: u8 = 2;
/// A finite row whose stored result was not finite (an unnormalised value beyond the output
/// type); the kernel writes the row as zeros.
pub const FLAG_UNREPRESENTABLE: u8 = 4;

/// Name of the f32 → f16 conversion kernel.
pub const CONVERT_KERNEL: &str = "convert_rows_f32";

/// Every kernel in `kernels/project.cu`.
pub const KERNEL_NAMES: [&str; 9] = [
    "project_n256_f16",
    "project_n256_f32",
    "project_n512_f16",
    "project_n512_f32",
    "project_n768_f16",
    "project_n768_f32",
    "project_n1024_f16",
    "project_n1024_f32",
    CONVERT_KERNEL,
];

/// A compiled instantiation of the projection kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// Widest output it holds (256, 512, 768, 1024).
    pub width: usize,
    /// Rows per CTA.
    pub bm: usize,
}

impl Variant {
    /// The narrowest variant holding `d_out` columns (register budget: at most 128 f32
    /// accumulators per thread, hence BM = 64 up to 512 columns and 32 above).
    pub fn for_width(d_out: usize) -> Option<Variant> {
        match d_out {
            0 => None,
            1..=256 => Some(Variant { width: 256, bm: 64 }),
            257..=512 => Some(Variant { width: 512, bm: 64 }),
            513..=768 => Some(Variant { width: 768, bm: 32 }),
            769..=MAX_D_OUT => Some(Variant {
                width: 1024,
                bm: 32,
            }),
            _ => None,
        }
    }

    /// `project_n<width>_<output dtype>`.
    pub fn kernel_name(self, out: ElemType) -> &'static str {
        let i = match self.width {
            256 => 0,
            512 => 2,
            768 => 4,
            _ => 6,
        };
        KERNEL_NAMES[i + usize::from(out == ElemType::F32)]
    }
}

/// Padded device layouts for one map shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub d_in: usize,
    pub d_out: usize,
    /// Halves per staged f16 input row (16-byte rows; pad columns zero).
    pub ldx: usize,
    /// Halves per row of the packed Wᵀ (a whole number of K steps).
    pub kpad: usize,
    /// Elements per output row on the device (even, so pairs of columns are aligned).
    pub ldo: usize,
    /// n8 tiles per column-warp; the kernel computes `npad = 32 · nt` columns.
    pub nt: usize,
    pub npad: usize,
    pub variant: Variant,
}

impl Layout {
    pub fn new(d_in: usize, d_out: usize) -> Result<Layout> {
        let variant = Variant::for_width(d_out).ok_or_else(|| {
            Error::Shape(format!(
                "the CUDA kernels produce 1 to {MAX_D_OUT} output columns, not {d_out}"
            ))
        })?;
        if d_in == 0 {
            return Err(Error::Shape("the projector has no input columns".into()));
        }
        let nt = d_out.div_ceil(32);
        Ok(Layout {
            d_in,
            d_out,
            ldx: d_in.next_multiple_of(8),
            kpad: d_in.next_multiple_of(BK),
            ldo: d_out.next_multiple_of(2),
            nt,
            npad: 32 * nt,
            variant,
        })
    }

    /// Dynamic shared memory of the projection kernel for a pipeline depth.
    pub fn smem_bytes(&self, stages: usize) -> usize {
        stages * (self.variant.bm + self.npad) * SROW * 2
    }

    /// The deepest pipeline (3, else 2 stages) that fits the device's per-block opt-in limit.
    pub fn stages_for(&self, max_smem_optin: usize) -> Option<usize> {
        let avail = max_smem_optin.saturating_sub(STATIC_SMEM);
        [3, 2].into_iter().find(|&s| self.smem_bytes(s) <= avail)
    }

    /// CTAs of the projection kernel for `rows` rows.
    pub fn grid(&self, rows: usize) -> u32 {
        rows.div_ceil(self.variant.bm) as u32
    }

    /// Bytes of one staged input row as it crosses the bus: f16 rows are staged already padded
    /// to `ldx`; f32 rows are staged dense and converted on the device.
    pub fn staged_row_bytes(&self, input: ElemType) -> usize {
        match input {
            ElemType::F16 => self.ldx * 2,
            ElemType::F32 => self.d_in * 4,
        }
    }

    /// Bytes of one output row on the device and in the pinned result buffer.
    pub fn out_row_bytes(&self, out: ElemType) -> usize {
        self.ldo * out.size()
    }

    /// Device bytes one pipeline slot needs per row.
    pub fn device_bytes_per_row(&self, input: ElemType, out: ElemType) -> usize {
        let raw = if input == ElemType::F32 {
            self.d_in * 4 + 4 // dense f32 rows + row scale
        } else {
            0
        };
        raw + self.ldx * 2 + self.out_row_bytes(out) + 1
    }

    /// Pinned host bytes one pipeline slot needs per row.
    pub fn host_bytes_per_row(&self, input: ElemType, out: ElemType) -> usize {
        self.staged_row_bytes(input) + self.out_row_bytes(out) + 1
    }
}

/// Rows per sub-chunk: a multiple of [`MAX_BM`], at most `max_rows`, such that `slots` slots
/// fit in `budget_bytes` of device memory and row offsets stay within the kernels' `int`.
pub fn sub_chunk_rows(
    layout: &Layout,
    input: ElemType,
    out: ElemType,
    slots: usize,
    budget_bytes: usize,
    max_rows: usize,
) -> usize {
    let per_row = layout.device_bytes_per_row(input, out) * slots.max(1);
    let by_budget = budget_bytes / per_row.max(1);
    let by_int = (i32::MAX as usize) / layout.ldx.max(layout.ldo).max(layout.d_in);
    let rows = by_budget.min(by_int).min(max_rows.max(MAX_BM));
    (rows / MAX_BM * MAX_BM).max(MAX_BM)
}

/// Contiguous ranges of at most `sub` rows covering `0..rows`.
pub fn sub_chunks(rows: usize, sub: usize) -> Vec<Range<usize>> {
    assert!(sub > 0);
    (0..rows.div_ceil(sub))
        .map(|i| i * sub..((i + 1) * sub).min(rows))
        .collect()
}

/// Splits `0..rows` into at most `devices` contiguous, nearly equal ranges whose boundaries are
/// multiples of `align` (empty ranges are dropped).
pub fn split_rows(rows: usize, devices: usize, align: usize) -> Vec<Range<usize>> {
    let devices = devices.max(1);
    let blocks = rows.div_ceil(align);
    let mut out = Vec::new();
    let mut start_block = 0;
    for d in 0..devices {
        let end_block = blocks * (d + 1) / devices;
        let (s, e) = (start_block * align, (end_block * align).min(rows));
        if e > s {
            out.push(s..e);
        }
        start_block = end_block;
    }
    out
}

/// One step of the streaming pipeline for one `project` call on one GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Host: pack sub-chunk `i`'s rows into the pinned input buffer of slot `i % slots`.
    Stage(usize),
    /// Device, on slot `i % slots`'s stream: copy in, (convert), project, copy results back.
    Launch(usize),
    /// Host: wait for that stream, read flags, unpack the rows into the caller's output.
    Drain(usize),
}

/// The order of pipeline steps. Sub-chunk `i` is staged and launched, then sub-chunk
/// `i - (slots - 1)` is drained: while the host waits for or unpacks one sub-chunk, the next
/// `slots - 1` are being copied and computed, and a slot is staged again only after it was
/// drained (its pinned buffers are free).
pub fn schedule(n_sub: usize, slots: usize) -> Vec<Step> {
    let slots = slots.max(1);
    let lag = slots - 1;
    let mut steps = Vec::with_capacity(3 * n_sub);
    for i in 0..n_sub {
        if slots == 1 && i > 0 {
            steps.push(Step::Drain(i - 1));
        }
        steps.push(Step::Stage(i));
        steps.push(Step::Launch(i));
        if lag > 0 && i >= lag {
            steps.push(Step::Drain(i - lag));
        }
    }
    let first_undrained = if slots == 1 {
        n_sub.saturating_sub(1)
    } else {
        n_sub.saturating_sub(lag)
    };
    steps.extend((first_undrained..n_sub).map(Step::Drain));
    steps
}

/// Weights as the kernel reads them: Wᵀ in f16, `npad x kpad`, pads zero, pre-scaled by an
/// exact power of two so the largest |w| lies in [2^14, 2^15); `w_inv` undoes the scale.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeights {
    pub wt: Vec<f16>,
    pub w_inv: f32,
    /// Bias padded to `npad` with zeros.
    pub bias: Option<Vec<f32>>,
}

/// Power-of-two exponent `s` so that `max_abs · 2^s` lies in [2^14, 2^15) (0 for zero).
pub fn pow2_exponent(max_abs: f32) -> i32 {
    if max_abs > 0.0 && max_abs.is_finite() {
        let e = ((max_abs.to_bits() >> 23) & 0xff) as i32 - 127;
        (14 - e).min(126)
    } else {
        0
    }
}

pub fn pack_weights(map: &LinearMap, layout: &Layout) -> Result<PackedWeights> {
    let w = &map.weight;
    if w.rows != layout.d_in || w.cols != layout.d_out {
        return Err(Error::Shape(format!(
            "weights are {} x {} but the layout is {} x {}",
            w.rows, w.cols, layout.d_in, layout.d_out
        )));
    }
    if let Some(bad) = w.data.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!(
            "projector weight ({}, {}) is not finite",
            bad / w.cols,
            bad % w.cols
        )));
    }
    let max_abs = w.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let s = pow2_exponent(max_abs);
    let scale = 2f32.powi(s);
    let mut wt = vec![f16::ZERO; layout.npad * layout.kpad];
    for k in 0..layout.d_in {
        for c in 0..layout.d_out {
            wt[c * layout.kpad + k] = f16::from_f32(w.data[k * layout.d_out + c] * scale);
        }
    }
    let bias = map.bias.as_ref().map(|b| {
        let mut p = vec![0.0f32; layout.npad];
        p[..b.len()].copy_from_slice(b);
        p
    });
    Ok(PackedWeights {
        wt,
        w_inv: 2f32.powi(-s),
        bias,
    })
}

/// Copies `rows` of `input` into a staging buffer in the staged layout (f16: `ldx` halves per
/// row with zero pads; f32: dense `d_in` floats). Large copies run on rayon.
pub fn pack_input_rows(input: &RowsIn<'_>, rows: Range<usize>, layout: &Layout, dst: &mut [u8]) {
    let row_bytes = layout.staged_row_bytes(input.elem);
    let data_bytes = layout.d_in * input.elem.size();
    let n = rows.len();
    let dst = &mut dst[..n * row_bytes];
    let copy_row = |(i, d): (usize, &mut [u8])| {
        d[..data_bytes].copy_from_slice(input.row(rows.start + i));
        d[data_bytes..].fill(0);
    };
    if n * row_bytes >= 1 << 20 {
        dst.par_chunks_mut(row_bytes)
            .with_min_len(256)
            .enumerate()
            .for_each(copy_row);
    } else {
        dst.chunks_mut(row_bytes).enumerate().for_each(copy_row);
    }
}

/// Copies device-layout result rows (`ldo` elements per row) into the caller's output rows
/// `rows` (which may have any stride).
pub fn unpack_output_rows(src: &[u8], layout: &Layout, rows: Range<usize>, out: &mut RowsOut<'_>) {
    let src_row = layout.out_row_bytes(out.elem);
    let data = layout.d_out * out.elem.size();
    let stride = out.row_stride;
    let n = rows.len();
    if n == 0 {
        return;
    }
    // The caller's rows `rows` as one region: rows.start * stride .. last row's end.
    let start = rows.start * stride;
    let end = (rows.end - 1) * stride + data;
    let region = &mut out.bytes[start..end];
    let copy_row = |(i, d): (usize, &mut [u8])| {
        d[..data].copy_from_slice(&src[i * src_row..i * src_row + data]);
    };
    if n * data >= 1 << 20 {
        region
            .par_chunks_mut(stride)
            .with_min_len(256)
            .enumerate()
            .for_each(copy_row);
    } else {
        region.chunks_mut(stride).enumerate().for_each(copy_row);
    }
}

/// A row that fails the call under `NonFinitePolicy::Error`, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadRow {
    /// Index within the rows the flags cover (re-based by the caller with [`BadRow::offset`]).
    pub row: usize,
    /// The input was finite but the result does not fit the output type.
    pub unrepresentable: bool,
}

impl BadRow {
    pub fn offset(self, by: usize) -> BadRow {
        BadRow {
            row: self.row + by,
            ..self
        }
    }
    /// The lower of two bad rows (either may be absent).
    pub fn lowest(a: Option<BadRow>, b: Option<BadRow>) -> Option<BadRow> {
        match (a, b) {
            (Some(x), Some(y)) => Some(if x.row <= y.row { x } else { y }),
            (x, None) => x,
            (None, y) => y,
        }
    }
}

/// What the per-row flags of one sub-chunk say: counts (rows written as zeros for NaN/Inf input
/// or an unrepresentable result count as `nonfinite_rows`, as on the CPU), and the first row
/// (index within the sub-chunk) that fails the call under `NonFinitePolicy::Error`.
pub fn read_flags(flags: &[u8]) -> (BlockStats, Option<BadRow>) {
    let mut stats = BlockStats::default();
    let mut first_bad = None;
    for (i, &f) in flags.iter().enumerate() {
        if f & (FLAG_NONFINITE | FLAG_UNREPRESENTABLE) != 0 {
            stats.nonfinite_rows += 1;
            first_bad.get_or_insert(BadRow {
                row: i,
                unrepresentable: f & FLAG_NONFINITE == 0,
            });
        } else if f & FLAG_ZERO_NORM != 0 {
            stats.zero_norm_rows += 1;
        }
    }
    (stats, first_bad)
}

/// The error every backend gives for a failing row (the `Backend::project` contract).
pub fn row_error(bad: BadRow) -> Error {
    if bad.unrepresentable {
        Error::Unrepresentable {
            row: bad.row,
            message: "the result does not fit the output type although the input row is finite"
                .into(),
        }
    } else {
        Error::NonFiniteRow { row: bad.row }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::MatrixF32;

    #[test]
    fn variants_cover_every_preset_width_and_refuse_wider() {
        for (d_out, width, bm) in [
            (1, 256, 64),
            (256, 256, 64),
            (262, 512, 64),
            (318, 512, 64),
            (512, 512, 64),
            (513, 768, 32),
            (768, 768, 32),
            (1000, 1024, 32),
            (1024, 1024, 32),
        ] {
            assert_eq!(
                Variant::for_width(d_out),
                Some(Variant { width, bm }),
                "{d_out}"
            );
        }
        assert_eq!(Variant::for_width(0), None);
        assert_eq!(Variant::for_width(1025), None);
        assert!(Layout::new(768, 1025).is_err());
        let v = Variant::for_width(262).unwrap();
        assert_eq!(v.kernel_name(ElemType::F16), "project_n512_f16");
        assert_eq!(v.kernel_name(ElemType::F32), "project_n512_f32");
        assert_eq!(
            Variant::for_width(1024).unwrap().kernel_name(ElemType::F32),
            "project_n1024_f32"
        );
    }

    #[test]
    fn layouts_pad_as_the_kernel_contract_says() {
        let l = Layout::new(769, 262).unwrap();
        assert_eq!(
            (l.ldx, l.kpad, l.ldo, l.nt, l.npad),
            (776, 784, 262, 9, 288)
        );
        let l = Layout::new(768, 1024).unwrap();
        assert_eq!(
            (l.ldx, l.kpad, l.ldo, l.nt, l.npad),
            (768, 768, 1024, 32, 1024)
        );
        let l = Layout::new(7, 3).unwrap();
        assert_eq!((l.ldx, l.kpad, l.ldo, l.nt, l.npad), (8, 16, 4, 1, 32));
        // Row tails: a partial last CTA.
        assert_eq!(Layout::new(768, 262).unwrap().grid(65), 2);
        assert_eq!(Layout::new(768, 1024).unwrap().grid(65), 3);
    }

    #[test]
    fn shared_memory_fits_h100_and_a100_with_three_stages() {
        // sm_90 opt-in limit 227 KiB, sm_80 163 KiB; sm_86/89 99 KiB.
        for d_out in [262, 512, 768, 1024] {
            let l = Layout::new(1024, d_out).unwrap();
            assert_eq!(l.stages_for(227 * 1024), Some(3), "{d_out}");
            assert_eq!(l.stages_for(163 * 1024), Some(3), "{d_out}");
        }
        let wide = Layout::new(768, 1024).unwrap();
        assert_eq!(wide.smem_bytes(3), 3 * (32 + 1024) * 48);
        assert_eq!(wide.stages_for(99 * 1024), None);
        assert_eq!(
            Layout::new(768, 512).unwrap().stages_for(99 * 1024),
            Some(3)
        );
        assert_eq!(
            Layout::new(768, 768).unwrap().stages_for(99 * 1024),
            Some(2)
        );
    }

    #[test]
    fn sub_chunks_respect_the_budget_and_cover_all_rows() {
        let l = Layout::new(768, 512).unwrap();
        let rows = sub_chunk_rows(&l, ElemType::F32, ElemType::F16, 3, 256 << 20, 8192);
        assert_eq!(rows % MAX_BM, 0);
        assert!(rows <= 8192);
        assert!(3 * rows * l.device_bytes_per_row(ElemType::F32, ElemType::F16) <= 256 << 20);
        // A tiny budget still gives one CTA's worth of rows.
        assert_eq!(
            sub_chunk_rows(&l, ElemType::F16, ElemType::F16, 3, 1000, 8192),
            MAX_BM
        );
        let chunks = sub_chunks(20_001, 8192);
        assert_eq!(chunks, vec![0..8192, 8192..16384, 16384..20_001]);
        assert!(sub_chunks(0, 64).is_empty());
    }

    #[test]
    fn rows_split_across_devices_contiguously_on_aligned_boundaries() {
        let parts = split_rows(1000, 3, 64);
        assert_eq!(parts.first().unwrap().start, 0);
        assert_eq!(parts.last().unwrap().end, 1000);
        for w in parts.windows(2) {
            assert_eq!(w[0].end, w[1].start);
            assert_eq!(w[0].end % 64, 0);
        }
        assert_eq!(parts.len(), 3);
        assert_eq!(split_rows(10, 4, 64), vec![0..10]);
        assert_eq!(split_rows(128, 2, 64), vec![0..64, 64..128]);
        assert!(split_rows(0, 2, 64).is_empty());
    }

    /// Replays a schedule and checks the pipeline invariants.
    fn check_schedule(n: usize, slots: usize) {
        let steps = schedule(n, slots);
        let mut staged = vec![false; n];
        let mut launched = vec![false; n];
        let mut drained = vec![false; n];
        let mut slot_busy: Vec<Option<usize>> = vec![None; slots];
        let mut max_in_flight = 0;
        for s in &steps {
            match *s {
                Step::Stage(i) => {
                    assert!(!staged[i], "staged twice");
                    assert!(i == 0 || staged[i - 1], "out of order");
                    assert_eq!(
                        slot_busy[i % slots],
                        None,
                        "slot {} reused undrained",
                        i % slots
                    );
                    slot_busy[i % slots] = Some(i);
                    staged[i] = true;
                }
                Step::Launch(i) => {
                    assert!(staged[i] && !launched[i]);
                    launched[i] = true;
                }
                Step::Drain(i) => {
                    assert!(launched[i] && !drained[i]);
                    assert!(i == 0 || drained[i - 1], "drained out of order");
                    assert_eq!(slot_busy[i % slots], Some(i));
                    slot_busy[i % slots] = None;
                    drained[i] = true;
                }
            }
            let in_flight = (0..n).filter(|&i| launched[i] && !drained[i]).count();
            max_in_flight = max_in_flight.max(in_flight);
        }
        assert!(drained.iter().all(|d| *d), "n={n} slots={slots}");
        assert!(max_in_flight <= slots);
        if n >= slots {
            // The pipeline actually fills: `slots` sub-chunks in flight at some point.
            assert_eq!(max_in_flight, slots, "n={n} slots={slots}");
        }
    }

    #[test]
    fn pipeline_schedule_overlaps_and_never_reuses_a_busy_slot() {
        for slots in 1..=4 {
            for n in 0..10 {
                check_schedule(n, slots);
            }
        }
        use Step::*;
        assert_eq!(
            schedule(3, 2),
            vec![
                Stage(0),
                Launch(0),
                Stage(1),
                Launch(1),
                Drain(0),
                Stage(2),
                Launch(2),
                Drain(1),
                Drain(2)
            ]
        );
    }

    #[test]
    fn weights_are_transposed_padded_and_scaled_exactly() {
        let (d_in, d_out) = (5, 3);
        let data: Vec<f32> = (0..d_in * d_out).map(|i| (i as f32 - 7.0) * 1e-3).collect();
        let map = LinearMap {
            weight: MatrixF32 {
                rows: d_in,
                cols: d_out,
                data: data.clone(),
            },
            bias: Some(vec![1.0, 2.0, 3.0]),
        };
        let l = Layout::new(d_in, d_out).unwrap();
        let p = pack_weights(&map, &l).unwrap();
        assert_eq!(p.wt.len(), l.npad * l.kpad);
        let max = data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scaled_max = max / p.w_inv;
        assert!((16384.0..32768.0).contains(&scaled_max), "{scaled_max}");
        for k in 0..l.kpad {
            for c in 0..l.npad {
                let got = p.wt[c * l.kpad + k].to_f32() * p.w_inv;
                if k < d_in && c < d_out {
                    let want = data[k * d_out + c];
                    assert!((got - want).abs() <= want.abs() * 1e-3, "{k},{c}");
                } else {
                    assert_eq!(got, 0.0, "pad {k},{c}");
                }
            }
        }
        let b = p.bias.unwrap();
        assert_eq!(b.len(), l.npad);
        assert_eq!(&b[..4], &[1.0, 2.0, 3.0, 0.0]);
        // Non-finite weights are refused up front.
        let mut bad = map.clone();
        bad.weight.data[4] = f32::NAN;
        assert!(pack_weights(&bad, &l).is_err());
        assert_eq!(pow2_exponent(0.0), 0);
        assert_eq!(pow2_exponent(1.0), 14);
        assert_eq!(pow2_exponent(1e-40), 126);
    }

    #[test]
    fn input_rows_are_packed_with_zero_pads_and_outputs_unpacked_into_strides() {
        let (d_in, d_out, rows) = (5, 3, 4);
        let l = Layout::new(d_in, d_out).unwrap();
        // f16 input with a padded row stride of 7 halves.
        let stride = 14;
        let mut inb = vec![0xAAu8; rows * stride];
        for r in 0..rows {
            for c in 0..d_in {
                let h = f16::from_f32((r * 10 + c) as f32).to_le_bytes();
                inb[r * stride + 2 * c..r * stride + 2 * c + 2].copy_from_slice(&h);
            }
        }
        let input = RowsIn {
            bytes: &inb,
            rows,
            cols: d_in,
            row_stride: stride,
            elem: ElemType::F16,
        };
        let mut staged = vec![0xFFu8; 2 * l.staged_row_bytes(ElemType::F16)];
        pack_input_rows(&input, 1..3, &l, &mut staged);
        let halves: Vec<f32> = staged
            .chunks(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        assert_eq!(
            halves,
            vec![10., 11., 12., 13., 14., 0., 0., 0., 20., 21., 22., 23., 24., 0., 0., 0.]
        );

        // f32 input is staged dense.
        let f: Vec<u8> = (0..rows * d_in)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        let input = RowsIn::dense(&f, rows, d_in, ElemType::F32);
        let mut staged = vec![0u8; 4 * d_in * 2];
        pack_input_rows(&input, 2..4, &l, &mut staged);
        assert_eq!(&staged[..], &f[2 * d_in * 4..4 * d_in * 4]);

        // Results (ldo = 4 elements per row) into an output with stride 5 elements.
        let src: Vec<u8> = (0..2 * l.ldo)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        let mut outb = vec![0u8; rows * 20];
        let mut out = RowsOut {
            bytes: &mut outb,
            rows,
            cols: d_out,
            row_stride: 20,
            elem: ElemType::F32,
        };
        unpack_output_rows(&src, &l, 2..4, &mut out);
        let vals: Vec<f32> = outb
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(&vals[..10], &[0.0; 10]);
        assert_eq!(&vals[10..13], &[0.0, 1.0, 2.0]);
        assert_eq!(vals[13], 0.0);
        assert_eq!(&vals[15..18], &[4.0, 5.0, 6.0]);
        assert_eq!(vals[18], 0.0);
    }

    #[test]
    fn flags_become_stats_and_the_first_bad_row() {
        let flags = [0, FLAG_ZERO_NORM, FLAG_UNREPRESENTABLE, FLAG_NONFINITE, 0];
        let (s, first) = read_flags(&flags);
        assert_eq!(
            s,
            BlockStats {
                zero_norm_rows: 1,
                nonfinite_rows: 2
            }
        );
        let first = first.unwrap();
        assert_eq!(
            first,
            BadRow {
                row: 2,
                unrepresentable: true
            }
        );
        assert!(matches!(
            row_error(first.offset(10)),
            Error::Unrepresentable { row: 12, .. }
        ));
        let flags = [0, FLAG_ZERO_NORM, 0, FLAG_NONFINITE, FLAG_NONFINITE, 0];
        let (s, first) = read_flags(&flags);
        assert_eq!(
            s,
            BlockStats {
                zero_norm_rows: 1,
                nonfinite_rows: 2
            }
        );
        assert_eq!(
            first,
            Some(BadRow {
                row: 3,
                unrepresentable: false
            })
        );
        assert_eq!(read_flags(&[0, 0]).1, None);
        assert!(matches!(
            row_error(first.unwrap().offset(9)),
            Error::NonFiniteRow { row: 12 }
        ));
    }
}
