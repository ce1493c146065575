//! Causal-LM cross-entropy with an ignore index and optional per-token weights.
//!
//! Returns the *summed* loss and the number of supervised targets, so the trainer can
//! normalise over a whole gradient-accumulation window (the loss then does not change
//! with the accumulation setting).
//!
//! The cross-entropy op itself, its fused kernels and backward passes, and the head
//! product fused with it live in `ops::cross_entropy`; this module turns a batch's
//! targets and weights into its inputs.

use candle_core::{DType, Result, Tensor, D};

use crate::batch::IGNORE_INDEX;
use crate::ops::preference::{preference_loss, PairLogps, PrefConfig, PrefOutput};
use crate::ops::{
    cross_entropy, fused_kernels_apply, linear_cross_entropy, linear_cross_entropy_frozen,
    FrozenWeight,
};

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
    Ok(LossSum {
        sum: causal_lm_token_losses(logits, targets, weights)?.sum_all()?,
        tokens,
    })
}

/// Each position's weighted cross-entropy (batch * seq,), 0 where ignored: what
/// `causal_lm_loss` sums.
pub fn causal_lm_token_losses(
    logits: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, s, v) = logits.dims3()?;
    let logits = logits.reshape((b * s, v))?.to_dtype(DType::F32)?;
    let (safe, coef) = targets_and_coef(targets, weights, b * s)?;
    cross_entropy(&logits, &safe, &coef)
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

/// The head weight (vocab, h) the chunked loss multiplies: a trainable tensor, or a
/// frozen weight in any storage type.
pub enum HeadWeight<'a> {
    Trainable(&'a Tensor),
    Frozen(FrozenWeight),
}

impl HeadWeight<'_> {
    /// Rows (the vocabulary), when the weight takes the CPU f32 products.
    fn cpu_rows(&self) -> Option<usize> {
        match self {
            HeadWeight::Trainable(w) => dense_rows(w),
            HeadWeight::Frozen(FrozenWeight::Dense(w)) => dense_rows(w),
            HeadWeight::Frozen(FrozenWeight::Stored(w)) => Some(w.dims().0),
        }
    }
}

fn dense_rows(w: &Tensor) -> Option<usize> {
    (fused_kernels_apply(&[w]) && w.rank() == 2).then(|| w.dims()[0])
}

/// Whether `causal_lm_loss_chunked` applies to the final hidden states `hidden` (batch,
/// seq, h) and the head weight `w` (vocab, h): on the CPU in f32, with logits that would
/// exceed `budget` elements (a vocabulary of 151,936 at 512 tokens is 78M: 311 MB, and
/// as much again for their gradient).
pub fn chunked_loss_applies(hidden: &Tensor, w: &HeadWeight<'_>, budget: usize) -> bool {
    let rows = hidden.elem_count() / hidden.dim(D::Minus1).unwrap_or(1).max(1);
    fused_kernels_apply(&[hidden]) && w.cpu_rows().is_some_and(|vocab| rows * vocab > budget)
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
    w: &HeadWeight<'_>,
    targets: &Tensor,
    weights: Option<&Tensor>,
    tokens: usize,
    budget: usize,
    train: bool,
) -> Result<LossSum> {
    Ok(LossSum {
        sum: causal_lm_token_losses_chunked(hidden, w, targets, weights, budget, train)?
            .sum_all()?,
        tokens,
    })
}

/// Each position's weighted cross-entropy (batch * seq,): what `causal_lm_loss_chunked`
/// sums.
pub fn causal_lm_token_losses_chunked(
    hidden: &Tensor,
    w: &HeadWeight<'_>,
    targets: &Tensor,
    weights: Option<&Tensor>,
    budget: usize,
    train: bool,
) -> Result<Tensor> {
    let (b, s, h) = hidden.dims3()?;
    let (safe, coef) = targets_and_coef(targets, weights, b * s)?;
    let x = hidden.reshape((b * s, h))?;
    match w {
        HeadWeight::Trainable(w) => linear_cross_entropy(&x, w, &safe, &coef, budget, train),
        HeadWeight::Frozen(w) => linear_cross_entropy_frozen(&x, w, &safe, &coef, budget, train),
    }
}

