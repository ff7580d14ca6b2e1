//! An AVX-512F f32 GEMM over weights packed once: `y = x · w` for row-major `x` (n x d_in),
//! `w` (d_in x d_out), `y` (n x d_out), all f32.
//!
//! - [`PackedF32Weights::pack`] copies the weights once into the layout the kernel reads:
//!   `[d_in][n_pad]` f32 (`n_pad` = d_out rounded up to 16, padding columns zero), each row on
//!   64-byte boundaries, so every weight vector is one aligned cache line. A call then reads the
//!   weights as they are (the `gemm` crate re-packs them on every call, which dominates a 1-row
//!   query).
//! - [`F32Kernel::new`] is `Some` only on a CPU with AVX-512F (runtime detection).
//! - [`F32Kernel::gemm_rows`] runs register-blocked micro-kernels of R rows x NV vectors of 16
//!   columns (`vfmadd` with a broadcast of x, read in place). Blocks of 8 rows walk the columns
//!   in panels of 3 vectors (48 columns) and k in blocks of 192, running all of the panel's 8-row
//!   tiles per k block, so a panel's weights (36 KiB) stay in L1; the rows left over (and calls
//!   of fewer than 8 rows) run one tile per column group, as wide as the row count allows (a
//!   1-row query: 1 x up to 24 vectors, over all of k at once). A 1-row call is bound by the L2
//!   to L1 bandwidth (it reads every weight once; ~44 bytes per cycle measured on Sapphire
//!   Rapids).
//!
//! Numeric contract: every output element is ONE fused-multiply-add chain over k in increasing
//! order from +0.0, `acc = fma(x[k], w[k][j], acc)`; a k block stores its partial sums into y
//! and the next reloads them, which leaves the chain unchanged. The results therefore equal a
//! scalar `f32::mul_add` loop in that order bit for bit (subnormals included: the kernel does not
//! touch MXCSR), whatever the tile a row lands in, so a 1-row call and a 128-row block give the
//! same bits (unit tests hold both).

#![deny(unsafe_op_in_unsafe_fn)]

use super::packing::{check_weights, gemm_prologue, zeroed_lines};
use crate::error::Result;

/// f32 lanes per AVX-512 vector; the packed weights' column padding.
pub const LANES: usize = 16;

/// Rows of the many-row micro-kernel tile.
const MR: usize = 8;

/// Vectors (of 16 columns) of the many-row tile: a panel of 16 x NV_MANY columns. 8 x 3 (24
/// accumulators, 3 weight loads and 8 broadcasts per 24 FMAs) measured best of 8x2, 8x3, 6x4,
/// 4x4, 12x2 and 14x2 on a Sapphire Rapids core.
const NV_MANY: usize = 3;

/// k per block of the many-row path: a panel's weights (KC x 16·NV_MANY f32 = 36 KiB) stay in L1
/// (48 KiB on Sapphire Rapids) while every row tile runs over them. Results do not depend on it.
const KC: usize = 192;

/// One cache line of packed weights: 16 f32.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(64))]
struct Line([f32; LANES]);

/// Projector weights in the kernel's layout (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedF32Weights {
    d_in: usize,
    d_out: usize,
    /// d_out rounded up to [`LANES`].
    n_pad: usize,
    /// `d_in` rows of `n_pad / LANES` lines; row k holds w[k][0..d_out] then zeros.
    lines: Vec<Line>,
}

