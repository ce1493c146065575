//! The model and what trains: the base weights, then full, freeze or LoRA tuning (a new
//! adapter or one to continue), and the EWC penalty when `ewc_lambda` asks for it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use ferrotune_data::{pipeline, DataArgs};
use ferrotune_dist::World;
use ferrotune_model::hub::resolve_model;
use ferrotune_model::tuning::{
    add_lora, freeze_tuning, load_peft_adapter, train_everything, LoraConfig,
};
use ferrotune_model::weights::{load_model, load_model_quantized, Quantization};
use ferrotune_model::{Batch, CausalLm, Example, ModelError};

use super::Result;
use crate::config::quantization::QuantizationPlan;
use crate::config::{FinetuningType, TrainArgs};
use crate::ewc::Ewc;
use crate::rows::to_example;

/// Where the base model comes from.
pub(super) struct ModelSource {
    /// As the config names it (a folder or a Hub id); an adapter records it as its base.
    pub spec: String,
    /// The folder, a Hub id resolved through the cache.
    pub dir: PathBuf,
}

impl ModelSource {
    pub(super) fn resolve(data: &DataArgs) -> Result<Self> {
        let spec = data
            .model_name_or_path
            .as_ref()
            .ok_or_else(|| ModelError::invalid("model_name_or_path is not set"))?
            .to_string_lossy()
            .into_owned();
        let dir = resolve_model(&spec)?;
        Ok(ModelSource { spec, dir })
    }
}

/// The model set up for training.
pub(super) struct Tuned {
    pub source: ModelSource,
    pub model: CausalLm,
    /// The adapter's settings, when LoRA trains (the outputs are then the adapter).
    pub lora: Option<LoraConfig>,
    pub ewc: Option<Ewc>,
    /// How the base's frozen matrices are held, when not as loaded in f32 (a quantized
    /// or bf16 base), recorded with the adapter for inference and export.
    pub base_storage: Option<Quantization>,
}

impl Tuned {
    /// Loads the base model in f32 and sets up what trains; `data` are the run's data keys
    /// (the EWC reference data is read with them).
    pub(super) fn load(
        source: ModelSource,
        t: &TrainArgs,
        data: &DataArgs,
        output_dir: &Path,
        device: &Device,
        quantization: &QuantizationPlan,
        world: &World,
    ) -> Result<Self> {
        let bf16 = t.bf16 && ferrotune_model::ops::bf16::has_avx512_bf16();
        let base_storage = t.base_storage(quantization);
        let mut model = match base_storage {
            Some(q) => load_model_quantized(&source.dir, q, DType::F32, device)?,
            None => load_model(&source.dir, DType::F32, device)?,
        };
        let lora = choose_trainable(&mut model, t, data.seed)?;
        if bf16 {
            let n = model.use_bf16_products()?;
            eprintln!(
                "bf16: {n} frozen matrices multiply in bf16 with f32 sums (AVX512-BF16); what \
                 trains, norms, softmax, the loss and AdamW stay f32"
            );
        }
        let ewc = setup_ewc(&model, t, data, (output_dir, device), world)?;
        Ok(Tuned {
            source,
            model,
            lora,
            ewc,
            base_storage,
        })
    }
}

/// Sets up what trains, as the config says.
fn choose_trainable(model: &mut CausalLm, t: &TrainArgs, seed: u64) -> Result<Option<LoraConfig>> {
    match t.finetuning_type {
        FinetuningType::Full => {
            train_everything(model)?;
            Ok(None)
        }
        FinetuningType::Freeze => {
            let n = t.freeze_trainable_layers;
            freeze_tuning(model, n.unsigned_abs() as usize, n < 0)?;
            Ok(None)
        }
        FinetuningType::Lora => {
            if let Some(dir) = &t.adapter_name_or_path {
                return Ok(Some(load_peft_adapter(model, dir)?));
            }
            let config = LoraConfig {
                rank: t.lora_rank,
                alpha: t.lora_alpha.unwrap_or(2.0 * t.lora_rank as f64),
                dropout: t.lora_dropout,
                targets: t
                    .lora_target
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect(),
                use_rslora: t.use_rslora,
            };
            add_lora(model, &config, seed)?;
            Ok(Some(config))
        }
    }
}

/// The EWC penalty, when `ewc_lambda` is set: a Fisher loaded from `ewc_fisher` or
/// estimated on `ewc_dataset` (its batches split over the processes), saved to
/// `output_dir/ewc_fisher.safetensors` for reuse.
fn setup_ewc(
    model: &CausalLm,
    t: &TrainArgs,
    data: &DataArgs,
    (output_dir, device): (&Path, &Device),
    world: &World,
) -> Result<Option<Ewc>> {
    let Some(lambda) = t.ewc_lambda.filter(|l| *l > 0.0) else {
        return Ok(None);
    };
    let params = model.trainable_params();
    let ewc = match (&t.ewc_fisher, &t.ewc_dataset) {
        (Some(path), _) => Ewc::load(&params, path, lambda)?,
        (None, Some(names)) => {
            let mut reference = data.only_datasets();
            reference.dataset = names
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            reference.max_samples = Some(t.ewc_samples);
            let prepared = pipeline::prepare(&reference, None)
                .map_err(|e| ModelError::invalid(format!("EWC reference data: {e}")))?;
            let examples: Vec<Example> = prepared
                .samples
                .iter()
                .map(|s| to_example(&s.encoded))
                .collect();
            // Batches of the global batch size, so that the Fisher (a mean of squared batch
            // gradients) does not depend on how many processes share the run.
            let global_batch = t.per_device_train_batch_size.max(1) * world.size();
            let batches = examples
                .chunks(global_batch)
                .map(|c| Batch::padded(c, prepared.pad.id, 8, device))
                .collect::<candle_core::Result<Vec<_>>>()?;
            eprintln!(
                "EWC: estimating the Fisher information on {} reference samples",
                examples.len()
            );
            Ewc::estimate(model, &batches, lambda, &**world)?
        }
        (None, None) => {
            return Err(ModelError::invalid(
                "ewc_lambda needs ewc_dataset (reference data) or ewc_fisher (a saved Fisher)",
            ))
        }
    };
    if world.is_main() {
        ewc.save(&params, &output_dir.join("ewc_fisher.safetensors"))?;
    }
    Ok(Some(ewc))
}
