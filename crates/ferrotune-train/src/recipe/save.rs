//! Saving: checkpoints during the run, then the outputs (the adapter or the model, the
//! template and tokenizer, the resolved config, the loss plot, the summary).

use std::path::{Path, PathBuf};

use ferrotune_model::gguf::{record_adapter_base, GgufSource};
use ferrotune_model::save::{save_model, SaveOptions};
use ferrotune_model::tuning::save_peft_adapter;
use ferrotune_model::ModelError;
use serde_json::json;

use super::setup::Setup;
use super::train_loop::Trained;
use super::{peak_rss_mib, Result, Run, Summary};
use crate::checkpoint;
use crate::config::SaveStrategy;

/// When checkpoints fall: every `save_steps` steps or at the end of every epoch, never
/// after the last step (the outputs follow it).
pub(super) struct SaveSchedule {
    pub strategy: SaveStrategy,
    pub save_steps: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
}

impl SaveSchedule {
    pub(super) fn is_due(&self, done: usize) -> bool {
        let due = match self.strategy {
            SaveStrategy::Steps => self.save_steps > 0 && done.is_multiple_of(self.save_steps),
            SaveStrategy::Epoch => done.is_multiple_of(self.steps_per_epoch),
            SaveStrategy::No => false,
        };
        due && done < self.total_steps
    }
}

/// A checkpoint that the run can resume from exactly; returns its folder.
pub(super) fn checkpoint(setup: &Setup, keep: Option<usize>) -> Result<PathBuf> {
    let params = setup.tuned.model.trainable_params();
    checkpoint::save(
        &setup.output_dir,
        &params,
        &setup.optimizer,
        &setup.state,
        keep,
    )
}

/// The trained adapter (with the tokenizer and template beside it, so inference uses the
/// same) or the whole model (which carries them).
pub(super) fn trained_model(setup: &Setup) -> Result<()> {
    let output_dir = &setup.output_dir;
    let prepared = &setup.data.prepared;
    let template = prepared
        .template
        .as_ref()
        .map(|tpl| tpl.source().to_string());
    match &setup.tuned.lora {
        Some(config) => {
            save_peft_adapter(
                &setup.tuned.model,
                config,
                output_dir,
                Some(setup.tuned.source.spec.as_str()),
            )?;
            record_adapter_base(output_dir, &setup.tuned.source.dir)?;
            let in_place = GgufSource::of_folder(&setup.tuned.source.dir)?.is_some();
            if let (Some(storage), false) = (&setup.tuned.base_storage, in_place) {
                storage.record_for_adapter(output_dir)?;
            }
            copy_tokenizer(&prepared.tokenizer.dir, output_dir, template.as_deref())
        }
        None => {
            let options = SaveOptions {
                tokenizer_dir: Some(&prepared.tokenizer.dir),
                chat_template: template.as_deref(),
                ..SaveOptions::default()
            };
            save_model(&setup.tuned.model, output_dir, &options)
        }
    }
}

/// train_config.json, loss.png and train_summary.json (when this process `writes`);
/// returns the summary.
pub(super) fn summary(
    run: &Run,
    setup: &Setup,
    trained: &Trained,
    writes: bool,
) -> Result<Summary> {
    let output_dir = &setup.output_dir;
    let wall = trained.started.elapsed().as_secs_f64();
    let summary = Summary {
        steps: setup.state.global_step,
        wall_seconds: wall,
        tokens_per_second: trained.seq_tokens as f64 / wall.max(1e-9),
        final_train_loss: trained.last_train_loss,
        final_eval_loss: trained.last_eval_loss,
        peak_rss_mib: peak_rss_mib(),
        output_dir: output_dir.clone(),
    };
    if !writes {
        return Ok(summary);
    }
    write_json(&output_dir.join("train_config.json"), &run.resolved)?;
    let metrics = output_dir.join("metrics.jsonl");
    let (train_losses, eval_losses) = crate::plot::read_losses(&metrics);
    if let Err(e) =
        crate::plot::plot_losses(&train_losses, &eval_losses, &output_dir.join("loss.png"))
    {
        eprintln!("warning: no loss plot: {e}");
    }
    if let Err(e) = crate::plot::plot_rewards(&metrics, &output_dir.join("rewards.png")) {
        eprintln!("warning: no rewards plot: {e}");
    }
    write_json(&output_dir.join("train_summary.json"), &json!(summary))?;
    Ok(summary)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| ModelError::file(path, e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| ModelError::file(path, e.to_string()))
}

/// Tokenizer files and the training template beside an adapter.
fn copy_tokenizer(from: &Path, to: &Path, template: Option<&str>) -> Result<()> {
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let src = from.join(file);
        if src.is_file() {
            std::fs::copy(&src, to.join(file))
                .map_err(|e| ModelError::file(&src, e.to_string()))?;
        }
    }
    if let Some(template) = template {
        let path = to.join("chat_template.jinja");
        std::fs::write(&path, template).map_err(|e| ModelError::file(&path, e.to_string()))?;
    }
    Ok(())
}
