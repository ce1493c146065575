//! The training keys of a config file, with LLaMA-Factory's names and defaults; the keys
//! whose value is a fixed set of names (`choices`); reading the YAML file (`file`).

pub mod choices;
pub mod file;
pub mod quantization;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use choices::{
    Choice, EvalStrategy, FinetuningType, LrSchedulerType, PrefLossChoice, SaveStrategy,
};

/// Keys the trainer reads (the data keys are `ferrotune_data::config::DATA_KEYS`).
pub const TRAIN_ARG_KEYS: &[&str] = &[
    "finetuning_type",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "use_rslora",
    "freeze_trainable_layers",
    "adapter_name_or_path",
    "output_dir",
    "overwrite_output_dir",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "logging_steps",
    "save_steps",
    "save_strategy",
    "save_total_limit",
    "eval_steps",
    "eval_strategy",
    "val_size",
    "bf16",
    "fp16",
    "resume_from_checkpoint",
    "group_by_length",
    "gradient_checkpointing",
    "disable_gradient_checkpointing",
    "cpu_data_parallel",
    "ewc_lambda",
    "ewc_dataset",
    "ewc_fisher",
    "ewc_samples",
    "eval_dataset",
    "quantization_bit",
    "quantization_type",
    "double_quantization",
    "quantization_method",
    "memory_limit",
    "ignore_memory_plan",
    "pref_loss",
    "pref_beta",
    "pref_ftx",
    "simpo_gamma",
    "dpo_label_smoothing",
    "pref_bco_weight",
    "ld_alpha",
    "ref_model",
    "ref_model_adapters",
    "ref_model_quantization_bit",
    "use_ref_model",
    "kto_chosen_weight",
    "kto_rejected_weight",
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct TrainArgs {
    #[serde(deserialize_with = "choices::read", serialize_with = "choices::write")]
    pub finetuning_type: FinetuningType,
    pub lora_rank: usize,
    /// Defaults to twice the rank, as in LLaMA-Factory.
    pub lora_alpha: Option<f64>,
    pub lora_dropout: f32,
    /// `all` or comma-separated module names.
    pub lora_target: String,
    pub use_rslora: bool,
    /// Positive: the last N layers train; negative: the first N.
    pub freeze_trainable_layers: i64,
    /// A PEFT adapter to continue training.
    pub adapter_name_or_path: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub overwrite_output_dir: bool,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub num_train_epochs: f64,
    /// Overrides the epochs when positive.
    pub max_steps: i64,
    #[serde(deserialize_with = "choices::read", serialize_with = "choices::write")]
    pub lr_scheduler_type: LrSchedulerType,
    pub warmup_ratio: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub logging_steps: usize,
    pub save_steps: usize,
    #[serde(
        deserialize_with = "choices::read_strategy",
        serialize_with = "choices::write"
    )]
    pub save_strategy: SaveStrategy,
    pub save_total_limit: Option<usize>,
    pub eval_steps: Option<usize>,
    #[serde(
        deserialize_with = "choices::read_strategy",
        serialize_with = "choices::write"
    )]
    pub eval_strategy: EvalStrategy,
    /// A fraction (< 1) or a count of samples held out for evaluation.
    pub val_size: f64,
    pub bf16: bool,
    pub fp16: bool,
    /// A checkpoint folder, or `auto` for the newest in output_dir.
    pub resume_from_checkpoint: Option<String>,
    /// Batches of similar lengths (less padding), as transformers' LengthGroupedSampler.
    pub group_by_length: bool,
    /// Recompute each decoder layer's activations in the backward pass instead of keeping
    /// them (less memory, one more forward pass of the layers). transformers' key; on by
    /// default, as in LLaMA-Factory (`disable_gradient_checkpointing: false`), so that the
    /// activations of a long sequence fit; `gradient_checkpointing: false` or
    /// `disable_gradient_checkpointing: true` turns it off.
    pub gradient_checkpointing: bool,
    /// LLaMA-Factory's switch; `true` wins over `gradient_checkpointing`.
    pub disable_gradient_checkpointing: bool,
    /// On the CPU with several threads, split each micro-batch by rows into one shard per
    /// thread and run the shards side by side (`ferrotune_train::parallel`); false runs
    /// each micro-batch whole, every operation spread over the threads. ferrotune's key.
    pub cpu_data_parallel: bool,
    /// EWC strength; 0 or absent: off.
    pub ewc_lambda: Option<f64>,
    /// Reference data (dataset names, comma-separated) for the EWC Fisher estimate.
    pub ewc_dataset: Option<String>,
    /// A Fisher saved by an earlier run (`ewc_fisher.safetensors`), instead of estimating.
    pub ewc_fisher: Option<PathBuf>,
    /// Reference samples used for the estimate.
    pub ewc_samples: usize,
    /// Datasets to evaluate on (names or paths, comma-separated or a list), as
    /// LLaMA-Factory's `eval_dataset`.
    #[serde(deserialize_with = "ferrotune_data::config::optional_names")]
    pub eval_dataset: Option<Vec<String>>,
    /// Quantize the frozen base when it loads: 4 or 8 (`config::quantization`).
    pub quantization_bit: Option<u32>,
    /// nf4 / fp4 (bitsandbytes' names, mapped to q4_k) or a GGUF type name (q4_0, q5_k, ...).
    pub quantization_type: Option<String>,
    /// bitsandbytes' quantized scales; accepted (q4_k's scales are quantized already).
    pub double_quantization: bool,
    /// bitsandbytes, hqq or eetq: accepted with a note (GPU libraries).
    pub quantization_method: Option<String>,
    /// The memory the run may use (`24GiB`, `512MiB`, bytes), instead of what the machine
    /// has available: the memory plan is checked against it. ferrotune's key.
    pub memory_limit: Option<String>,
    /// Train even when the memory plan does not fit (`train --ignore-memory-plan`).
    pub ignore_memory_plan: bool,
    /// `stage: dpo`'s loss (LLaMA-Factory's keys from here on).
    #[serde(deserialize_with = "choices::read", serialize_with = "choices::write")]
    pub pref_loss: PrefLossChoice,
    pub pref_beta: f64,
    /// The weight of an added SFT term on the chosen answers.
    pub pref_ftx: f64,
    pub simpo_gamma: f64,
    pub dpo_label_smoothing: f64,
    /// BCO's term mixed into DPO: refused unless 0.
    pub pref_bco_weight: f64,
    /// LD-DPO's weight of the tokens past the shorter answer: refused unless unset or 1.
    pub ld_alpha: Option<f64>,
    /// A model of its own as the reference (a folder or a Hub id), and adapters on it
    /// (or on the base): loaded alone for one pass before training. Without either, the
    /// reference is the model as it stands before the first step.
    pub ref_model: Option<PathBuf>,
    pub ref_model_adapters: Option<PathBuf>,
    pub ref_model_quantization_bit: Option<u32>,
    /// TRL's switch for a reference-free sigmoid loss: refused when false.
    pub use_ref_model: Option<bool>,
    /// `stage: kto`: the weights of desirable and undesirable examples' losses.
    pub kto_chosen_weight: f64,
    pub kto_rejected_weight: f64,
}

