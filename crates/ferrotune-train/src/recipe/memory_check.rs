//! The memory plan (`ferrotune_model::memory`), checked before the data or the weights are
//! read: a run that cannot fit in the memory this process may use stops here, with the
//! plan and what would fit, instead of failing an allocation halfway through loading.

use std::path::Path;

use ferrotune_data::DataArgs;
use ferrotune_model::gguf::{storage_summary, GgufSource};
use ferrotune_model::memory::{
    available_bytes, human, parse_size, plan, what_would_fit, MemoryPlan, PlanInput, Tuning,
    WeightStorage,
};
use ferrotune_model::{ModelConfig, ModelError};

use super::Result;
use crate::config::quantization::QuantizationPlan;
use crate::config::{FinetuningType, TrainArgs};
use crate::parallel::Workers;

/// What the plan is for: the config's tuning, batch, cutoff_len and checkpointing, and
/// the base as it will be held.
fn plan_input(
    t: &TrainArgs,
    data: &DataArgs,
    model_dir: &Path,
    quantization: &QuantizationPlan,
) -> Result<PlanInput> {
    let storage = match (
        GgufSource::of_folder(model_dir)?,
        t.base_storage(quantization),
    ) {
        (Some(source), _) => {
            WeightStorage::Bytes(storage_summary(&source.file)?.iter().map(|r| r.2).sum())
        }
        (None, Some(q)) => WeightStorage::Types {
            matrices: q.matrices,
            embeddings: q.embeddings,
        },
        (None, None) => WeightStorage::F32,
    };
    let tuning = match t.finetuning_type {
        FinetuningType::Full => Tuning::Full,
        FinetuningType::Lora => Tuning::Lora { rank: t.lora_rank },
        FinetuningType::Freeze => Tuning::Freeze {
            layers: t.freeze_trainable_layers.unsigned_abs() as usize,
        },
    };
    Ok(PlanInput {
        tuning,
        storage,
        batch: t.per_device_train_batch_size.max(1),
        // A preference row holds two sequences of up to cutoff_len each.
        seq_len: match data.stage {
            ferrotune_data::Stage::Dpo | ferrotune_data::Stage::Kto => 2 * data.cutoff_len.max(1),
            _ => data.cutoff_len.max(1),
        },
        checkpointing: t.checkpointing(),
        shards: Workers::shards_for(t.per_device_train_batch_size, t.cpu_data_parallel),
    })
}

fn table(p: &MemoryPlan) -> String {
    format!(
        "weights {}, adapters/gradients/optimizer {}, activations {}, head {}, process {}",
        human(p.weights_bytes),
        human(p.trainable_bytes),
        human(p.activations_bytes),
        human(p.head_bytes),
        human(p.overhead_bytes)
    )
}

/// Prints the plan and stops the run when it does not fit in `memory_limit` (or the memory
/// available to the process), unless `ignore_memory_plan` is set.
pub(super) fn check(
    t: &TrainArgs,
    data: &DataArgs,
    model_dir: &Path,
    quantization: &QuantizationPlan,
) -> Result<()> {
    let config = ModelConfig::from_file(&model_dir.join("config.json"))?;
    let input = plan_input(t, data, model_dir, quantization)?;
    let p = plan(&config, &input);
    let limit = match &t.memory_limit {
        Some(text) => Some(parse_size(text).ok_or_else(|| {
            ModelError::invalid(format!(
                "memory_limit {text:?} is not a size: write e.g. 24GiB, 512MiB or a number of bytes"
            ))
        })?),
        None => available_bytes(),
    };
    let Some(limit) = limit else {
        eprintln!(
            "memory plan: peak {} ({}); the memory available could not be read",
            human(p.total_bytes),
            table(&p)
        );
        return Ok(());
    };
    let source = if t.memory_limit.is_some() {
        "memory_limit"
    } else {
        "available"
    };
    eprintln!(
        "memory plan: peak {} of {} {source} ({})",
        human(p.total_bytes),
        human(limit),
        table(&p)
    );
    if p.total_bytes <= limit {
        return Ok(());
    }
    if t.ignore_memory_plan {
        eprintln!("warning: the plan does not fit; going on as ignore_memory_plan says");
        return Ok(());
    }
    let fits = what_would_fit(&config, &input, limit);
    let advice = if fits.is_empty() {
        "nothing the plan can change fits: a smaller model, or a machine with more memory"
            .to_string()
    } else {
        fits.iter()
            .map(|(what, bytes)| format!("  - {what}: {}", human(*bytes)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Err(ModelError::invalid(format!(
        "this run needs about {} and {} are {source} (base held as {}, batch {} x {} tokens, \
         gradient checkpointing {}): {}.\nWhat would fit:\n{advice}\n(memory_limit sets the \
         limit; --ignore-memory-plan runs anyway)",
        human(p.total_bytes),
        human(limit),
        input.storage.describe(),
        input.batch,
        input.seq_len,
        if input.checkpointing { "on" } else { "off" },
        table(&p)
    )))
}