impl PackedF32Weights {
    /// Packs row-major `weight` (d_in x d_out). A length that is not d_in x d_out is
    /// `Error::Shape`, a NaN or Inf weight `Error::NonFinite`, memory that cannot be reserved
    /// `Error::ResourceExhausted`.
    pub fn pack(weight: &[f32], d_in: usize, d_out: usize) -> Result<Self> {
        const WHAT: &str = "f32 weights";
        check_weights(weight, d_in, d_out, WHAT)?;
        let n_pad = d_out.div_ceil(LANES) * LANES;
        let lines_per_row = n_pad / LANES;
        let mut lines: Vec<Line> = zeroed_lines(d_in, lines_per_row, WHAT, d_in, d_out)?;
        if d_out > 0 {
            for (row, src) in lines
                .chunks_exact_mut(lines_per_row)
                .zip(weight.chunks_exact(d_out))
            {
                for (line, chunk) in row.iter_mut().zip(src.chunks(LANES)) {
                    line.0[..chunk.len()].copy_from_slice(chunk);
                }
            }
        }
        Ok(PackedF32Weights {
            d_in,
            d_out,
            n_pad,
            lines,
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
}

/// Proof that this CPU runs AVX-512F: the only way to reach the kernel.
#[derive(Clone, Copy, Debug)]
pub struct F32Kernel {
    _detected: (),
}

impl F32Kernel {
    /// `Some` when the CPU (and the OS, which must save the AVX-512 state) supports AVX-512F;
    /// `None` otherwise, and on other architectures.
    pub fn new() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Some(F32Kernel { _detected: () });
            }
        }
        None
    }