impl Default for TrainArgs {
    fn default() -> Self {
        TrainArgs {
            finetuning_type: FinetuningType::Lora,
            lora_rank: 8,
            lora_alpha: None,
            lora_dropout: 0.0,
            lora_target: "all".into(),
            use_rslora: false,
            freeze_trainable_layers: 2,
            adapter_name_or_path: None,
            output_dir: None,
            overwrite_output_dir: false,
            per_device_train_batch_size: 1,
            per_device_eval_batch_size: 1,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            num_train_epochs: 3.0,
            max_steps: -1,
            lr_scheduler_type: LrSchedulerType::Linear,
            warmup_ratio: 0.0,
            warmup_steps: 0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            logging_steps: 10,
            save_steps: 500,
            save_strategy: SaveStrategy::Steps,
            save_total_limit: None,
            eval_steps: None,
            eval_strategy: EvalStrategy::No,
            val_size: 0.0,
            bf16: false,
            fp16: false,
            resume_from_checkpoint: None,
            group_by_length: false,
            gradient_checkpointing: true,
            disable_gradient_checkpointing: false,
            cpu_data_parallel: true,
            ewc_lambda: None,
            ewc_dataset: None,
            ewc_fisher: None,
            ewc_samples: 256,
            eval_dataset: None,
            quantization_bit: None,
            quantization_type: None,
            double_quantization: true,
            quantization_method: None,
            memory_limit: None,
            ignore_memory_plan: false,
            pref_loss: PrefLossChoice::Sigmoid,
            pref_beta: 0.1,
            pref_ftx: 0.0,
            simpo_gamma: 0.5,
            dpo_label_smoothing: 0.0,
            pref_bco_weight: 0.0,
            ld_alpha: None,
            ref_model: None,
            ref_model_adapters: None,
            ref_model_quantization_bit: None,
            use_ref_model: None,
            kto_chosen_weight: 1.0,
            kto_rejected_weight: 1.0,
        }
    }
}

