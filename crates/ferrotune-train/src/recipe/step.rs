//! One optimizer step: its micro-batches from the data order, their gradients accumulated
//! with the loss normalised over the whole window, the EWC penalty, clipping, AdamW.

use candle_core::Device;
use ferrotune_dist::Collective;
use ferrotune_model::{Batch, CausalLm, Param};

use super::setup::Plan;
use super::Result;
use crate::checkpoint::TrainerState;
use crate::distributed;
use crate::ewc::Ewc;
use crate::grads::clip;
use crate::optim::AdamW;
use crate::parallel::{Objective, Pass, Workers};
use crate::rows::Rows;
use ferrotune_model::ops::preference::{kto_kl, kto_metrics, KtoConfig, PrefConfig, PREF_METRICS};

/// The micro-batches of each step, from the deterministic data order: a pure function of
/// the seed and the position in it, so a resumed run continues the same order.
pub(super) struct StepBatches<'a> {
    rows: &'a Rows,
    plan: &'a Plan,
    seed: u64,
    group_by_length: bool,
    pad: u32,
    device: &'a Device,
    /// The epoch and its shuffled row order, computed once per epoch.
    order: (usize, Vec<usize>),
}

impl<'a> StepBatches<'a> {
    pub(super) fn new(
        rows: &'a Rows,
        plan: &'a Plan,
        seed: u64,
        group_by_length: bool,
        pad: u32,
        device: &'a Device,
    ) -> Self {
        StepBatches {
            rows,
            plan,
            seed,
            group_by_length,
            pad,
            device,
            order: (usize::MAX, Vec::new()),
        }
    }

    /// The next step's micro-batches; advances the position in `state`.
    pub(super) fn next(&mut self, state: &mut TrainerState) -> Result<Vec<Batch>> {
        let (batch_size, per_epoch) = (self.plan.batch_size, self.plan.micro_per_epoch);
        let mut micro = Vec::with_capacity(self.plan.accumulation);
        for _ in 0..self.plan.accumulation {
            let m = state.micro_batches;
            let (epoch, k) = (m / per_epoch, m % per_epoch);
            if self.order.0 != epoch {
                let order =
                    self.rows
                        .epoch_order(self.seed, epoch, self.group_by_length, batch_size);
                self.order = (epoch, order);
            }
            let order = &self.order.1;
            let chunk = &order[k * batch_size..((k + 1) * batch_size).min(order.len())];
            micro.push(self.rows.batch(chunk, self.pad, self.device)?);
            state.micro_batches += 1;
        }
        Ok(micro)
    }
}

/// What a step needs besides its batches.
pub(super) struct TrainStep<'a> {
    pub model: &'a CausalLm,
    pub ewc: Option<&'a Ewc>,
    pub workers: &'a Workers,
    /// Whether decoder layers are recomputed in the backward pass.
    pub pass: Pass,
    pub loss: &'a Loss,
    pub max_grad_norm: f64,
    /// The processes this one shares each step with.
    pub world: &'a dyn Collective,
}

/// What a run's steps minimise.
#[derive(Debug, Clone, Copy)]
pub(super) enum Loss {
    /// The token cross-entropy (sft, pt): a mean over the supervised tokens.
    Tokens,
    /// A preference loss over pairs (dpo): a mean over the pairs, each row one pair.
    Pairs(PrefConfig),
    /// KTO: a mean over the examples, each row an example and its KL sequence.
    Kto(KtoConfig),
}

impl Loss {
    /// The loss of a run's stage.
    pub(super) fn of(stage: ferrotune_data::Stage, t: &crate::config::TrainArgs) -> Loss {
        use ferrotune_data::Stage;
        match stage {
            Stage::Dpo => Loss::Pairs(t.pref_config()),
            Stage::Kto => Loss::Kto(t.kto_config()),
            Stage::Sft | Stage::Pt => Loss::Tokens,
        }
    }

    /// Whether it compares against reference log-probabilities.
    pub(super) fn needs_reference(&self) -> bool {
        match self {
            Loss::Pairs(cfg) => cfg.loss.needs_reference(),
            Loss::Kto(_) => true,
            Loss::Tokens => false,
        }
    }

    /// How its metric sums read as metrics.
    pub(super) fn metrics(&self, sums: &[f64], units: usize) -> Vec<(&'static str, f64)> {
        match self {
            Loss::Tokens => Vec::new(),
            Loss::Pairs(_) => PREF_METRICS
                .iter()
                .zip(sums)
                .map(|(name, sum)| (*name, sum / units.max(1) as f64))
                .collect(),
            Loss::Kto(_) => kto_metrics(sums),
        }
    }
}

