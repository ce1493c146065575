//! The Llama family of decoders (Llama 2/3, Mistral, Qwen2, Qwen3) with a forward pass
//! that candle can differentiate, written to match transformers' eager implementation.
//!
//! embed -> [ RMSNorm -> attention (q/k/v, optional q/k norm, rope, GQA, causal mask)
//!            -> residual -> RMSNorm -> SwiGLU MLP -> residual ] x N -> RMSNorm -> lm_head
//!
//! The training objectives (token loss, sequence log-probabilities) and the checkpointed
//! backward pass are in `llama/objectives.rs`.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};

use crate::config::ModelConfig;
use crate::linear::Linear;
use crate::ops::dropout::{pass_seed, with_layer_masks};
use crate::ops::mask::attention_bias;
use crate::ops::{
    apply_rope, attention, frozen_linear, repeat_kv, rms_norm, rope_tables, swiglu,
    trainable_linear, FrozenWeight,
};
use crate::param::Param;
use crate::stored::StoredWeight;

mod objectives;

/// Weights by Hugging Face name, consumed while the model is built.
pub type WeightMap = HashMap<String, Tensor>;

/// Frozen weights held in a storage type, by Hugging Face name.
pub type StoredMap = HashMap<String, StoredWeight>;

/// The weights a model is built from: tensors (converted to the compute dtype) and
/// weights kept in their storage type, each taken once by name.
struct Source {
    tensors: WeightMap,
    stored: StoredMap,
    dtype: DType,
}

impl Source {
    fn take(&mut self, name: &str) -> Result<Param> {
        if let Some(w) = self.stored.remove(name) {
            return Ok(Param::stored(name, w));
        }
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing weight {name}")))?;
        Ok(Param::frozen(name, t.to_dtype(self.dtype)?))
    }

