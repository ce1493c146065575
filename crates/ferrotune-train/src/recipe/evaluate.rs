//! Evaluation: the teacher-forced loss on the held-out examples, before training (the
//! baseline that eval losses, and forgetting, compare to), as `eval_strategy` asks, and
//! after the last step.

use ferrotune_dist::Collective;
use ferrotune_model::{CausalLm, Example};
use serde_json::json;

use super::metrics::{Metrics, StepPoint};
use super::progress::Progress;
use super::reference;
use super::step::Loss;
use super::Result;
use crate::config::EvalStrategy;

pub(super) struct Evaluation<'a> {
    pub model: &'a CausalLm,
    pub examples: &'a [Example],
    pub batch_size: usize,
    pub pad: u32,
    /// The processes split the evaluation batches and add their sums.
    pub world: &'a dyn Collective,
    /// For a preference loss, the examples are pairs (chosen, rejected) or KTO examples
    /// each followed by its KL sequence, evaluated with that loss.
    pub loss: &'a Loss,
}

impl Evaluation<'_> {
    /// Evaluates, writes the record for `step`, returns the eval loss and how to show it.
    fn log(&self, step: usize, epoch: f64, metrics: &mut Metrics) -> Result<(f64, String)> {
        if !matches!(self.loss, Loss::Tokens) {
            return self.log_preference(step, epoch, metrics);
        }
        let (sum, tokens) = self.model.eval_loss_part(
            self.examples,
            self.batch_size,
            self.pad,
            (self.world.rank(), self.world.size()),
        )?;
        let mut both = [sum, tokens as f64];
        self.world
            .all_reduce_sum_f64(&mut both)
            .map_err(super::dist_error)?;
        let (sum, tokens) = (both[0], both[1] as usize);
        let loss = sum / tokens.max(1) as f64;
        metrics.write(&json!({"step": step, "epoch": epoch, "eval_loss": loss, "eval_perplexity": loss.exp(), "eval_tokens": tokens}))?;
        Ok((
            loss,
            format!("eval loss {loss:.4} (perplexity {:.2})", loss.exp()),
        ))
    }

    /// A preference loss's evaluation: the mean loss over the held-out pairs (or KTO
    /// examples) and the metrics training logs, as `eval_`-prefixed keys.
    fn log_preference(
        &self,
        step: usize,
        epoch: f64,
        metrics: &mut Metrics,
    ) -> Result<(f64, String)> {
        let part = (self.world.rank(), self.world.size());
        let (loss, sums, count) = reference::eval_sums(
            self.model,
            self.examples,
            self.loss,
            self.batch_size,
            self.pad,
            part,
        )?;
        let mut all = vec![loss, count as f64];
        all.extend(sums);
        self.world
            .all_reduce_sum_f64(&mut all)
            .map_err(super::dist_error)?;
        let count = all[1].max(1.0);
        let loss = all[0] / count;
        let what = match self.loss {
            Loss::Kto(_) => "eval_examples",
            _ => "eval_pairs",
        };
        let mut record = json!({"step": step, "epoch": epoch, "eval_loss": loss});
        record[what] = json!(all[1]);
        let mut shown = format!("eval loss {loss:.4}");
        for (name, value) in self.loss.metrics(&all[2..], count as usize) {
            record[format!("eval_{name}")] = json!(value);
            if matches!(
                name,
                "rewards/accuracies" | "rewards/margins" | "mean_logps/accuracies" | "kl"
            ) {
                shown.push_str(&format!(" · {name} {value:.3}"));
            }
        }
        metrics.write(&record)?;
        Ok((loss, shown))
    }

    /// The loss before the first step, when there is held-out data.
    pub(super) fn before_training(&self, metrics: &mut Metrics) -> Result<()> {
        if self.examples.is_empty() {
            return Ok(());
        }
        let (_, shown) = self.log(0, 0.0, metrics)?;
        eprintln!("before training: {shown}");
        Ok(())
    }

    /// The loss after the step at `at`, when `when` says it is due or the step is the
    /// last; None when not evaluated.
    pub(super) fn after_step(
        &self,
        at: &StepPoint,
        when: &EvalSchedule,
        metrics: &mut Metrics,
        progress: &Progress,
    ) -> Result<Option<f64>> {
        let due = when.is_due(at.done) || at.done == at.total;
        if !due || self.examples.is_empty() {
            return Ok(None);
        }
        let (eval_loss, shown) = self.log(at.done, at.epoch, metrics)?;
        progress.line(&format!("step {}: {shown}", at.done));
        Ok(Some(eval_loss))
    }
}

/// When periodic evaluation falls: every `eval_steps` steps (no periodic evaluation
/// without it), or at the end of every epoch.
pub(super) struct EvalSchedule {
    pub strategy: EvalStrategy,
    pub eval_steps: Option<usize>,
    pub steps_per_epoch: usize,
}

impl EvalSchedule {
    fn is_due(&self, done: usize) -> bool {
        match (self.strategy, self.eval_steps) {
            (EvalStrategy::Steps, Some(n)) if n > 0 => done.is_multiple_of(n),
            (EvalStrategy::Epoch, _) => done.is_multiple_of(self.steps_per_epoch),
            _ => false,
        }
    }
}
