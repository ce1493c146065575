//! Decoding on the CPU with weights held for reading rather than for training: f32, bf16,
//! q8_0 (blocks of 32 int8 weights sharing one f16 scale, as ggml's Q8_0) or q4_1 (blocks
//! of 32 4-bit weights with an f16 scale and minimum, as ggml's Q4_1), widened to
//! f32 in registers (q8_0 at one or two input rows on AVX-512 VNNI: integer products with
//! the input rounded to int16, module `q8dot`). At batch 1 every decoded token reads every
//! weight once, so decoding is bound by memory bandwidth and the bytes per weight set the
//! speed, as long as the arithmetic per weight keeps up with the memory.
//!
//! The weights are held in panels of 32 output rows stored input column by input column
//! (module `panels`): one load of 32 weights serves every input row of a tile (up to 8, the
//! batch), so batched decoding costs little more than one row. Panels run in parallel
//! (rayon). Training keeps its own f32 model ([`CausalLm`]);
//! [`InferenceModel`] is built from one, and falls back to its composed candle path off
//! the CPU.
//!
//! Shapes in a decoding step (`DecodeWeights::decode`; the code's names in brackets):
//!
//! * B (`batch`) rows of the batch, N (`n`) new tokens a row, M = B N (`m`) rows of
//!   activations, row `r` of batch row `r / N`;
//! * P (`past`) positions cached before the step, P + N (`total`) after; `cap` >= P + N
//!   positions of room a head;
//! * H (`h`) the hidden size, NH (`nh`) query heads and KV (`nkv`) key/value heads of D
//!   (`hd`) features, Q = NH D (`qd`) and K = KV D (`kvd`); I (`inter`) the MLP's
//!   intermediate size; V (`vocab`) the vocabulary.
//!
//! x, the residual stream, (M, H); qkv (M, Q + 2 K); attn (M, Q); gate and up side by
//! side (M, 2 I) (`gu`) and their SwiGLU (M, I) (`act`); the cache, per layer and batch
//! row, (KV, cap, D); cos and sin (M, D/2); logits (B, V), of each row's last token.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::generate::Decoder;
use crate::linear::Linear;
use crate::llama::{CausalLm, KvCache};
use crate::ops::lanes::{sigmoid, sum_of};
use crate::ops::mask::visible_keys;
use crate::ops::rope_tables;
use panels::Panels;

mod attention;
mod panels;
mod q8dot;

/// How inference weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightType {
    #[default]
    F32,
    Bf16,
    /// ggml's Q8_0: 32 int8 weights and one f16 scale per block (8.5 bits a weight).
    Q8_0,
    /// ggml's Q4_1: 32 4-bit weights, one f16 scale and one f16 minimum per block (5 bits
    /// a weight).
    Q4_1,
}

impl WeightType {
    pub const NAMES: &'static str = "f32, bf16, q8_0, q4_1";

    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "f32",
            WeightType::Bf16 => "bf16",
            WeightType::Q8_0 => "q8_0",
            WeightType::Q4_1 => "q4_1",
        }
    }
}

impl fmt::Display for WeightType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(WeightType::F32),
            "bf16" | "bfloat16" => Ok(WeightType::Bf16),
            "q8_0" | "q8" => Ok(WeightType::Q8_0),
            "q4_1" => Ok(WeightType::Q4_1),
            _ => Err(format!(
                "unknown weight type {s:?} (expected one of {})",
                WeightType::NAMES
            )),
        }
    }
}

const BLOCK: usize = 32;

/// A weight matrix (rows = output features, cols = input features) for inference, in
/// panels (module `panels`).
pub struct Matrix {
    rows: usize,
    cols: usize,
    panels: Panels,
}

fn f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) => {
            Ok(f(&v[a..b]))
        }
        _ => candle_core::bail!("infer: expected a contiguous f32 CPU tensor"),
    }
}

fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

