//! Writes a model folder in Hugging Face layout that transformers loads: config.json,
//! model.safetensors (sharded with an index above a size limit), generation_config.json,
//! and, when given, the tokenizer files and the chat template used in training.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::llama::CausalLm;

/// Shard size above which weights are split (transformers' default is 5 GB).
pub const DEFAULT_SHARD_BYTES: usize = 5 * 1024 * 1024 * 1024;

pub struct SaveOptions<'a> {
    /// dtype written to disk (`None`: the dtype named in the original config, else f32).
    pub dtype: Option<DType>,
    pub max_shard_bytes: usize,
    /// A tokenizer folder whose files are copied along.
    pub tokenizer_dir: Option<&'a Path>,
    /// The chat template used in training, written to chat_template.jinja and into
    /// tokenizer_config.json.
    pub chat_template: Option<&'a str>,
}

impl Default for SaveOptions<'_> {
    fn default() -> Self {
        SaveOptions {
            dtype: None,
            max_shard_bytes: DEFAULT_SHARD_BYTES,
            tokenizer_dir: None,
            chat_template: None,
        }
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

fn dtype_from_name(name: Option<&str>) -> DType {
    match name {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => DType::F32,
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |e| ModelError::file(path, e.to_string())
}

/// Writes config.json (the original keys, with the ones ferrotune decides updated;
/// `dtype` as torch_dtype) and generation_config.json (bos and eos ids) into `dir`.
pub fn write_config_files(config: &ModelConfig, dir: &Path, dtype: DType) -> Result<()> {
    // config.json: the original keys, with the ones ferrotune decides updated.
    let mut raw = config.raw.clone();
    raw.insert(
        "architectures".into(),
        json!([config.architecture.hf_class()]),
    );
    raw.insert("model_type".into(), json!(config.architecture.model_type()));
    raw.insert("torch_dtype".into(), json!(dtype_name(dtype)));
    raw.remove("dtype");
    write_json(&dir.join("config.json"), &Value::Object(raw))?;

    let mut generation = json!({"_from_model_config": true});
    if let Some(bos) = config.bos_token_id {
        generation["bos_token_id"] = json!(bos);
    }
    match config.eos_token_ids.as_slice() {
        [] => {}
        [one] => generation["eos_token_id"] = json!(one),
        many => generation["eos_token_id"] = json!(many),
    }
    write_json(&dir.join("generation_config.json"), &generation)?;

    Ok(())
}

/// Saves the model (LoRA adapters must be merged first, or saved separately).
pub fn save_model(model: &CausalLm, dir: &Path, options: &SaveOptions) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if model.params().iter().any(|p| p.name().contains(".lora_")) {
        return Err(ModelError::invalid(
            "the model still has LoRA adapters: merge them first or save the adapter",
        ));
    }
    let dtype = options
        .dtype
        .unwrap_or_else(|| dtype_from_name(model.config.torch_dtype.as_deref()));

    write_config_files(&model.config, dir, dtype)?;

    // Weights, in shards of at most max_shard_bytes.
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut size = 0;
    for p in model.params() {
        let t = p
            .to_dense()?
            .to_dtype(dtype)?
            .to_device(&Device::Cpu)?
            .contiguous()?;
        let bytes = t.elem_count() * dtype.size_in_bytes();
        if size > 0 && size + bytes > options.max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards
            .last_mut()
            .expect("a shard")
            .push((p.name().to_string(), t));
    }
    for stale in ["model.safetensors", "model.safetensors.index.json"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    if shards.len() == 1 {
        let map: HashMap<String, Tensor> = shards.pop().expect("one shard").into_iter().collect();
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&map, &path)
            .map_err(|e| ModelError::file(&path, e.to_string()))?;
    } else {
        let n = shards.len();
        let mut weight_map = serde_json::Map::new();
        let mut total = 0;
        for (i, shard) in shards.into_iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            for (name, t) in &shard {
                weight_map.insert(name.clone(), json!(file));
                total += t.elem_count() * dtype.size_in_bytes();
            }
            let map: HashMap<String, Tensor> = shard.into_iter().collect();
            let path = dir.join(&file);
            candle_core::safetensors::save(&map, &path)
                .map_err(|e| ModelError::file(&path, e.to_string()))?;
        }
        write_json(
            &dir.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
    }

    if let Some(tok) = options.tokenizer_dir {
        for file in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            let from = tok.join(file);
            if from.is_file() && tok.join(file) != dir.join(file) {
                std::fs::copy(&from, dir.join(file)).map_err(io(&from))?;
            }
        }
    }
    if let Some(template) = options.chat_template {
        let path = dir.join("chat_template.jinja");
        std::fs::write(&path, template).map_err(io(&path))?;
        let config_path = dir.join("tokenizer_config.json");
        let mut config = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|_| json!({})),
            Err(_) => json!({}),
        };
        config["chat_template"] = json!(template);
        write_json(&config_path, &config)?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    std::fs::write(
        path,
        serde_json::to_string_pretty(value).expect("json") + "\n",
    )
    .map_err(io(path))
}
