//! An opt-in reduced-precision GEMM for the CPU backend: AVX-512 BF16 (`vdpbf16ps`), bf16 inputs
//! and weights, f32 accumulation.
//!
//! `y = x · w` for row-major `x` (n x d_in, f32), `w` (d_in x d_out), `y` (n x d_out, f32): the
//! same contract as the f32 `cpu::gemm_rows`, except that every element of `x` and `w` is first
//! rounded to bf16 (8 significant bits, round to nearest even: relative error ≤ 2^-8). Products
//! of two bf16 values are exact in f32; the sums are f32.
//!
//! - [`PackedBf16Weights::pack`] rounds the weights once, into the layout the kernel reads:
//!   k-pairs interleaved, `[ceil(d_in/2)][n_pad][2]` bf16 (`n_pad` = d_out rounded up to 16, an
//!   odd d_in padded with a zero row), each k-pair row on 64-byte boundaries. Weights whose
//!   largest |value| lies outside [2^-32, 2^32] are first multiplied by an exact power of two
//!   (undone on the results), so that bf16's flushing of subnormals (below) cannot erase a whole
//!   projector of tiny weights.
//! - [`Bf16Kernel::new`] is `Some` only on a CPU with AVX-512F and AVX-512 BF16 (runtime
//!   detection): there is no fallback that would claim bf16 and compute something else.
//! - [`Bf16Kernel::gemm_rows`] converts each tile of up to 8 rows of `x` to bf16 pairs
//!   (`vcvtne2ps2bf16`) into a 16 KiB stack buffer, then runs a register-blocked micro-kernel
//!   (8 rows x 32 columns of f32 accumulators: per k-pair, two weight loads, eight broadcasts,
//!   sixteen `vdpbf16ps`); fewer rows get wider tiles (1 row x 128 columns for a query).
//!
//! Every output element is accumulated over k in the same order whatever the tile it falls in,
//! so a row's result does not depend on how many rows the call holds: a 1-row call and a
//! 128-row block give the same bits (a unit test holds this).
//!
//! The hardware conversion and dot product treat subnormal inputs as zero and flush subnormal
//! results to zero (Intel SDM, VCVTNE2PS2BF16 / VDPBF16PS: DAZ, FTZ, RNE, independent of MXCSR);
//! [`f32_to_bf16`] does the same, and a unit test checks that it agrees with the hardware bit for
//! bit. For the CPU backend's rows this loses nothing that matters: after its pre-scale a row's
//! largest |value| is at least 2^-64, so a flushed element (< 2^-126) is below 2^-62 of it.

#![deny(unsafe_op_in_unsafe_fn)]

use super::packing::{check_weights, gemm_prologue, zeroed_lines};
use crate::error::Result;

/// f32 lanes per AVX-512 vector; the packed weights' column padding.
pub const LANES: usize = 16;

/// k-pairs per block of the kernel's k loop (1024 input columns): the converted rows of one tile
/// (8 x 512 x 4 bytes = 16 KiB) stay in L1. Results do not depend on it.
const KC: usize = 512;

/// Rows of the main micro-kernel tile.
const MR: usize = 8;

/// Weights whose largest |value| has a binary exponent in [-WEIGHT_EXP, WEIGHT_EXP] are packed
/// unscaled; others are scaled by an exact power of two into [1, 2).
const WEIGHT_EXP: i32 = 32;

/// One cache line of packed weights: 16 bf16 pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(64))]
struct Line([u32; LANES]);

