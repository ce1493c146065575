//! The SFT / continued-pretraining recipe, laid out as torchtune's single-device recipes
//! are:
//!
//! - setup (`setup`): the output folder, the data (`data`), the model and what trains
//!   (`tuning`), the plan and its learning-rate schedule, AdamW and the resume point;
//! - the loop (`train_loop`): for each optimizer step its micro-batches and the step
//!   (`step`: forward/backward with the loss normalised over the whole window, clip,
//!   AdamW), then the log line (`metrics`), the evaluation (`evaluate`) and the
//!   checkpoint (`save`) when each is due;
//! - the outputs (`save`): the adapter or the model, the config, the plot, the summary.
//!
//! Launched as several processes (`mpirun`, `srun`), every process runs this same recipe
//! on the same global batches and computes its share of each (`crate::distributed`);
//! rank 0 alone writes files.

mod data;
mod evaluate;
mod memory_check;
mod metrics;
mod progress;
mod reference;
mod save;
mod setup;
mod step;
mod train_loop;
mod tuning;

use std::path::PathBuf;

use ferrotune_data::config::DATA_KEYS;
use ferrotune_data::DataArgs;
use ferrotune_dist::World;
use ferrotune_model::ModelError;

use crate::config::file::ConfigFile;
use crate::config::{TrainArgs, TRAIN_ARG_KEYS};

type Result<T> = std::result::Result<T, ModelError>;

/// What a finished run reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub steps: usize,
    pub wall_seconds: f64,
    pub tokens_per_second: f64,
    pub final_train_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub output_dir: PathBuf,
}

/// Everything a run needs; `resolved` is the fully resolved config, saved with the output.
pub struct Run {
    pub data: DataArgs,
    pub train: TrainArgs,
    pub resolved: serde_json::Value,
}

impl Run {
    /// The run a config file describes. Every value is read here, so a value of the wrong
    /// type or outside its key's choices is an error before any data or model is read.
    pub fn from_config(config: &ConfigFile) -> Result<Run> {
        let mut data: DataArgs = config.section(DATA_KEYS)?;
        data.resolve_paths(&config.dir());
        data.use_default_cache();
        let train: TrainArgs = config.section(TRAIN_ARG_KEYS)?;
        let mut resolved = serde_json::to_value(&train)
            .map_err(|e| ModelError::invalid(format!("the training keys: {e}")))?;
        for (k, v) in &config.values {
            if DATA_KEYS.contains(&k.as_str()) {
                resolved[k] = v.clone();
            }
        }
        // Paths as this run resolved them, so a later run can replay this one's data.
        resolved["dataset_dir"] = data.dataset_dir.display().to_string().into();
        resolved["cutoff_len"] = data.cutoff_len.into();
        resolved["seed"] = data.seed.into();
        Ok(Run {
            data,
            train,
            resolved,
        })
    }
}

/// The process's peak resident memory, from /proc (Linux); None elsewhere.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

/// Runs the whole recipe as one process of `world`. Progress goes to stderr; returns the
/// summary.
pub fn run(run: &Run, world: &World) -> Result<Summary> {
    let mut setup = setup::setup(run, world)?;
    let trained = train_loop::train(run, &mut setup, world)?;
    if world.is_main() {
        save::trained_model(&setup)?;
    }
    save::summary(run, &setup, &trained, world.is_main())
}

/// A failed collective operation, as the recipe's error.
fn dist_error(e: ferrotune_dist::DistError) -> ModelError {
    ModelError::invalid(e.to_string())
}
