//! Scaled dot-product attention for training, with grouped-query heads.
//!
//! Shapes: q (B, H, T, D); k, v (B, H, S, D) after `repeat_kv` from (B, KV, S, D), S the
//! keys (T plus any cached positions); bias (B, 1, T, S), additive (0 or f32::MIN, from
//! `mask::attention_bias`); p (B, H, T, S) the probabilities, recomputed in the backward
//! pass; lse (B, H, T, 1) the row-wise log-sum-exp kept for it; out (B, H, T, D).
//!
//! * `attention`: the entry point; fused softmax passes for f32 CPU tensors.
//! * `attention_composed`: candle primitives alone (any device and dtype).
//! * `AttentionOp`: the backward of both, recomputing `p` from `lse`.
//! * `attention_probs`, `attention_score_grad`: the fused CPU softmax and its gradient.
//!
//! Decoding attends over its key/value cache with its own kernel (`infer::attention`),
//! from the same mask rule (`mask::visible_keys`).

use std::sync::Mutex;

use candle_core::{CustomOp3, Result, Tensor, D};
use rayon::prelude::*;

use super::custom_op::{precomputed_forward, rows_per_task, with_data};
use super::fused_kernels_apply;
use super::gemm;
use super::lanes::{all_written, exp_shifted, max_of, output_buffer, sum_of, written};

/// Repeats key/value heads for grouped-query attention: (b, kv, s, d) -> (b, kv*n, s, d).
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, s, d))?
        .reshape((b, kv * n_rep, s, d))
}

/// Scaled dot-product attention `softmax(q k^T * scale + bias) v` that keeps no
/// (seq x seq) tensor for the backward pass: the forward keeps only its output and the
/// row-wise log-sum-exp, and the backward recomputes the probabilities (the memory-saving
/// idea of FlashAttention, without its tiling). `q` (b, h, s, d), `k` and `v` (b, h, t, d),
/// `bias` (b, 1, s, t) additive.
///
/// f32 CPU tensors compute the softmax (and its gradient) in fused parallel passes
/// (`attention_probs`, `attention_score_grad`).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let fused = fused_kernels_apply(&[q, k, v, bias]);
    attention_with(q, k, v, bias, scale, fused)
}

/// `attention` from candle ops alone, for every device and dtype.
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    attention_with(q, k, v, bias, scale, false)
}

fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
    fused: bool,
) -> Result<Tensor> {
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let raw = gemm::matmul(&qd, &kd.t()?)?;
    let (out, lse) = if fused {
        let (p, lse) = attention_probs(&raw, bias, scale, None)?;
        (gemm::matmul(&p, &vd)?, lse)
    } else {
        let scores = raw.affine(scale, 0.0)?.broadcast_add(bias)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let exp = scores.broadcast_sub(&max)?.exp()?;
        let sum = exp.sum_keepdim(D::Minus1)?;
        let out = gemm::matmul(&exp, &vd)?.broadcast_div(&sum)?;
        (out, (max + sum.log()?)?)
    };
    drop(raw);
    q.apply_op3(
        k,
        v,
        AttentionOp {
            bias: bias.clone(),
            scale,
            lse,
            fused,
            value: Mutex::new(Some(out.contiguous()?)),
        },
    )
}

struct AttentionOp {
    bias: Tensor,
    scale: f64,
    /// log(sum(exp(scores))) per query row, (b, h, s, 1).
    lse: Tensor,
    /// Whether the backward pass takes the fused kernels, as the forward did.
    fused: bool,
    value: Mutex<Option<Tensor>>,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention"
    }

    precomputed_forward!();

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, o, g) = (
            q.detach(),
            k.detach(),
            v.detach(),
            out.detach(),
            grad.detach(),
        );
        if self.fused {
            let raw = gemm::matmul(&q, &k.t()?)?;
            let (p, _) = attention_probs(&raw, &self.bias, self.scale, Some(&self.lse))?;
            drop(raw);
            let dv = gemm::matmul(&p.t()?, &g)?;
            let dp = gemm::matmul(&g, &v.t()?)?;
            let row = (&g * &o)?.sum_keepdim(D::Minus1)?;
            let ds = attention_score_grad(&p, &dp, &row, self.scale)?;
            let dq = gemm::matmul(&ds, &k)?;
            let dk = gemm::matmul(&ds.t()?, &q)?;
            return Ok((Some(dq), Some(dk), Some(dv)));
        }
        let scores = q
            .matmul(&k.t()?)?
            .affine(self.scale, 0.0)?
            .broadcast_add(&self.bias)?;
        let p = scores.broadcast_sub(&self.lse)?.exp()?;
        let dv = gemm::matmul(&p.t()?, &g)?;
        let dp = gemm::matmul(&g, &v.t()?)?;
        let row = (&g * &o)?.sum_keepdim(D::Minus1)?;
        let ds = (p * dp.broadcast_sub(&row)?)?;
        let dq = gemm::matmul(&ds, &k)?.affine(self.scale, 0.0)?;
        let dk = gemm::matmul(&ds.t()?, &q)?.affine(self.scale, 0.0)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The attention probabilities `softmax(raw * scale + bias)` over the last dimension of
/// `raw` (b, h, s, t), `bias` (b, 1, s, t), in one parallel pass, with the log-sum-exp
/// of each row (b, h, s, 1). With `lse` given (the backward pass), the probabilities are
/// `exp(raw * scale + bias - lse)` and the same `lse` is handed back.
fn attention_probs(
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
fn attention_score_grad(p: &Tensor, dp: &Tensor, row: &Tensor, scale: f64) -> Result<Tensor> {
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