/// Rounds an f32 to bf16 (its upper 16 bits) the way `vcvtne2ps2bf16` does: round to nearest
/// even; subnormals and zeros become a zero of the same sign; NaN becomes a quiet NaN. A finite
/// value within half an ulp of the f32 maximum rounds to infinity (it exceeds bf16's range).
pub fn f32_to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    if b & 0x7f80_0000 == 0 {
        return ((b >> 16) & 0x8000) as u16;
    }
    if v.is_nan() {
        return ((b >> 16) | 0x0040) as u16;
    }
    let lsb = (b >> 16) & 1;
    (b.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// The f32 value of a bf16 bit pattern (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Projector weights rounded to bf16 in the kernel's layout (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedBf16Weights {
    d_in: usize,
    d_out: usize,
    /// ceil(d_in / 2): rows of bf16 pairs.
    k_pairs: usize,
    /// d_out rounded up to [`LANES`].
    n_pad: usize,
    /// `k_pairs` rows of `n_pad / LANES` lines; pair p of column j holds bf16(w[2p][j]) in its
    /// low half and bf16(w[2p+1][j]) (or 0 past d_in) in its high half; padding columns are 0.
    lines: Vec<Line>,
    /// The weights were multiplied by 2^-exponent before rounding; results are multiplied by
    /// 2^exponent (0: unscaled).
    exponent: i32,
}

