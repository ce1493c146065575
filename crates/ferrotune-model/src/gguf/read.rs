//! Import: a GGUF file to a Hugging Face model folder. Weights are dequantized (F32, F16,
//! BF16, Q4_0/Q4_1/Q5/Q8_0 and K-quants, through candle's quantized module) and the q/k
//! rows unpermuted; config.json comes from the metadata, and tokenizer.json +
//! tokenizer_config.json are rebuilt from the GGUF vocabulary (byte-level BPE "gpt2"
//! vocabularies).

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value as G};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::hf_name;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::llama::{CausalLm, WeightMap};
use crate::save::{save_model, SaveOptions};

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Imported {
    pub architecture: String,
    pub tensors: usize,
    pub quantization: Vec<String>,
    pub vocab_size: usize,
    pub chat_template: bool,
}

fn meta<'a>(c: &'a Content, key: &str) -> Option<&'a G> {
    c.metadata.get(key)
}

fn meta_u(c: &Content, key: &str) -> Option<u64> {
    meta(c, key).and_then(|v| {
        v.to_u64()
            .ok()
            .or_else(|| v.to_u32().ok().map(u64::from))
            .or_else(|| v.to_i32().ok().map(|x| x as u64))
    })
}

fn meta_f(c: &Content, key: &str) -> Option<f64> {
    meta(c, key).and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok()))
}

fn meta_s<'a>(c: &'a Content, key: &str) -> Option<&'a str> {
    meta(c, key)
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
}

fn meta_strings(c: &Content, key: &str) -> Result<Vec<String>> {
    let list = meta(c, key)
        .ok_or_else(|| ModelError::invalid(format!("GGUF has no {key}")))?
        .to_vec()
        .map_err(|e| ModelError::invalid(format!("{key}: {e}")))?;
    list.iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|e| ModelError::invalid(format!("{key}: {e}")))
        })
        .collect()
}

/// Undoes llama.cpp's q/k row permutation: its converter applies
/// `w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2)`; this applies the inverse.
pub fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((heads, rows / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))?)
}

/// A GGUF file's header: its metadata and tensor table, read without the tensors.
pub(super) struct Header {
    pub file: std::fs::File,
    pub content: Content,
    pub arch: String,
    /// The Hugging Face class (`LlamaForCausalLM`).
    pub class: &'static str,
    pub config: ModelConfig,
    pub tokens: Vec<String>,
    pub heads: usize,
    pub kv_heads: usize,
}

/// Reads a GGUF file's header: the architecture, config.json's keys from the metadata
/// and the vocabulary.
pub(super) fn read_header(path: &Path) -> Result<Header> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| ModelError::file(path, format!("cannot open: {e}")))?;
    let content = Content::read(&mut file)
        .map_err(|e| ModelError::file(path, format!("not a readable GGUF file: {e}")))?;
    let fail = |p: String| ModelError::file(path, p);
    let arch = meta_s(&content, "general.architecture")
        .ok_or_else(|| fail("no general.architecture".into()))?
        .to_string();
    let class = match arch.as_str() {
        "llama" => "LlamaForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        other => {
            return Err(fail(format!(
                "GGUF architecture {other:?} is not supported (llama, qwen2, qwen3)"
            )))
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let need = |k: &str| {
        meta_u(&content, &key(k)).ok_or_else(|| fail(format!("no {} in the metadata", key(k))))
    };
    let tokens =
        meta_strings(&content, "tokenizer.ggml.tokens").map_err(|e| fail(e.to_string()))?;
    let heads = need("attention.head_count")? as usize;
    let kv_heads =
        meta_u(&content, &key("attention.head_count_kv")).unwrap_or(heads as u64) as usize;
    let hidden = need("embedding_length")? as usize;
    let mut config = json!({
        "architectures": [class],
        "model_type": arch,
        "vocab_size": tokens.len(),
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": meta_f(&content, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
        "rope_theta": meta_f(&content, &key("rope.freq_base")).unwrap_or(10_000.0),
        "max_position_embeddings": meta_u(&content, &key("context_length")).unwrap_or(4096),
        "hidden_act": "silu",
        "tie_word_embeddings": !content.tensor_infos.contains_key("output.weight"),
        "torch_dtype": "float32",
    });
    if let Some(head_dim) = meta_u(&content, &key("attention.key_length")) {
        config["head_dim"] = json!(head_dim);
    }
    if let Some(kind) = meta_s(&content, &key("rope.scaling.type")) {
        match kind {
            "none" => {}
            "linear" => {
                let factor = meta_f(&content, &key("rope.scaling.factor")).unwrap_or(1.0);
                config["rope_scaling"] = json!({"rope_type": "linear", "factor": factor});
            }
            other => return Err(fail(format!("rope scaling {other:?} is not supported"))),
        }
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(fail(
            "precomputed rope frequencies (Llama 3.1 rope scaling) are not supported".into(),
        ));
    }
    for (k, hf) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
    ] {
        if let Some(id) = meta_u(&content, k) {
            config[hf] = json!(id);
        }
    }
    let config = ModelConfig::from_value(config).map_err(fail)?;
    Ok(Header {
        file,
        content,
        arch,
        class,
        config,
        tokens,
        heads,
        kv_heads,
    })
}

