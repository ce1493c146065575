//! RMSNorm, `y = x * rsqrt(mean(x^2) + eps) * w`, over the last dimension.
//!
//! Shapes: x, y (..., D) with R rows of D features; w (D); rstd (R), kept from the
//! forward pass for the backward.
//!
//! * `rms_norm`: the entry point; the fused kernel for f32 CPU tensors, else composed.
//! * `rms_norm_composed`: candle primitives (any device and dtype), candle's backward.
//! * `rms_norm_fused`: one parallel pass forward, and one backward giving dx and dw.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::custom_op::{lock, rows_per_task, slice, with_data};
use super::fused_kernels_apply;
use super::lanes::dot;

/// `x * rsqrt(mean(x^2) + eps) * weight`, in f32 as transformers computes it.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_kernels_apply(&[x, weight]) {
        return rms_norm_fused(x, weight, eps);
    }
    rms_norm_composed(x, weight, eps)
}

/// `rms_norm` from candle ops, for every device and dtype.
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let variance = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x32.broadcast_mul(&(variance + eps)?.sqrt()?.recip()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// `x * rsqrt(mean(x^2) + eps) * weight` over the last dimension of `x`, `weight` of
/// that length. Keeps one `rsqrt` per row for the backward pass, which gives the
/// gradients of `x` and of `weight` in one pass.
pub fn rms_norm_fused(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if d == 0 || weight.dims() != [d] {
        candle_core::bail!(
            "rms_norm: weight of shape {:?} for rows of {d} features",
            weight.dims()
        );
    }
    x.contiguous()?.apply_op2(
        &weight.contiguous()?,
        RmsNorm {
            eps: eps as f32,
            rstd: Mutex::new(None),
        },
    )
}

struct RmsNorm {
    eps: f32,
    /// `rsqrt(mean(x^2) + eps)` per row, from the forward pass.
    rstd: Mutex<Option<Vec<f32>>>,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(xs, xl, self.name())?;
        let w = slice(ws, wl, self.name())?;
        let d = w.len();
        let rows = x.len() / d;
        let per = rows_per_task(d);
        let mut y = vec![0f32; x.len()];
        let mut rstd = vec![0f32; rows];
        y.par_chunks_mut(per * d)
            .zip(rstd.par_chunks_mut(per))
            .zip(x.par_chunks(per * d))
            .for_each(|((y, r), x)| {
                for ((y, r), x) in y.chunks_exact_mut(d).zip(r).zip(x.chunks_exact(d)) {
                    let s = 1.0 / (dot(x, x) / d as f32 + self.eps).sqrt();
                    *r = s;
                    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                        *y = x * s * w;
                    }
                }
            });
        *lock(&self.rstd)? = Some(rstd);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_w) = (x.track_op(), w.track_op());
        if !want_x && !want_w {
            return Ok((None, None));
        }
        let rstd = lock(&self.rstd)?;
        let rstd = rstd
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("rms_norm: backward before forward".into()))?;
        let name = self.name();
        let (dx, dw) = with_data(x, name, |xv| {
            with_data(w, name, |wv| {
                with_data(grad, name, |gv| {
                    let d = wv.len();
                    let per = rows_per_task(d);
                    let mut dx = vec![0f32; if want_x { xv.len() } else { 0 }];
                    // Each task returns its rows' share of the weight gradient.
                    let rows = |dx: &mut [f32], x: &[f32], g: &[f32], r: &[f32]| {
                        let mut dw = vec![0f32; if want_w { d } else { 0 }];
                        for (i, (x, g)) in x.chunks_exact(d).zip(g.chunks_exact(d)).enumerate() {
                            let s = r[i];
                            if want_x {
                                // d/dx of x * s(x) * w: s * (g w - x s^2 mean(g w x)).
                                let gwx: f32 =
                                    g.iter().zip(wv).zip(x).map(|((g, w), x)| g * w * x).sum();
                                let c = gwx * s / d as f32;
                                let dx = &mut dx[i * d..(i + 1) * d];
                                for (((dx, &g), &w), &x) in dx.iter_mut().zip(g).zip(wv).zip(x) {
                                    *dx = s * (g * w - x * s * c);
                                }
                            }
                            if want_w {
                                for ((dw, &g), &x) in dw.iter_mut().zip(g).zip(x) {
                                    *dw += g * x * s;
                                }
                            }
                        }
                        dw
                    };
                    let sum = |mut a: Vec<f32>, b: Vec<f32>| {
                        if a.is_empty() {
                            return b;
                        }
                        for (a, b) in a.iter_mut().zip(&b) {
                            *a += b;
                        }
                        a
                    };
                    let tasks = xv
                        .par_chunks(per * d)
                        .zip(gv.par_chunks(per * d))
                        .zip(rstd.par_chunks(per));
                    let dw = if want_x {
                        dx.par_chunks_mut(per * d)
                            .zip(tasks)
                            .map(|(dx, ((x, g), r))| rows(dx, x, g, r))
                            .reduce(Vec::new, sum)
                    } else {
                        tasks
                            .map(|((x, g), r)| rows(&mut [], x, g, r))
                            .reduce(Vec::new, sum)
                    };
                    Ok((dx, dw))
                })
            })
        })?;
        let dx = if want_x {
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        let dw = if want_w {
            Some(Tensor::from_vec(dw, w.shape(), w.device())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}