impl TrainArgs {
    /// Settings ferrotune parses but does not implement yet: a clear error, never a silent
    /// fallback.
    pub fn unsupported(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.fp16 {
            out.push("fp16 (use bf16, or neither for f32)".to_string());
        }
        if self.pref_bco_weight != 0.0 {
            out.push(format!(
                "pref_bco_weight {} (BCO mixed into DPO; set it to 0)",
                self.pref_bco_weight
            ));
        }
        if self.ld_alpha.is_some_and(|a| a != 1.0) {
            out.push("ld_alpha (LD-DPO's length weighting; remove the key)".to_string());
        }
        if self.ref_model_quantization_bit.is_some() {
            out.push("ref_model_quantization_bit (a ref_model loads in f32 for its one pass before training and is dropped; leave ref_model unset to use the policy's own base, held as quantization_bit says)".to_string());
        }
        if self.use_ref_model == Some(false) {
            out.push("use_ref_model: false (for a loss without a reference, use pref_loss: orpo or simpo)".to_string());
        }
        out
    }

    /// KTO's settings.
    pub fn kto_config(&self) -> ferrotune_model::ops::preference::KtoConfig {
        ferrotune_model::ops::preference::KtoConfig {
            beta: self.pref_beta,
            desirable_weight: self.kto_chosen_weight,
            undesirable_weight: self.kto_rejected_weight,
        }
    }

    /// The preference loss's settings.
    pub fn pref_config(&self) -> ferrotune_model::ops::preference::PrefConfig {
        ferrotune_model::ops::preference::PrefConfig {
            loss: self.pref_loss.loss(),
            beta: self.pref_beta,
            label_smoothing: self.dpo_label_smoothing,
            simpo_gamma: self.simpo_gamma,
            ftx: self.pref_ftx,
        }
    }

    /// Whether decoder layers are recomputed in the backward pass.
    pub fn checkpointing(&self) -> bool {
        self.gradient_checkpointing && !self.disable_gradient_checkpointing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unquoted_no_strategy_reads_as_no() {
        let t: TrainArgs = serde_json::from_value(
            serde_json::json!({"eval_strategy": false, "save_strategy": "epoch"}),
        )
        .unwrap();
        assert_eq!(
            (t.eval_strategy, t.save_strategy),
            (EvalStrategy::No, SaveStrategy::Epoch)
        );
        let e = serde_json::from_value::<TrainArgs>(serde_json::json!({"save_strategy": true}));
        assert!(e.unwrap_err().to_string().contains("not true"));
    }

    #[test]
    fn choices_are_written_back_as_the_config_spells_them() {
        let t: TrainArgs = serde_json::from_value(serde_json::json!({
            "finetuning_type": "full",
            "lr_scheduler_type": "constant_with_warmup",
            "eval_strategy": "steps",
        }))
        .unwrap();
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["finetuning_type"], "full");
        assert_eq!(v["lr_scheduler_type"], "constant_with_warmup");
        assert_eq!(v["eval_strategy"], "steps");
        assert_eq!(v["save_strategy"], "steps");
    }

    #[test]
    fn a_misspelt_choice_fails_when_the_config_is_read() {
        let e = serde_json::from_value::<TrainArgs>(serde_json::json!({"eval_strategy": "stpes"}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "`eval_strategy`: unknown value \"stpes\" (did you mean `steps`?); accepted values: no, steps, epoch"
        );
    }
}