impl Matrix {
    /// Converts an f32 (rows, cols) CPU tensor.
    pub fn new(w: &Tensor, ty: WeightType) -> Result<Self> {
        let w = w
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let (rows, cols) = w.dims2()?;
        if matches!(ty, WeightType::Q8_0 | WeightType::Q4_1) && !cols.is_multiple_of(BLOCK) {
            candle_core::bail!(
                "{ty} weights need rows that are a multiple of {BLOCK} long; this model has \
                 a {rows} x {cols} weight (use f32 or bf16)"
            );
        }
        let panels = f32_slice(&w, |v| match ty {
            WeightType::F32 => Panels::f32(v, rows, cols),
            WeightType::Bf16 => Panels::bf16(v, rows, cols),
            WeightType::Q8_0 => Panels::q8(v, rows, cols),
            WeightType::Q4_1 => Panels::q4(v, rows, cols),
        })?;
        Ok(Matrix { rows, cols, panels })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes one pass over the matrix reads.
    pub fn bytes(&self) -> usize {
        self.panels.bytes(self.rows, self.cols)
    }

    /// Row `r` widened to f32 (embedding lookups).
    fn row(&self, r: usize, out: &mut [f32]) {
        for (k, o) in out.iter_mut().enumerate() {
            *o = self.panels.get(r, k, self.cols);
        }
    }

    /// `y (m, rows) = x (m, cols) W^T`.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        if x.len() != m * cols || y.len() != m * rows {
            candle_core::bail!(
                "infer matmul: input {} / output {} for {m} rows of a {rows} x {cols} weight",
                x.len(),
                y.len()
            );
        }
        self.panels.matmul(rows, cols, x, m, y);
        Ok(())
    }
}

/// ggml's Q8_0 rounding: scale = max |w| / 127 per block, weights rounded to nearest.
fn quantize_q8(w: &[f32]) -> (Vec<i8>, Vec<u16>) {
    let mut quants = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len() / BLOCK);
    for block in w.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        quants.extend(block.iter().map(|&x| (x * id).round() as i8));
        scales.push(half::f16::from_f32(d).to_bits());
    }
    (quants, scales)
}

/// ggml's Q4_1 rounding: per block, minimum `m` and scale `d = (max - m) / 15`, quants
/// `(w - m) / d` rounded to nearest in 0..=15 (one quant a byte here); `d` and `m` as f16.
fn quantize_q4_1(w: &[f32]) -> (Vec<u8>, Vec<u16>, Vec<u16>) {
    let mut quants = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len() / BLOCK);
    let mut mins = Vec::with_capacity(w.len() / BLOCK);
    for block in w.chunks_exact(BLOCK) {
        let min = block.iter().fold(f32::INFINITY, |a, &x| a.min(x));
        let max = block.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let d = (max - min) / 15.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        quants.extend(
            block
                .iter()
                .map(|&x| (((x - min) * id + 0.5) as u8).min(15)),
        );
        scales.push(half::f16::from_f32(d).to_bits());
        mins.push(half::f16::from_f32(min).to_bits());
    }
    (quants, scales, mins)
}

/// The sum of `data`, read once in parallel with eight independent sums per task so that
/// nothing but the loads limits it: the read-bandwidth probe that decoding speed is
/// compared with (`ferrotune bench generate`, examples/skinny_matmul.rs).
pub fn streaming_sum(data: &[f32]) -> f32 {
    let chunk = (data.len() / (8 * rayon::current_num_threads())).max(1 << 14);
    data.par_chunks(chunk)
        .map(|c| {
            let mut acc = [0f32; 8];
            for v in c.chunks_exact(8) {
                for k in 0..8 {
                    acc[k] += v[k];
                }
            }
            acc.iter().sum::<f32>()
        })
        .sum()
}

