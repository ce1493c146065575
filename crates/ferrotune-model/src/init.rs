//! A randomly initialised model, initialised as transformers does for Llama-family models:
//! linear and embedding weights ~ N(0, initializer_range), biases 0, RMSNorm weights 1.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::llama::{CausalLm, StoredMap, WeightMap};
use crate::stored::{fit_type, StoredWeight};

/// Standard normal draws (Box-Muller), deterministic for a seed.
fn normal(rng: &mut rand::rngs::StdRng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f32::consts::PI * u2;
        out.push(r * theta.cos() * std);
        out.push(r * theta.sin() * std);
    }
    out.truncate(n);
    out
}

/// The matrices of `config` in the order their values are drawn: the embeddings, each
/// layer's projections, an untied head.
fn matrices(config: &ModelConfig) -> Vec<(String, (usize, usize))> {
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let mut out = vec![("model.embed_tokens.weight".to_string(), (v, h))];
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", (q, h)),
            ("self_attn.k_proj", (kv, h)),
            ("self_attn.v_proj", (kv, h)),
            ("self_attn.o_proj", (h, q)),
            ("mlp.gate_proj", (i, h)),
            ("mlp.up_proj", (i, h)),
            ("mlp.down_proj", (h, i)),
        ] {
            out.push((format!("{p}.{name}.weight"), shape));
        }
    }
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".into(), (v, h)));
    }
    out
}

fn initializer_range(config: &ModelConfig) -> f32 {
    config
        .raw
        .get("initializer_range")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.02) as f32
}

/// Norm weights (ones) and biases (zeros).
fn vectors(config: &ModelConfig, device: &Device) -> Result<WeightMap> {
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let mut w = WeightMap::new();
    let ones = |n: usize| Tensor::ones(n, DType::F32, device);
    let zeros = |n: usize| Tensor::zeros(n, DType::F32, device);
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        w.insert(format!("{p}.input_layernorm.weight"), ones(h)?);
        w.insert(format!("{p}.post_attention_layernorm.weight"), ones(h)?);
        if config.qk_norm {
            w.insert(
                format!("{p}.self_attn.q_norm.weight"),
                ones(config.head_dim)?,
            );
            w.insert(
                format!("{p}.self_attn.k_norm.weight"),
                ones(config.head_dim)?,
            );
        }
        if config.qkv_bias {
            w.insert(format!("{p}.self_attn.q_proj.bias"), zeros(q)?);
            w.insert(format!("{p}.self_attn.k_proj.bias"), zeros(kv)?);
            w.insert(format!("{p}.self_attn.v_proj.bias"), zeros(kv)?);
        }
        if config.o_bias {
            w.insert(format!("{p}.self_attn.o_proj.bias"), zeros(h)?);
        }
        if config.mlp_bias {
            w.insert(format!("{p}.mlp.gate_proj.bias"), zeros(i)?);
            w.insert(format!("{p}.mlp.up_proj.bias"), zeros(i)?);
            w.insert(format!("{p}.mlp.down_proj.bias"), zeros(h)?);
        }
    }
    w.insert("model.norm.weight".into(), ones(h)?);
    Ok(w)
}

/// Builds the weights of `config` with the given seed.
pub fn init_weights(config: &ModelConfig, seed: u64, device: &Device) -> Result<WeightMap> {
    let std = initializer_range(config);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut w = vectors(config, device)?;
    for (name, shape) in matrices(config) {
        let t = Tensor::from_vec(normal(&mut rng, shape.0 * shape.1, std), shape, device)?;
        w.insert(name, t);
    }
    Ok(w)
}

/// A freshly initialised model.
pub fn init_model(config: ModelConfig, seed: u64, device: &Device) -> Result<CausalLm> {
    let weights = init_weights(&config, seed, device)?;
    let (model, _) = CausalLm::from_weights(config, weights, DType::F32, device)?;
    Ok(model)
}

/// A freshly initialised model whose matrices (the embeddings and head included) are held
/// in `storage` from the start: each is drawn and quantized a slab of rows at a time, so
/// that a model of any size is made without an f32 copy of even one whole matrix. The
/// values follow the same draws as [`init_model`]'s.
pub fn init_stored_model(
    config: ModelConfig,
    seed: u64,
    storage: GgmlDType,
    device: &Device,
) -> Result<CausalLm> {
    let std = initializer_range(&config);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tensors = vectors(&config, device)?;
    let mut stored = StoredMap::new();
    for (name, (rows, cols)) in matrices(&config) {
        let w = StoredWeight::from_row_slabs(fit_type(storage, cols), rows, cols, |_, n| {
            Tensor::from_vec(normal(&mut rng, n * cols, std), (n, cols), &Device::Cpu)
        })?;
        stored.insert(name, w);
    }
    let (model, _) = CausalLm::from_stored_weights(config, tensors, stored, DType::F32, device)?;
    Ok(model)
}
