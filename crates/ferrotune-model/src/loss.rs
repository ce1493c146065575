//! Causal-LM cross-entropy with an ignore index and optional per-token weights.
//!
//! Returns the *summed* loss and the number of supervised targets, so the trainer can
//! normalise over a whole gradient-accumulation window (the loss then does not change
//! with the accumulation setting).
//!
//! The cross-entropy is one op with its own backward pass: composed from candle ops, the
//! log-softmax would keep several (tokens x vocabulary) tensors alive for the backward
//! pass; this op keeps only a log-sum-exp per token and computes
//! `(softmax - one_hot) * weight` when the gradient is asked for.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

use crate::batch::IGNORE_INDEX;
use crate::ops::{cpu_storage, fused, gemm, take};

#[derive(Debug, Clone)]
pub struct LossSum {
    /// Scalar: sum over supervised targets of weight * cross-entropy.
    pub sum: Tensor,
    /// Number of supervised targets.
    pub tokens: usize,
}

impl LossSum {
    /// Mean over the supervised targets (the usual loss of one batch).
    pub fn mean(&self) -> Result<Tensor> {
        self.sum.affine(1.0 / self.tokens.max(1) as f64, 0.0)
    }
}

/// `logits` (batch, seq, vocab); `targets` (batch, seq) i64 already shifted (see
/// `Batch::targets`); `weights` (batch, seq) f32.
pub fn causal_lm_loss(
    logits: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
    tokens: usize,
) -> Result<LossSum> {
    let (b, s, v) = logits.dims3()?;
    let logits = logits.reshape((b * s, v))?.to_dtype(DType::F32)?;
    let (safe, coef) = targets_and_coef(targets, weights, b * s)?;
    let per_token = cross_entropy(&logits, &safe, &coef)?;
    Ok(LossSum {
        sum: per_token.sum_all()?,
        tokens,
    })
}

/// The targets flattened with ignored positions pointing at 0, and the weight of each
/// position (0 where ignored).
fn targets_and_coef(
    targets: &Tensor,
    weights: Option<&Tensor>,
    rows: usize,
) -> Result<(Tensor, Tensor)> {
    let targets = targets.reshape(rows)?;
    let keep = targets.ne(IGNORE_INDEX)?;
    let safe = keep.where_cond(&targets, &targets.zeros_like()?)?;
    let mut coef = keep.to_dtype(DType::F32)?;
    if let Some(w) = weights {
        coef = (coef * w.reshape(rows)?.to_dtype(DType::F32)?)?;
    }
    Ok((safe, coef))
}

/// Logits of a batch up to this many elements (32 MiB in f32) are made whole; beyond it,
/// `causal_lm_loss_chunked` never holds more than this many at once.
pub const LOGITS_BUDGET: usize = 1 << 23;

/// Whether `causal_lm_loss_chunked` applies to the final hidden states `hidden` (batch,
/// seq, h) and the head weight `w` (vocab, h): f32 CPU tensors whose logits would exceed
/// `budget` elements (a vocabulary of 151,936 at 512 tokens is 78M: 311 MB, and as much
/// again for their gradient).
pub fn chunked_loss_applies(hidden: &Tensor, w: &Tensor, budget: usize) -> bool {
    let rows = hidden.elem_count() / hidden.dim(D::Minus1).unwrap_or(1).max(1);
    fused::applies(&[hidden, w]) && w.rank() == 2 && rows * w.dims()[0] > budget
}

