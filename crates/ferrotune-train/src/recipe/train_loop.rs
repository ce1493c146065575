//! The loop: for each optimizer step its micro-batches and the step itself, then the log
//! line, the evaluation and the checkpoint when each is due.

use std::time::Instant;

use ferrotune_dist::World;
use ferrotune_model::ModelError;

use super::evaluate::{EvalSchedule, Evaluation};
use super::metrics::{LogWindow, Metrics, StepPoint};
use super::progress::Progress;
use super::save::{self, SaveSchedule};
use super::setup::Setup;
use super::step::{StepBatches, StepOutcome, Taken, TrainStep};
use super::{Result, Run};
use crate::config::TrainArgs;
use crate::distributed;
use crate::parallel::{Pass, Workers};

/// A non-finite loss or gradient this many steps in a row stops the run.
const MAX_BAD_STEPS: usize = 5;
/// With several processes, their weights are compared every this many steps (and after
/// the last): a cheap all-reduce of one checksum.
const DRIFT_CHECK_STEPS: usize = 10;

/// What the loop hands to the summary.
pub(super) struct Trained {
    /// When the loop started (the baseline evaluation included): the run's wall time.
    pub started: Instant,
    /// Every position of every batch trained on, padding included.
    pub seq_tokens: usize,
    pub last_train_loss: Option<f64>,
    pub last_eval_loss: Option<f64>,
}

pub(super) fn train(run: &Run, s: &mut Setup, world: &World) -> Result<Trained> {
    let t = &run.train;
    let mut after = AfterStep::open(t, s, world.is_main())?;
    let evaluation = Evaluation {
        model: &s.tuned.model,
        examples: &s.data.eval_examples,
        batch_size: t.per_device_eval_batch_size,
        pad: s.data.pad,
        world: &**world,
        loss: &s.loss,
    };
    if s.state.global_step == 0 {
        evaluation.before_training(&mut after.metrics)?;
    }
    let workers = Workers::for_training(&s.device, t.cpu_data_parallel)?;
    if workers.count() > 1 {
        eprintln!(
            "each micro-batch is split by rows over {} CPU threads (cpu_data_parallel: false turns this off)",
            workers.count()
        );
    }
    let step = TrainStep {
        model: &s.tuned.model,
        ewc: s.tuned.ewc.as_ref(),
        workers: &workers,
        pass: if t.checkpointing() {
            Pass::Checkpointed
        } else {
            Pass::Plain
        },
        max_grad_norm: t.max_grad_norm,
        world: &**world,
        loss: &s.loss,
    };
    let (rows, plan, pad) = (&s.data.rows, &s.plan, s.data.pad);
    let mut batches = StepBatches::new(rows, plan, s.state.seed, t.group_by_length, pad, &s.device);
    crate::allocator::keep_freed_memory();
    let mut bad_steps = 0;
    while s.state.global_step < plan.total_steps {
        let index = s.state.global_step;
        let micro = batches.next(&mut s.state)?;
        let lr = plan.schedule.lr(index);
        match step.run(&micro, &mut s.optimizer, lr)? {
            StepOutcome::Taken(taken) => {
                bad_steps = 0;
                s.state.global_step += 1;
                let done = s.state.global_step;
                if done.is_multiple_of(DRIFT_CHECK_STEPS) || done == plan.total_steps {
                    let params = s.tuned.model.trainable_params();
                    distributed::check_in_step(&**world, &params, done)?;
                }
                after.step(&taken, lr, &evaluation, s)?;
            }
            StepOutcome::NoSupervisedTokens => {
                after.progress.line(&format!(
                    "warning: step {} has no supervised token; skipped",
                    index + 1
                ));
                s.state.global_step += 1;
            }
            StepOutcome::NotFinite { loss, grad_norm } => {
                bad_steps += 1;
                after.progress.line(&format!(
                    "warning: step {}: loss {loss}, gradient norm {grad_norm}: not finite; step skipped (micro-batches {}..{} of the data order)",
                    index + 1,
                    s.state.micro_batches - plan.accumulation,
                    s.state.micro_batches
                ));
                if bad_steps >= MAX_BAD_STEPS {
                    return Err(ModelError::invalid(format!("{MAX_BAD_STEPS} steps in a row had a non-finite loss or gradient: stopping. Lower learning_rate, check the data with `ferrotune data preview`, or set max_grad_norm")));
                }
                s.state.global_step += 1;
            }
        }
    }
    after.progress.clear();
    Ok(after.trained)
}

/// What follows a step that updated the weights: the progress bar, the log line every
/// `logging_steps` (and at the last step), the evaluation and the checkpoint when due.
struct AfterStep {
    metrics: Metrics,
    window: LogWindow,
    progress: Progress,
    trained: Trained,
    logging_steps: usize,
    eval_when: EvalSchedule,
    save_when: SaveSchedule,
    save_total_limit: Option<usize>,
    /// Whether this process writes checkpoints (rank 0 of several).
    writes: bool,
}

impl AfterStep {
    /// Opens metrics.jsonl (when this process `writes`); the run's clock starts here.
    fn open(t: &TrainArgs, s: &Setup, writes: bool) -> Result<Self> {
        let metrics = Metrics::open(&s.output_dir, writes)?;
        let started = Instant::now();
        Ok(AfterStep {
            metrics,
            window: LogWindow::new(),
            progress: Progress::new(started),
            trained: Trained {
                started,
                seq_tokens: 0,
                last_train_loss: None,
                last_eval_loss: None,
            },
            logging_steps: t.logging_steps.max(1),
            eval_when: EvalSchedule {
                strategy: t.eval_strategy,
                eval_steps: t.eval_steps,
                steps_per_epoch: s.plan.steps_per_epoch,
            },
            save_when: SaveSchedule {
                strategy: t.save_strategy,
                save_steps: t.save_steps,
                steps_per_epoch: s.plan.steps_per_epoch,
                total_steps: s.plan.total_steps,
            },
            save_total_limit: t.save_total_limit,
            writes,
        })
    }

    /// After `taken`, whose step `s.state` already counts.
    fn step(&mut self, taken: &Taken, lr: f64, evaluation: &Evaluation, s: &Setup) -> Result<()> {
        self.window.add(taken);
        self.trained.seq_tokens += taken.seq_tokens;
        let at = StepPoint {
            done: s.state.global_step,
            total: s.plan.total_steps,
            epoch: s.state.micro_batches as f64 / s.plan.micro_per_epoch as f64,
            lr,
        };
        self.progress.bar(at.done, at.total, taken.loss, lr);
        if at.done.is_multiple_of(self.logging_steps) || at.done == at.total {
            let started = self.trained.started;
            let loss = self.window.log(
                &at,
                taken,
                &s.loss,
                started,
                &mut self.metrics,
                &self.progress,
            )?;
            self.trained.last_train_loss = Some(loss);
        }
        let eval =
            evaluation.after_step(&at, &self.eval_when, &mut self.metrics, &self.progress)?;
        if eval.is_some() {
            self.trained.last_eval_loss = eval;
        }
        if self.writes && self.save_when.is_due(at.done) {
            let dir = save::checkpoint(s, self.save_total_limit)?;
            self.progress.line(&format!("saved {}", dir.display()));
        }
        Ok(())
    }
}
