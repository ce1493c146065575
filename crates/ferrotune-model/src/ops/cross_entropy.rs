//! The cross-entropy of logits against target tokens, per row and weighted, and the same
//! fused with the output head (`linear_cross_entropy`) so that the logits of a large
//! vocabulary never exist whole.
//!
//! Shapes: logits (N, V), N rows (tokens) over a vocabulary of V; targets (N) i64, each
//! < V; coef (N) f32, each row's weight (0 for an ignored row); the value (N), each row's
//! `coef * (logsumexp(logits) - logits[target])`; lse (N), kept for the backward pass.
//! For `linear_cross_entropy`: x (N, H) the final hidden states, W (V, H) the head.
//!
//! * `cross_entropy`: the entry point; the fused kernel for f32 CPU logits.
//! * `cross_entropy_composed`: candle primitives (any device), with its own backward
//!   `(softmax - one_hot) * coef`.
//! * `cross_entropy_fused`: one parallel pass forward and one backward
//!   (`cross_entropy_forward`, `cross_entropy_backward`).
//! * `linear_cross_entropy`: head product and cross-entropy in blocks, with its backward.
//!
//! Composed from candle ops, the log-softmax would keep several (N, V) tensors alive for
//! the backward pass; these ops keep only a log-sum-exp per row.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::custom_op::{cpu_storage, rows_per_task, take, with_data};
use super::fused_kernels_apply;
use super::gemm;
use super::lanes::{exp_neg, exp_shifted_scaled, max_of, sum_exp};
use super::linear::FrozenWeight;

/// Per-row `coef * (logsumexp(logits) - logits[target])`, (rows,), for `logits` (rows,
/// vocab), `targets` (rows,) i64 and `coef` (rows,).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, coef: &Tensor) -> Result<Tensor> {
    if fused_kernels_apply(&[logits, coef]) {
        return cross_entropy_fused(logits, targets, coef);
    }
    cross_entropy_composed(logits, targets, coef)
}

/// `cross_entropy` on the CPU: one parallel pass over the logits forward (the values and
/// a log-sum-exp per row) and one backward.
pub fn cross_entropy_fused(logits: &Tensor, targets: &Tensor, coef: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    let (targets, coef) = target_vecs(targets, coef, rows, vocab)?;
    logits.contiguous()?.apply_op1(FusedCrossEntropy {
        targets,
        coef,
        lse: Mutex::new(None),
    })
}

struct FusedCrossEntropy {
    targets: Vec<i64>,
    coef: Vec<f32>,
    /// Log-sum-exp per row, from the forward pass.
    lse: Mutex<Option<Vec<f32>>>,
}

impl CustomOp1 for FusedCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l.shape().dims2()?;
        let x = match l.contiguous_offsets() {
            Some((start, end)) => &s.as_slice::<f32>()?[start..end],
            None => candle_core::bail!("cross-entropy: expects contiguous logits"),
        };
        let (value, lse) = cross_entropy_forward(x, vocab, &self.targets, &self.coef);
        *self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("cross-entropy lock poisoned".into()))? =
            Some(lse);
        Ok((CpuStorage::F32(value), Shape::from(rows)))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let scale: Vec<f32> = grad
            .to_vec1::<f32>()?
            .iter()
            .zip(&self.coef)
            .map(|(g, c)| g * c)
            .collect();
        let lse = self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("cross-entropy lock poisoned".into()))?;
        let lse = lse.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("cross-entropy: backward before forward".into())
        })?;
        let (_, vocab) = logits.dims2()?;
        let dx = with_data(logits, self.name(), |x| {
            Ok(cross_entropy_backward(
                x,
                vocab,
                0,
                &self.targets,
                lse,
                &scale,
            ))
        })?;
        Ok(Some(Tensor::from_vec(dx, logits.shape(), logits.device())?))
    }
}

/// `cross_entropy` from candle ops, for every device.
pub fn cross_entropy_composed(logits: &Tensor, targets: &Tensor, coef: &Tensor) -> Result<Tensor> {
    let x = logits.detach();
    let max = x.max_keepdim(D::Minus1)?;
    let lse = (x
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?;
    let picked = x.gather(&targets.unsqueeze(1)?, 1)?;
    let value = ((lse.clone() - picked)?.squeeze(1)? * coef)?.contiguous()?;
    logits.apply_op1(CrossEntropyOp {
        targets: targets.clone(),
        coef: coef.clone(),
        lse,
        value: Mutex::new(Some(value)),
    })
}

struct CrossEntropyOp {
    targets: Tensor,
    coef: Tensor,
    /// (rows, 1)
    lse: Tensor,
    value: Mutex<Option<Tensor>>,
}

impl CustomOp1 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_storage(&take(&self.value)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::custom_op::cuda_storage(&take(&self.value)?)
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let x = logits.detach();
        let (rows, _) = x.dims2()?;
        let softmax = x.broadcast_sub(&self.lse)?.exp()?;
        let one = Tensor::ones((rows, 1), DType::F32, x.device())?;
        let one_hot = softmax
            .zeros_like()?
            .scatter_add(&self.targets.unsqueeze(1)?, &one, 1)?;
        let scale = (grad.detach() * &self.coef)?.unsqueeze(1)?;
        Ok(Some((softmax - one_hot)?.broadcast_mul(&scale)?))
    }
}

