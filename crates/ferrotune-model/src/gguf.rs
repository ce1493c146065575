//! llama.cpp's GGUF files to Hugging Face model folders: weights dequantized (F32, F16,
//! BF16, Q4_0/Q4_1/Q5/Q8_0 and K-quants, through candle's quantized module), config.json
//! from the metadata, and tokenizer.json + tokenizer_config.json rebuilt from the GGUF
//! vocabulary (byte-level BPE "gpt2" vocabularies).
//!
//! llama.cpp's converter permutes the rows of the q and k projections of Llama-architecture
//! models for its rope layout; [`unpermute`] undoes it.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value as G};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

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

/// The permutation llama.cpp applies (for writing GGUF files and tests).
pub fn permute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))?)
}

/// Whole-tensor names, GGUF -> Hugging Face.
const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer module names, GGUF -> Hugging Face (under `blk.N.` / `model.layers.N.`).
const LAYER_MODULES: [(&str, &str); 11] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// Translates a tensor name between the GGUF and Hugging Face conventions.
fn translate(name: &str, to_hf: bool) -> Option<String> {
    let pick = |(g, h): (&'static str, &'static str)| if to_hf { (g, h) } else { (h, g) };
    if let Some((_, to)) = GLOBAL_NAMES
        .into_iter()
        .map(pick)
        .find(|(from, _)| *from == name)
    {
        return Some(to.to_string());
    }
    let (from_prefix, to_prefix) = if to_hf {
        ("blk.", "model.layers.")
    } else {
        ("model.layers.", "blk.")
    };
    let (layer, part) = name.strip_prefix(from_prefix)?.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let (_, to) = LAYER_MODULES
        .into_iter()
        .map(pick)
        .find(|(from, _)| *from == module)?;
    Some(format!("{to_prefix}{layer}.{to}.{kind}"))
}

/// GGUF tensor name -> Hugging Face name.
pub fn hf_name(name: &str) -> Option<String> {
    translate(name, true)
}

/// Hugging Face name -> GGUF tensor name.
pub fn gguf_name(name: &str) -> Option<String> {
    translate(name, false)
}

/// Reads a GGUF file and writes a Hugging Face model folder to `out`.
pub fn import_gguf(path: &Path, out: &Path) -> Result<Imported> {
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
    let model_config = ModelConfig::from_value(config.clone()).map_err(fail)?;

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
        if arch == "llama" && t.rank() == 2 {
            if name.contains("attn_q.") {
                t = unpermute(&t, heads)?;
            } else if name.contains("attn_k.") {
                t = unpermute(&t, kv_heads)?;
            }
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
fn write_tokenizer(content: &Content, tokens: &[String], out: &Path) -> Result<bool> {
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
    use candle_core::quantized::{GgmlDType, QTensor};
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

    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for p in model.params() {
        let name = gguf_name(p.name())
            .ok_or_else(|| ModelError::invalid(format!("no GGUF name for {}", p.name())))?;
        let mut t = p.tensor().to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        if arch == "llama" && p.name().ends_with("q_proj.weight") {
            t = permute(&t, c.num_attention_heads)?;
        } else if arch == "llama" && p.name().ends_with("k_proj.weight") {
            t = permute(&t, c.num_key_value_heads)?;
        }
        let want = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
        // Quantized blocks need a row length divisible by the block size.
        let q = match QTensor::quantize(&t, want) {
            Ok(q) => q,
            Err(_) => QTensor::quantize(&t, GgmlDType::F16)?,
        };
        tensors.push((name, q));
    }
    let mut file = std::fs::File::create(path)
        .map_err(|e| ModelError::file(path, format!("cannot create: {e}")))?;
    let meta_refs: Vec<(&str, &G)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut file, &meta_refs, &tensor_refs)
        .map_err(|e| ModelError::file(path, format!("cannot write GGUF: {e}")))?;
    Ok(())
}
