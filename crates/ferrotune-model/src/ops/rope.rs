//! The rotary position embedding (transformers' `rotate_half` convention), and the
//! cos/sin tables that training and decoding both build from the same angles.
//!
//! Shapes: x, y (B, H, T, D), one D-vector per (batch row, head, position); cos, sin
//! (B, 1, T, D) for the model's ops, each row the D/2 angles' values repeated twice
//! (`[c, c]`); the tables of `rope_tables` (P, D/2) for P positions.
//!
//! * `inverse_frequencies`: the D/2 frequencies, with the config's rope scaling.
//! * `rope_tables`: cos and sin of `position * frequency`.
//! * `apply_rope`: the entry point; the fused kernel for f32 CPU tensors, else composed.
//! * `apply_rope_composed`: candle primitives (any device and dtype), candle's backward.
//! * `apply_rope_fused`: one parallel pass; the backward is the rotation by the opposite
//!   angle.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::custom_op::{rows_per_task, slice, with_data};
use super::fused_kernels_apply;
use crate::config::RopeScaling;

/// Rotary inverse frequencies (D/2 of them for `head_dim` D), computed in f32 as
/// transformers does, with the checkpoint's rope scaling.
pub fn inverse_frequencies(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let d = head_dim;
    let base = theta as f32;
    let inv: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / d as f32))
        .collect();
    match scaling {
        RopeScaling::Default => inv,
        RopeScaling::Linear { factor } => inv.iter().map(|f| f / *factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let (factor, low, high, old) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
                *original_max_position_embeddings as f32,
            );
            let low_freq_wavelen = old / low;
            let high_freq_wavelen = old / high;
            inv.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        f
                    };
                    let smooth = (old / wavelen - low) / (high - low);
                    let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                    let medium = (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen);
                    if medium {
                        smoothed
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

/// `cos(p f)` and `sin(p f)` for every position `p` of `positions` and frequency `f` of
/// `inv_freq`: two row-major tables of `positions.len()` rows of `inv_freq.len()` values.
/// The one place the angles are computed, for training's cos/sin tensors and the
/// decoding engine's rotation alike, so both rotate by the same bits.
pub fn rope_tables(inv_freq: &[f32], positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for f in inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

/// `[-x2, x1]` for `x = [x1, x2]` split in halves on the last dimension (HF's rotate_half).
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// Rotary embedding of `x` (batch, heads, seq, head_dim) with `cos`/`sin` of shape
/// (batch, 1, seq, head_dim).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused_kernels_apply(&[x, cos, sin]) {
        return apply_rope_fused(x, cos, sin);
    }
    apply_rope_composed(x, cos, sin)
}

/// `apply_rope` from candle ops, for every device and dtype.
pub fn apply_rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?
}

/// Rotary embedding (transformers' `rotate_half` convention) of `x` (batch, heads, seq,
/// head_dim) with `cos`/`sin` (batch, 1, seq, head_dim). The backward pass is the
/// rotation by the opposite angle.
pub fn apply_rope_fused(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, s, d) = x.dims4()?;
    if cos.dims() != [b, 1, s, d] || sin.dims() != [b, 1, s, d] || d % 2 != 0 {
        candle_core::bail!(
            "rope: cos {:?} and sin {:?} do not fit x {:?} (head_dim must be even)",
            cos.dims(),
            sin.dims(),
            x.dims()
        );
    }
    x.contiguous()?.apply_op1(Rope {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        heads: h,
        seq: s,
    })
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
    heads: usize,
    seq: usize,
}

impl Rope {
    /// `out = x cos + rotate_half(x) sin`, or with `inverse` the transposed map
    /// `out = x cos + rotate_half^T(x sin)`, the gradient of the former.
    fn apply(&self, x: &[f32], inverse: bool) -> Result<Vec<f32>> {
        let name = if inverse { "rope backward" } else { "rope" };
        with_data(&self.cos, name, |cos| {
            with_data(&self.sin, name, |sin| {
                let d = self.cos.dim(D::Minus1)?;
                let half = d / 2;
                let (heads, seq) = (self.heads, self.seq);
                let per = rows_per_task(d);
                let mut out = vec![0f32; x.len()];
                out.par_chunks_mut(per * d)
                    .zip(x.par_chunks(per * d))
                    .enumerate()
                    .for_each(|(task, (out, x))| {
                        for (i, (o, x)) in
                            out.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate()
                        {
                            let row = task * per + i;
                            let (bi, si) = (row / (heads * seq), row % seq);
                            let at = (bi * seq + si) * d;
                            let (c, s) = (&cos[at..at + d], &sin[at..at + d]);
                            let (o1, o2) = o.split_at_mut(half);
                            let (x1, x2) = x.split_at(half);
                            if inverse {
                                for j in 0..half {
                                    o1[j] = x1[j] * c[j] + x2[j] * s[half + j];
                                    o2[j] = x2[j] * c[half + j] + -x1[j] * s[j];
                                }
                            } else {
                                for j in 0..half {
                                    o1[j] = x1[j] * c[j] + -x2[j] * s[j];
                                    o2[j] = x2[j] * c[half + j] + x1[j] * s[half + j];
                                }
                            }
                        }
                    });
                Ok(out)
            })
        })
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = self.apply(slice(xs, xl, self.name())?, false)?;
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let dx = with_data(grad, "rope backward", |g| self.apply(g, true))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
