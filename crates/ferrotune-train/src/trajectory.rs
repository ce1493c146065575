//! Replays a reference training run (../shared/fixtures/models/*/train.json layout:
//! hyper-parameters, micro-batches, per-step lr / loss / gradient norm, final weights) and
//! reports how far ferrotune's optimizer trajectory is from it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use ferrotune_model::check::{rel_norm_diff, stored_batch};
use ferrotune_model::{CausalLm, ModelError, Param};
use serde::{Deserialize, Serialize};

use crate::grads::{clip, Accumulated};
use crate::optim::{AdamW, AdamWConfig};
use crate::parallel::{Pass, Workers};
use crate::schedule::{Schedule, ScheduleKind};

#[derive(Debug, Deserialize)]
struct Hyper {
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    warmup_steps: usize,
    total_steps: usize,
    grad_accum: usize,
    max_grad_norm: f64,
}

#[derive(Debug, Deserialize)]
struct RefStep {
    step: usize,
    lr: f64,
    loss: f64,
    grad_norm: f64,
}

#[derive(Debug, Deserialize)]
struct TrainJson {
    hyperparameters: Hyper,
    steps: Vec<RefStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub lr: f64,
    pub reference_lr: f64,
    pub loss: f64,
    pub reference_loss: f64,
    pub grad_norm: f64,
    pub reference_grad_norm: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrajectoryReport {
    pub steps: Vec<StepReport>,
    pub max_loss_rel_diff: f64,
    pub max_lr_rel_diff: f64,
    pub max_grad_norm_rel_diff: f64,
    /// (worst relative norm difference of a final weight, its name)
    pub final_weights: (f32, String),
    /// Every final weight's relative norm difference.
    pub final_weight_diffs: Vec<(String, f32)>,
}

impl TrajectoryReport {
    /// The worst final-weight difference among the parameters not named in `skip`.
    pub fn final_weights_excluding(&self, skip: &[&str]) -> (f32, String) {
        self.final_weight_diffs
            .iter()
            .filter(|(n, _)| !skip.contains(&n.as_str()))
            .fold((0.0, String::new()), |worst, (n, d)| {
                if *d > worst.0 {
                    (*d, n.clone())
                } else {
                    worst
                }
            })
    }

    /// Failures against the fixture README's tolerances (loss and lr 1e-4 relative per
    /// step, gradient norm 1e-3, final weights 1e-4 relative norm).
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let checks = [
            ("loss", self.max_loss_rel_diff, 1e-4),
            ("lr", self.max_lr_rel_diff, 1e-4),
            ("grad_norm", self.max_grad_norm_rel_diff, 1e-3),
            ("final weights", self.final_weights.0 as f64, 1e-4),
        ];
        for (what, diff, tol) in checks {
            if diff.is_nan() || diff > tol {
                out.push(format!(
                    "{what} differs by {diff:.3e} (relative) > {tol:.0e}"
                ));
            }
        }
        out
    }
}

fn rel(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        a.abs()
    } else {
        ((a - b) / b).abs()
    }
}

/// Trains every parameter of `model` along the reference run in `fixture_dir`.
pub fn replay(model: &mut CausalLm, fixture_dir: &Path) -> Result<TrajectoryReport, ModelError> {
    let device = Device::Cpu;
    let json_path = fixture_dir.join("train.json");
    let text = std::fs::read_to_string(&json_path)
        .map_err(|e| ModelError::file(&json_path, e.to_string()))?;
    let reference: TrainJson = serde_json::from_str(&text)
        .map_err(|e| ModelError::file(&json_path, format!("malformed: {e}")))?;
    let h = &reference.hyperparameters;
    let batches: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture_dir.join("train_batches.safetensors"), &device)?;
    let finals: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture_dir.join("train_final.safetensors"), &device)?;

    for p in model.params_mut() {
        p.set_trainable(true)?;
    }
    let schedule = Schedule {
        kind: ScheduleKind::Cosine,
        base_lr: h.lr,
        warmup_steps: h.warmup_steps,
        total_steps: h.total_steps,
    };
    let mut optimizer = AdamW::new(AdamWConfig {
        beta1: h.betas[0],
        beta2: h.betas[1],
        eps: h.eps,
        weight_decay: h.weight_decay,
        decay_everything: true,
    });
    let workers = Workers::for_training(&device, true)?;
    let mut steps = Vec::new();
    for r in &reference.steps {
        let s = r.step - 1;
        let micro: Vec<_> = (0..h.grad_accum)
            .map(|k| {
                stored_batch(
                    &batches,
                    &format!("micro{}.", s * h.grad_accum + k),
                    &device,
                )
            })
            .collect::<Result<_, _>>()?;
        // The loss of a step is normalised by the supervised tokens of the whole window.
        let tokens: usize = micro.iter().map(|b| b.supervised_tokens).sum();
        let params: Vec<&Param> = model.params();
        let mut accumulated = Accumulated::new(params.len());
        let mut loss_sum = 0.0;
        for batch in &micro {
            // The trainer's own path: on a multi-threaded CPU, shards side by side.
            let part =
                workers.gradients(model, batch, &params, 1.0 / tokens as f64, Pass::Plain)?;
            loss_sum += part.loss_sum;
            accumulated.merge(part.grads)?;
        }
        let mut grads = accumulated.finish(&params)?;
        let norm = clip(&mut grads, h.max_grad_norm)?;
        let lr = schedule.lr(s);
        optimizer.step(&params, &grads, lr)?;
        steps.push(StepReport {
            step: r.step,
            lr,
            reference_lr: r.lr,
            loss: loss_sum / tokens as f64,
            reference_loss: r.loss,
            grad_norm: norm,
            reference_grad_norm: r.grad_norm,
        });
    }
    let mut worst = (0f32, String::new());
    let mut diffs = Vec::new();
    for p in model.params() {
        let reference = finals.get(&format!("final.{}", p.name())).ok_or_else(|| {
            ModelError::invalid(format!("train_final.safetensors has no final.{}", p.name()))
        })?;
        let d = rel_norm_diff(p.tensor()?, reference)?;
        diffs.push((p.name().to_string(), d));
        if d > worst.0 || worst.1.is_empty() {
            worst = (d, p.name().to_string());
        }
    }
    let max = |f: &dyn Fn(&StepReport) -> f64| steps.iter().map(f).fold(0.0, f64::max);
    Ok(TrajectoryReport {
        max_loss_rel_diff: max(&|s| rel(s.loss, s.reference_loss)),
        max_lr_rel_diff: max(&|s| rel(s.lr, s.reference_lr)),
        max_grad_norm_rel_diff: max(&|s| rel(s.grad_norm, s.reference_grad_norm)),
        final_weights: worst,
        final_weight_diffs: diffs,
        steps,
    })
}
