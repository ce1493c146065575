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

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

use crate::batch::IGNORE_INDEX;
use crate::ops::{cpu_storage, take};

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
    let targets = targets.reshape(b * s)?;
    let keep = targets.ne(IGNORE_INDEX)?;
    let safe = keep.where_cond(&targets, &targets.zeros_like()?)?;
    let mut coef = keep.to_dtype(DType::F32)?;
    if let Some(w) = weights {
        coef = (coef * w.reshape(b * s)?.to_dtype(DType::F32)?)?;
    }
    let per_token = cross_entropy(&logits, &safe, &coef)?;
    Ok(LossSum {
        sum: per_token.sum_all()?,
        tokens,
    })
}

/// Per-row `coef * (logsumexp(logits) - logits[target])`, (rows,).
fn cross_entropy(logits: &Tensor, targets: &Tensor, coef: &Tensor) -> Result<Tensor> {
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
