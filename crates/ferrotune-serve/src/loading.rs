//! Loading a model for inference, shared by `model generate`, `chat`, `serve`, `export`
//! and `eval predict`: a model folder or a trained run's output (a full model, or a PEFT
//! adapter whose base is named in adapter_config.json), the tokenizer and chat template
//! saved with it (training and inference must render prompts identically), the ids and
//! strings that end an answer, and the sampling settings.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use ferrotune_data::template::{ChatTemplate, TemplateChoice};
use ferrotune_data::TokenizerBundle;
use ferrotune_model::generate::GenerationConfig;
use ferrotune_model::hub::resolve_model;
use ferrotune_model::infer::WeightType;
use ferrotune_model::stored::storage_name;
use ferrotune_model::tuning::{load_peft_adapter, merge_lora};
use ferrotune_model::weights::{load_model, load_model_quantized, Quantization};
use ferrotune_model::CausalLm;
use serde_json::Value;

/// Where a model's weights come from: a base folder and optionally a LoRA adapter.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub base: PathBuf,
    pub adapter: Option<PathBuf>,
}

impl ModelSource {
    /// `model` (a folder or Hub id) and `--adapter`. `model` may itself be a LoRA run's
    /// output folder, and may be left out when the adapter names its base
    /// (`base_model_name_or_path` in adapter_config.json).
    pub fn locate(model: Option<&str>, adapter: Option<&Path>) -> Result<Self> {
        if let Some(dir) = model.map(Path::new).filter(|d| is_adapter(d)) {
            if let Some(adapter) = adapter {
                bail!(
                    "{} is a LoRA adapter folder; give the base model with --model and the adapter \
                     with --adapter (not both as adapters: {} too)",
                    dir.display(),
                    adapter.display()
                );
            }
            return Ok(ModelSource {
                base: adapter_base(dir)?,
                adapter: Some(dir.to_path_buf()),
            });
        }
        let adapter = match adapter {
            Some(dir) if !is_adapter(dir) => bail!(
                "{}: not a LoRA adapter folder (no adapter_config.json)",
                dir.display()
            ),
            other => other.map(Path::to_path_buf),
        };
        let base = match (model, &adapter) {
            (Some(spec), _) => resolve_model(spec)?,
            (None, Some(dir)) => adapter_base(dir)?,
            (None, None) => bail!("no model given"),
        };
        Ok(ModelSource { base, adapter })
    }

    /// The folder whose tokenizer and chat template belong to the model: the adapter's
    /// when it carries them (training writes them there), else the base's.
    pub fn tokenizer_dir(&self) -> &Path {
        match &self.adapter {
            Some(dir) if dir.join("tokenizer.json").is_file() => dir,
            _ => &self.base,
        }
    }

    /// A short name for the model (the adapter's folder name when there is one).
    pub fn name(&self) -> String {
        let dir = self.adapter.as_deref().unwrap_or(&self.base);
        dir.canonicalize()
            .ok()
            .as_deref()
            .unwrap_or(dir)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    }

    /// How the base's matrices are held for inference: as the adapter's training held
    /// them (recorded in its folder), else as a 16-bit base stores them (lossless, half of
    /// f32), else in f32 (`None`). A GGUF file keeps its own types either way.
    pub fn base_storage(&self) -> Result<Option<Quantization>> {
        use candle_core::quantized::GgmlDType;
        if let Some(recorded) = self
            .adapter
            .as_deref()
            .map(Quantization::recorded_for_adapter)
            .transpose()?
            .flatten()
        {
            return Ok(Some(recorded));
        }
        let config = self.base.join("config.json");
        let dtype = ferrotune_model::ModelConfig::from_file(&config)?.torch_dtype;
        Ok(match dtype.as_deref() {
            Some("bfloat16") => Some(Quantization::sixteen_bit(GgmlDType::BF16)),
            Some("float16") => Some(Quantization::sixteen_bit(GgmlDType::F16)),
            _ => None,
        })
    }

    fn recorded_storage(&self) -> bool {
        self.adapter.as_deref().is_some_and(|a| {
            a.join(ferrotune_model::weights::ADAPTER_BASE_STORAGE)
                .is_file()
        })
    }