/// Per-row cross-entropy of `logits` (rows x vocab) against `targets` (each < vocab),
/// scaled by `coef`: the values and the log-sum-exp of each row, in one parallel pass.
fn cross_entropy_forward(
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
fn log_sum_exp_block(
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
fn cross_entropy_backward(
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

/// Per-row cross-entropy of the logits `x W^T`, `x` (rows, h), `w` (vocab, h), in blocks
/// of at most `budget` logits (see `causal_lm_loss_chunked`).
///
/// With `train`, a tracked `x` and a frozen `w` (LoRA, freeze tuning), the blocks are
/// rows with all their logits instead, and each block's gradient for `x` is computed at
/// once (`linear_cross_entropy_frozen_head`): the backward pass then needs no head
/// product at all, one fewer than recomputing the logits.
pub fn linear_cross_entropy(
    x: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    coef: &Tensor,
    budget: usize,
    train: bool,
) -> Result<Tensor> {
    let (rows, h) = x.dims2()?;
    let (vocab, h2) = w.dims2()?;
    if h != h2 || !fused_kernels_apply(&[x, w]) {
        candle_core::bail!(
            "linear cross-entropy: f32 CPU x {:?} and weight {:?} expected",
            x.dims(),
            w.dims()
        );
    }
    let (targets, coef) = target_vecs(targets, coef, rows, vocab)?;
    if train && x.track_op() && !w.track_op() {
        let w = FrozenWeight::Dense(w.detach());
        return linear_cross_entropy_frozen_head(x, &w, &targets, &coef, budget, true);
    }
    let (xd, wd) = (x.detach(), w.detach());
    // Blocks of vocabulary columns (all rows), so that each product reads `W` once.
    let block = (budget / rows.max(1)).max(1);
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    let mut picked = vec![0f32; rows];
    for v0 in (0..vocab).step_by(block) {
        let n = block.min(vocab - v0);
        let logits = gemm::matmul(&xd, &wd.narrow(0, v0, n)?.t()?)?;
        with_data(&logits, "linear cross-entropy", |lg| {
            log_sum_exp_block(lg, n, v0, &targets, &mut max, &mut sum, &mut picked);
            Ok(())
        })?;
    }
    let lse: Vec<f32> = max.iter().zip(&sum).map(|(m, s)| s.ln() + m).collect();
    let value: Vec<f32> = lse
        .iter()
        .zip(&picked)
        .zip(&coef)
        .map(|((l, p), c)| (l - p) * c)
        .collect();
    let value = Tensor::from_vec(value, rows, x.device())?;
    x.apply_op2(
        w,
        LinearCrossEntropy {
            targets,
            coef,
            lse,
            budget,
            value: Mutex::new(Some(value)),
        },
    )
}

/// `linear_cross_entropy` for a frozen head in any storage type ([`FrozenWeight`]: a
/// tensor, or a weight held as bf16 or GGUF blocks): the frozen-head path below when
/// `x` needs a gradient (always for a stored head, whose products have no other
/// backward), the value alone when it does not.
pub fn linear_cross_entropy_frozen(
    x: &Tensor,
    w: &FrozenWeight,
    targets: &Tensor,
    coef: &Tensor,
    budget: usize,
    train: bool,
) -> Result<Tensor> {
    let stored = match w {
        FrozenWeight::Dense(t) => {
            return linear_cross_entropy(x, &t.detach(), targets, coef, budget, train)
        }
        FrozenWeight::Stored(s) => s,
    };
    let (rows, h) = x.dims2()?;
    let (vocab, h2) = stored.dims();
    if h != h2 || !fused_kernels_apply(&[x]) {
        candle_core::bail!(
            "linear cross-entropy: f32 CPU x {:?} and a ({vocab}, {h2}) weight expected",
            x.dims()
        );
    }
    let (targets, coef) = target_vecs(targets, coef, rows, vocab)?;
    linear_cross_entropy_frozen_head(x, w, &targets, &coef, budget, x.track_op())
}

/// `linear_cross_entropy` with a frozen head: blocks of whole rows of logits, each
/// giving its rows' values, log-sum-exp and (`with_grad`), at once, the gradient
/// `((softmax - one_hot) * coef) W` of those rows of `x` for an incoming gradient of 1.
/// The backward pass scales each stored row by its incoming gradient: exact for any
/// incoming gradient, since row r of the input's gradient depends on row r alone.
fn linear_cross_entropy_frozen_head(
    x: &Tensor,
    w: &FrozenWeight,
    targets: &[i64],
    coef: &[f32],
    budget: usize,
    with_grad: bool,
) -> Result<Tensor> {
    let (rows, _) = x.dims2()?;
    let (vocab, _) = w.dims()?;
    let xd = x.detach();
    let block = (budget / vocab.max(1)).max(1);
    let mut value = Vec::with_capacity(rows);
    let mut dx = Vec::with_capacity(rows.div_ceil(block));
    for r0 in (0..rows).step_by(block) {
        let n = block.min(rows - r0);
        let (t, c) = (&targets[r0..r0 + n], &coef[r0..r0 + n]);
        let logits = w.forward(&xd.narrow(0, r0, n)?)?;
        let d = with_data(&logits, "linear cross-entropy", |lg| {
            let (v, lse) = cross_entropy_forward(lg, vocab, t, c);
            value.extend_from_slice(&v);
            Ok(with_grad.then(|| cross_entropy_backward(lg, vocab, 0, t, &lse, c)))
        })?;
        drop(logits);
        if let Some(d) = d {
            let d = Tensor::from_vec(d, (n, vocab), xd.device())?;
            dx.push(w.input_gradient(&d)?);
        }
    }
    let value = Tensor::from_vec(value, rows, x.device())?;
    if !with_grad {
        return Ok(value);
    }
    x.apply_op1(FrozenHeadCrossEntropy {
        dx: Tensor::cat(&dx, 0)?,
        value: Mutex::new(Some(value)),
    })
}

struct FrozenHeadCrossEntropy {
    /// The input's gradient for an incoming gradient of 1 on every row, (rows, h).
    dx: Tensor,
    value: Mutex<Option<Tensor>>,
}

impl CustomOp1 for FrozenHeadCrossEntropy {
    fn name(&self) -> &'static str {
        "frozen-head-cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_storage(&take(&self.value)?)
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.dx.broadcast_mul(&grad.detach().unsqueeze(1)?)?))
    }
}

