//! Fused CPU kernels for the element-wise chains of a training step, each one op with its
//! own backward pass, split over rows on rayon's pool.
//!
//! Composed from candle ops, RMSNorm, the rotary embedding, `silu(gate) * up` and the
//! cross-entropy make several passes over their tensors, each allocating a fresh tensor
//! (several of them kept for the backward pass), mostly on one thread while the other
//! waits. These make one pass forward and one backward. They cover f32 tensors on the CPU;
//! `crate::ops` and `crate::loss` keep the composed versions for other devices and dtypes.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, D,
};
use rayon::prelude::*;

use super::lanes::{
    all_written, dot, exp_neg, exp_shifted, exp_shifted_scaled, max_of, output_buffer, sigmoid,
    sum_exp, sum_of, written,
};
use crate::wide_where_available;

/// Elements per parallel task: below this, handing work to another thread costs more
/// than it saves.
const TASK_ELEMS: usize = 16 * 1024;

/// Whether the fused kernels apply: every tensor f32 and on the CPU.
pub fn applies(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Rows of `width` elements per parallel task.
fn rows_per_task(width: usize) -> usize {
    (TASK_ELEMS / width.max(1)).max(1)
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expects a contiguous tensor"),
    }
}

/// Runs `f` on the elements of a CPU f32 tensor, made contiguous first.
pub(crate) fn with_data<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout, op)?),
        _ => candle_core::bail!("{op}: expects a CPU tensor"),
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg("fused op state lock poisoned".into()))
}

/// `x * rsqrt(mean(x^2) + eps) * weight` over the last dimension of `x`, `weight` of
/// that length. Keeps one `rsqrt` per row for the backward pass, which gives the
/// gradients of `x` and of `weight` in one pass.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
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

/// Rotary embedding (transformers' `rotate_half` convention) of `x` (batch, heads, seq,
/// head_dim) with `cos`/`sin` (batch, 1, seq, head_dim). The backward pass is the
/// rotation by the opposite angle.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
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

/// `silu(gate) * up`, the SwiGLU activation; the backward pass gives the gradients of
/// `gate` and `up` in one pass.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!(
            "swiglu: gate {:?} and up {:?} differ in shape",
            gate.dims(),
            up.dims()
        );
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct SwiGlu;

wide_where_available! {
    /// `out = silu(g) * u`, every element written.
    fn swiglu_chunk(out: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            o.write(g * sigmoid(g) * u);
        }
    }
}

wide_where_available! {
    /// The gradients of `silu(g) * u` for the output's gradient `gr`, every element of
    /// `dg` and `du` written.
    fn swiglu_grad_chunk(
        dg: &mut [MaybeUninit<f32>],
        du: &mut [MaybeUninit<f32>],
        g: &[f32],
        u: &[f32],
        gr: &[f32],
    ) {
        for ((((dg, du), &g), &u), &gr) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(gr) {
            let s = sigmoid(g);
            du.write(gr * g * s);
            // silu'(g) = s (1 + g (1 - s))
            dg.write(gr * u * s * (1.0 + g * (1.0 - s)));
        }
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = slice(gs, gl, self.name())?;
        let u = slice(us, ul, self.name())?;
        let mut out = output_buffer(g.len());
        out.par_chunks_mut(TASK_ELEMS)
            .zip(g.par_chunks(TASK_ELEMS))
            .zip(u.par_chunks(TASK_ELEMS))
            .for_each(|((o, g), u)| swiglu_chunk(o, g, u));
        // SAFETY: the chunks cover `out`, and each element was written above.
        let out = unsafe { all_written(out) };
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_g, want_u) = (gate.track_op(), up.track_op());
        if !want_g && !want_u {
            return Ok((None, None));
        }
        let name = self.name();
        let (dg, du) = with_data(gate, name, |g| {
            with_data(up, name, |u| {
                with_data(grad, name, |gr| {
                    let mut dg = output_buffer(g.len());
                    let mut du = output_buffer(g.len());
                    dg.par_chunks_mut(TASK_ELEMS)
                        .zip(du.par_chunks_mut(TASK_ELEMS))
                        .zip(g.par_chunks(TASK_ELEMS))
                        .zip(u.par_chunks(TASK_ELEMS))
                        .zip(gr.par_chunks(TASK_ELEMS))
                        .for_each(|((((dg, du), g), u), gr)| swiglu_grad_chunk(dg, du, g, u, gr));
                    // SAFETY: the chunks cover both buffers, every element written above.
                    Ok(unsafe { (all_written(dg), all_written(du)) })
                })
            })
        })?;
        let dg = if want_g {
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?)
        } else {
            None
        };
        let du = if want_u {
            Some(Tensor::from_vec(du, up.shape(), up.device())?)
        } else {
            None
        };
        Ok((dg, du))
    }
}

