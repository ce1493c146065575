//! `config.json` of a Hugging Face model folder, in both styles published checkpoints use
//! (`rope_theta` / `rope_scaling` at the top level, or transformers 5's `rope_parameters`;
//! `torch_dtype` or `dtype`), normalised into one [`ModelConfig`].

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// The decoder families ferrotune implements; all share one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2 / 3 / 3.x, TinyLlama, SmolLM.
    Llama,
    Mistral,
    /// Qwen2 / Qwen2.5: biases on the q/k/v projections.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k.
    Qwen3,
}

pub const SUPPORTED: &str = "LlamaForCausalLM (Llama 2/3, TinyLlama, SmolLM), MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

impl Architecture {
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }

    fn from_names(class: Option<&str>, model_type: Option<&str>) -> Option<Self> {
        let by_class = match class {
            Some("LlamaForCausalLM") => Some(Architecture::Llama),
            Some("MistralForCausalLM") => Some(Architecture::Mistral),
            Some("Qwen2ForCausalLM") => Some(Architecture::Qwen2),
            Some("Qwen3ForCausalLM") => Some(Architecture::Qwen3),
            _ => None,
        };
        by_class.or(match model_type {
            Some("llama") => Some(Architecture::Llama),
            Some("mistral") => Some(Architecture::Mistral),
            Some("qwen2") => Some(Architecture::Qwen2),
            Some("qwen3") => Some(Architecture::Qwen3),
            _ => None,
        })
    }
}

/// How rotary frequencies are scaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2 always; Llama when `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k (Qwen3).
    pub qk_norm: bool,
    /// The dtype the weights were saved in (`torch_dtype` / `dtype`).
    pub torch_dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The file as read, so saving keeps keys ferrotune does not interpret.
    pub raw: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct Raw {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(path, format!("malformed JSON: {e}")))?;
        Self::from_value(value).map_err(|e| ModelError::file(path, e))
    }

    pub fn from_value(value: Value) -> Result<Self, String> {
        let Value::Object(map) = value else {
            return Err("expected a JSON object".into());
        };
        let raw: Raw =
            serde_json::from_value(Value::Object(map.clone())).map_err(|e| e.to_string())?;
        let class = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first())
            .map(String::as_str);
        let architecture =
            Architecture::from_names(class, raw.model_type.as_deref()).ok_or_else(|| {
                format!(
                    "unsupported architecture {} (model_type {}); ferrotune supports {SUPPORTED}",
                    class.unwrap_or("?"),
                    raw.model_type.as_deref().unwrap_or("?")
                )
            })?;
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(format!("hidden_act {act:?} is not supported (only silu)"));
            }
        }
        if raw.num_attention_heads == 0
            || !raw.hidden_size.is_multiple_of(raw.num_attention_heads) && raw.head_dim.is_none()
        {
            return Err(
                "hidden_size must divide into num_attention_heads, or head_dim must be given"
                    .into(),
            );
        }
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if num_key_value_heads == 0 || !raw.num_attention_heads.is_multiple_of(num_key_value_heads)
        {
            return Err("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        // transformers 5 nests rope settings in `rope_parameters`; older files keep
        // `rope_theta` and `rope_scaling` at the top level.
        let rope = raw.rope_parameters.clone().or(raw.rope_scaling.clone());
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                rope.as_ref()
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let rope_scaling = parse_rope_scaling(rope.as_ref())?;
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let ids = |v: &Option<Value>| -> Vec<u32> {
            match v {
                Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|n| n as u32)
                    .collect(),
                _ => Vec::new(),
            }
        };
        Ok(ModelConfig {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads,
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: architecture == Architecture::Qwen2 || attention_bias,
            o_bias: architecture != Architecture::Qwen2 && attention_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            qk_norm: architecture == Architecture::Qwen3,
            torch_dtype: raw.torch_dtype.or(raw.dtype),
            bos_token_id: ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: ids(&raw.eos_token_id),
            raw: map,
        })
    }

    /// Rotary inverse frequencies, computed in f32 as transformers does.
    pub fn inv_freq(&self) -> Vec<f32> {
        crate::ops::inverse_frequencies(self.head_dim, self.rope_theta, &self.rope_scaling)
    }

    /// Parameter count (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let i = self.intermediate_size;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.qkv_bias {
            attn += q + 2 * kv;
        }
        if self.o_bias {
            attn += h;
        }
        if self.qk_norm {
            attn += 2 * self.head_dim;
        }
        let mut mlp = 3 * h * i;
        if self.mlp_bias {
            mlp += 2 * i + h;
        }
        let layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_hidden_layers * layer + h
    }
}

fn parse_rope_scaling(rope: Option<&Value>) -> Result<RopeScaling, String> {
    let Some(rope) = rope.filter(|r| !r.is_null()) else {
        return Ok(RopeScaling::Default);
    };
    let kind = rope
        .get("rope_type")
        .or_else(|| rope.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| rope.get(key).and_then(Value::as_f64);
    let need = |key: &str| num(key).ok_or_else(|| format!("rope scaling {kind:?} needs {key}"));
    match kind {
        "default" => Ok(RopeScaling::Default),
        "linear" => Ok(RopeScaling::Linear {
            factor: need("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        }),
        other => Err(format!(
            "rope scaling type {other:?} is not supported (default, linear, llama3)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_rope_styles_and_unsupported_architectures() {
        let old = serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}});
        let c = ModelConfig::from_value(old).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { .. }));
        assert_eq!(c.num_key_value_heads, 2);
        let new = serde_json::json!({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "linear", "factor": 2.0}});
        let c = ModelConfig::from_value(new).unwrap();
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        assert!(c.qkv_bias && !c.o_bias);
        let gpt = serde_json::json!({"architectures": ["GPT2LMHeadModel"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2});
        let e = ModelConfig::from_value(gpt).unwrap_err();
        assert!(
            e.contains("GPT2LMHeadModel") && e.contains("Qwen3ForCausalLM"),
            "{e}"
        );
    }

    #[test]
    fn llama3_rope_scaling_matches_transformers() {
        // Llama 3.1 8B: inv_freq values from transformers' _compute_llama3_parameters.
        let c = ModelConfig::from_value(serde_json::json!({"model_type": "llama", "vocab_size": 10,
            "hidden_size": 4096, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 32,
            "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})).unwrap();
        let f = c.inv_freq();
        assert_eq!(f.len(), 64);
        assert!((f[0] - 1.0).abs() < 1e-7);
        // The lowest frequencies are divided by the factor.
        let plain = 1.0 / 500000f32.powf(126.0 / 128.0);
        assert!((f[63] - plain / 8.0).abs() < 1e-12);
    }
}
