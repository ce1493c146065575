//! `ferrotune train CONFIG [KEY=VALUE ...]`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use ferrotune_train::config::file::{ConfigFile, IGNORED_KEYS};
use ferrotune_train::recipe::{self, Run};

#[derive(Debug, Args)]
pub struct TrainCommand {
    /// The YAML config (LLaMA-Factory key names; a LLaMA-Factory config runs as it is).
    config: PathBuf,
    /// Overrides of config keys, e.g. `learning_rate=1e-4 max_steps=20`.
    #[arg(value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Train even when the memory plan says the run does not fit (the config key
    /// `ignore_memory_plan: true`).
    #[arg(long)]
    ignore_memory_plan: bool,
}

pub fn run(cmd: TrainCommand, world: &ferrotune_dist::World) -> Result<()> {
    let mut config = ConfigFile::load(&cmd.config)?;
    for o in &cmd.overrides {
        config.set_override(o)?;
    }
    if cmd.ignore_memory_plan {
        config.set_override("ignore_memory_plan=true")?;
    }
    let ignored: Vec<String> = IGNORED_KEYS
        .iter()
        .filter(|(k, _)| config.values.contains_key(*k))
        .map(|(k, why)| format!("{k} ({why})"))
        .collect();
    if !ignored.is_empty() {
        eprintln!("note: ignoring {}", ignored.join(", "));
    }
    let run = Run::from_config(&config)?;
    let summary = recipe::run(&run, world)?;
    if !world.is_main() {
        return Ok(());
    }
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