    fn linear(&mut self, prefix: &str, bias: bool) -> Result<Linear> {
        let weight = self.take(&format!("{prefix}.weight"))?;
        let bias = if bias {
            Some(self.take(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        Ok(Linear::new(weight, bias))
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Option<Param>,
    pub k_norm: Option<Param>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    eps: f64,
}

/// Keys and values of the tokens seen so far, per layer, for generation.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Row-major (batch * len) segment ids of the cached keys (0 = padding).
    key_segments: Vec<u32>,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            key_segments: Vec::new(),
            len: 0,
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Attention {
    fn load(w: &mut Source, p: &str, c: &ModelConfig) -> Result<Self> {
        let norm = |w: &mut Source, n: &str| -> Result<Option<Param>> {
            if c.qk_norm {
                Ok(Some(w.take(&format!("{p}.{n}.weight"))?))
            } else {
                Ok(None)
            }
        };
        Ok(Attention {
            q_proj: w.linear(&format!("{p}.q_proj"), c.qkv_bias)?,
            k_proj: w.linear(&format!("{p}.k_proj"), c.qkv_bias)?,
            v_proj: w.linear(&format!("{p}.v_proj"), c.qkv_bias)?,
            o_proj: w.linear(&format!("{p}.o_proj"), c.o_bias)?,
            q_norm: norm(w, "q_norm")?,
            k_norm: norm(w, "k_norm")?,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            eps: c.rms_norm_eps,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let mut q = self.q_proj.forward(x, train)?.reshape((b, s, nh, hd))?;
        let mut k = self.k_proj.forward(x, train)?.reshape((b, s, nkv, hd))?;
        let v = self.v_proj.forward(x, train)?.reshape((b, s, nkv, hd))?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = rms_norm(&q, qn.tensor()?, self.eps)?;
            k = rms_norm(&k, kn.tensor()?, self.eps)?;
        }
        let q = apply_rope(&q.transpose(1, 2)?.contiguous()?, &rope.0, &rope.1)?;
        let mut k = apply_rope(&k.transpose(1, 2)?.contiguous()?, &rope.0, &rope.1)?;
        let mut v = v.transpose(1, 2)?.contiguous()?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let k = repeat_kv(&k, nh / nkv)?.contiguous()?;
        let v = repeat_kv(&v, nh / nkv)?.contiguous()?;
        let out = attention(&q, &k, &v, mask, 1.0 / (hd as f64).sqrt())?;
        let out = out.transpose(1, 2)?.reshape((b, s, nh * hd))?;
        self.o_proj.forward(&out, train)
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x, train)?;
        let up = self.up_proj.forward(x, train)?;
        self.down_proj.forward(&swiglu(&gate, &up)?, train)
    }
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: Param,
    pub self_attn: Attention,
    pub post_attention_layernorm: Param,
    pub mlp: Mlp,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
        eps: f64,
    ) -> Result<Tensor> {
        let h = rms_norm(x, self.input_layernorm.tensor()?, eps)?;
        let x = (x + self.self_attn.forward(&h, rope, mask, cache, train)?)?;
        let h = rms_norm(&x, self.post_attention_layernorm.tensor()?, eps)?;
        x + self.mlp.forward(&h, train)?
    }
}

/// A decoder-only causal language model.
#[derive(Debug, Clone)]
pub struct CausalLm {
    pub config: ModelConfig,
    pub embed_tokens: Param,
    pub layers: Vec<DecoderLayer>,
    pub norm: Param,
    /// `None` when the output projection is tied to the embeddings.
    pub lm_head: Option<Linear>,
    inv_freq: Vec<f32>,
    device: Device,
    dtype: DType,
}

impl CausalLm {
    /// Builds the model from weights by Hugging Face name (all frozen; see
    /// `crate::tuning` to choose what trains). Unused weights are returned.
    pub fn from_weights(
        config: ModelConfig,
        w: WeightMap,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        CausalLm::from_stored_weights(config, w, StoredMap::new(), dtype, device)
    }

    /// [`CausalLm::from_weights`] with some frozen weights kept in their storage type
    /// (`stored`, taken before `w` for a name in both).
    pub fn from_stored_weights(
        config: ModelConfig,
        w: WeightMap,
        stored: StoredMap,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        let mut w = Source {
            tensors: w,
            stored,
            dtype,
        };
        let c = &config;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(DecoderLayer {
                input_layernorm: w.take(&format!("{p}.input_layernorm.weight"))?,
                self_attn: Attention::load(&mut w, &format!("{p}.self_attn"), c)?,
                post_attention_layernorm: w
                    .take(&format!("{p}.post_attention_layernorm.weight"))?,
                mlp: Mlp {
                    gate_proj: w.linear(&format!("{p}.mlp.gate_proj"), c.mlp_bias)?,
                    up_proj: w.linear(&format!("{p}.mlp.up_proj"), c.mlp_bias)?,
                    down_proj: w.linear(&format!("{p}.mlp.down_proj"), c.mlp_bias)?,
                },
            });
        }
        let embed_tokens = w.take("model.embed_tokens.weight")?;
        let norm = w.take("model.norm.weight")?;
        let lm_head = if c.tie_word_embeddings {
            w.tensors.remove("lm_head.weight");
            w.stored.remove("lm_head.weight");
            None
        } else {
            Some(w.linear("lm_head", false)?)
        };
        let mut unused: Vec<String> = w
            .tensors
            .into_keys()
            .chain(w.stored.into_keys())
            .filter(|k| !k.ends_with("rotary_emb.inv_freq"))
            .collect();
        unused.sort();
        let inv_freq = config.inv_freq();
        Ok((
            CausalLm {
                config,
                embed_tokens,
                layers,
                norm,
                lm_head,
                inv_freq,
                device: device.clone(),
                dtype,
            },
            unused,
        ))
    }

    /// A copy that shares the weights, every one frozen: its passes build no autograd
    /// graph (evaluation, generation with a model in training).
    pub fn detached(&self) -> Result<CausalLm> {
        let mut model = self.clone();
        for p in model.params_mut() {
            p.set_trainable(false)?;
        }
        Ok(model)
    }

    /// Makes every frozen matrix (the embeddings and head included) multiply in bf16 with
    /// f32 accumulation (`bf16: true`): a stored weight keeps its type, an f32 one is held
    /// as bf16. What trains, norms, softmax and the loss stay f32. Returns how many
    /// matrices changed.
    pub fn use_bf16_products(&mut self) -> Result<usize> {
        let mut changed = 0;
        for p in self.params_mut() {
            if p.is_trainable() || p.dims().len() != 2 {
                continue;
            }
            let w = match p.frozen_weight() {
                FrozenWeight::Stored(w) => w,
                FrozenWeight::Dense(t) => StoredWeight::quantize(
                    &t.to_dtype(DType::F32)?,
                    candle_core::quantized::GgmlDType::BF16,
                )?,
            };
            *p = Param::stored(p.name().to_string(), w.with_bf16_products(true));
            changed += 1;
        }
        Ok(changed)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every parameter, in a stable order (Hugging Face names).
    pub fn params(&self) -> Vec<&Param> {
        let mut out = vec![&self.embed_tokens];
        for l in &self.layers {
            out.push(&l.input_layernorm);
            let a = &l.self_attn;
            for lin in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj] {
                out.extend(lin.params());
            }
            out.extend(a.q_norm.iter().chain(a.k_norm.iter()));
            out.push(&l.post_attention_layernorm);
            for lin in [&l.mlp.gate_proj, &l.mlp.up_proj, &l.mlp.down_proj] {
                out.extend(lin.params());
            }
        }
        out.push(&self.norm);
        if let Some(head) = &self.lm_head {
            out.extend(head.params());
        }
        out
    }

    /// The parameters an optimizer updates (adapters, unfrozen layers), in `params` order:
    /// the one place that says which parameters train.
    pub fn trainable_params(&self) -> Vec<&Param> {
        self.params()
            .into_iter()
            .filter(|p| p.is_trainable())
            .collect()
    }

    /// How many numbers the trainable parameters hold.
    pub fn trainable_count(&self) -> usize {
        self.trainable_params().iter().map(|p| p.elem_count()).sum()
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut out = vec![&mut self.embed_tokens];
        for l in &mut self.layers {
            out.push(&mut l.input_layernorm);
            let a = &mut l.self_attn;
            for lin in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
                out.extend(lin.params_mut());
            }
            out.extend(a.q_norm.iter_mut().chain(a.k_norm.iter_mut()));
            out.push(&mut l.post_attention_layernorm);
            for lin in [
                &mut l.mlp.gate_proj,
                &mut l.mlp.up_proj,
                &mut l.mlp.down_proj,
            ] {
                out.extend(lin.params_mut());
            }
        }
        out.push(&mut self.norm);
        if let Some(head) = &mut self.lm_head {
            out.extend(head.params_mut());
        }
        out
    }

    /// Every linear projection with its module path (`model.layers.0.self_attn.q_proj`),
    /// for LoRA.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let a = &mut l.self_attn;
            for (name, lin) in [
                ("q_proj", &mut a.q_proj),
                ("k_proj", &mut a.k_proj),
                ("v_proj", &mut a.v_proj),
                ("o_proj", &mut a.o_proj),
            ] {
                out.push((format!("model.layers.{i}.self_attn.{name}"), lin));
            }
            let m = &mut l.mlp;
            for (name, lin) in [
                ("gate_proj", &mut m.gate_proj),
                ("up_proj", &mut m.up_proj),
                ("down_proj", &mut m.down_proj),
            ] {
                out.push((format!("model.layers.{i}.mlp.{name}"), lin));
            }
        }
        out
    }

    /// Rotary cos/sin (batch, 1, seq, head_dim) for the given row-major position ids:
    /// each row the half-width table's values twice, as `apply_rope` takes them.
    fn rope(&self, positions: &[u32], batch: usize, seq: usize) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let (cos_half, sin_half) = rope_tables(&self.inv_freq, positions);
        let repeat = |table: &[f32]| -> Vec<f32> {
            let mut out = Vec::with_capacity(table.len() * 2);
            for row in table.chunks_exact(half.max(1)) {
                out.extend_from_slice(row);
                out.extend_from_slice(row);
            }
            out
        };
        let shape = (batch, 1, seq, 2 * half);
        Ok((
            Tensor::from_vec(repeat(&cos_half), shape, &self.device)?.to_dtype(self.dtype)?,
            Tensor::from_vec(repeat(&sin_half), shape, &self.device)?.to_dtype(self.dtype)?,
        ))
    }

    /// Additive attention bias (batch, 1, q_len, k_len) from the mask rule
    /// (`ops::mask`): causal, within a sample, padding keys hidden.
    fn attention_bias(
        &self,
        q_segments: &[u32],
        k_segments: &[u32],
        batch: usize,
        past: usize,
    ) -> Result<Tensor> {
        attention_bias(
            q_segments,
            k_segments,
            batch,
            past,
            &self.device,
            self.dtype,
        )
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let h = self.config.hidden_size;
        let ids = ids.flatten_all()?;
        let rows = if self.embed_tokens.is_trainable() {
            self.embed_tokens.tensor()?.index_select(&ids, 0)?
        } else {
            self.embed_tokens.frozen_weight().gather_rows(&ids)?
        };
        rows.reshape((b, s, h))
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(hidden, false),
            None => {
                let (b, s, h) = hidden.dims3()?;
                let x = hidden.reshape((b * s, h))?;
                let logits = if self.embed_tokens.is_trainable() {
                    trainable_linear(&x, self.embed_tokens.tensor()?)?
                } else {
                    frozen_linear(&x, &self.embed_tokens.frozen_weight())?
                };
                logits.reshape((b, s, ()))
            }
        }
    }

    fn run(
        &self,
        ids: &Tensor,
        positions: &[u32],
        q_segments: &[u32],
        k_segments: &[u32],
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let x = self.hidden_states(ids, positions, q_segments, k_segments, cache, train)?;
        self.head(&x)?.to_dtype(DType::F32)
    }

    /// The final hidden states, after the last norm: what the head takes.
    fn hidden_states(
        &self,
        ids: &Tensor,
        positions: &[u32],
        q_segments: &[u32],
        k_segments: &[u32],
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let past = cache.as_ref().map(|c| c.len).unwrap_or(0);
        let rope = self.rope(positions, b, s)?;
        let mask = self.attention_bias(q_segments, k_segments, b, past)?;
        let mut x = self.embed(ids)?;
        let mut slots = cache.map(|c| &mut c.layers);
        let seed = pass_seed();
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = slots.as_mut().map(|s| &mut s[i]);
            x = with_layer_masks(seed, i, || {
                layer.forward(&x, &rope, &mask, slot, train, self.config.rms_norm_eps)
            })?;
        }
        rms_norm(&x, self.norm.tensor()?, self.config.rms_norm_eps)
    }

    /// Runs new tokens (batch, n) through the model, appending to `cache`. `positions` and
    /// `segments` are row-major (batch * n); segment 0 marks (left) padding.
    pub fn forward_cached(
        &self,
        ids: &Tensor,
        positions: &[u32],
        segments: &[u32],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, n) = ids.dims2()?;
        if cache.layers.len() != self.layers.len() {
            *cache = KvCache::new(self.layers.len());
        }
        let old = cache.len;
        let mut keys = Vec::with_capacity(b * (old + n));
        for row in 0..b {
            keys.extend_from_slice(&cache.key_segments[row * old..(row + 1) * old]);
            keys.extend_from_slice(&segments[row * n..(row + 1) * n]);
        }
        let logits = self.run(ids, positions, segments, &keys, Some(cache), false)?;
        cache.key_segments = keys;
        cache.len = old + n;
        Ok(logits)
    }
}
