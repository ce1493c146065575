//! Learning-rate schedules with linear warmup, computed as transformers computes them
//! (`get_*_schedule_with_warmup`), in f64, so they match to the last bit.

use std::str::FromStr;

use crate::config::{Choice, LrSchedulerType};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
    /// Cosine decay to `min_lr_rate * base_lr` instead of 0.
    CosineWithMinLr {
        min_lr_rate: f64,
    },
}

/// The schedule an `lr_scheduler_type` name stands for.
impl FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        LrSchedulerType::parse(s).map(LrSchedulerType::kind)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// Warmup steps from `warmup_steps` when set, else `ceil(warmup_ratio * total)` as
    /// transformers' `get_warmup_steps` computes it.
    pub fn warmup_from(warmup_steps: usize, warmup_ratio: f64, total_steps: usize) -> usize {
        if warmup_steps > 0 {
            warmup_steps
        } else {
            (warmup_ratio * total_steps as f64).ceil() as usize
        }
    }

    /// The multiplier of the base learning rate at optimizer step `step` (0-based: the
    /// first update uses step 0).
    pub fn factor(&self, step: usize) -> f64 {
        let (w, t) = (self.warmup_steps, self.total_steps);
        if step < w {
            return step as f64 / w.max(1) as f64;
        }
        let progress = (step - w) as f64 / t.saturating_sub(w).max(1) as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                (t.saturating_sub(step) as f64 / t.saturating_sub(w).max(1) as f64).max(0.0)
            }
            ScheduleKind::Cosine => {
                (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
            }
            ScheduleKind::CosineWithMinLr { min_lr_rate } => {
                let f = 0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos());
                (f * (1.0 - min_lr_rate) + min_lr_rate).max(0.0)
            }
        }
    }

    pub fn lr(&self, step: usize) -> f64 {
        self.base_lr * self.factor(step)
    }
}