/// The heads whose rows llama.cpp permuted in tensor `name`: the q and k projections of
/// a Llama-architecture file (`heads` for q, `kv_heads` for k); None for any other.
pub(super) fn permuted_heads(
    arch: &str,
    name: &str,
    heads: usize,
    kv_heads: usize,
) -> Option<usize> {
    if arch != "llama" {
        return None;
    }
    if name.contains("attn_q.") {
        Some(heads)
    } else if name.contains("attn_k.") {
        Some(kv_heads)
    } else {
        None
    }
}

/// Reads a GGUF file and writes a Hugging Face model folder to `out`.
pub fn import_gguf(path: &Path, out: &Path) -> Result<Imported> {
    let Header {
        mut file,
        content,
        arch,
        class,
        config: model_config,
        tokens,
        heads,
        kv_heads,
    } = read_header(path)?;
    let fail = |p: String| ModelError::file(path, p);

    let device = Device::Cpu;
    let mut weights = WeightMap::new();
    let mut quantization: Vec<String> = Vec::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = hf_name(name) else {
            if name == "rope_freqs.weight" {
                continue;
            }
            return Err(fail(format!("unexpected tensor {name}")));
        };
        let q = content
            .tensor(&mut file, name, &device)
            .map_err(|e| fail(format!("cannot read tensor {name}: {e}")))?;
        let dtype = format!("{:?}", q.dtype());
        if !quantization.contains(&dtype) {
            quantization.push(dtype);
        }
        let mut t = q
            .dequantize(&device)
            .map_err(|e| fail(format!("cannot dequantize {name}: {e}")))?
            .to_dtype(DType::F32)?;
        if let Some(h) = permuted_heads(&arch, name, heads, kv_heads).filter(|_| t.rank() == 2) {
            t = unpermute(&t, h)?;
        }
        weights.insert(hf, t);
    }
    let tensors = weights.len();
    let (model, unused) = CausalLm::from_weights(model_config, weights, DType::F32, &device)
        .map_err(|e| fail(format!("weights do not fit the config: {e}")))?;
    if !unused.is_empty() {
        return Err(fail(format!("tensors the model does not use: {unused:?}")));
    }
    save_model(&model, out, &SaveOptions::default())?;
    let chat_template = write_tokenizer(&content, &tokens, out).map_err(|e| fail(e.to_string()))?;
    quantization.sort();
    Ok(Imported {
        architecture: class.to_string(),
        tensors,
        quantization,
        vocab_size: tokens.len(),
        chat_template,
    })
}

/// The pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`, as Hugging Face writes it.
fn pre_tokenizer(pre: &str) -> Value {
    const LLAMA3: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    const QWEN2: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    match pre {
        "llama-bpe" | "llama3" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3), byte_level(false)]})
        }
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2), byte_level(false)]}),
        "smollm" | "starcoder" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        _ => byte_level(true),
    }
}

/// Writes tokenizer.json and tokenizer_config.json from the GGUF vocabulary. Returns
/// whether the file carried a chat template.
pub(super) fn write_tokenizer(content: &Content, tokens: &[String], out: &Path) -> Result<bool> {
    let model = meta_s(content, "tokenizer.ggml.model").unwrap_or("gpt2");
    if model != "gpt2" {
        return Err(ModelError::invalid(format!(
            "tokenizer model {model:?} is not supported (byte-level BPE \"gpt2\" vocabularies only)"
        )));
    }
    let merges = meta_strings(content, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match meta(content, "tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| ModelError::invalid(e.to_string()))?
            .iter()
            .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), json!(i));
    }
    // Control (3) and user-defined (4) tokens are added tokens; control ones are special.
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": types[i] == 4, "special": types[i] == 3})
        })
        .collect();
    let token = |key: &str| {
        meta_u(content, key)
            .and_then(|id| tokens.get(id as usize))
            .cloned()
    };
    let bos = token("tokenizer.ggml.bos_token_id");
    let eos = token("tokenizer.ggml.eos_token_id");
    let pad = token("tokenizer.ggml.padding_token_id");
    let unk = token("tokenizer.ggml.unknown_token_id");
    let add_bos = meta(content, "tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let post_processor = match (&bos, add_bos) {
        (Some(bos), true) => {
            let id = tokens.iter().position(|t| t == bos).unwrap_or(0);
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos.as_str(): {"id": bos, "ids": [id], "tokens": [bos]}}})
        }
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
    };
    let pre = meta_s(content, "tokenizer.ggml.pre").unwrap_or("default");
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre),
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    let chat_template = meta_s(content, "tokenizer.chat_template");
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": unk,
        "clean_up_tokenization_spaces": false,
        "model_max_length": meta_u(content, &format!("{}.context_length", meta_s(content, "general.architecture").unwrap_or(""))).unwrap_or(4096),
    });
    if let Some(t) = chat_template {
        config["chat_template"] = json!(t);
    }
    let write = |name: &str, v: &Value| -> Result<()> {
        let path = out.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(v).expect("json") + "\n")
            .map_err(|e| ModelError::file(&path, e.to_string()))
    };
    write("tokenizer.json", &tokenizer)?;
    write("tokenizer_config.json", &config)?;
    Ok(chat_template.is_some())
}