/// `causal_lm_loss` of the logits `hidden W^T`, without making them: the forward pass
/// computes them a block of vocabulary columns at a time and keeps a running
/// log-sum-exp per row; the backward pass recomputes them block by block, which gives
/// the gradient of each block of `W` rows whole (and adds up the input's). At most `budget`
/// logits exist at once, for one more head product than the plain path. f32 on the CPU
/// (see `chunked_loss_applies`).
///
/// `train`: a training step, whose backward pass follows; with a frozen head the input's
/// gradient is then computed in the forward pass (see `linear_cross_entropy`).
pub fn causal_lm_loss_chunked(
    hidden: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
    tokens: usize,
    budget: usize,
    train: bool,
) -> Result<LossSum> {
    let (b, s, h) = hidden.dims3()?;
    let (safe, coef) = targets_and_coef(targets, weights, b * s)?;
    let x = hidden.reshape((b * s, h))?;
    let per_token = linear_cross_entropy(&x, w, &safe, &coef, budget, train)?;
    Ok(LossSum {
        sum: per_token.sum_all()?,
        tokens,
    })
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
    if h != h2 || !fused::applies(&[x, w]) {
        candle_core::bail!(
            "linear cross-entropy: f32 CPU x {:?} and weight {:?} expected",
            x.dims(),
            w.dims()
        );
    }
    let (targets, coef) = target_vecs(targets, coef, rows, vocab)?;
    if train && x.track_op() && !w.track_op() {
        return linear_cross_entropy_frozen_head(x, w, &targets, &coef, budget);
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
        fused::with_data(&logits, "linear cross-entropy", |lg| {
            fused::log_sum_exp_block(lg, n, v0, &targets, &mut max, &mut sum, &mut picked);
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

/// `linear_cross_entropy` for a training step with a frozen head: blocks of whole rows
/// of logits, each giving its rows' values, log-sum-exp and, at once, the gradient
/// `((softmax - one_hot) * coef) W` of those rows of `x` for an incoming gradient of 1.
/// The backward pass scales each stored row by its incoming gradient: exact for any
/// incoming gradient, since row r of the input's gradient depends on row r alone.
fn linear_cross_entropy_frozen_head(
    x: &Tensor,
    w: &Tensor,
    targets: &[i64],
    coef: &[f32],
    budget: usize,
) -> Result<Tensor> {
    let (rows, _) = x.dims2()?;
    let (vocab, _) = w.dims2()?;
    let (xd, wd) = (x.detach(), w.detach());
    let block = (budget / vocab.max(1)).max(1);
    let mut value = Vec::with_capacity(rows);
    let mut dx = Vec::with_capacity(rows.div_ceil(block));
    for r0 in (0..rows).step_by(block) {
        let n = block.min(rows - r0);
        let (t, c) = (&targets[r0..r0 + n], &coef[r0..r0 + n]);
        let logits = gemm::matmul(&xd.narrow(0, r0, n)?, &wd.t()?)?;
        let d = fused::with_data(&logits, "linear cross-entropy", |lg| {
            let (v, lse) = fused::cross_entropy_forward(lg, vocab, t, c);
            value.extend_from_slice(&v);
            Ok(fused::cross_entropy_backward(lg, vocab, 0, t, &lse, c))
        })?;
        drop(logits);
        let d = Tensor::from_vec(d, (n, vocab), xd.device())?;
        dx.push(gemm::matmul(&d, &wd)?);
    }
    let value = Tensor::from_vec(value, rows, x.device())?;
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
            let d = fused::with_data(&logits, self.name(), |lg| {
                Ok(fused::cross_entropy_backward(
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
                fused::with_data(&part, self.name(), |p| {
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

/// Per-row `coef * (logsumexp(logits) - logits[target])`, (rows,), for `logits` (rows,
/// vocab), `targets` (rows,) i64 and `coef` (rows,).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, coef: &Tensor) -> Result<Tensor> {
    if fused::applies(&[logits, coef]) {
        return cross_entropy_fused(logits, targets, coef);
    }
    cross_entropy_composed(logits, targets, coef)
}

/// `cross_entropy` on the CPU: one parallel pass over the logits forward (the values and
/// a log-sum-exp per row) and one backward.
fn cross_entropy_fused(logits: &Tensor, targets: &Tensor, coef: &Tensor) -> Result<Tensor> {
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
        let (value, lse) = fused::cross_entropy_forward(x, vocab, &self.targets, &self.coef);
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
        let dx = fused::with_data(logits, self.name(), |x| {
            Ok(fused::cross_entropy_backward(
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
        crate::ops::cuda_storage(&take(&self.value)?)
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