/// KTO's KL term of a micro-batch (rows of an example and its KL sequence): the policy's
/// log-probabilities of the KL sequences, without gradients, against the reference's.
/// Every process computes it for the whole micro-batch, so all hold the same constant.
pub(super) fn kto_kl_term(model: &CausalLm, kl_sequences: &Batch) -> Result<f64> {
    let policy: Vec<f64> = model
        .detached()?
        .sequence_logps(kl_sequences, false)?
        .logps
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    Ok(kto_kl(&policy, &kl_sequences.reference.concat()))
}

/// How a step went.
pub(super) enum StepOutcome {
    /// Every label in the step's batches was masked: nothing to learn from, no update.
    NoSupervisedTokens,
    /// The loss or the gradient norm overflowed: no update.
    NotFinite {
        loss: f64,
        grad_norm: f64,
    },
    Taken(Taken),
}

/// A step that updated the weights.
pub(super) struct Taken {
    /// The loss summed over the step's supervised tokens (or pairs).
    pub loss_sum: f64,
    /// The mean loss per supervised token (or pair).
    pub loss: f64,
    /// What the loss is a mean over: the supervised tokens, or for a preference loss the
    /// pairs.
    pub units: usize,
    /// A preference loss's metric sums over the step (read by [`Loss::metrics`]); empty
    /// otherwise.
    pub metric_sums: Vec<f64>,
    pub supervised_tokens: usize,
    /// Every position of the step's batches, padding included: the throughput's count.
    pub seq_tokens: usize,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    pub ewc_penalty: Option<f64>,
}

impl TrainStep<'_> {
    pub(super) fn run(
        &self,
        micro: &[Batch],
        optimizer: &mut AdamW,
        lr: f64,
    ) -> Result<StepOutcome> {
        // KTO trains on each row's first sequence; the second (its KL sequence) only
        // gives the micro-batch's KL term, estimated here before the step.
        let (examples, kl);
        let (micro, objective) = match self.loss {
            Loss::Tokens => (micro, Objective::Tokens),
            Loss::Pairs(cfg) => (micro, Objective::Preference(cfg)),
            Loss::Kto(cfg) => {
                examples = micro
                    .iter()
                    .map(|b| b.sample_batch(0))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                kl = micro
                    .iter()
                    .map(|b| kto_kl_term(self.model, &b.sample_batch(1)?))
                    .collect::<Result<Vec<f64>>>()?;
                (examples.as_slice(), Objective::Kto(cfg, &kl))
            }
        };
        let supervised_tokens: usize = micro.iter().map(|b| b.supervised_tokens).sum();
        let seq_tokens: usize = micro.iter().map(|b| b.batch * b.seq_len).sum();
        if supervised_tokens == 0 {
            return Ok(StepOutcome::NoSupervisedTokens);
        }
        let params: Vec<&Param> = self.model.trainable_params();
        // Each micro-batch's loss is divided by the whole step's token count, so the
        // accumulated gradient is that of the mean over the step, however it is split.
        // Every process builds the whole micro-batches, so each knows that count; each
        // computes its shards, and one all-reduce adds the processes' sums.
        // A preference loss is a mean over the step's pairs or examples instead (one a row).
        let units = match self.loss {
            Loss::Tokens => supervised_tokens,
            Loss::Pairs(_) | Loss::Kto(_) => micro.iter().map(|b| b.batch).sum(),
        };
        let scale = 1.0 / units as f64;
        let part = self.workers.step_gradients(
            self.model,
            micro,
            &params,
            (scale, objective),
            self.pass,
            distributed::share(self.world),
        )?;
        let mut sums = vec![part.loss_sum];
        sums.extend(&part.metric_sums);
        let mut grads = part.grads.finish(&params)?;
        distributed::all_reduce(self.world, &mut grads, &mut sums)?;
        let loss_sum = sums[0];
        let metric_sums = sums[1..].to_vec();
        let mut ewc_penalty = None;
        if let Some(ewc) = self.ewc {
            ewc.add_gradient(&params, &mut grads)?;
            ewc_penalty = Some(ewc.penalty(&params)?);
        }
        let grad_norm = clip(&mut grads, self.max_grad_norm)?;
        let loss = loss_sum / units as f64;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Ok(StepOutcome::NotFinite { loss, grad_norm });
        }
        optimizer.step(&params, &grads, lr)?;
        Ok(StepOutcome::Taken(Taken {
            loss_sum,
            loss,
            units,
            metric_sums,
            supervised_tokens,
            seq_tokens,
            grad_norm,
            ewc_penalty,
        }))
    }
}