impl PackedBf16Weights {
    /// Rounds row-major `weight` (d_in x d_out) to bf16 and packs it. A length that is not
    /// d_in x d_out is `Error::Shape`, a NaN or Inf weight `Error::NonFinite`, memory that cannot
    /// be reserved `Error::ResourceExhausted`.
    pub fn pack(weight: &[f32], d_in: usize, d_out: usize) -> Result<Self> {
        const WHAT: &str = "bf16 weights";
        check_weights(weight, d_in, d_out, WHAT)?;
        let k_pairs = d_in.div_ceil(2);
        let n_pad = d_out.div_ceil(LANES) * LANES;
        let mut lines: Vec<Line> = zeroed_lines(k_pairs, n_pad / LANES, WHAT, d_in, d_out)?;
        let max_abs = weight.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let exponent = if max_abs == 0.0 {
            0
        } else {
            // Every f32, subnormals included, is a normal f64: floor(log2 |max|).
            let e = ((f64::from(max_abs).to_bits() >> 52) & 0x7ff) as i32 - 1023;
            if (-WEIGHT_EXP..=WEIGHT_EXP).contains(&e) {
                0
            } else {
                e
            }
        };
        let down = 2f64.powi(-exponent);
        let round = |v: f32| -> u32 {
            let v = if exponent == 0 {
                v
            } else {
                (f64::from(v) * down) as f32
            };
            u32::from(f32_to_bf16(v))
        };
        let lines_per_row = n_pad / LANES;
        for p in 0..k_pairs {
            for j in 0..d_out {
                let lo = round(weight[2 * p * d_out + j]);
                let hi = if 2 * p + 1 < d_in {
                    round(weight[(2 * p + 1) * d_out + j])
                } else {
                    0
                };
                lines[p * lines_per_row + j / LANES].0[j % LANES] = lo | (hi << 16);
            }
        }
        Ok(PackedBf16Weights {
            d_in,
            d_out,
            k_pairs,
            n_pad,
            lines,
            exponent,
        })
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Bytes of packed weights (padding included): what the kernel reads per pass.
    pub fn bytes(&self) -> usize {
        self.lines.len() * size_of::<Line>()
    }

    /// The bf16-rounded weight at (row k, column j) as f32, times the pack's power-of-two scale
    /// undone: exactly the value the kernel multiplies by (for tests and accuracy studies).
    pub fn weight(&self, k: usize, j: usize) -> f64 {
        assert!(
            k < self.d_in && j < self.d_out,
            "({k}, {j}) is outside the weights"
        );
        let pair = self.lines[(k / 2) * (self.n_pad / LANES) + j / LANES].0[j % LANES];
        let h = if k.is_multiple_of(2) {
            pair as u16
        } else {
            (pair >> 16) as u16
        };
        f64::from(bf16_to_f32(h)) * 2f64.powi(self.exponent)
    }
}

/// Proof that this CPU runs AVX-512F and AVX-512 BF16: the only way to reach the kernel.
#[derive(Clone, Copy, Debug)]
pub struct Bf16Kernel {
    _detected: (),
}

impl Bf16Kernel {
    /// `Some` when the CPU (and the OS, which must save the AVX-512 state) supports AVX-512F and
    /// AVX-512 BF16; `None` otherwise, and on other architectures.
    pub fn new() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
            {
                return Some(Bf16Kernel { _detected: () });
            }
        }
        None
    }

    /// `y = x · w` with `x` and `w` rounded to bf16 and f32 accumulation, for row-major `x`
    /// (n x d_in), `y` (n x d_out). Panics when the slices do not match the shapes (like
    /// `cpu::gemm_rows`). d_in = 0 gives zeros. A non-finite `x` gives non-finite results in its
    /// row only.
    pub fn gemm_rows(
        &self,
        x: &[f32],
        w: &PackedBf16Weights,
        y: &mut [f32],
        n: usize,
        d_in: usize,
        d_out: usize,
    ) {
        if !gemm_prologue((w.d_in, w.d_out), x, y, n, d_in, d_out) {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `self` exists only when `new` detected AVX-512F and AVX-512 BF16, the
            // features `avx512::gemm` is compiled for; the shapes were checked above (its
            // precondition).
            unsafe { avx512::gemm(x, w, y, n) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("Bf16Kernel::new returns None on this architecture");
        if w.exponent != 0 {
            let f = 2f64.powi(w.exponent);
            y.iter_mut().for_each(|v| *v = (f64::from(*v) * f) as f32);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Line, PackedBf16Weights, KC, LANES, MR};

    /// Where a call's operands are: the packed weights and the output.
    struct Ctx<'a> {
        w: &'a PackedBf16Weights,
        y: *mut f32,
        d_out: usize,
    }

    /// The converted rows of one tile: up to [`MR`] rows of [`KC`] bf16 pairs (row stride KC).
    #[repr(C, align(64))]
    struct ATile([u32; MR * KC]);

    /// The whole product; rows in tiles of 8 (the last tile narrower), k in blocks of [`KC`]
    /// pairs, columns in tiles as wide as the row count allows.
    ///
    /// # Safety
    /// The CPU supports AVX-512F and AVX-512 BF16; `x.len() == n * w.d_in`,
    /// `y.len() == n * w.d_out`, n ≥ 1, d_in ≥ 1, d_out ≥ 1.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn gemm(x: &[f32], w: &PackedBf16Weights, y: &mut [f32], n: usize) {
        let d_in = w.d_in;
        let ctx = Ctx {
            w,
            y: y.as_mut_ptr(),
            d_out: w.d_out,
        };
        let mut a = ATile([0; MR * KC]);
        let mut r0 = 0;
        while r0 < n {
            let mr = MR.min(n - r0);
            let mut p0 = 0;
            while p0 < w.k_pairs {
                let kc = KC.min(w.k_pairs - p0);
                for r in 0..mr {
                    let row = &x[(r0 + r) * d_in..(r0 + r + 1) * d_in];
                    convert_pairs(
                        &row[2 * p0..d_in.min(2 * (p0 + kc))],
                        &mut a.0[r * KC..][..KC],
                    );
                }
                let accumulate = p0 > 0;
                // SAFETY: the tile's rows r0..r0+mr < n exist in y; `a` holds mr converted rows
                // of kc ≤ KC pairs; p0 + kc ≤ k_pairs; the CPU features are ours (caller).
                unsafe {
                    match mr {
                        8 => row_tile::<8, 2>(&ctx, &a, r0, p0, kc, accumulate),
                        7 => row_tile::<7, 2>(&ctx, &a, r0, p0, kc, accumulate),
                        6 => row_tile::<6, 2>(&ctx, &a, r0, p0, kc, accumulate),
                        5 => row_tile::<5, 2>(&ctx, &a, r0, p0, kc, accumulate),
                        4 => row_tile::<4, 2>(&ctx, &a, r0, p0, kc, accumulate),
                        3 => row_tile::<3, 4>(&ctx, &a, r0, p0, kc, accumulate),
                        2 => row_tile::<2, 4>(&ctx, &a, r0, p0, kc, accumulate),
                        _ => row_tile::<1, 8>(&ctx, &a, r0, p0, kc, accumulate),
                    }
                }
                p0 += kc;
            }
            r0 += mr;
        }
    }

    /// Converts `src` (at most 2 x KC floats) to bf16 pairs in `dst`: pair p = bf16(src[2p]) |
    /// bf16(src[2p+1]) << 16, zeros past the end of `src`; writes whole vectors of 16 pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn convert_pairs(src: &[f32], dst: &mut [u32]) {
        assert!(src.len() <= 2 * dst.len() && dst.len().is_multiple_of(LANES));
        let mut i = 0;
        let mut out = 0;
        while i < src.len() {
            let left = src.len() - i;
            let lo_mask: __mmask16 = if left >= 16 { !0 } else { (1u16 << left) - 1 };
            let hi_left = left.saturating_sub(16);
            let hi_mask: __mmask16 = if hi_left >= 16 {
                !0
            } else {
                (1u16 << hi_left) - 1
            };
            // SAFETY: lanes outside each mask are neither read nor faulted on; the lanes inside
            // are src[i..i + min(left, 16)] and src[i + 16..i + 16 + min(hi_left, 16)], all
            // before src.len().
            let (lo, hi) = unsafe {
                (
                    _mm512_maskz_loadu_ps(lo_mask, src.as_ptr().add(i)),
                    _mm512_maskz_loadu_ps(hi_mask, src.as_ptr().add(i + 16)),
                )
            };
            // Lanes 0..16 of the result come from the second operand (src[i..i+16]), lanes
            // 16..32 from the first: in memory, bf16 element e is src[i + e].
            let pairs = _mm512_cvtne2ps_pbh(hi, lo);
            assert!(out + LANES <= dst.len());
            // SAFETY: dst[out..out + 16] is in bounds (asserted); `__m512bh` and `__m512i` are
            // both 64 bytes of plain data.
            unsafe {
                _mm512_storeu_si512(
                    dst.as_mut_ptr().add(out).cast(),
                    std::mem::transmute::<__m512bh, __m512i>(pairs),
                );
            }
            i += 2 * LANES;
            out += LANES;
        }
    }

    /// [`convert_pairs`] for the unit tests.
    ///
    /// # Safety
    /// The CPU supports AVX-512F and AVX-512 BF16.
    #[cfg(test)]
    pub(super) unsafe fn convert_pairs_for_test(src: &[f32], dst: &mut [u32]) {
        // SAFETY: the caller guarantees the features.
        unsafe { convert_pairs(src, dst) }
    }

    /// One row tile (rows r0..r0+R, k-pairs p0..p0+kc): all its column tiles of NV vectors;
    /// a last tile with fewer vectors left runs narrower.
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16; rows r0..r0+R exist (R ≤ MR); p0 + kc ≤ k_pairs, kc ≤ KC;
    /// `a` holds the R rows' converted pairs p0..p0+kc.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn row_tile<const R: usize, const NV: usize>(
        ctx: &Ctx<'_>,
        a: &ATile,
        r0: usize,
        p0: usize,
        kc: usize,
        accumulate: bool,
    ) {
        let vectors = ctx.w.n_pad / LANES;
        let mut v0 = 0;
        while v0 < vectors {
            let left = vectors - v0;
            // SAFETY: forwarded from the caller; vectors v0..v0+min(left, NV) are within n_pad.
            unsafe {
                if left == 1 && R >= 4 {
                    tile::<R, 1>(ctx, a, r0, p0, kc, v0, 1, accumulate);
                } else {
                    tile::<R, NV>(ctx, a, r0, p0, kc, v0, left.min(NV), accumulate);
                }
            }
            v0 += NV.min(left);
        }
    }

    /// The micro-kernel: R rows x NV vectors of 16 columns (columns 16·v0 onwards), of which the
    /// first `valid` vectors are real; the others repeat the last real vector's loads (so every
    /// read stays inside the weights) and are not stored. Starts from zero, or from y's partial
    /// sums when `accumulate`; stores the sums into y (masked to d_out columns).
    ///
    /// # Safety
    /// As [`row_tile`], with 1 ≤ valid ≤ NV and v0 + valid ≤ n_pad / 16.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const R: usize, const NV: usize>(
        ctx: &Ctx<'_>,
        a: &ATile,
        r0: usize,
        p0: usize,
        kc: usize,
        v0: usize,
        valid: usize,
        accumulate: bool,
    ) {
        let w = ctx.w;
        let lines_per_row = w.n_pad / LANES;
        debug_assert!(valid >= 1 && valid <= NV && v0 + valid <= lines_per_row);
        debug_assert!(p0 + kc <= w.k_pairs && kc <= KC && R <= MR);
        // Column masks: vector v covers columns 16(v0+v)..; past d_out nothing is stored.
        let mut masks: [__mmask16; NV] = [0; NV];
        for (v, m) in masks.iter_mut().enumerate() {
            let col = (v0 + v) * LANES;
            *m = if v >= valid || col >= ctx.d_out {
                0
            } else if ctx.d_out - col >= LANES {
                !0
            } else {
                (1u16 << (ctx.d_out - col)) - 1
            };
        }
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        if accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, av) in row.iter_mut().enumerate() {
                    // SAFETY: y row r0 + r exists; the mask only admits columns < d_out of it;
                    // masked-off lanes are not read.
                    *av = unsafe {
                        _mm512_maskz_loadu_ps(
                            masks[v],
                            ctx.y.add((r0 + r) * ctx.d_out + (v0 + v) * LANES),
                        )
                    };
                }
            }
        }
        // Vector v reads line v0 + min(v, valid - 1) of each k-pair row: inside the row.
        let mut b_off = [0usize; NV];
        for (v, o) in b_off.iter_mut().enumerate() {
            *o = v0 + v.min(valid - 1);
        }
        // SAFETY: p0 ≤ k_pairs, so the offset is at most one past the end of `w.lines`.
        let lines: *const Line = unsafe { w.lines.as_ptr().add(p0 * lines_per_row) };
        let a_ptr = a.0.as_ptr();
        for p in 0..kc {
            let mut b = [_mm512_setzero_si512(); NV];
            for (v, bv) in b.iter_mut().enumerate() {
                // SAFETY: pair row p0 + p < k_pairs and line b_off[v] < lines_per_row, so the
                // 64-byte line lies inside `w.lines`, which is 64-byte aligned (`Line`).
                *bv = unsafe { _mm512_load_si512(lines.add(p * lines_per_row + b_off[v]).cast()) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: r < R ≤ MR and p < kc ≤ KC index the converted tile.
                let pair = unsafe { *a_ptr.add(r * KC + p) };
                let xa = _mm512_set1_epi32(pair as i32);
                for (v, av) in row.iter_mut().enumerate() {
                    // SAFETY: plain 64-byte reinterpretations of integer vectors as bf16 pairs.
                    let (xb, wb) = unsafe {
                        (
                            std::mem::transmute::<__m512i, __m512bh>(xa),
                            std::mem::transmute::<__m512i, __m512bh>(b[v]),
                        )
                    };
                    *av = _mm512_dpbf16_ps(*av, xb, wb);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, av) in row.iter().enumerate() {
                if masks[v] != 0 {
                    // SAFETY: as for the loads above: row r0 + r of y, columns < d_out only.
                    unsafe {
                        _mm512_mask_storeu_ps(
                            ctx.y.add((r0 + r) * ctx.d_out + (v0 + v) * LANES),
                            masks[v],
                            *av,
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::synthetic::Rng;

    /// bf16's unit roundoff: 8 significant bits, round to nearest.
    const U_BF16: f64 = 1.0 / 256.0;
    /// f32's unit roundoff.
    const U_F32: f64 = 1.0 / 16_777_216.0;

    fn kernel_or_skip(test: &str) -> Option<Bf16Kernel> {
        let k = Bf16Kernel::new();
        if k.is_none() {
            println!("{test}: skipped, this CPU lacks AVX-512F + AVX-512 BF16");
        }
        k
    }

    fn gamma(k: usize) -> f64 {
        let ku = k as f64 * U_F32;
        ku / (1.0 - ku)
    }

    fn random(rng: &mut Rng, len: usize, scale: f64) -> Vec<f32> {
        (0..len).map(|_| (rng.normal() * scale) as f32).collect()
    }

    fn round_bf16(v: f32) -> f64 {
        f64::from(bf16_to_f32(f32_to_bf16(v)))
    }

    /// Shapes with every tail: d_in odd, = 1, above one k block (2 x KC = 1024 columns);
    /// d_out below, at and off multiples of 16 and 32; rows 1, 7, 128, 129 and others that
    /// exercise each row-tile width.
    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 768, 262),
        (1, 768, 512),
        (2, 33, 17),
        (3, 5, 100),
        (7, 33, 17),
        (5, 1, 40),
        (6, 64, 16),
        (128, 768, 262),
        (129, 65, 50),
        (12, 1025, 31),
        (9, 2100, 47),
        (13, 2, 129),
    ];

    /// Runs the kernel on random data of one shape; returns (x, packed w, w, y).
    fn run(
        k: &Bf16Kernel,
        (n, d_in, d_out): (usize, usize, usize),
        w_scale: f64,
        seed: u64,
    ) -> (Vec<f32>, PackedBf16Weights, Vec<f32>, Vec<f32>) {
        let mut rng = Rng::new(seed);
        let x = random(&mut rng, n * d_in, 1.0);
        let w = random(&mut rng, d_in * d_out, w_scale);
        let pw = PackedBf16Weights::pack(&w, d_in, d_out).unwrap();
        let mut y = vec![f32::NAN; n * d_out];
        k.gemm_rows(&x, &pw, &mut y, n, d_in, d_out);
        (x, pw, w, y)
    }

    #[test]
    fn rounding_matches_the_hardware_conversion_bit_for_bit() {
        let Some(_k) = kernel_or_skip("rounding_matches_the_hardware_conversion_bit_for_bit")
        else {
            return;
        };
        // Ties (even and odd lsb), just above/below ties, subnormals of both signs, the largest
        // finite values (which round to infinity), zeros, then random finite bit patterns.
        let mut bits: Vec<u32> = vec![
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_8001,
            0x3f80_7fff,
            0xbf81_8000,
            0x0000_0001,
            0x8000_0001,
            0x007f_ffff,
            0x807f_ffff,
            0x0080_0000,
            0x7f7f_ffff,
            0xff7f_ffff,
            0x7f7f_7fff,
            0x0000_0000,
            0x8000_0000,
            0x4b7f_ffff,
        ];
        let mut rng = Rng::new(5);
        while bits.len() < 100_000 {
            let b = rng.next_u64() as u32;
            if f32::from_bits(b).is_finite() {
                bits.push(b);
            }
        }
        let src: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
        let mut dst = vec![0u32; src.len().div_ceil(2 * LANES) * LANES];
        for (s, d) in src.chunks(2 * KC).zip(dst.chunks_mut(KC)) {
            // SAFETY: the kernel exists, so the CPU has the features `convert_pairs` needs.
            unsafe { avx512::convert_pairs_for_test(s, d) };
        }
        for (i, v) in src.iter().enumerate() {
            let hw = (dst[i / 2] >> (16 * (i % 2))) as u16;
            assert_eq!(
                hw,
                f32_to_bf16(*v),
                "{:#010x}: hardware {hw:#06x}, f32_to_bf16 {:#06x}",
                v.to_bits(),
                f32_to_bf16(*v)
            );
        }
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x8000_0001)), 0x8000);
    }

    /// Against an f64 product of the bf16-rounded x and w: the only difference left is the f32
    /// accumulation. Each output is a sum of d_in exact products (bf16 x bf16 has 16 significant
    /// bits) rounded at most d_in + 1 times, so |ŷ - ỹ| ≤ γ(d_in + 1) Σ|x̃_k w̃_k| with
    /// γ(m) = m u / (1 - m u), u = 2^-24 (Higham, Accuracy and Stability, §3.1), whatever the
    /// order of the sums.
    #[test]
    fn matches_an_f64_product_of_the_rounded_operands() {
        let Some(k) = kernel_or_skip("matches_an_f64_product_of_the_rounded_operands") else {
            return;
        };
        for (i, &shape) in SHAPES.iter().enumerate() {
            let (n, d_in, d_out) = shape;
            let (x, pw, _, y) = run(&k, shape, 0.05, 100 + i as u64);
            let bound = gamma(d_in + 1);
            for r in 0..n {
                for j in 0..d_out {
                    let (mut s, mut abs) = (0.0f64, 0.0f64);
                    for kk in 0..d_in {
                        let t = round_bf16(x[r * d_in + kk]) * pw.weight(kk, j);
                        s += t;
                        abs += t.abs();
                    }
                    let got = f64::from(y[r * d_out + j]);
                    assert!(
                        (got - s).abs() <= bound * abs,
                        "{shape:?} row {r} col {j}: {got} vs {s} (bound {})",
                        bound * abs
                    );
                }
            }
        }
    }

    /// Against the exact product of the f32 operands: with x̃ = x(1+δ), w̃ = w(1+ε),
    /// |δ|, |ε| ≤ u_bf16 = 2^-8 (round to nearest, 8 significant bits, normal range), and the
    /// f32 sums as above, each term is x_k w_k (1+δ)(1+ε)(1+θ) with |θ| ≤ γ(d_in + 1), so
    /// |ŷ - y| ≤ ((1 + 2^-8)^2 (1 + γ(d_in + 1)) - 1) Σ|x_k w_k| (≈ 2^-7 Σ|x_k w_k|).
    #[test]
    fn stays_within_the_bf16_rounding_bound_of_the_exact_product() {
        let Some(k) = kernel_or_skip("stays_within_the_bf16_rounding_bound_of_the_exact_product")
        else {
            return;
        };
        for (i, &shape) in SHAPES.iter().enumerate() {
            let (n, d_in, d_out) = shape;
            let (x, _, w, y) = run(&k, shape, 0.05, 200 + i as u64);
            let bound = (1.0 + U_BF16).powi(2) * (1.0 + gamma(d_in + 1)) - 1.0;
            let mut worst = 0.0f64;
            for r in 0..n {
                for j in 0..d_out {
                    let (mut s, mut abs) = (0.0f64, 0.0f64);
                    for kk in 0..d_in {
                        let t = f64::from(x[r * d_in + kk]) * f64::from(w[kk * d_out + j]);
                        s += t;
                        abs += t.abs();
                    }
                    let err = (f64::from(y[r * d_out + j]) - s).abs();
                    assert!(
                        err <= bound * abs,
                        "{shape:?} row {r} col {j}: {} vs {s} (bound {})",
                        y[r * d_out + j],
                        bound * abs
                    );
                    worst = worst.max(err / abs);
                }
            }
            println!("{shape:?}: largest |error| / Σ|x w| = {worst:.3e} (bound {bound:.3e})");
        }
    }

    /// Each output element is summed over k in one order whatever tile it lands in, so the
    /// rows of a many-row call equal 1-row calls bit for bit (the CPU backend's inline and
    /// pooled paths must agree).
    #[test]
    fn a_row_gives_the_same_bits_alone_and_in_a_block() {
        let Some(k) = kernel_or_skip("a_row_gives_the_same_bits_alone_and_in_a_block") else {
            return;
        };
        for &(n, d_in, d_out) in &[(129, 768, 262), (11, 1025, 40)] {
            let (x, pw, _, y) = run(&k, (n, d_in, d_out), 0.05, 7);
            for r in 0..n {
                let mut one = vec![0.0f32; d_out];
                k.gemm_rows(&x[r * d_in..(r + 1) * d_in], &pw, &mut one, 1, d_in, d_out);
                let block_row = &y[r * d_out..(r + 1) * d_out];
                assert!(
                    one.iter()
                        .zip(block_row)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{n} x {d_in} -> {d_out}: row {r} differs between a 1-row call and the block"
                );
            }
        }
    }

    /// Projectors of tiny or huge weights are packed with a power-of-two scale: without it,
    /// weights of 1e-40 would be subnormal and flushed to zero, and the results would be zero.
    #[test]
    fn tiny_and_huge_weights_keep_their_relative_accuracy() {
        let Some(k) = kernel_or_skip("tiny_and_huge_weights_keep_their_relative_accuracy") else {
            return;
        };
        let (n, d_in, d_out) = (3, 70, 20);
        for w_scale in [1e-40, 1e-20, 1e12] {
            let (x, pw, w, y) = run(&k, (n, d_in, d_out), w_scale, 9);
            assert_ne!(pw.exponent, 0, "scale {w_scale}: weights not rescaled");
            let bound = (1.0 + U_BF16).powi(2) * (1.0 + gamma(d_in + 1)) - 1.0;
            for r in 0..n {
                for j in 0..d_out {
                    let (mut s, mut abs) = (0.0f64, 0.0f64);
                    for kk in 0..d_in {
                        let t = f64::from(x[r * d_in + kk]) * f64::from(w[kk * d_out + j]);
                        s += t;
                        abs += t.abs();
                    }
                    let got = f64::from(y[r * d_out + j]);
                    // The final scaling rounds once more to f32 (and subnormal f32 results of
                    // the 1e-40 case lose bits: allow their absolute spacing, 2^-149).
                    let slack = U_F32 * got.abs() + f64::from(f32::from_bits(1));
                    assert!(
                        (got - s).abs() <= bound * abs + slack,
                        "scale {w_scale} row {r} col {j}: {got} vs {s}"
                    );
                }
            }
        }
        let (_, pw, _, _) = run(&k, (1, 4, 3), 1.0, 1);
        assert_eq!(pw.exponent, 0);
    }

    #[test]
    fn degenerate_shapes_and_nonfinite_rows() {
        let Some(k) = kernel_or_skip("degenerate_shapes_and_nonfinite_rows") else {
            return;
        };
        crate::backend::packing::check_degenerate_shapes(
            |w, d_in, d_out| PackedBf16Weights::pack(w, d_in, d_out).unwrap(),
            |x, w, y, n, d_in, d_out| k.gemm_rows(x, w, y, n, d_in, d_out),
        );
    }

    #[test]
    #[should_panic(expected = "packed weights are 4 x 3, the call is 4 x 2")]
    fn weights_of_another_shape_are_refused() {
        let Some(k) = Bf16Kernel::new() else {
            panic!("packed weights are 4 x 3, the call is 4 x 2 (skipped: no AVX-512 BF16)");
        };
        let pw = PackedBf16Weights::pack(&[1.0; 12], 4, 3).unwrap();
        k.gemm_rows(&[1.0; 4], &pw, &mut [0.0; 2], 1, 4, 2);
    }

    #[test]
    fn pack_rejects_bad_weights_and_lays_them_out() {
        let e = PackedBf16Weights::pack(&[1.0; 11], 4, 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bf16 weights: 11 values for a 4 x 3 matrix (expected 12)"
        );
        let mut w = vec![0.5f32; 12];
        w[7] = f32::INFINITY;
        let e = PackedBf16Weights::pack(&w, 4, 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bf16 weights: the weight at row 2, column 1 is inf"
        );
        // 3 x 17: two k-pairs (the second padded with zero), 32 padded columns.
        let w: Vec<f32> = (0..3 * 17).map(|i| i as f32 + 0.5).collect();
        let pw = PackedBf16Weights::pack(&w, 3, 17).unwrap();
        assert_eq!((pw.k_pairs, pw.n_pad, pw.bytes()), (2, 32, 2 * 2 * 64));
        for kk in 0..3 {
            for j in 0..17 {
                assert_eq!(pw.weight(kk, j), round_bf16(w[kk * 17 + j]));
            }
        }
        let pair = pw.lines[3].0[0]; // k-pair 1, column 16: (w[2][16], padding row)
        assert_eq!(pair, u32::from(f32_to_bf16(w[2 * 17 + 16])));
        assert_eq!(pw.lines[1].0[1..], [0; 15]); // padding columns 17..32 of pair 0
    }
}