/// Per-row cross-entropy of `logits` (rows x vocab) against `targets` (each < vocab),
/// scaled by `coef`: the values and the log-sum-exp of each row, in one parallel pass.
pub(crate) fn cross_entropy_forward(
    logits: &[f32],
    vocab: usize,
    targets: &[i64],
    coef: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let rows = targets.len();
    let per = rows_per_task(vocab);
    let mut value = vec![0f32; rows];
    let mut lse = vec![0f32; rows];
    value
        .par_chunks_mut(per)
        .zip(lse.par_chunks_mut(per))
        .zip(logits.par_chunks(per * vocab))
        .zip(targets.par_chunks(per).zip(coef.par_chunks(per)))
        .for_each(|(((value, lse), x), (t, c))| {
            for ((((v, l), x), &t), &c) in value
                .iter_mut()
                .zip(lse.iter_mut())
                .zip(x.chunks_exact(vocab))
                .zip(t)
                .zip(c)
            {
                let max = max_of(x);
                let sum = sum_exp(x, max);
                *l = sum.ln() + max;
                *v = (*l - x[t as usize]) * c;
            }
        });
    (value, lse)
}

/// A running log-sum-exp per row over blocks of vocabulary columns: `max` and `sum`
/// (of `exp(logit - max)`) so far, updated with the block `logits` (rows x width) of the
/// columns `first..first + width`; `picked` receives each row's target logit when it
/// falls in the block. Start from `max` -inf and `sum` 0; the log-sum-exp is then
/// `max + ln(sum)`.
pub(crate) fn log_sum_exp_block(
    logits: &[f32],
    width: usize,
    first: usize,
    targets: &[i64],
    max: &mut [f32],
    sum: &mut [f32],
    picked: &mut [f32],
) {
    let per = rows_per_task(width);
    max.par_chunks_mut(per)
        .zip(sum.par_chunks_mut(per))
        .zip(picked.par_chunks_mut(per))
        .zip(logits.par_chunks(per * width).zip(targets.par_chunks(per)))
        .for_each(|(((max, sum), picked), (x, t))| {
            for ((((m, s), p), x), &t) in max
                .iter_mut()
                .zip(sum.iter_mut())
                .zip(picked.iter_mut())
                .zip(x.chunks_exact(width))
                .zip(t)
            {
                let new_max = m.max(max_of(x));
                let block_sum = sum_exp(x, new_max);
                // The sum so far, rescaled to the new maximum (exp(-inf) = 0 at the start).
                *s = *s * (*m - new_max).exp() + block_sum;
                *m = new_max;
                if let Some(t) = (t as usize).checked_sub(first).filter(|&t| t < width) {
                    *p = x[t];
                }
            }
        });
}

/// The gradient of `cross_entropy_forward` with respect to the logits,
/// `(softmax - one_hot(target)) * scale`, in one parallel pass, for the columns
/// `first..first + width` of the vocabulary (`logits` rows x width; all of it when
/// `first` is 0 and `width` the vocabulary).
pub(crate) fn cross_entropy_backward(
    logits: &[f32],
    width: usize,
    first: usize,
    targets: &[i64],
    lse: &[f32],
    scale: &[f32],
) -> Vec<f32> {
    let per = rows_per_task(width);
    let mut out = vec![0f32; logits.len()];
    out.par_chunks_mut(per * width)
        .zip(logits.par_chunks(per * width))
        .zip(targets.par_chunks(per))
        .zip(lse.par_chunks(per).zip(scale.par_chunks(per)))
        .for_each(|(((out, x), t), (lse, scale))| {
            for ((((o, x), &t), &l), &k) in out
                .chunks_exact_mut(width)
                .zip(x.chunks_exact(width))
                .zip(t)
                .zip(lse)
                .zip(scale)
            {
                // Unsupervised rows (weight 0) keep the zeros they start with.
                if k == 0.0 {
                    continue;
                }
                exp_shifted_scaled(o, x, l, k);
                if let Some(t) = (t as usize).checked_sub(first).filter(|&t| t < width) {
                    o[t] = (exp_neg(x[t] - l) - 1.0) * k;
                }
            }
        });
    out
}

