//! Text generation with a KV cache: greedy, temperature, top-k, top-p and repetition
//! penalty (applied in transformers' order), stopping on end-of-sequence ids or when the
//! caller says so, streaming each token to a callback; and batched generation (left
//! padding) for evaluation.

use candle_core::{DType, Result, Tensor};
use rand::{Rng, SeedableRng};

use crate::llama::{CausalLm, KvCache};

/// A model that decodes with a cache of what it has seen: the composed candle model
/// ([`CausalLm`], any device) or the inference engine ([`crate::infer::InferenceModel`]).
pub trait Decoder {
    type Cache;

    fn new_cache(&self) -> Self::Cache;

    /// Runs `ids`, `batch` rows of the same number of new tokens (row-major), appending
    /// them to `cache`; `positions` and `segments` are row-major too, segment 0 marking
    /// (left) padding. Returns the logits of each row's last new token.
    fn decode(
        &self,
        ids: &[u32],
        batch: usize,
        positions: &[u32],
        segments: &[u32],
        cache: &mut Self::Cache,
    ) -> Result<Vec<Vec<f32>>>;
}

impl Decoder for CausalLm {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    fn decode(
        &self,
        ids: &[u32],
        batch: usize,
        positions: &[u32],
        segments: &[u32],
        cache: &mut KvCache,
    ) -> Result<Vec<Vec<f32>>> {
        if batch == 0 || ids.is_empty() || !ids.len().is_multiple_of(batch) {
            candle_core::bail!("decode: {} ids do not make {batch} rows", ids.len());
        }
        let input = Tensor::from_slice(ids, (batch, ids.len() / batch), self.device())?;
        let logits = self.forward_cached(&input, positions, segments, cache)?;
        (0..batch)
            .map(|row| last_row_logits(&logits, row))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    /// 1.0 means none; transformers' rule: positive logits divided, negative multiplied.
    pub repetition_penalty: f64,
    /// Generation stops after any of these ids (generated, and returned).
    pub stop_token_ids: Vec<u32>,
    pub seed: u64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            stop_token_ids: Vec::new(),
            seed: 0,
        }
    }
}

/// What the streaming callback tells the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Picks the next token from one row of logits.
pub struct Sampler {
    config: GenerationConfig,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(config: GenerationConfig) -> Self {
        let rng = rand::rngs::StdRng::seed_from_u64(config.seed);
        Sampler { config, rng }
    }

    pub fn config(&self) -> &GenerationConfig {
        &self.config
    }

    /// `logits` of the vocabulary; `history` the ids so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let c = &self.config;
        let mut logits = logits.to_vec();
        if c.repetition_penalty != 1.0 {
            let p = c.repetition_penalty as f32;
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l < 0.0 { *l * p } else { *l / p };
                }
            }
        }
        if c.temperature <= 0.0 {
            return argmax(&logits);
        }
        let t = c.temperature as f32;
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if let Some(k) = c.top_k.filter(|&k| k > 0) {
            order.truncate(k);
        }
        let max = logits[order[0]] / t;
        let mut probs: Vec<f32> = order.iter().map(|&i| (logits[i] / t - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = c.top_p.filter(|&p| p < 1.0) {
            // Keep the smallest prefix whose mass reaches top_p (at least one token).
            let mut mass = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                mass += p;
                if mass >= top_p as f32 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            order.truncate(keep);
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let mut u: f32 = self.rng.random();
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return order[i] as u32;
            }
            u -= p;
        }
        order[probs.len() - 1] as u32
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn last_row_logits(logits: &Tensor, row: usize) -> Result<Vec<f32>> {
    let (_, s, _) = logits.dims3()?;
    logits
        .get(row)?
        .get(s - 1)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()
}

/// Generates from one prompt, calling `on_token` with each new id. Returns the new ids.
pub fn generate<M: Decoder + ?Sized>(
    model: &M,
    prompt: &[u32],
    config: &GenerationConfig,
    mut on_token: impl FnMut(u32) -> Flow,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        candle_core::bail!("generate: the prompt is empty");
    }
    let mut sampler = Sampler::new(config.clone());
    let mut cache = model.new_cache();
    let mut history = prompt.to_vec();
    let mut new = Vec::new();
    let mut input = prompt.to_vec();
    let mut start = 0u32;
    while new.len() < config.max_new_tokens {
        let positions: Vec<u32> = (start..start + input.len() as u32).collect();
        start += input.len() as u32;
        let logits = model.decode(&input, 1, &positions, &vec![1; input.len()], &mut cache)?;
        let next = sampler.sample(&logits[0], &history);
        history.push(next);
        new.push(next);
        if on_token(next) == Flow::Stop || config.stop_token_ids.contains(&next) {
            break;
        }
        input = vec![next];
    }
    Ok(new)
}

/// Generates for several prompts at once (left padding). Returns the new ids of each,
/// up to and including its stop id.
pub fn generate_batch<M: Decoder + ?Sized>(
    model: &M,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    pad_id: u32,
) -> Result<Vec<Vec<u32>>> {
    let b = prompts.len();
    if b == 0 {
        return Ok(Vec::new());
    }
    if prompts.iter().any(|p| p.is_empty()) {
        candle_core::bail!("generate_batch: a prompt is empty");
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * longest);
    let mut segments = Vec::with_capacity(b * longest);
    let mut positions = Vec::with_capacity(b * longest);
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(pad_id, pad).chain(p.iter().copied()));
        segments.extend(std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, p.len())));
        positions.extend(std::iter::repeat_n(0, pad).chain(0..p.len() as u32));
    }
    let mut next_position: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let mut samplers: Vec<Sampler> = (0..b)
        .map(|i| {
            Sampler::new(GenerationConfig {
                seed: config.seed.wrapping_add(i as u64),
                ..config.clone()
            })
        })
        .collect();
    let mut histories: Vec<Vec<u32>> = prompts.to_vec();
    let mut outputs = vec![Vec::new(); b];
    let mut done = vec![false; b];
    let mut cache = model.new_cache();
    let mut input = ids;
    for _ in 0..config.max_new_tokens {
        let logits = model.decode(&input, b, &positions, &segments, &mut cache)?;
        let mut step = Vec::with_capacity(b);
        for row in 0..b {
            let next = if done[row] {
                pad_id
            } else {
                let next = samplers[row].sample(&logits[row], &histories[row]);
                histories[row].push(next);
                outputs[row].push(next);
                if config.stop_token_ids.contains(&next) {
                    done[row] = true;
                }
                next
            };
            step.push(next);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        positions = next_position.clone();
        next_position.iter_mut().for_each(|p| *p += 1);
        segments = vec![1; b];
        input = step;
    }
    Ok(outputs)
}
