//! Export: a model and its tokenizer as a GGUF file that llama.cpp reads.

use std::path::Path;

use candle_core::quantized::gguf_file::Value as G;
use candle_core::Tensor;
use serde_json::{json, Value};

use super::file::{write_gguf_file, GgufTensor};
use super::gguf_name;
use crate::error::{ModelError, Result};
use crate::llama::CausalLm;
use crate::save::output_tensors;

/// The permutation llama.cpp applies (for writing GGUF files and tests).
pub fn permute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))?)
}

/// The llama.cpp pre-tokenizer name for a tokenizer.json `pre_tokenizer`.
fn pre_name(pre: &Value) -> &'static str {
    let text = pre.to_string();
    if text.contains("\\\\p{N}{1,3}") {
        "llama-bpe"
    } else if text.contains("Split") {
        "qwen2"
    } else if text.contains("\"Digits\"") {
        "smollm"
    } else {
        "gpt-2"
    }
}

/// Writes the model as a GGUF file that llama.cpp reads: hyper-parameters and the
/// tokenizer (vocabulary, merges, special tokens, chat template) in the metadata; 2-D
/// weights in `dtype` (1-D norms and biases stay F32, as llama.cpp keeps them), with the
/// q/k rows permuted for Llama-architecture models. The inverse of [`import_gguf`].
pub fn export_gguf(
    model: &CausalLm,
    tokenizer_dir: &Path,
    chat_template: Option<&str>,
    path: &Path,
    dtype: candle_core::quantized::GgmlDType,
) -> Result<()> {
    use candle_core::quantized::GgmlDType;
    let c = &model.config;
    let arch = match c.architecture {
        crate::config::Architecture::Llama | crate::config::Architecture::Mistral => "llama",
        crate::config::Architecture::Qwen2 => "qwen2",
        crate::config::Architecture::Qwen3 => "qwen3",
    };
    if c.rope_scaling != crate::config::RopeScaling::Default {
        return Err(ModelError::invalid(
            "GGUF export of rope-scaled models is not supported yet",
        ));
    }
    let tok_path = tokenizer_dir.join("tokenizer.json");
    let tok: Value = serde_json::from_str(
        &std::fs::read_to_string(&tok_path)
            .map_err(|e| ModelError::file(&tok_path, e.to_string()))?,
    )
    .map_err(|e| ModelError::file(&tok_path, format!("malformed JSON: {e}")))?;
    let m = &tok["model"];
    if m["type"] != "BPE" {
        return Err(ModelError::file(
            &tok_path,
            "only byte-level BPE tokenizers can be written to GGUF",
        ));
    }
    let vocab = m["vocab"]
        .as_object()
        .ok_or_else(|| ModelError::file(&tok_path, "no vocabulary"))?;
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        let id = id.as_u64().unwrap_or(0) as usize;
        if id >= tokens.len() {
            tokens.resize(id + 1, String::new());
        }
        tokens[id] = t.clone();
    }
    let mut types = vec![1i32; tokens.len()];
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        let id = added["id"].as_u64().unwrap_or(0) as usize;
        let content = added["content"].as_str().unwrap_or_default().to_string();
        if id >= tokens.len() {
            tokens.resize(id + 1, String::new());
            types.resize(id + 1, 1);
        }
        tokens[id] = content;
        types[id] = if added["special"].as_bool() == Some(true) {
            3
        } else {
            4
        };
    }
    let merges: Vec<String> = m["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|mg| match mg {
            Value::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().unwrap_or(""),
                pair[1].as_str().unwrap_or("")
            ),
            other => other.as_str().unwrap_or("").to_string(),
        })
        .collect();
    let cfg_path = tokenizer_dir.join("tokenizer_config.json");
    let tok_config: Value = std::fs::read_to_string(&cfg_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    let id_of = |key: &str| -> Option<u32> {
        let t = match &tok_config[key] {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        }?;
        tokens.iter().position(|x| *x == t).map(|i| i as u32)
    };
    let template = chat_template
        .map(String::from)
        .or_else(|| tok_config["chat_template"].as_str().map(String::from));

    let s = |v: &str| G::String(v.to_string());
    let u = |v: usize| G::U32(v as u32);
    let mut meta: Vec<(String, G)> = vec![
        ("general.architecture".into(), s(arch)),
        ("general.name".into(), s("ferrotune export")),
        (format!("{arch}.block_count"), u(c.num_hidden_layers)),
        (
            format!("{arch}.context_length"),
            u(c.max_position_embeddings),
        ),
        (format!("{arch}.embedding_length"), u(c.hidden_size)),
        (
            format!("{arch}.feed_forward_length"),
            u(c.intermediate_size),
        ),
        (
            format!("{arch}.attention.head_count"),
            u(c.num_attention_heads),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            u(c.num_key_value_heads),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            G::F32(c.rms_norm_eps as f32),
        ),
        (
            format!("{arch}.rope.freq_base"),
            G::F32(c.rope_theta as f32),
        ),
        (format!("{arch}.rope.dimension_count"), u(c.head_dim)),
        (format!("{arch}.attention.key_length"), u(c.head_dim)),
        (format!("{arch}.attention.value_length"), u(c.head_dim)),
        (format!("{arch}.vocab_size"), u(tokens.len())),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        (
            "tokenizer.ggml.pre".into(),
            s(pre_name(&tok["pre_tokenizer"])),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            G::Array(tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            G::Array(types.iter().map(|t| G::I32(*t)).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            G::Array(merges.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            G::Bool(tok_config["add_bos_token"].as_bool().unwrap_or(false)),
        ),
    ];
    for (key, name) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ] {
        if let Some(id) = id_of(key) {
            meta.push((name.into(), G::U32(id)));
        }
    }
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".into(), G::String(t)));
    }

    // Each tensor is merged, permuted and quantized only when the writer reaches it.
    let permuted_heads = |name: &str| match name {
        _ if arch != "llama" => None,
        n if n.ends_with("q_proj.weight") => Some(c.num_attention_heads),
        n if n.ends_with("k_proj.weight") => Some(c.num_key_value_heads),
        _ => None,
    };
    let sources = output_tensors(model);
    let mut tensors = Vec::with_capacity(sources.len());
    for t in &sources {
        let name = gguf_name(t.name())
            .ok_or_else(|| ModelError::invalid(format!("no GGUF name for {}", t.name())))?;
        let dims = t.dims();
        // 1-D norms and biases stay F32; blocks need a row length their size divides.
        let dtype = match dims.as_slice() {
            [_] => GgmlDType::F32,
            [.., cols] if !cols.is_multiple_of(dtype.block_size()) => GgmlDType::F16,
            _ => dtype,
        };
        let heads = permuted_heads(t.name());
        tensors.push(GgufTensor {
            name,
            dims,
            dtype,
            values: Box::new(move || match heads {
                Some(h) => permute(&t.dense()?, h),
                None => t.dense(),
            }),
        });
    }
    write_gguf_file(path, &meta, &tensors)
}