/// The attention probabilities `softmax(raw * scale + bias)` over the last dimension of
/// `raw` (b, h, s, t), `bias` (b, 1, s, t), in one parallel pass, with the log-sum-exp
/// of each row (b, h, s, 1). With `lse` given (the backward pass), the probabilities are
/// `exp(raw * scale + bias - lse)` and the same `lse` is handed back.
pub(crate) fn attention_probs(
    raw: &Tensor,
    bias: &Tensor,
    scale: f64,
    lse: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (b, h, s, t) = raw.dims4()?;
    if bias.dims() != [b, 1, s, t] {
        candle_core::bail!(
            "attention: bias {:?} does not fit scores {:?}",
            bias.dims(),
            raw.dims()
        );
    }
    let scale = scale as f32;
    let name = "fused attention softmax";
    let (p, lse_out) = with_data(raw, name, |x| {
        with_data(bias, name, |bias| {
            let given = match lse {
                Some(l) => Some(with_data(l, name, |l| Ok(l.to_vec()))?),
                None => None,
            };
            let rows = b * h * s;
            let per = rows_per_task(t);
            let mut p = output_buffer(rows * t);
            let mut lse_out = given.clone().unwrap_or_else(|| vec![0f32; rows]);
            p.par_chunks_mut(per * t)
                .zip(x.par_chunks(per * t))
                .zip(lse_out.par_chunks_mut(per))
                .enumerate()
                .for_each(|(task, ((p, x), lse))| {
                    for (i, ((p, x), l)) in p
                        .chunks_exact_mut(t)
                        .zip(x.chunks_exact(t))
                        .zip(lse.iter_mut())
                        .enumerate()
                    {
                        let row = task * per + i;
                        let (bi, si) = (row / (h * s), row % s);
                        let bias = &bias[(bi * s + si) * t..(bi * s + si + 1) * t];
                        for ((p, &x), &bias) in p.iter_mut().zip(x).zip(bias) {
                            p.write(x * scale + bias);
                        }
                        // SAFETY: the loop above wrote every element of the row.
                        let p = unsafe { written(p) };
                        if given.is_some() {
                            exp_shifted(p, *l);
                            continue;
                        }
                        let max = max_of(p);
                        exp_shifted(p, max);
                        let sum = sum_of(p);
                        let inv = 1.0 / sum;
                        for p in p.iter_mut() {
                            *p *= inv;
                        }
                        *l = max + sum.ln();
                    }
                });
            // SAFETY: the rows cover `p`, each written in full above.
            Ok((unsafe { all_written(p) }, lse_out))
        })
    })?;
    let device = raw.device();
    Ok((
        Tensor::from_vec(p, (b, h, s, t), device)?,
        Tensor::from_vec(lse_out, (b, h, s, 1), device)?,
    ))
}

/// The gradient of the attention scores before scaling, `p * (dp - rowsum(g * o)) *
/// scale`, from the probabilities `p` and their gradient `dp` (b, h, s, t) and the
/// row sums `row` (b, h, s, 1), in one parallel pass.
pub(crate) fn attention_score_grad(
    p: &Tensor,
    dp: &Tensor,
    row: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let t = p.dim(D::Minus1)?;
    let scale = scale as f32;
    let name = "fused attention backward";
    let ds = with_data(p, name, |p| {
        with_data(dp, name, |dp| {
            with_data(row, name, |row| {
                let per = rows_per_task(t);
                let mut ds = output_buffer(p.len());
                ds.par_chunks_mut(per * t)
                    .zip(p.par_chunks(per * t).zip(dp.par_chunks(per * t)))
                    .zip(row.par_chunks(per))
                    .for_each(|((ds, (p, dp)), row)| {
                        for (((ds, p), dp), &r) in ds
                            .chunks_exact_mut(t)
                            .zip(p.chunks_exact(t))
                            .zip(dp.chunks_exact(t))
                            .zip(row)
                        {
                            for ((ds, &p), &dp) in ds.iter_mut().zip(p).zip(dp) {
                                ds.write(p * (dp - r) * scale);
                            }
                        }
                    });
                // SAFETY: the rows cover `ds`, every element written above.
                Ok(unsafe { all_written(ds) })
            })
        })
    })?;
    Tensor::from_vec(ds, p.shape(), p.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `lanes::tests::the_avx512_builds_give_the_baseline_bits`, for SwiGLU's loops.
    #[test]
    fn the_avx512_swiglu_builds_give_the_baseline_bits() {
        let x: Vec<f32> = (0..1001)
            .map(|i| ((i * 37 % 401) as f32 - 200.0) * 0.07)
            .collect();
        let u: Vec<f32> = x.iter().map(|v| v * 0.5 - 1.0).collect();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();

        let written_all = |f: &dyn Fn(&mut [MaybeUninit<f32>])| {
            let mut v = output_buffer(x.len());
            f(&mut v);
            // SAFETY: every function under test writes its whole output.
            unsafe { all_written(v) }
        };
        let a = written_all(&|o| swiglu_chunk(o, &x, &u));
        let b = written_all(&|o| swiglu_chunk::body(o, &x, &u));
        assert_eq!(bits(&a), bits(&b));

        let grads = |wide: bool| {
            let (mut dg, mut du) = (output_buffer(x.len()), output_buffer(x.len()));
            if wide {
                swiglu_grad_chunk(&mut dg, &mut du, &x, &u, &u);
            } else {
                swiglu_grad_chunk::body(&mut dg, &mut du, &x, &u, &u);
            }
            // SAFETY: both gradients are written in full.
            unsafe { (all_written(dg), all_written(du)) }
        };
        let ((dga, dua), (dgb, dub)) = (grads(true), grads(false));
        assert_eq!(bits(&dga), bits(&dgb));
        assert_eq!(bits(&dua), bits(&dub));
    }
}
