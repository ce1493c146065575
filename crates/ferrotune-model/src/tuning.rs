//! What trains: LoRA adapters (PEFT-compatible, saved and loaded in PEFT's layout) or the
//! last N decoder layers (LLaMA-Factory's freeze tuning), or everything.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::error::{ModelError, Result};
use crate::linear::LoraWeights;
use crate::llama::CausalLm;
use crate::param::Param;

/// Every linear projection LoRA can target.
pub const LINEAR_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    /// Module names (`q_proj`, ...); `all` expands to every linear projection.
    pub targets: Vec<String>,
    /// rsLoRA: scale by alpha / sqrt(rank) instead of alpha / rank.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec!["all".into()],
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// The module names targeted, with `all` expanded, checked against the known ones.
    pub fn target_modules(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for t in &self.targets {
            match t.as_str() {
                "all" | "all-linear" => out.extend(LINEAR_MODULES.iter().map(|s| s.to_string())),
                name if LINEAR_MODULES.contains(&name) => out.push(name.to_string()),
                other => {
                    return Err(ModelError::invalid(format!(
                        "unknown LoRA target {other:?}; use `all` or some of {}",
                        LINEAR_MODULES.join(", ")
                    )))
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Freezes every weight, then adds LoRA adapters to the targeted projections: A
/// initialised as PEFT does (Kaiming-uniform, bound 1/sqrt(in_features)), B zero, so the
/// model starts out unchanged. Returns the number of adapted projections.
pub fn add_lora(model: &mut CausalLm, config: &LoraConfig, seed: u64) -> Result<usize> {
    let targets = config.target_modules()?;
    if config.rank == 0 {
        return Err(ModelError::invalid("lora_rank must be at least 1"));
    }
    for p in model.params_mut() {
        p.set_trainable(false)?;
    }
    let device = model.device().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut count = 0;
    for (path, lin) in model.linears_mut() {
        if !targets.iter().any(|t| path.ends_with(&format!(".{t}"))) {
            continue;
        }
        let (out_f, in_f) = (lin.out_features(), lin.in_features());
        let bound = 1.0 / (in_f as f32).sqrt();
        let a: Vec<f32> = (0..config.rank * in_f)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_vec(a, (config.rank, in_f), &device)?;
        let b = Tensor::zeros((out_f, config.rank), DType::F32, &device)?;
        lin.lora = Some(LoraWeights {
            a: Param::trainable(format!("{path}.lora_A.default.weight"), a)?,
            b: Param::trainable(format!("{path}.lora_B.default.weight"), b)?,
            scale: config.scale(),
            dropout: config.dropout,
        });
        count += 1;
    }
    Ok(count)
}

/// Loads a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)
/// onto the model; its weights become trainable (continuing the adapter).
pub fn load_peft_adapter(model: &mut CausalLm, dir: &Path) -> Result<LoraConfig> {
    let config_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| ModelError::file(&config_path, format!("cannot read: {e}")))?;
    let c: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::file(&config_path, format!("malformed JSON: {e}")))?;
    let bad = |p: String| ModelError::file(&config_path, p);
    if let Some(t) = c.get("peft_type").and_then(Value::as_str) {
        if t != "LORA" {
            return Err(bad(format!("peft_type {t} is not supported (only LORA)")));
        }
    }
    for key in ["use_dora", "lora_bias", "fan_in_fan_out"] {
        if c.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(bad(format!("{key} adapters are not supported")));
        }
    }
    if c.get("bias")
        .and_then(Value::as_str)
        .is_some_and(|b| b != "none")
    {
        return Err(bad(
            "adapters that train biases are not supported (bias must be \"none\")".into(),
        ));
    }
    if c.get("modules_to_save").is_some_and(|m| !m.is_null()) {
        return Err(bad("modules_to_save is not supported".into()));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if c.get(key)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(format!("{key} is not supported")));
        }
    }
    let targets = match c.get("target_modules") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => return Err(bad("has no target_modules".into())),
    };
    let config = LoraConfig {
        rank: c
            .get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("has no r".into()))? as usize,
        alpha: c.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0),
        dropout: c.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32,
        targets,
        use_rslora: c
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    add_lora(model, &config, 0)?;
    let weights_path = dir.join("adapter_model.safetensors");
    let weights = candle_core::safetensors::load(&weights_path, model.device())
        .map_err(|e| ModelError::file(&weights_path, format!("cannot read: {e}")))?;
    let mut used = 0;
    for (path, lin) in model.linears_mut() {
        let Some(lora) = lin.lora.as_mut() else {
            continue;
        };
        for (kind, param) in [("lora_A", &mut lora.a), ("lora_B", &mut lora.b)] {
            let key = format!("base_model.model.{path}.{kind}.weight");
            let t = weights
                .get(&key)
                .ok_or_else(|| ModelError::file(&weights_path, format!("missing {key}")))?;
            if t.dims() != param.dims() {
                return Err(ModelError::file(
                    &weights_path,
                    format!(
                        "{key} has shape {:?}, expected {:?}",
                        t.dims(),
                        param.dims()
                    ),
                ));
            }
            param.set(&t.to_dtype(DType::F32)?)?;
            used += 1;
        }
    }
    if used != weights.len() {
        let known: Vec<String> = model
            .params()
            .iter()
            .map(|p| format!("base_model.model.{}", p.name().replace(".default.", ".")))
            .collect();
        let extra: Vec<&String> = weights.keys().filter(|k| !known.contains(k)).collect();
        return Err(ModelError::file(
            &weights_path,
            format!("weights that match no adapted module: {extra:?}"),
        ));
    }
    Ok(config)
}