/// Sequence log-probabilities: for each sample of a batch (row-major, each row's samples
/// in order), the sum of its targets' log-probabilities, and how many targets it has.
#[derive(Debug, Clone)]
pub struct SequenceLogps {
    /// (samples,) f32; differentiable when the model's weights are tracked.
    pub logps: Tensor,
    /// Supervised targets of each sample.
    pub tokens: Vec<usize>,
}

/// Sums per-position cross-entropies into per-sample log-probabilities: `values` (n,)
/// holds the cross-entropy of positions `positions` (flat indices into the batch), and
/// `owner[p]` is the sample of position `p` (see `Batch::sample_of_positions`). The sum
/// is a product with a (samples, n) 0/1 matrix, so its gradient flows back to every
/// position of its sample unchanged.
pub fn sequence_logps(
    values: &Tensor,
    positions: &[u32],
    owner: &[Option<u32>],
    samples: usize,
    counted: &[bool],
) -> Result<SequenceLogps> {
    let n = positions.len();
    let mut onehot = vec![0f32; samples * n];
    let mut tokens = vec![0usize; samples];
    for (k, &p) in positions.iter().enumerate() {
        if let Some(s) = owner[p as usize] {
            onehot[s as usize * n + k] = 1.0;
            tokens[s as usize] += usize::from(counted[k]);
        }
    }
    let onehot = Tensor::from_vec(onehot, (samples, n), values.device())?;
    let sums = onehot.matmul(&values.reshape((n, 1))?)?.reshape(samples)?;
    Ok(SequenceLogps {
        logps: sums.neg()?,
        tokens,
    })
}

/// The preference loss of a batch of pairs: its samples alternate chosen, rejected (each
/// row one pair, or the rows of pairs laid end to end), and `reference` holds the
/// reference model's log-probability of each sample in the same order (empty for the
/// losses that need none).
pub fn pair_preference_loss(
    cfg: &PrefConfig,
    seq: &SequenceLogps,
    reference: &[f64],
) -> Result<PrefOutput> {
    let samples = seq.tokens.len();
    if !samples.is_multiple_of(2) {
        candle_core::bail!(
            "a batch of preference pairs has an odd number of sequences ({samples})"
        );
    }
    let device = seq.logps.device();
    let every_other = |first: usize| -> Result<Tensor> {
        let index: Vec<u32> = (first..samples).step_by(2).map(|i| i as u32).collect();
        Tensor::from_vec(index, samples / 2, device)
    };
    let (even, odd) = (every_other(0)?, every_other(1)?);
    let pick = |t: &Tensor, index: &Tensor| t.index_select(index, 0);
    let counts = Tensor::from_vec(
        seq.tokens.iter().map(|&n| n as f32).collect::<Vec<_>>(),
        samples,
        device,
    )?
    .to_dtype(seq.logps.dtype())?;
    let (chosen, rejected) = (pick(&seq.logps, &even)?, pick(&seq.logps, &odd)?);
    let (chosen_tokens, rejected_tokens) = (pick(&counts, &even)?, pick(&counts, &odd)?);
    let reference = if cfg.loss.needs_reference() {
        if reference.len() != samples {
            candle_core::bail!(
                "{} reference log-probabilities for {samples} sequences",
                reference.len()
            );
        }
        let all =
            Tensor::from_vec(reference.to_vec(), samples, device)?.to_dtype(seq.logps.dtype())?;
        Some((pick(&all, &even)?, pick(&all, &odd)?))
    } else {
        None
    };
    preference_loss(
        cfg,
        &PairLogps {
            chosen: &chosen,
            rejected: &rejected,
            chosen_tokens: &chosen_tokens,
            rejected_tokens: &rejected_tokens,
            reference: reference.as_ref().map(|(c, r)| (c, r)),
        },
    )
}
