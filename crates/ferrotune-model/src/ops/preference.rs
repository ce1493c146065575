//! Preference losses over sequence log-probabilities: DPO (sigmoid, with label
//! smoothing), hinge (SLiC), IPO, ORPO and SimPO, with LLaMA-Factory's `pref_ftx` term
//! and the metrics TRL logs. The formulas are LLaMA-Factory 0.9.5's CustomDPOTrainer
//! (ORPO, SimPO, `pref_ftx`) and TRL 0.24's `DPOTrainer.dpo_loss` (sigmoid, hinge, IPO);
//! tests/preference_losses.rs checks values and gradients against torch
//! (scripts/make_preference_loss_fixture.py).
//!
//! Shapes: B pairs. `chosen`, `rejected`: [B], each the sum of its response tokens'
//! log-probabilities under the policy (differentiable); `reference`: the same under the
//! reference model ([B] each, constants; none for ORPO and SimPO); `chosen_tokens`,
//! `rejected_tokens`: [B], the responses' supervised token counts. IPO, ORPO and SimPO
//! work on mean log-probabilities (sums over counts), as LLaMA-Factory does.
//!
//! Composed from candle ops, so autograd gives the backward pass on every device and
//! dtype: the tensors are B values, nothing here is worth a fused kernel.

use candle_core::{Result, Tensor};

/// `pref_loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefLoss {
    Sigmoid,
    Hinge,
    Ipo,
    Orpo,
    Simpo,
}

impl PrefLoss {
    /// Whether the loss works on mean log-probabilities rather than sums.
    pub fn averaged(self) -> bool {
        matches!(self, PrefLoss::Ipo | PrefLoss::Orpo | PrefLoss::Simpo)
    }

    /// Whether the loss compares against a reference model.
    pub fn needs_reference(self) -> bool {
        !matches!(self, PrefLoss::Orpo | PrefLoss::Simpo)
    }
}

/// The loss's settings, under LLaMA-Factory's key names.
#[derive(Debug, Clone, Copy)]
pub struct PrefConfig {
    pub loss: PrefLoss,
    /// `pref_beta`.
    pub beta: f64,
    /// `dpo_label_smoothing` (sigmoid only).
    pub label_smoothing: f64,
    /// `simpo_gamma`.
    pub simpo_gamma: f64,
    /// `pref_ftx`: the weight of an added SFT term (the chosen response's mean negative
    /// log-probability).
    pub ftx: f64,
}

/// A batch's sequence log-probabilities.
pub struct PairLogps<'a> {
    pub chosen: &'a Tensor,
    pub rejected: &'a Tensor,
    pub chosen_tokens: &'a Tensor,
    pub rejected_tokens: &'a Tensor,
    /// (chosen, rejected) under the reference model.
    pub reference: Option<(&'a Tensor, &'a Tensor)>,
}

/// The metrics TRL logs for a batch of pairs, in the order of [`PrefOutput::metric_sums`],
/// and one of ferrotune's: the share of pairs whose chosen answer has the higher mean
/// log-probability per token (what a model's own likelihood prefers, with no reference).
pub const PREF_METRICS: [&str; 7] = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "mean_logps/accuracies",
];

/// The loss summed over the pairs (differentiable) and TRL's metrics summed over the
/// pairs: sums, so that shards and processes add them up and the caller divides once by
/// all the pairs of a step.
pub struct PrefOutput {
    pub loss_sum: Tensor,
    /// Sums over the pairs of each of [`PREF_METRICS`].
    pub metric_sums: [f64; 7],
    pub pairs: usize,
}

impl PrefOutput {
    /// The metrics' means over the pairs.
    pub fn metric_means(&self) -> [f64; 7] {
        self.metric_sums.map(|s| s / self.pairs.max(1) as f64)
    }
}

/// log(sigmoid(x)) = -softplus(-x), computed without overflow: -(relu(-x) + log(1 + e^-|x|)).
fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (x.neg()?.relu()? + tail)?.neg()
}