    /// Loads the base on the CPU, held as [`Self::base_storage`] says, with the adapter
    /// applied (not merged).
    pub fn load_unmerged(&self) -> Result<CausalLm> {
        let storage = self.base_storage()?;
        if let Some(q) = storage.filter(|_| self.recorded_storage()) {
            eprintln!(
                "the base is held as the adapter's training held it: {} matrices, {} embeddings",
                storage_name(q.matrices),
                storage_name(q.embeddings)
            );
        }
        let mut model = match storage {
            Some(q) => load_model_quantized(&self.base, q, DType::F32, &Device::Cpu)?,
            None => load_model(&self.base, DType::F32, &Device::Cpu)?,
        };
        if let Some(adapter) = &self.adapter {
            ferrotune_model::gguf::check_adapter_base(adapter, &self.base)?;
            load_peft_adapter(&mut model, adapter)?;
        }
        // Nothing trains here: with every weight frozen, passes build no autograd graph,
        // which would otherwise keep every activation (and the weights the ops hold)
        // alive for as long as an output is kept.
        for p in model.params_mut() {
            p.set_trainable(false)?;
        }
        Ok(model)
    }

    /// Loads the model with the adapter merged in (one matmul per projection).
    pub fn load(&self) -> Result<CausalLm> {
        let mut model = self.load_unmerged()?;
        merge_lora(&mut model)?;
        Ok(model)
    }
}

/// The inference weights for a model when none is asked for: f32 for an f32 model, bf16
/// for a base held in 16-bit floats, q8_0 for a quantized one (a GGUF file, a 4-bit run),
/// so that decoding never dequantizes a quantized base to f32.
pub fn inference_weights(model: &CausalLm) -> WeightType {
    use candle_core::quantized::GgmlDType;
    let types: Vec<GgmlDType> = model
        .params()
        .iter()
        .filter_map(|p| p.stored_type())
        .collect();
    let floats = [GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16];
    if types.iter().any(|t| !floats.contains(t)) {
        WeightType::Q8_0
    } else if types
        .iter()
        .any(|t| matches!(t, GgmlDType::F16 | GgmlDType::BF16))
    {
        WeightType::Bf16
    } else {
        WeightType::F32
    }
}

fn is_adapter(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file()
}

/// The base model an adapter names. A relative path is tried from the working directory,
/// then from the adapter's folder.
fn adapter_base(adapter: &Path) -> Result<PathBuf> {
    let path = adapter.join("adapter_config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed JSON", path.display()))?;
    let Some(base) = config["base_model_name_or_path"]
        .as_str()
        .filter(|s| !s.is_empty())
    else {
        bail!(
            "{}: base_model_name_or_path is not set; give the base model with --model",
            path.display()
        );
    };
    if Path::new(base).is_relative() && !Path::new(base).exists() && adapter.join(base).is_dir() {
        return Ok(adapter.join(base));
    }
    // A GGUF base named by a relative path: the recorded file, wherever this runs from.
    let recorded = ferrotune_model::gguf::adapter_base(adapter)?;
    let base = match &recorded {
        Some(source) if !Path::new(base).exists() => source.file.to_string_lossy().into_owned(),
        _ => base.to_string(),
    };
    resolve_model(&base).with_context(|| format!("the base model named in {}", path.display()))
}

/// The tokenizer and the chat template saved with the model, or the one `choice` names.
pub fn tokenizer_and_template(
    source: &ModelSource,
    choice: Option<&TemplateChoice>,
) -> Result<(TokenizerBundle, Option<ChatTemplate>)> {
    let tok = tokenizer(source)?;
    let choice = choice.cloned().unwrap_or(TemplateChoice::Tokenizer);
    if choice == TemplateChoice::Tokenizer && tok.chat_template.is_none() {
        return Ok((tok, None));
    }
    let template = ChatTemplate::choose(
        &choice,
        tok.chat_template.as_deref(),
        &Default::default(),
        &tok.specials,
        &Default::default(),
    )?;
    Ok((tok, Some(template)))
}

/// The model's tokenizer, its `chat_template` the one saved with the model.
pub fn tokenizer(source: &ModelSource) -> Result<TokenizerBundle> {
    let mut tok = TokenizerBundle::load(source.tokenizer_dir())?;
    // An adapter folder may carry the training template without the tokenizer files.
    if let Some(adapter) = &source.adapter {
        let jinja = adapter.join("chat_template.jinja");
        if jinja.is_file() && source.tokenizer_dir() != adapter {
            tok.chat_template = Some(
                std::fs::read_to_string(&jinja)
                    .with_context(|| format!("cannot read {}", jinja.display()))?,
            );
        }
    }
    Ok(tok)
}

