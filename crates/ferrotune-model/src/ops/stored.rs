//! The two products a frozen weight held in its storage type takes part in, `x W^T` (the
//! forward pass) and `g W` (the input's gradient), by panels: a few rows of `W` are
//! dequantized into an f32 panel that stays in cache, and gemm multiplies the panel.
//! The weight is never held in f32 as a whole; each panel costs one dequantization of
//! its rows, which the product then reuses for every input row.
//!
//! Shapes: x (N, IN), N rows of input; W (OUT, IN), stored; y = x W^T (N, OUT); its
//! gradient g (N, OUT); dx = g W (N, IN); a panel: P rows of W, (P, IN) in f32.
//!
//! * forward: panel p gives the columns `p*P ..` of y, written in place (`product_into`
//!   with the output's row stride).
//! * input gradient: panel p adds `g[:, p*P ..] @ panel` to dx, the first panel writing.

use candle_core::{Result, Tensor};

use super::bf16;
use super::custom_op::with_data;
use super::gemm::{add_products, product_into, Strided};
use crate::stored::StoredWeight;

/// Bytes of f32 a panel holds: a core's share of L2.
const PANEL_BYTES: usize = 1 << 20;

/// Rows per panel for rows of `cols` weights: a whole number of 16-row groups, at least
/// one group, and at least 256 for the input gradient (gemm's depth blocks).
fn panel_rows(cols: usize, rows: usize, min: usize) -> usize {
    let p = (PANEL_BYTES / 4 / cols.max(1)).max(min) / 16 * 16;
    p.clamp(16, rows.max(16))
}

/// `x W^T` for a row-major `x` (n, in): a row-major (n, out).
pub(crate) fn forward(w: &StoredWeight, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let (out, cols) = w.dims();
    if x.len() != n * cols {
        candle_core::bail!("stored product: {} values for {n} rows of {cols}", x.len());
    }
    if w.bf16_products() {
        return forward_bf16(w, x, n);
    }
    let mut y = vec![0f32; n * out];
    let p = panel_rows(cols, out, 16);
    let mut panel = vec![0f32; p * cols];
    for r0 in (0..out).step_by(p) {
        let rows = p.min(out - r0);
        let panel = &mut panel[..rows * cols];
        w.dequantize_rows(r0, rows, panel)?;
        let x_op = Strided {
            data: x,
            row_stride: cols,
            col_stride: 1,
        };
        // The panel transposed: (in, rows).
        let w_op = Strided {
            data: panel,
            row_stride: 1,
            col_stride: cols,
        };
        product_into(&mut y[r0..], out, (n, rows, cols), false, 1.0, x_op, w_op)?;
    }
    Ok(y)
}

/// `g W` for a row-major `g` (n, out): a row-major (n, in).
pub(crate) fn input_gradient(w: &StoredWeight, g: &[f32], n: usize) -> Result<Vec<f32>> {
    let (out, cols) = w.dims();
    if g.len() != n * out {
        candle_core::bail!("stored product: {} values for {n} rows of {out}", g.len());
    }
    if w.bf16_products() {
        return input_gradient_bf16(w, g, n);
    }
    let mut dx = vec![0f32; n * cols];
    let p = panel_rows(cols, out, 256);
    let mut panel = vec![0f32; p * cols];
    for (i, r0) in (0..out).step_by(p).enumerate() {
        let rows = p.min(out - r0);
        let panel = &mut panel[..rows * cols];
        w.dequantize_rows(r0, rows, panel)?;
        let g_op = Strided {
            data: &g[r0..],
            row_stride: out,
            col_stride: 1,
        };
        let w_op = Strided {
            data: panel,
            row_stride: cols,
            col_stride: 1,
        };
        product_into(&mut dx, cols, (n, cols, rows), i > 0, 1.0, g_op, w_op)?;
    }
    Ok(dx)
}

