//! metrics.jsonl: one JSON record per logged training step and per evaluation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ferrotune_model::ModelError;
use serde_json::json;

use super::progress::Progress;
use super::step::{Loss, Taken};
use super::Result;

/// The run's metrics.jsonl, appended to (a resumed run continues the file); not opened
/// by the processes that do not write (ranks other than 0).
pub(super) struct Metrics {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl Metrics {
    pub(super) fn open(output_dir: &Path, writes: bool) -> Result<Self> {
        let path = output_dir.join("metrics.jsonl");
        let file = if writes {
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| ModelError::file(&path, e.to_string()))?,
            )
        } else {
            None
        };
        Ok(Metrics { file, path })
    }

    pub(super) fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        match &mut self.file {
            Some(file) => {
                writeln!(file, "{record}").map_err(|e| ModelError::file(&self.path, e.to_string()))
            }
            None => Ok(()),
        }
    }
}

/// Drops the records of steps after `step` (written by a run that was interrupted after
/// its last checkpoint), so a resumed run's metrics read as one run.
pub(super) fn truncate(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| ModelError::file(path, e.to_string()))
}

/// Where the run stands after an optimizer step.
pub(super) struct StepPoint {
    /// Optimizer steps taken.
    pub done: usize,
    pub total: usize,
    /// Epochs of micro-batches consumed, fractional.
    pub epoch: f64,
    /// The learning rate the step used.
    pub lr: f64,
}

/// The training figures since the last logged step: its loss is the window's summed loss
/// over its supervised tokens, its rate the window's tokens over its wall time.
pub(super) struct LogWindow {
    loss_sum: f64,
    /// What the loss is a mean over (supervised tokens, or pairs).
    units: usize,
    metric_sums: Vec<f64>,
    supervised_tokens: usize,
    seq_tokens: usize,
    started: Instant,
}

impl LogWindow {
    pub(super) fn new() -> Self {
        LogWindow {
            loss_sum: 0.0,
            units: 0,
            metric_sums: Vec::new(),
            supervised_tokens: 0,
            seq_tokens: 0,
            started: Instant::now(),
        }
    }

    pub(super) fn add(&mut self, step: &Taken) {
        self.loss_sum += step.loss_sum;
        self.units += step.units;
        self.metric_sums.resize(step.metric_sums.len(), 0.0);
        for (sum, v) in self.metric_sums.iter_mut().zip(&step.metric_sums) {
            *sum += v;
        }
        self.supervised_tokens += step.supervised_tokens;
        self.seq_tokens += step.seq_tokens;
    }

    /// Writes the window's record and progress line after the step at `at` (whose gradient
    /// norm and EWC penalty go with it), starts a new window, and returns the window's
    /// train loss. `run_started` gives the ETA.
    pub(super) fn log(
        &mut self,
        at: &StepPoint,
        step: &Taken,
        loss: &Loss,
        run_started: Instant,
        metrics: &mut Metrics,
        progress: &Progress,
    ) -> Result<f64> {
        let StepPoint {
            done,
            total,
            epoch,
            lr,
        } = *at;
        let norm = step.grad_norm;
        let elapsed = self.started.elapsed().as_secs_f64();
        let train_loss = self.loss_sum / self.units.max(1) as f64;
        let rate = self.seq_tokens as f64 / elapsed.max(1e-9);
        let eta = run_started.elapsed().as_secs_f64() / done as f64 * (total - done) as f64;
        let mut record = json!({"step": done, "epoch": epoch, "loss": train_loss, "lr": lr, "grad_norm": norm,
            "tokens_per_s": rate, "supervised_tokens": self.supervised_tokens});
        if let Some(p) = step.ewc_penalty {
            record["ewc_penalty"] = json!(p);
        }
        let mut preference = String::new();
        for (name, value) in loss.metrics(&self.metric_sums, self.units) {
            record[name] = json!(value);
            if matches!(name, "rewards/accuracies" | "rewards/margins" | "kl") {
                preference.push_str(&format!(" · {name} {value:.3}"));
            }
        }
        metrics.write(&record)?;
        progress.line(&format!("step {done}/{total} · epoch {epoch:.2} · loss {train_loss:.4}{preference} · lr {lr:.2e} · grad norm {norm:.3} · {rate:.0} tokens/s · ETA {eta:.0} s"));
        *self = LogWindow::new();
        Ok(train_loss)
    }
}