    /// `y = x · w` for row-major `x` (n x d_in), `y` (n x d_out), each element one fused
    /// multiply-add chain over k in order (see the module docs). Panics when the slices do not
    /// match the shapes (like `cpu::gemm_rows`). d_in = 0 gives zeros. A non-finite `x` gives
    /// non-finite results in its row only.
    pub fn gemm_rows(
        &self,
        x: &[f32],
        w: &PackedF32Weights,
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
            // SAFETY: `self` exists only when `new` detected AVX-512F, the feature
            // `avx512::gemm` is compiled for; the shapes were checked above (its precondition).
            unsafe { avx512::gemm(x, w, y, n) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("F32Kernel::new returns None on this architecture");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{PackedF32Weights, KC, LANES, MR, NV_MANY};

    /// Where a call's operands are: x (row stride d_in), the packed weights (row stride n_pad,
    /// 64-byte aligned rows) and y (row stride d_out).
    struct Ctx {
        x: *const f32,
        d_in: usize,
        w: *const f32,
        n_pad: usize,
        y: *mut f32,
        d_out: usize,
    }

    /// The most vectors a tile of R rows may have: R x NV accumulators and the operands within
    /// the 32 vector registers (a 1-row tile's weight loads fold into its FMAs: up to 24, so that
    /// a 1-row query of up to 384 columns reads each weight row once, in one sequential stream).
    const fn max_width(rows: usize) -> usize {
        match rows {
            1 => 24,
            2 => 12,
            3 => 8,
            4 => 6,
            5 | 6 => 4,
            _ => 3,
        }
    }

    // The many-row tile is in the table below.
    const _: () = assert!(MR <= 8 && NV_MANY <= max_width(MR));

    /// Runs `tile::<rows, nv>` for a (rows, nv) of the table (rows ≤ 8, nv ≤ max_width(rows)).
    macro_rules! tile_table {
        ($rows:expr, $nv:expr, $args:tt; $($r:literal : [$($w:literal)*]);* $(;)?) => {
            match ($rows, $nv) {
                $($( ($r, $w) => tile::<$r, $w> $args, )*)*
                (r, v) => unreachable!("no {r} x {v} tile"),
            }
        };
    }

    /// One tile of `rows` rows x `nv` vectors (see [`tile`]).
    ///
    /// # Safety
    /// As [`tile`], with 1 ≤ rows ≤ 8 and 1 ≤ nv ≤ max_width(rows).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_dyn(
        ctx: &Ctx,
        rows: usize,
        nv: usize,
        r0: usize,
        k0: usize,
        kc: usize,
        v0: usize,
        accumulate: bool,
    ) {
        // SAFETY: forwarded from the caller; the table has every (rows, nv) it allows.
        unsafe {
            tile_table!(rows, nv, (ctx, r0, k0, kc, v0, accumulate);
                1: [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24];
                2: [1 2 3 4 5 6 7 8 9 10 11 12];
                3: [1 2 3 4 5 6 7 8];
                4: [1 2 3 4 5 6];
                5: [1 2 3 4];
                6: [1 2 3 4];
                7: [1 2 3];
                8: [1 2 3];
            )
        }
    }

    /// Splits `vectors` into the fewest groups of at most `max` vectors, of balanced widths
    /// (so that no group is much narrower than the others: a narrow group has few independent
    /// FMA chains). Returns (groups, base width); the first `vectors % groups` are one wider.
    fn split(vectors: usize, max: usize) -> (usize, usize) {
        let groups = vectors.div_ceil(max);
        (groups, vectors / groups)
    }

    /// The whole product.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `x.len() == n * w.d_in`, `y.len() == n * w.d_out`, n ≥ 1,
    /// d_in ≥ 1, d_out ≥ 1.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemm(x: &[f32], w: &PackedF32Weights, y: &mut [f32], n: usize) {
        let ctx = Ctx {
            x: x.as_ptr(),
            d_in: w.d_in,
            w: w.lines.as_ptr().cast::<f32>(),
            n_pad: w.n_pad,
            y: y.as_mut_ptr(),
            d_out: w.d_out,
        };
        let vectors = w.n_pad / LANES;
        let blocked = n - n % MR;
        if blocked > 0 {
            // Panels of NV_MANY vectors (balanced), k blocks, then every MR-row tile.
            let (groups, base) = split(vectors, NV_MANY);
            let extra = vectors % groups;
            let mut v0 = 0;
            for g in 0..groups {
                let nv = base + usize::from(g < extra);
                let mut k0 = 0;
                while k0 < w.d_in {
                    let kc = KC.min(w.d_in - k0);
                    let mut r0 = 0;
                    while r0 < blocked {
                        // SAFETY: rows r0..r0+MR ≤ n; vectors v0..v0+nv ≤ n_pad/16;
                        // 1 ≤ kc, k0 + kc ≤ d_in; nv ≤ NV_MANY ≤ max_width(MR); AVX-512F
                        // (caller).
                        unsafe { tile_dyn(&ctx, MR, nv, r0, k0, kc, v0, k0 > 0) };
                        r0 += MR;
                    }
                    k0 += kc;
                }
                v0 += nv;
            }
        }
        if blocked < n {
            // The rows left (fewer than MR): one tile per column group, over all of k.
            let rows = n - blocked;
            let (groups, base) = split(vectors, max_width(rows));
            let extra = vectors % groups;
            let mut v0 = 0;
            for g in 0..groups {
                let nv = base + usize::from(g < extra);
                // SAFETY: rows blocked..n exist; vectors v0..v0+nv ≤ n_pad/16; the whole of k
                // (d_in ≥ 1); 1 ≤ rows < MR = 8 and nv ≤ max_width(rows); AVX-512F (caller).
                unsafe { tile_dyn(&ctx, rows, nv, blocked, 0, w.d_in, v0, false) };
                v0 += nv;
            }
        }
    }

