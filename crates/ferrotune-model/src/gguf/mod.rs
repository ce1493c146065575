//! llama.cpp's GGUF files, both ways: `read` turns one into a Hugging Face model folder
//! (weights dequantized, config.json from the metadata, the tokenizer rebuilt from the
//! vocabulary), `load` uses one in place (its quantized tensors as they are, behind a
//! small folder of config and tokenizer files), `write` exports a model (and its
//! tokenizer) as one. The tensor-name tables
//! both directions use live here.
//!
//! llama.cpp's converter permutes the rows of the q and k projections of Llama-architecture
//! models for its rope layout: `write::permute` applies it, `read::unpermute` undoes it.

mod file;
mod load;
mod read;
mod write;

pub use load::{
    adapter_base, check_adapter_base, gguf_cache, gguf_folder, gguf_in_folder, is_gguf_file,
    load_gguf_model, record_adapter_base, sha256_file, storage_summary, GgufSource, ADAPTER_BASE,
    GGUF_SOURCE,
};
pub use read::{import_gguf, unpermute, Imported};
pub use write::{export_gguf, permute};

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