/// Deterministic values in [-1, 1] for the kernels' tests (xorshift).
#[cfg(test)]
pub(crate) fn test_noise(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn rms_norm_rows(x: &[f32], w: &[f32], eps: f64, out: &mut [f32]) {
    let h = w.len();
    for (xr, or) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        // The squares go through `out`, which the loop below overwrites.
        or.iter_mut().zip(xr).for_each(|(o, v)| *o = v * v);
        let ms = sum_of(or) / h as f32;
        let inv = 1.0 / (ms + eps as f32).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

fn add_bias(y: &mut [f32], bias: Option<&Vec<f32>>) {
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
}

fn vector(t: &Tensor) -> Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

fn weight_of(lin: &Linear) -> Result<Tensor> {
    lin.merged_weight()?.to_dtype(DType::F32)
}

fn bias_of(lins: &[&Linear]) -> Result<Option<Vec<f32>>> {
    if lins.iter().all(|l| l.bias.is_none()) {
        return Ok(None);
    }
    let mut out = Vec::new();
    for l in lins {
        match &l.bias {
            Some(b) => out.extend(vector(b.tensor()?)?),
            None => out.extend(std::iter::repeat_n(0.0, l.out_features())),
        }
    }
    Ok(Some(out))
}

struct Layer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    /// q, k and v stacked: one pass over the input for the three.
    qkv: Matrix,
    qkv_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    o: Matrix,
    o_bias: Option<Vec<f32>>,
    /// gate and up stacked.
    gate_up: Matrix,
    gate_up_bias: Option<Vec<f32>>,
    down: Matrix,
    down_bias: Option<Vec<f32>>,
}

/// The CPU decoder's weights, converted from a [`CausalLm`] into the chosen weight type,
/// with the decoding step that runs them.
struct DecodeWeights {
    layers: Vec<Layer>,
    /// Embedding lookups; also the output projection when the embeddings are tied.
    embed: Matrix,
    head: Option<Matrix>,
    norm: Vec<f32>,
    inv_freq: Vec<f32>,
}

/// Keys and values of the tokens seen so far, per layer and batch row, head-major: key/value
/// head `h`'s vector for position `t` at `(h * cap + t) * head_dim`, so that attention
/// reads each head's positions as one stream (position-major rows interleave the heads).
#[derive(Default)]
pub struct DecodeCache {
    k: Vec<Vec<Vec<f32>>>,
    v: Vec<Vec<Vec<f32>>>,
    key_segments: Vec<Vec<u32>>,
    len: usize,
    /// Positions each head has room for.
    cap: usize,
}

impl DecodeCache {
    /// Room for `total` positions a head, each row's buffers laid out anew when it grows
    /// (by half again at least, so that growing costs little per decoded token).
    fn reserve(&mut self, total: usize, kv_heads: usize, head_dim: usize) {
        if total <= self.cap {
            return;
        }
        let cap = total.max(self.cap + self.cap / 2).max(64);
        let (old, past) = (self.cap, self.len);
        for buffers in self.k.iter_mut().chain(self.v.iter_mut()) {
            for buffer in buffers.iter_mut() {
                let mut grown = vec![0f32; kv_heads * cap * head_dim];
                for h in 0..kv_heads {
                    grown[h * cap * head_dim..][..past * head_dim]
                        .copy_from_slice(&buffer[h * old * head_dim..][..past * head_dim]);
                }
                *buffer = grown;
            }
        }
        self.cap = cap;
    }
}

enum Inner {
    Cpu(Box<DecodeWeights>),
    Composed(Box<CausalLm>),
}

/// A model for generation: the CPU engine with the chosen weight type, or the composed
/// candle model on other devices.
pub struct InferenceModel {
    config: ModelConfig,
    inner: Inner,
}

/// The cache of an [`InferenceModel`].
pub enum InferenceCache {
    Cpu(DecodeCache),
    Composed(KvCache),
}

impl InferenceModel {
    /// Converts a (merged or adapted) model. Off the CPU, only f32 is offered and the
    /// model's own forward pass is used.
    pub fn new(model: CausalLm, weights: WeightType) -> Result<Self> {
        let config = model.config.clone();
        if !model.device().is_cpu() {
            if weights != WeightType::F32 {
                candle_core::bail!(
                    "{weights} inference weights are a CPU path; on {:?} use f32",
                    model.device()
                );
            }
            return Ok(InferenceModel {
                config,
                inner: Inner::Composed(Box::new(model)),
            });
        }
        let CausalLm {
            embed_tokens,
            layers: decoder_layers,
            norm,
            lm_head,
            ..
        } = model;
        let c = &config;
        let mut layers = Vec::with_capacity(decoder_layers.len());
        // One layer at a time, so that the f32 copy of a layer is dropped once converted.
        for l in decoder_layers {
            let a = &l.self_attn;
            let qkv = Tensor::cat(
                &[
                    weight_of(&a.q_proj)?,
                    weight_of(&a.k_proj)?,
                    weight_of(&a.v_proj)?,
                ],
                0,
            )?;
            let m = &l.mlp;
            let gate_up = Tensor::cat(&[weight_of(&m.gate_proj)?, weight_of(&m.up_proj)?], 0)?;
            layers.push(Layer {
                input_norm: vector(l.input_layernorm.tensor()?)?,
                post_norm: vector(l.post_attention_layernorm.tensor()?)?,
                qkv: Matrix::new(&qkv, weights)?,
                qkv_bias: bias_of(&[&a.q_proj, &a.k_proj, &a.v_proj])?,
                q_norm: a.q_norm.as_ref().map(|p| vector(p.tensor()?)).transpose()?,
                k_norm: a.k_norm.as_ref().map(|p| vector(p.tensor()?)).transpose()?,
                o: Matrix::new(&weight_of(&a.o_proj)?, weights)?,
                o_bias: bias_of(&[&a.o_proj])?,
                gate_up: Matrix::new(&gate_up, weights)?,
                gate_up_bias: bias_of(&[&m.gate_proj, &m.up_proj])?,
                down: Matrix::new(&weight_of(&m.down_proj)?, weights)?,
                down_bias: bias_of(&[&m.down_proj])?,
            });
        }
        let head = match lm_head {
            Some(h) => Some(Matrix::new(&weight_of(&h)?, weights)?),
            None => None,
        };
        let engine = DecodeWeights {
            layers,
            embed: Matrix::new(&embed_tokens.to_dense()?, weights)?,
            head,
            norm: vector(norm.tensor()?)?,
            inv_freq: c.inv_freq(),
        };
        Ok(InferenceModel {
            config,
            inner: Inner::Cpu(Box::new(engine)),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Bytes of weights one decoded token reads (every projection and the output head;
    /// one embedding row and the norms are negligible).
    pub fn bytes_per_token(&self) -> usize {
        match &self.inner {
            Inner::Cpu(e) => {
                let layers: usize = e
                    .layers
                    .iter()
                    .map(|l| l.qkv.bytes() + l.o.bytes() + l.gate_up.bytes() + l.down.bytes())
                    .sum();
                layers + e.head.as_ref().unwrap_or(&e.embed).bytes()
            }
            Inner::Composed(m) => {
                let per = m.dtype().size_in_bytes();
                let embed = m.config.vocab_size * m.config.hidden_size;
                (m.config.num_parameters() - if m.lm_head.is_some() { embed } else { 0 }) * per
            }
        }
    }
}

impl Decoder for InferenceModel {
    type Cache = InferenceCache;

    fn new_cache(&self) -> InferenceCache {
        match &self.inner {
            Inner::Cpu(_) => InferenceCache::Cpu(DecodeCache::default()),
            Inner::Composed(m) => InferenceCache::Composed(m.new_cache()),
        }
    }

    fn decode(
        &self,
        ids: &[u32],
        batch: usize,
        positions: &[u32],
        segments: &[u32],
        cache: &mut InferenceCache,
    ) -> Result<Vec<Vec<f32>>> {
        match (&self.inner, cache) {
            (Inner::Cpu(e), InferenceCache::Cpu(c)) => {
                // The whole step on a pool thread: its hundreds of parallel products are
                // then joins among the workers, not a cross-thread wake-up each.
                rayon::scope(|_| e.decode(&self.config, ids, batch, positions, segments, c))
            }
            (Inner::Composed(m), InferenceCache::Composed(c)) => {
                m.decode(ids, batch, positions, segments, c)
            }
            _ => candle_core::bail!("decode: the cache belongs to another kind of model"),
        }
    }
}

impl DecodeWeights {
    fn decode(
        &self,
        c: &ModelConfig,
        ids: &[u32],
        batch: usize,
        positions: &[u32],
        segments: &[u32],
        cache: &mut DecodeCache,
    ) -> Result<Vec<Vec<f32>>> {
        let m = ids.len();
        if batch == 0 || m == 0 || !m.is_multiple_of(batch) {
            candle_core::bail!("decode: {m} ids do not make {batch} rows");
        }
        if positions.len() != m || segments.len() != m {
            candle_core::bail!(
                "decode: {m} ids but {} positions and {} segments",
                positions.len(),
                segments.len()
            );
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            candle_core::bail!(
                "decode: token id {bad} is outside the vocabulary ({})",
                c.vocab_size
            );
        }
        let n = m / batch;
        if cache.key_segments.is_empty() {
            cache.k = vec![vec![Vec::new(); batch]; self.layers.len()];
            cache.v = vec![vec![Vec::new(); batch]; self.layers.len()];
            cache.key_segments = vec![Vec::new(); batch];
        } else if cache.key_segments.len() != batch {
            candle_core::bail!(
                "decode: the cache holds {} rows, not {batch}",
                cache.key_segments.len()
            );
        }
        let past = cache.len;
        for (b, ks) in cache.key_segments.iter_mut().enumerate() {
            ks.extend_from_slice(&segments[b * n..(b + 1) * n]);
        }
        let (h, nh, nkv, hd) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        );
        let (qd, kvd) = (nh * hd, nkv * hd);
        let inter = c.intermediate_size;
        cache.reserve(past + n, nkv, hd);
        let cap = cache.cap;
        let half = hd / 2;
        let (cos, sin) = rope_tables(&self.inv_freq, positions);
        let rope = |v: &mut [f32], r: usize| {
            for head in v.chunks_exact_mut(hd) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    let (co, si) = (cos[r * half + i], sin[r * half + i]);
                    x1[i] = a * co - b * si;
                    x2[i] = b * co + a * si;
                }
            }
        };
        // The keys each query sees (the same in every layer), by the mask rule training
        // uses (`ops::mask`).
        let visible: Vec<Vec<u32>> = (0..m)
            .map(|r| {
                let (b, qi) = (r / n, r % n);
                visible_keys(segments[r], past + qi, &cache.key_segments[b])
                    .map(|t| t as u32)
                    .collect()
            })
            .collect();
        let eps = c.rms_norm_eps;
        let mut x = vec![0f32; m * h];
        for (r, &id) in ids.iter().enumerate() {
            self.embed.row(id as usize, &mut x[r * h..(r + 1) * h]);
        }
        let mut hbuf = vec![0f32; m * h];
        let mut qkv = vec![0f32; m * (qd + 2 * kvd)];
        let mut attn = vec![0f32; m * qd];
        let mut obuf = vec![0f32; m * h];
        let mut gu = vec![0f32; m * 2 * inter];
        let mut act = vec![0f32; m * inter];
        let scale = 1.0 / (hd as f32).sqrt();
        let total = past + n;
        for (li, l) in self.layers.iter().enumerate() {
            rms_norm_rows(&x, &l.input_norm, eps, &mut hbuf);
            l.qkv.matmul(&hbuf, m, &mut qkv)?;
            add_bias(&mut qkv, l.qkv_bias.as_ref());
            for (r, row) in qkv.chunks_exact_mut(qd + 2 * kvd).enumerate() {
                let (q, rest) = row.split_at_mut(qd);
                let (k, v) = rest.split_at_mut(kvd);
                if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                    let mut tmp = vec![0f32; hd];
                    for head in q.chunks_exact_mut(hd) {
                        rms_norm_rows(head, qn, eps, &mut tmp);
                        head.copy_from_slice(&tmp);
                    }
                    for head in k.chunks_exact_mut(hd) {
                        rms_norm_rows(head, kn, eps, &mut tmp);
                        head.copy_from_slice(&tmp);
                    }
                }
                rope(q, r);
                rope(k, r);
                let (b, t) = (r / n, past + r % n);
                for h in 0..nkv {
                    let at = (h * cap + t) * hd;
                    cache.k[li][b][at..at + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
                    cache.v[li][b][at..at + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
                }
            }
            let step = attention::Step {
                qkv: &qkv,
                row_len: qd + 2 * kvd,
                rows_per_sample: n,
                keys: &cache.k[li],
                values: &cache.v[li],
                cap,
                visible: &visible,
                heads: nh,
                kv_heads: nkv,
                head_dim: hd,
                scale,
            };
            attention::attend_step(&step, &mut attn);
            debug_assert!(total == cache.key_segments[0].len());
            l.o.matmul(&attn, m, &mut obuf)?;
            add_bias(&mut obuf, l.o_bias.as_ref());
            x.iter_mut().zip(&obuf).for_each(|(a, b)| *a += b);
            rms_norm_rows(&x, &l.post_norm, eps, &mut hbuf);
            l.gate_up.matmul(&hbuf, m, &mut gu)?;
            add_bias(&mut gu, l.gate_up_bias.as_ref());
            for (g, a) in gu.chunks_exact(2 * inter).zip(act.chunks_exact_mut(inter)) {
                let (gate, up) = g.split_at(inter);
                for ((o, &gv), &uv) in a.iter_mut().zip(gate).zip(up) {
                    *o = gv * sigmoid(gv) * uv;
                }
            }
            l.down.matmul(&act, m, &mut obuf)?;
            add_bias(&mut obuf, l.down_bias.as_ref());
            x.iter_mut().zip(&obuf).for_each(|(a, b)| *a += b);
        }
        cache.len = total;
        // Only each row's last position needs logits.
        let mut last = vec![0f32; batch * h];
        for b in 0..batch {
            let r = b * n + n - 1;
            rms_norm_rows(
                &x[r * h..(r + 1) * h],
                &self.norm,
                eps,
                &mut last[b * h..(b + 1) * h],
            );
        }
        let head = self.head.as_ref().unwrap_or(&self.embed);
        let vocab = head.rows();
        let mut logits = vec![0f32; batch * vocab];
        head.matmul(&last, batch, &mut logits)?;
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }
}