/// [`forward`] in bf16: `x` rounded to bf16 pairs once, each panel packed as bf16 pairs
/// (`ops::bf16`), f32 sums.
fn forward_bf16(w: &StoredWeight, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let (out, cols) = w.dims();
    let xp = bf16::pairs_of(x, n, cols, cols);
    let kp = cols.div_ceil(2);
    let mut y = vec![0f32; n * out];
    let p = panel_rows(cols, out, bf16::NR);
    let mut panel = vec![0f32; p * cols];
    for r0 in (0..out).step_by(p) {
        let rows = p.min(out - r0);
        let b = match w.bf16_rows(r0, rows) {
            Some(bits) => bf16::pack_rows(bits, rows, cols),
            None => {
                let panel = &mut panel[..rows * cols];
                w.dequantize_rows(r0, rows, panel)?;
                bf16::pack_rows(panel, rows, cols)
            }
        };
        bf16::gemm(&mut y[r0..], out, (n, rows, kp), &xp, &b, false, false);
    }
    Ok(y)
}

/// [`input_gradient`] in bf16: each panel's rows of `W` and columns of `g` as bf16 pairs
/// along the panel's rows, f32 sums accumulated across panels.
fn input_gradient_bf16(w: &StoredWeight, g: &[f32], n: usize) -> Result<Vec<f32>> {
    let (out, cols) = w.dims();
    let mut dx = vec![0f32; n * cols];
    let p = panel_rows(cols, out, 256);
    let mut panel = vec![0f32; p * cols];
    for (i, r0) in (0..out).step_by(p).enumerate() {
        let rows = p.min(out - r0);
        let b = match w.bf16_rows(r0, rows) {
            Some(bits) => bf16::pack_columns(bits, rows, cols),
            None => {
                let panel = &mut panel[..rows * cols];
                w.dequantize_rows(r0, rows, panel)?;
                bf16::pack_columns(panel, rows, cols)
            }
        };
        let gp = bf16::pairs_of(&g[r0..], n, rows, out);
        bf16::gemm(
            &mut dx,
            cols,
            (n, cols, rows.div_ceil(2)),
            &gp,
            &b,
            i > 0,
            false,
        );
    }
    Ok(dx)
}

/// `x W^T + sum_i s_i (a_i @ b_i)` for a tensor `x` (n, in): a tensor (n, out), the
/// terms (LoRA's) accumulated into the product's buffer.
pub(crate) fn forward_plus(
    w: &StoredWeight,
    x: &Tensor,
    terms: &[(&Tensor, &Tensor, f64)],
) -> Result<Tensor> {
    let (n, _) = x.dims2()?;
    let out = w.dims().0;
    let mut y = with_data(x, "stored product", |x| forward(w, x, n))?;
    add_products(&mut y, (n, out), terms)?;
    Tensor::from_vec(y, (n, out), x.device())
}

/// `g W + sum_i s_i (a_i @ b_i)` for a tensor `g` (n, out): a tensor (n, in).
pub(crate) fn input_gradient_plus(
    w: &StoredWeight,
    g: &Tensor,
    terms: &[(&Tensor, &Tensor, f64)],
) -> Result<Tensor> {
    let (n, _) = g.dims2()?;
    let cols = w.dims().1;
    let mut dx = with_data(g, "stored product", |g| input_gradient(w, g, n))?;
    add_products(&mut dx, (n, cols), terms)?;
    Tensor::from_vec(dx, (n, cols), g.device())
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::ops::gemm::tests::max_diff;

    /// Both products equal gemm's on the dequantized weight, across panel boundaries.
    #[test]
    fn stored_products_equal_dense_products_of_the_dequantized_weight() {
        let dev = Device::Cpu;
        for (out, cols) in [(600, 512), (40, 256), (3000, 512)] {
            let t = Tensor::randn(0f32, 1.0, (out, cols), &dev).unwrap();
            for dtype in [GgmlDType::Q4_0, GgmlDType::Q6K, GgmlDType::BF16] {
                let w = StoredWeight::quantize(&t, dtype).unwrap();
                let dense = w.dequantize(&dev).unwrap();
                let x = Tensor::randn(0f32, 1.0, (7, cols), &dev).unwrap();
                let g = Tensor::randn(0f32, 1.0, (7, out), &dev).unwrap();
                let y = forward_plus(&w, &x, &[]).unwrap();
                let want = x.matmul(&dense.t().unwrap()).unwrap();
                assert!(max_diff(&y, &want) < 1e-3, "{dtype:?} {out}x{cols} forward");
                let dx = input_gradient_plus(&w, &g, &[]).unwrap();
                let want = g.matmul(&dense).unwrap();
                assert!(
                    max_diff(&dx, &want) < 1e-3,
                    "{dtype:?} {out}x{cols} gradient"
                );
            }
        }
    }
}