/// Ids that end an answer: the model's eos ids, the tokenizer's eos, and every stop
/// string of the template that is a single token (the end-of-turn marker).
pub fn stop_ids(
    model: &CausalLm,
    tok: &TokenizerBundle,
    template: Option<&ChatTemplate>,
) -> Vec<u32> {
    let mut ids = model.config.eos_token_ids.clone();
    let strings = template.map(ChatTemplate::stop_strings).unwrap_or_default();
    for token in tok.specials.eos.iter().chain(&strings) {
        if let Some(id) = tok.token_id(token) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// Sampling settings asked for (by flags, a config or a caller). A setting left out
/// comes from the model's generation_config.json as transformers would use it, else
/// greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    /// Most tokens generated per answer.
    pub max_new_tokens: usize,
    /// 0 is greedy decoding.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// 0 keeps every token.
    pub top_k: Option<usize>,
    /// 1 is none.
    pub repetition_penalty: Option<f64>,
    /// Seed of the sampler (answers are reproducible for a seed).
    pub seed: u64,
}

impl SamplingOptions {
    /// The generation settings: these over the defaults of the model in `model_dir`.
    pub fn config(&self, model_dir: &Path, stop_token_ids: Vec<u32>) -> Result<GenerationConfig> {
        let d = model_defaults(model_dir);
        let config = GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.or(d.top_k),
            top_p: self.top_p.or(d.top_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            stop_token_ids,
            seed: self.seed,
        };
        check_sampling(&config).map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

/// Checks sampling settings; the problem, named by its OpenAI / flag name, otherwise.
pub fn check_sampling(c: &GenerationConfig) -> std::result::Result<(), String> {
    if !(c.temperature.is_finite() && c.temperature >= 0.0) {
        return Err(format!("temperature must be >= 0, got {}", c.temperature));
    }
    if let Some(p) = c.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {p}"));
        }
    }
    if !(c.repetition_penalty.is_finite() && c.repetition_penalty > 0.0) {
        return Err(format!(
            "repetition_penalty must be > 0, got {}",
            c.repetition_penalty
        ));
    }
    if c.max_new_tokens == 0 {
        return Err("max_tokens must be at least 1".into());
    }
    Ok(())
}

/// The sampling settings of a model folder's generation_config.json; greedy when it has
/// none or says `do_sample: false` (transformers' rule).
pub fn model_defaults(dir: &Path) -> GenerationConfig {
    let mut out = GenerationConfig::default();
    let Some(c) = std::fs::read_to_string(dir.join("generation_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    else {
        return out;
    };
    if c["do_sample"].as_bool() == Some(true) {
        out.temperature = c["temperature"].as_f64().unwrap_or(1.0);
        out.top_p = c["top_p"].as_f64();
        out.top_k = c["top_k"]
            .as_u64()
            .map(|k| k as usize)
            .filter(|&k| k > 0)
            .or(Some(50).filter(|_| c["top_k"].is_null()));
    }
    if let Some(p) = c["repetition_penalty"].as_f64() {
        out.repetition_penalty = p;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_defaults_follow_transformers() {
        let dir = std::env::temp_dir().join(format!("ferrotune-defaults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(model_defaults(&dir).temperature, 0.0);
        std::fs::write(
            dir.join("generation_config.json"),
            r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.95, "top_k": 20}"#,
        )
        .unwrap();
        let d = model_defaults(&dir);
        assert_eq!(
            (d.temperature, d.top_p, d.top_k),
            (0.6, Some(0.95), Some(20))
        );
        std::fs::write(
            dir.join("generation_config.json"),
            r#"{"do_sample": false, "temperature": 0.6, "repetition_penalty": 1.1}"#,
        )
        .unwrap();
        let d = model_defaults(&dir);
        assert_eq!((d.temperature, d.repetition_penalty), (0.0, 1.1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod inference_weight_tests {
    use candle_core::quantized::GgmlDType;
    use candle_core::Device;
    use ferrotune_model::infer::WeightType;
    use ferrotune_model::init::{init_model, init_stored_model};
    use ferrotune_model::ModelConfig;

    use super::inference_weights;

    #[test]
    fn the_default_inference_weights_follow_how_the_base_is_held() {
        let config = ModelConfig::from_value(serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "tie_word_embeddings": true
        }))
        .unwrap();
        let dev = Device::Cpu;
        let f32 = init_model(config.clone(), 0, &dev).unwrap();
        assert_eq!(inference_weights(&f32), WeightType::F32);
        for (storage, want) in [
            (GgmlDType::BF16, WeightType::Bf16),
            (GgmlDType::F16, WeightType::Bf16),
            (GgmlDType::Q4_0, WeightType::Q8_0),
            (GgmlDType::Q8_0, WeightType::Q8_0),
        ] {
            let model = init_stored_model(config.clone(), 0, storage, &dev).unwrap();
            assert_eq!(inference_weights(&model), want, "{storage:?}");
        }
    }
}
