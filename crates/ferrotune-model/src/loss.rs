//! Causal-LM cross-entropy with an ignore index and optional per-token weights.
//!
//! Returns the *summed* loss and the number of supervised targets, so the trainer can
//! normalise over a whole gradient-accumulation window (the loss then does not change
//! with the accumulation setting).

use candle_core::{DType, Result, Tensor};

use crate::batch::IGNORE_INDEX;
use crate::ops::log_softmax_last_dim;

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
    let logp = log_softmax_last_dim(&logits)?;
    let picked = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
    let mut mask = keep.to_dtype(DType::F32)?;
    if let Some(w) = weights {
        mask = (mask * w.reshape(b * s)?.to_dtype(DType::F32)?)?;
    }
    let sum = (picked * mask)?.sum_all()?.neg()?;
    Ok(LossSum { sum, tokens })
}