    /// The micro-kernel: rows r0..r0+R, vectors v0..v0+NV (columns 16·v0 onwards), k in
    /// k0..k0+kc. Starts from +0.0, or from y's partial sums when `accumulate`; per k, NV
    /// aligned weight loads, R broadcasts of x, R x NV `vfmadd`; stores the sums into y (masked
    /// to d_out columns).
    ///
    /// # Safety
    /// AVX-512F; rows r0..r0+R of x and y exist; v0 + NV ≤ n_pad / 16; 1 ≤ kc, k0 + kc ≤ d_in.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const NV: usize>(
        ctx: &Ctx,
        r0: usize,
        k0: usize,
        kc: usize,
        v0: usize,
        accumulate: bool,
    ) {
        debug_assert!((v0 + NV) * LANES <= ctx.n_pad && k0 + kc <= ctx.d_in);
        // Column masks: vector v covers columns 16(v0+v)..; each starts below d_out (n_pad is
        // d_out rounded up to 16), the last may end past it.
        let mut masks: [__mmask16; NV] = [!0; NV];
        for (v, m) in masks.iter_mut().enumerate() {
            let left = ctx.d_out - (v0 + v) * LANES;
            if left < LANES {
                *m = (1u16 << left) - 1;
            }
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
        // SAFETY: k0 < d_in (kc ≥ 1, caller) and v0 < n_pad / 16 place both pointers inside
        // their arrays.
        let (wp, xp) = unsafe {
            (
                ctx.w.add(k0 * ctx.n_pad + v0 * LANES),
                ctx.x.add(r0 * ctx.d_in + k0),
            )
        };
        for k in 0..kc {
            // SAFETY: k0 + k < d_in: weight row k0 + k exists.
            let wk = unsafe { wp.add(k * ctx.n_pad) };
            let mut b = [_mm512_setzero_ps(); NV];
            for (v, bv) in b.iter_mut().enumerate() {
                // SAFETY: line v0 + v < n_pad / 16 of row k0 + k: 16 f32 inside the packed
                // weights, 64-byte aligned (`Line` rows of n_pad f32, n_pad a multiple of 16).
                *bv = unsafe { _mm512_load_ps(wk.add(v * LANES)) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: x[r0 + r][k0 + k]: row r0 + r exists, k0 + k < d_in.
                let xa = _mm512_set1_ps(unsafe { *xp.add(r * ctx.d_in + k) });
                for (av, bv) in row.iter_mut().zip(&b) {
                    *av = _mm512_fmadd_ps(xa, *bv, *av);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, av) in row.iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::synthetic::Rng;
    use crate::error::Error;

    fn kernel_or_skip(test: &str) -> Option<F32Kernel> {
        let k = F32Kernel::new();
        if k.is_none() {
            println!("{test}: skipped, this CPU lacks AVX-512F");
        }
        k
    }

    /// Mostly normal values, with zeros of both signs, huge, tiny and subnormal values mixed in
    /// (`huge` and `tiny` chosen by the caller so that products stay finite).
    fn random(rng: &mut Rng, len: usize, scale: f64, huge: f32, tiny: f32) -> Vec<f32> {
        (0..len)
            .map(|_| {
                let sign = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
                match rng.below(100) {
                    0 => 0.0,
                    1 => -0.0,
                    2 => sign * huge,
                    3 => sign * tiny,
                    4 => sign * f32::from_bits(1 + rng.below(0x7f_ffff) as u32), // subnormal
                    _ => (rng.normal() * scale) as f32,
                }
            })
            .collect()
    }

    /// The contract: one `mul_add` chain per element, k increasing, from +0.0.
    fn reference(x: &[f32], w: &[f32], n: usize, d_in: usize, d_out: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; n * d_out];
        for r in 0..n {
            for j in 0..d_out {
                let mut acc = 0.0f32;
                for k in 0..d_in {
                    acc = x[r * d_in + k].mul_add(w[k * d_out + j], acc);
                }
                y[r * d_out + j] = acc;
            }
        }
        y
    }

    fn same_bits(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// Runs the kernel into the middle of a NaN-filled buffer; checks the guard values around
    /// the output kept their bits (nothing, padding columns included, is written outside y).
    fn run_guarded(
        k: &F32Kernel,
        x: &[f32],
        pw: &PackedF32Weights,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Vec<f32> {
        const GUARD: usize = 40;
        let guard = f32::from_bits(0x7fc0_1234);
        let mut buf = vec![guard; n * d_out + 2 * GUARD];
        k.gemm_rows(x, pw, &mut buf[GUARD..GUARD + n * d_out], n, d_in, d_out);
        assert!(
            buf[..GUARD]
                .iter()
                .chain(&buf[GUARD + n * d_out..])
                .all(|v| v.to_bits() == guard.to_bits()),
            "{n} x {d_in} -> {d_out}: the kernel wrote outside y"
        );
        buf[GUARD..GUARD + n * d_out].to_vec()
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn equals_the_scalar_mul_add_chain_bit_for_bit() {
        let Some(k) = kernel_or_skip("equals_the_scalar_mul_add_chain_bit_for_bit") else {
            return;
        };
        let rows: Vec<usize> = (1..=17).chain([64, 128, 130]).collect();
        let mut seed = 1000;
        let mut checked = 0usize;
        for &d_in in &[1, 2, 3, 17, 768, 1100] {
            for &d_out in &[1, 15, 16, 17, 31, 33, 262, 512] {
                let mut rng = Rng::new(seed);
                seed += 1;
                // Huge x (1e18) times huge w (1e15) stays below f32::MAX; the sums of many
                // normal products land anywhere, subnormal results included.
                let w = random(&mut rng, d_in * d_out, 0.05, 1e15, 1e-30);
                let pw = PackedF32Weights::pack(&w, d_in, d_out).unwrap();
                let n_max = *rows.iter().max().unwrap();
                let x_all = random(&mut rng, n_max * d_in, 1.0, 1e18, 1e-25);
                for &n in &rows {
                    let x = &x_all[..n * d_in];
                    let got = run_guarded(&k, x, &pw, n, d_in, d_out);
                    let want = reference(x, &w, n, d_in, d_out);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            same_bits(*g, *e),
                            "{n} x {d_in} -> {d_out}: row {} col {}: kernel {g:e} ({:#010x}), \
                             mul_add chain {e:e} ({:#010x})",
                            i / d_out,
                            i % d_out,
                            g.to_bits(),
                            e.to_bits()
                        );
                    }
                    checked += got.len();
                }
            }
        }
        println!("{checked} outputs equal the mul_add chain bit for bit");
    }

    /// Overflow to ±Inf, and NaN from Inf x 0 or Inf - Inf (an FMA rounds only its sum, so a
    /// NaN needs an infinite operand: x holds a few), land on the same elements as in the
    /// scalar chain.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn overflow_and_nan_match_the_scalar_chain() {
        let Some(k) = kernel_or_skip("overflow_and_nan_match_the_scalar_chain") else {
            return;
        };
        // 1 in 20 values is ±1e20: about 0.75 products per output overflow; 1 in 100 x is
        // ±Inf, 1 in 100 weights is ±0.
        let spiky = |rng: &mut Rng, len: usize, special: f32| -> Vec<f32> {
            (0..len)
                .map(|_| match rng.below(400) {
                    0..10 => 1e20,
                    10..20 => -1e20,
                    20 | 21 => special,
                    22 | 23 => -special,
                    _ => rng.normal() as f32,
                })
                .collect()
        };
        let (d_in, d_out) = (300, 40);
        let mut rng = Rng::new(77);
        let w = spiky(&mut rng, d_in * d_out, 0.0);
        let pw = PackedF32Weights::pack(&w, d_in, d_out).unwrap();
        let (mut infinite, mut nan) = (0, 0);
        for n in [1, 9, 20] {
            let x = spiky(&mut rng, n * d_in, f32::INFINITY);
            let got = run_guarded(&k, &x, &pw, n, d_in, d_out);
            let want = reference(&x, &w, n, d_in, d_out);
            infinite += want.iter().filter(|v| v.is_infinite()).count();
            nan += want.iter().filter(|v| v.is_nan()).count();
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(same_bits(*g, *e), "{n} rows, output {i}: {g} vs {e}");
            }
        }
        assert!(
            infinite > 0 && nan > 0,
            "{infinite} Inf and {nan} NaN results"
        );
        println!("{infinite} Inf and {nan} NaN results match the mul_add chain");
    }

    /// A row's bits do not depend on the call it is in (the CPU backend's 1-row queries and
    /// 128-row blocks must agree).
    #[test]
    #[cfg_attr(miri, ignore)]
    fn a_row_gives_the_same_bits_alone_and_in_a_block() {
        let Some(k) = kernel_or_skip("a_row_gives_the_same_bits_alone_and_in_a_block") else {
            return;
        };
        for &(n, d_in, d_out) in &[(128, 768, 262), (130, 1100, 512), (11, 1025, 40)] {
            let mut rng = Rng::new(n as u64);
            let x = random(&mut rng, n * d_in, 1.0, 1e18, 1e-25);
            let w = random(&mut rng, d_in * d_out, 0.05, 1e15, 1e-30);
            let pw = PackedF32Weights::pack(&w, d_in, d_out).unwrap();
            let mut y = vec![0.0f32; n * d_out];
            k.gemm_rows(&x, &pw, &mut y, n, d_in, d_out);
            for r in 0..n {
                let mut one = vec![0.0f32; d_out];
                k.gemm_rows(&x[r * d_in..(r + 1) * d_in], &pw, &mut one, 1, d_in, d_out);
                assert!(
                    one.iter()
                        .zip(&y[r * d_out..(r + 1) * d_out])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{n} x {d_in} -> {d_out}: row {r} differs between a 1-row call and the block"
                );
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn degenerate_shapes_and_nonfinite_rows() {
        let Some(k) = kernel_or_skip("degenerate_shapes_and_nonfinite_rows") else {
            return;
        };
        crate::backend::packing::check_degenerate_shapes(
            |w, d_in, d_out| PackedF32Weights::pack(w, d_in, d_out).unwrap(),
            |x, w, y, n, d_in, d_out| k.gemm_rows(x, w, y, n, d_in, d_out),
        );
    }

    #[test]
    #[should_panic(expected = "packed weights are 4 x 3, the call is 4 x 2")]
    fn weights_of_another_shape_are_refused() {
        let Some(k) = F32Kernel::new() else {
            panic!("packed weights are 4 x 3, the call is 4 x 2 (skipped: no AVX-512F)");
        };
        let pw = PackedF32Weights::pack(&[1.0; 12], 4, 3).unwrap();
        k.gemm_rows(&[1.0; 4], &pw, &mut [0.0; 2], 1, 4, 2);
    }

    #[test]
    fn pack_rejects_bad_weights_and_lays_them_out() {
        let e = PackedF32Weights::pack(&[1.0; 11], 4, 3).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "f32 weights: 11 values for a 4 x 3 matrix (expected 12)"
        );
        let mut w = vec![0.5f32; 12];
        w[7] = f32::NAN;
        let e = PackedF32Weights::pack(&w, 4, 3).unwrap_err();
        assert!(matches!(e, Error::NonFinite(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "f32 weights: the weight at row 2, column 1 is NaN"
        );
        w[7] = f32::NEG_INFINITY;
        let e = PackedF32Weights::pack(&w, 4, 3).unwrap_err();
        assert!(matches!(e, Error::NonFinite(_)), "{e:?}");
        // 3 x 17: 32 padded columns, two lines per row, each 64-byte aligned.
        let w: Vec<f32> = (0..3 * 17).map(|i| i as f32 + 0.5).collect();
        let pw = PackedF32Weights::pack(&w, 3, 17).unwrap();
        assert_eq!((pw.d_in(), pw.d_out(), pw.n_pad), (3, 17, 32));
        assert_eq!(pw.bytes(), 3 * 2 * 64);
        assert_eq!(pw.lines.as_ptr() as usize % 64, 0);
        for kk in 0..3 {
            for j in 0..32 {
                let want = if j < 17 { w[kk * 17 + j] } else { 0.0 };
                assert_eq!(
                    pw.lines[kk * 2 + j / 16].0[j % 16].to_bits(),
                    want.to_bits()
                );
            }
        }
        // Empty shapes pack to nothing.
        assert_eq!(PackedF32Weights::pack(&[], 0, 5).unwrap().bytes(), 0);
        assert_eq!(PackedF32Weights::pack(&[], 5, 0).unwrap().bytes(), 0);
    }
}
