//! `ferrotune train CONFIG [KEY=VALUE ...]`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ferrotune_data::config::{DataArgs, DATA_KEYS};
use ferrotune_train::config::{TrainArgs, TRAIN_ARG_KEYS};
use ferrotune_train::recipe::{self, Run};
use serde_json::Value;

use crate::config::{ConfigFile, IGNORED_KEYS};

#[derive(Debug, Args)]
pub struct TrainCommand {
    /// The YAML config (LLaMA-Factory key names; a LLaMA-Factory config runs as it is).
    config: PathBuf,
    /// Overrides of config keys, e.g. `learning_rate=1e-4 max_steps=20`.
    #[arg(value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(cmd: TrainCommand) -> Result<()> {
    let mut config = ConfigFile::load(&cmd.config)?;
    for o in &cmd.overrides {
        let (key, value) = o
            .split_once('=')
            .with_context(|| format!("override {o:?} is not KEY=VALUE"))?;
        crate::config::check_key(key)?;
        let value: Value =
            serde_saphyr::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        config.values.insert(key.to_string(), value);
    }
    let ignored: Vec<String> = IGNORED_KEYS
        .iter()
        .filter(|(k, _)| config.values.contains_key(*k))
        .map(|(k, why)| format!("{k} ({why})"))
        .collect();
    if !ignored.is_empty() {
        eprintln!("note: ignoring {}", ignored.join(", "));
    }
    let mut data: DataArgs = config.section(DATA_KEYS)?;
    data.resolve_paths(&config.dir());
    data.use_default_cache();
    let train: TrainArgs = config.section(TRAIN_ARG_KEYS)?;
    let mut resolved = serde_json::to_value(&train).expect("serializable");
    for (k, v) in &config.values {
        if DATA_KEYS.contains(&k.as_str()) {
            resolved[k] = v.clone();
        }
    }
    // Paths as this run resolved them, so a later run can replay this one's data.
    resolved["dataset_dir"] = data.dataset_dir.display().to_string().into();
    resolved["cutoff_len"] = data.cutoff_len.into();
    resolved["seed"] = data.seed.into();
    let summary = recipe::run(&Run {
        data,
        train,
        resolved,
    })?;
    eprintln!(
        "done: {} steps in {:.0} s ({:.0} tokens/s){}{}{}; output in {}",
        summary.steps,
        summary.wall_seconds,
        summary.tokens_per_second,
        summary
            .final_train_loss
            .map(|l| format!(", final train loss {l:.4}"))
            .unwrap_or_default(),
        summary
            .final_eval_loss
            .map(|l| format!(", eval loss {l:.4}"))
            .unwrap_or_default(),
        summary
            .peak_rss_mib
            .map(|m| format!(", peak memory {m:.0} MiB"))
            .unwrap_or_default(),
        summary.output_dir.display()
    );
    Ok(())
}