struct LinearCrossEntropy {
    targets: Vec<i64>,
    coef: Vec<f32>,
    /// Log-sum-exp of each row's logits.
    lse: Vec<f32>,
    budget: usize,
    value: Mutex<Option<Tensor>>,
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_storage(&take(&self.value)?)
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
        let scale: Vec<f32> = grad
            .to_vec1::<f32>()?
            .iter()
            .zip(&self.coef)
            .map(|(g, c)| g * c)
            .collect();
        let (xd, wd) = (x.detach(), w.detach());
        let (rows, h) = xd.dims2()?;
        let (vocab, _) = wd.dims2()?;
        let block = (self.budget / rows.max(1)).max(1);
        let mut dx: Option<Tensor> = None;
        let mut dw = vec![0f32; if want_w { vocab * h } else { 0 }];
        for v0 in (0..vocab).step_by(block) {
            let n = block.min(vocab - v0);
            let w_block = wd.narrow(0, v0, n)?;
            let logits = gemm::matmul(&xd, &w_block.t()?)?;
            let d = with_data(&logits, self.name(), |lg| {
                Ok(cross_entropy_backward(
                    lg,
                    n,
                    v0,
                    &self.targets,
                    &self.lse,
                    &scale,
                ))
            })?;
            drop(logits);
            let d = Tensor::from_vec(d, (rows, n), xd.device())?;
            if want_w {
                let part = gemm::matmul(&d.t()?, &xd)?;
                with_data(&part, self.name(), |p| {
                    dw[v0 * h..(v0 + n) * h].copy_from_slice(p);
                    Ok(())
                })?;
            }
            if want_x {
                let part = gemm::matmul(&d, &w_block)?;
                dx = Some(match dx {
                    Some(acc) => (acc + part)?,
                    None => part,
                });
            }
        }
        let dw = if want_w {
            Some(Tensor::from_vec(dw, (vocab, h), wd.device())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// Targets and weights of `rows` rows as vectors, the targets checked against `vocab`.
fn target_vecs(
    targets: &Tensor,
    coef: &Tensor,
    rows: usize,
    vocab: usize,
) -> Result<(Vec<i64>, Vec<f32>)> {
    let targets = targets.to_vec1::<i64>()?;
    let coef = coef.to_vec1::<f32>()?;
    if targets.len() != rows || coef.len() != rows {
        candle_core::bail!(
            "cross-entropy: {rows} rows of logits, {} targets, {} weights",
            targets.len(),
            coef.len()
        );
    }
    if let Some(t) = targets.iter().find(|&&t| t < 0 || t as usize >= vocab) {
        candle_core::bail!("cross-entropy: target {t} outside the vocabulary of {vocab}");
    }
    Ok((targets, coef))
}