/// Writes the model's LoRA adapters in PEFT's layout, loadable by `PeftModel.from_pretrained`.
pub fn save_peft_adapter(
    model: &CausalLm,
    config: &LoraConfig,
    dir: &Path,
    base_model: Option<&str>,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ModelError::file(dir, format!("cannot create: {e}")))?;
    let mut tensors = HashMap::new();
    for p in model.params() {
        if p.name().contains(".lora_A.") || p.name().contains(".lora_B.") {
            let key = format!("base_model.model.{}", p.name().replace(".default.", "."));
            tensors.insert(
                key,
                p.tensor()?
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .contiguous()?,
            );
        }
    }
    let path = dir.join("adapter_model.safetensors");
    candle_core::safetensors::save(&tensors, &path)
        .map_err(|e| ModelError::file(&path, e.to_string()))?;
    let adapter_config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": config.target_modules()?,
        "use_rslora": config.use_rslora,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": false,
        "lora_bias": false,
        "revision": null,
    });
    let path = dir.join("adapter_config.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&adapter_config).expect("json") + "\n",
    )
    .map_err(|e| ModelError::file(&path, format!("cannot write: {e}")))
}

/// Folds every LoRA adapter into its base weight (`W + scale * B A`) and removes it.
pub fn merge_lora(model: &mut CausalLm) -> Result<usize> {
    let mut merged = 0;
    for (_, lin) in model.linears_mut() {
        if lin.lora.is_some() {
            let w = lin.merged_weight()?;
            let trainable = lin.weight.is_trainable();
            lin.weight = Param::frozen(lin.weight.name().to_string(), w);
            lin.weight.set_trainable(trainable)?;
            lin.lora = None;
            merged += 1;
        }
    }
    Ok(merged)
}

/// Full fine-tuning: every weight trains.
pub fn train_everything(model: &mut CausalLm) -> Result<()> {
    for p in model.params_mut() {
        p.set_trainable(true)?;
    }
    Ok(())
}

/// Freeze tuning: only the last `n` decoder layers train (LLaMA-Factory's
/// `finetuning_type: freeze` with `freeze_trainable_layers: n`; a negative count in
/// LLaMA-Factory means the first layers, here `from_start`).
pub fn freeze_tuning(model: &mut CausalLm, n: usize, from_start: bool) -> Result<usize> {
    let layers = model.layers.len();
    if n == 0 || n > layers {
        return Err(ModelError::invalid(format!(
            "freeze_trainable_layers must be between 1 and the number of layers ({layers}), got {n}"
        )));
    }
    for p in model.params_mut() {
        p.set_trainable(false)?;
    }
    let range = if from_start { 0..n } else { layers - n..layers };
    let prefixes: Vec<String> = range.map(|i| format!("model.layers.{i}.")).collect();
    let mut count = 0;
    for p in model.params_mut() {
        if prefixes.iter().any(|prefix| p.name().starts_with(prefix)) {
            p.set_trainable(true)?;
            count += 1;
        }
    }
    Ok(count)
}
