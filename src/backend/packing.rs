//! What the CPU's packed-weight GEMM kernels (`packed_f32`, `bf16`) share: the checks on the
//! weights they are given, the padded line buffer they pack into, and (for their unit tests) the
//! behaviour both promise on degenerate shapes.

use crate::error::{Error, Result};

/// Checks that row-major `weight` is a finite `d_in x d_out` matrix: a wrong length is
/// `Error::Shape`, a NaN or Inf weight `Error::NonFinite` naming its place; `what` ("f32
/// weights", "bf16 weights") starts each message.
pub(crate) fn check_weights(weight: &[f32], d_in: usize, d_out: usize, what: &str) -> Result<()> {
    let expected = d_in
        .checked_mul(d_out)
        .ok_or_else(|| Error::Shape(format!("{what}: {d_in} x {d_out} overflows usize")))?;
    if weight.len() != expected {
        return Err(Error::Shape(format!(
            "{what}: {} values for a {d_in} x {d_out} matrix (expected {expected})",
            weight.len()
        )));
    }
    if let Some(i) = weight.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!(
            "{what}: the weight at row {}, column {} is {}",
            i / d_out.max(1),
            i % d_out.max(1),
            weight[i]
        )));
    }
    Ok(())
}

/// `rows x lines_per_row` zeroed lines, or `Error::Shape` when the count overflows and
/// `Error::ResourceExhausted` when the memory is refused.
pub(crate) fn zeroed_lines<L: Default + Clone>(
    rows: usize,
    lines_per_row: usize,
    what: &str,
    d_in: usize,
    d_out: usize,
) -> Result<Vec<L>> {
    let count = rows
        .checked_mul(lines_per_row)
        .ok_or_else(|| Error::Shape(format!("{what}: {d_in} x {d_out} is too large")))?;
    super::try_zeroed(count).map_err(|_| {
        Error::ResourceExhausted(format!(
            "cannot allocate {} bytes for {what}",
            count.saturating_mul(size_of::<L>())
        ))
    })
}

/// The degenerate shapes every packed kernel handles alike: d_in = 0 gives zeros, n = 0 and
/// d_out = 0 write nothing, and a NaN in one row poisons that row only. `pack` and `gemm` are
/// the kernel's (`gemm(x, w, y, n, d_in, d_out)`).
#[cfg(test)]
pub(crate) fn check_degenerate_shapes<W>(
    pack: impl Fn(&[f32], usize, usize) -> W,
    gemm: impl Fn(&[f32], &W, &mut [f32], usize, usize, usize),
) {
    let w = pack(&[], 0, 5);
    let mut y = vec![f32::NAN; 10];
    gemm(&[], &w, &mut y, 2, 0, 5);
    assert_eq!(y, vec![0.0; 10]);
    let w = pack(&[], 4, 0);
    gemm(&[1.0; 8], &w, &mut [], 2, 4, 0);
    let w = pack(&[1.0; 12], 4, 3);
    gemm(&[], &w, &mut [], 0, 4, 3);
    let mut x = vec![1.0f32; 3 * 4];
    x[4 + 2] = f32::NAN;
    let mut y = vec![0.0f32; 9];
    gemm(&x, &w, &mut y, 3, 4, 3);
    assert_eq!(&y[..3], &[4.0; 3]);
    assert!(y[3..6].iter().all(|v| v.is_nan()));
    assert_eq!(&y[6..], &[4.0; 3]);
}

/// What every packed kernel's `gemm_rows` starts with: panics when the packed weights
/// (`packed = (d_in, d_out)`) or the slices do not match the call's shape; returns whether the
/// kernel has work left (none for no rows or no columns; d_in = 0 has just written zeros).
pub(crate) fn gemm_prologue(
    packed: (usize, usize),
    x: &[f32],
    y: &mut [f32],
    n: usize,
    d_in: usize,
    d_out: usize,
) -> bool {
    assert!(
        packed == (d_in, d_out),
        "packed weights are {} x {}, the call is {d_in} x {d_out}",
        packed.0,
        packed.1
    );
    assert!(x.len() == n * d_in && y.len() == n * d_out);
    if n == 0 || d_out == 0 {
        return false;
    }
    if d_in == 0 {
        y.fill(0.0);
        return false;
    }
    true
}