fn sum(t: &Tensor) -> Result<f64> {
    t.to_dtype(candle_core::DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()
}

pub fn preference_loss(cfg: &PrefConfig, p: &PairLogps) -> Result<PrefOutput> {
    let beta = cfg.beta;
    let per_token = |sum: &Tensor, tokens: &Tensor| sum.div(&tokens.to_dtype(sum.dtype())?);
    let (c, r) = if cfg.loss.averaged() {
        (
            per_token(p.chosen, p.chosen_tokens)?,
            per_token(p.rejected, p.rejected_tokens)?,
        )
    } else {
        (p.chosen.clone(), p.rejected.clone())
    };
    let (losses, chosen_rewards, rejected_rewards) = match cfg.loss {
        PrefLoss::Orpo => {
            // log odds(c) - log odds(r), with log odds(p) = log p - log(1 - e^log p).
            let log1m_exp = |t: &Tensor| (t.exp()?.neg()? + 1.0)?.log();
            let log_odds = ((&c - &r)? - (log1m_exp(&c)? - log1m_exp(&r)?)?)?;
            let losses = (c.neg()? - log_sigmoid(&log_odds)?.affine(beta, 0.0)?)?;
            (losses, c.affine(beta, 0.0)?, r.affine(beta, 0.0)?)
        }
        PrefLoss::Simpo => {
            let x = (&c - &r)?.affine(beta, -cfg.simpo_gamma)?;
            let losses = log_sigmoid(&x)?.neg()?;
            (losses, c.affine(beta, 0.0)?, r.affine(beta, 0.0)?)
        }
        PrefLoss::Sigmoid | PrefLoss::Hinge | PrefLoss::Ipo => {
            let (rc, rr) = p.reference.ok_or_else(|| {
                candle_core::Error::Msg(format!("{:?} needs reference log-probabilities", cfg.loss))
            })?;
            let (rc, rr) = if cfg.loss.averaged() {
                (
                    per_token(rc, p.chosen_tokens)?,
                    per_token(rr, p.rejected_tokens)?,
                )
            } else {
                (rc.clone(), rr.clone())
            };
            let logits = ((&c - &r)? - (&rc - &rr)?)?;
            let losses = match cfg.loss {
                PrefLoss::Sigmoid => {
                    let ls = cfg.label_smoothing;
                    let toward =
                        log_sigmoid(&logits.affine(beta, 0.0)?)?.affine(-(1.0 - ls), 0.0)?;
                    let away = log_sigmoid(&logits.affine(-beta, 0.0)?)?.affine(-ls, 0.0)?;
                    (toward + away)?
                }
                PrefLoss::Hinge => logits.affine(-beta, 1.0)?.relu()?,
                _ => logits.affine(1.0, -1.0 / (2.0 * beta))?.sqr()?,
            };
            let chosen_rewards = (&c - &rc)?.affine(beta, 0.0)?;
            let rejected_rewards = (&r - &rr)?.affine(beta, 0.0)?;
            (losses, chosen_rewards, rejected_rewards)
        }
    };
    let losses = if cfg.ftx > 1e-6 {
        let chosen_mean = if cfg.loss.averaged() {
            c.clone()
        } else {
            per_token(&c, p.chosen_tokens)?
        };
        (losses - chosen_mean.affine(cfg.ftx, 0.0)?)?
    } else {
        losses
    };
    let (chosen_rewards, rejected_rewards) = (chosen_rewards.detach(), rejected_rewards.detach());
    let wins = chosen_rewards.gt(&rejected_rewards)?;
    let mean_wins = per_token(&p.chosen.detach(), p.chosen_tokens)?
        .gt(&per_token(&p.rejected.detach(), p.rejected_tokens)?)?;
    Ok(PrefOutput {
        loss_sum: losses.sum_all()?,
        metric_sums: [
            sum(&chosen_rewards)?,
            sum(&rejected_rewards)?,
            sum(&wins)?,
            sum(&(&chosen_rewards - &rejected_rewards)?)?,
            sum(&c.detach())?,
            sum(&r.detach())?,
            sum(&mean_wins)?,
        ],
        pairs: p.chosen.elem_count(),
    })
}

/// KTO's settings (LLaMA-Factory's `stage: kto` keys).
#[derive(Debug, Clone, Copy)]
pub struct KtoConfig {
    /// `pref_beta`.
    pub beta: f64,
    /// `kto_chosen_weight`: the weight of a desirable example's loss.
    pub desirable_weight: f64,
    /// `kto_rejected_weight`: the weight of an undesirable example's loss.
    pub undesirable_weight: f64,
}

/// The sums KTO's metrics are made from, in the order of [`KtoOutput::metric_sums`]:
/// over the desirable examples the rewards, the log-probabilities and the count, the
/// same over the undesirable ones, then the KL term summed over the batches it was
/// estimated on and the number of those batches.
pub const KTO_SUMS: [&str; 8] = [
    "rewards/chosen_sum",
    "logps/chosen_sum",
    "count/chosen",
    "rewards/rejected_sum",
    "logps/rejected_sum",
    "count/rejected",
    "kl_sum",
    "kl_batches",
];

/// KTO's loss summed over the examples (differentiable) and its metric sums.
pub struct KtoOutput {
    pub loss_sum: Tensor,
    pub metric_sums: [f64; 8],
    pub examples: usize,
}

/// The metrics LLaMA-Factory logs for KTO, from sums of [`KTO_SUMS`] over any number of
/// batches: rewards and log-probabilities as means over the desirable ("chosen") and
/// undesirable ("rejected") examples, the margin between the reward means, and the KL
/// term's mean over its batches.
pub fn kto_metrics(sums: &[f64]) -> Vec<(&'static str, f64)> {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let chosen = ratio(sums[0], sums[2]);
    let rejected = ratio(sums[3], sums[5]);
    vec![
        ("rewards/chosen", chosen),
        ("logps/chosen", ratio(sums[1], sums[2])),
        ("rewards/rejected", rejected),
        ("logps/rejected", ratio(sums[4], sums[5])),
        ("rewards/margins", chosen - rejected),
        ("kl", ratio(sums[6], sums[7])),
    ]
}

/// The KL term of a batch: the mean over its mismatched (KL) sequences of the policy's
/// log-probability less the reference's, at least 0; a constant (no gradient), as in
/// TRL's KTO.
pub fn kto_kl(policy_kl: &[f64], reference_kl: &[f64]) -> f64 {
    let n = policy_kl.len().max(1) as f64;
    let mean = policy_kl
        .iter()
        .zip(reference_kl)
        .map(|(p, r)| p - r)
        .sum::<f64>()
        / n;
    mean.max(0.0)
}

/// TRL 0.24's `kto_loss` as LLaMA-Factory 0.9.5 calls it: with log-ratios
/// `policy - reference` (summed log-probabilities, [B]), a desirable example's loss is
/// `w_d (1 - sigmoid(beta (ratio - kl)))`, an undesirable one's
/// `w_u (1 - sigmoid(beta (kl - ratio)))`; rewards are `beta * ratio`.
pub fn kto_loss(
    cfg: &KtoConfig,
    policy: &Tensor,
    reference: &Tensor,
    desirable: &[bool],
    kl: f64,
) -> Result<KtoOutput> {
    let n = desirable.len();
    let device = policy.device();
    let ratio = (policy - reference.to_dtype(policy.dtype())?)?;
    // +1 for desirable examples, -1 for undesirable: the sign inside the sigmoid.
    let sign: Vec<f32> = desirable
        .iter()
        .map(|&d| if d { 1.0 } else { -1.0 })
        .collect();
    let weight: Vec<f32> = desirable
        .iter()
        .map(|&d| {
            if d {
                cfg.desirable_weight
            } else {
                cfg.undesirable_weight
            }
        })
        .map(|w| w as f32)
        .collect();
    let sign = Tensor::from_vec(sign, n, device)?.to_dtype(policy.dtype())?;
    let weight = Tensor::from_vec(weight, n, device)?.to_dtype(policy.dtype())?;
    let x = (ratio.affine(1.0, -kl)? * &sign)?.affine(cfg.beta, 0.0)?;
    // 1 - sigmoid(x) = sigmoid(-x) = exp(log_sigmoid(-x)).
    let losses = (log_sigmoid(&x.neg()?)?.exp()? * weight)?;
    let rewards: Vec<f64> = ratio
        .affine(cfg.beta, 0.0)?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()?;
    let logps: Vec<f64> = policy.to_dtype(candle_core::DType::F64)?.to_vec1()?;
    let mut sums = [0f64; 8];
    for ((&d, r), l) in desirable.iter().zip(&rewards).zip(&logps) {
        let at = if d { 0 } else { 3 };
        sums[at] += r;
        sums[at + 1] += l;
        sums[at + 2] += 1.0;
    }
    sums[6] = kl;
    sums[7] = 1.0;
    Ok(KtoOutput {
        loss_sum: losses.sum_all()?,
        metric_sums: sums,
        examples: n,
    })
}
