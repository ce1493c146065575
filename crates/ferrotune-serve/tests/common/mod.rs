//! A tiny random model made in-process, as `ferrotune model init` makes it, and the
//! chat model and greedy settings the tests use.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use ferrotune_data::TokenizerBundle;
use ferrotune_model::config::ModelConfig;
use ferrotune_model::generate::GenerationConfig;
use ferrotune_model::infer::WeightType;
use ferrotune_model::save::{save_model, SaveOptions};
use ferrotune_serve::loading::{self, ModelSource};
use ferrotune_serve::{ChatModel, SamplingOptions};
use ferrotune_testing::workspace_root;
use serde_json::json;

/// A random two-layer Llama (hidden 64) on the tokenizer of examples/, in `dir/model`.
/// Untied embeddings: a tied random model only ever repeats the last prompt token.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let tokenizer = workspace_root().join("examples/tokenizer");
    let tok = TokenizerBundle::load(&tokenizer).unwrap();
    let id = |t: &Option<String>| t.as_deref().and_then(|t| tok.token_id(t));
    let mut value = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
        "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "tie_word_embeddings": false, "rope_theta": 10000.0,
        "max_position_embeddings": 512});
    value["vocab_size"] = json!(tok.hf().unwrap().get_vocab_size(true));
    if let Some(bos) = id(&tok.specials.bos) {
        value["bos_token_id"] = json!(bos);
    }
    if let Some(eos) = id(&tok.specials.eos) {
        value["eos_token_id"] = json!(eos);
    }
    value["pad_token_id"] = json!(tok.pad_token().id);
    let config = ModelConfig::from_value(value).unwrap();
    let model = ferrotune_model::init::init_model(config, 42, &Device::Cpu).unwrap();
    let out = dir.join("model");
    let options = SaveOptions {
        dtype: Some(DType::F32),
        tokenizer_dir: Some(&tokenizer),
        ..SaveOptions::default()
    };
    save_model(&model, &out, &options).unwrap();
    out
}

/// The model in `dir` ready to chat, with the template saved with it.
pub fn chat_model(dir: &Path) -> ChatModel {
    let source = ModelSource::locate(Some(dir.to_str().unwrap()), None).unwrap();
    let (tok, template) = loading::tokenizer_and_template(&source, None).unwrap();
    ChatModel::load(
        &source,
        tok,
        template.expect("a chat template"),
        Some(WeightType::F32),
    )
    .unwrap()
}

/// Greedy decoding of at most `max_new_tokens`, ending at the model's stop ids.
pub fn greedy(dir: &Path, chat: &ChatModel, max_new_tokens: usize) -> GenerationConfig {
    greedy_options(max_new_tokens)
        .config(dir, chat.stop_ids().to_vec())
        .unwrap()
}

pub fn greedy_options(max_new_tokens: usize) -> SamplingOptions {
    SamplingOptions {
        max_new_tokens,
        temperature: Some(0.0),
        top_p: None,
        top_k: None,
        repetition_penalty: None,
        seed: 0,
    }
}
