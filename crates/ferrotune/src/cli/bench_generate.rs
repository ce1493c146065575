//! `ferrotune bench generate`: greedy decoding speed against the machine's memory
//! bandwidth. At small batches every decoded token reads every weight once, so
//! bandwidth / bytes of weights per token bounds tokens/s; the bandwidth is measured here,
//! with the same threads, by summing a buffer much larger than the caches (best of five,
//! before and after decoding, the higher of the two).

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use ferrotune_model::generate::{argmax, Decoder};
use ferrotune_model::infer::{streaming_sum, InferenceModel, WeightType};
use serde_json::json;

use super::loading::ModelSource;

#[derive(Debug, Args)]
pub struct BenchGenerateArgs {
    /// Model folder or Hub id (or a LoRA run's output, merged for the run).
    model: String,
    /// Inference weights: f32, bf16 or q8_0 (converted at load time).
    #[arg(long, default_value = "f32")]
    weights: WeightType,
    /// Sequences decoded together; tokens/s is then the aggregate over them.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt length (fixed pseudo-random ids), timed separately as prefill.
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Decoded tokens per sequence (no stopping: greedy, stop ids ignored).
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Compute threads (RAYON_NUM_THREADS when not given, else all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Size of the buffer summed to measure the read bandwidth.
    #[arg(long, default_value_t = 512)]
    bandwidth_mib: usize,
    /// Decode with the training model's composed candle forward pass instead (f32 only):
    /// the path before the inference engine, and the one other devices take.
    #[arg(long)]
    composed: bool,
    /// With --weights bf16 or q8_0: also decode with f32 weights, the two taking turns
    /// token by token, and print the speed ratio. This machine's memory changes speed
    /// within seconds, so runs one after the other can compare two different machines.
    /// Both models are then in memory.
    #[arg(long)]
    against_f32: bool,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

/// Prefill and decode seconds for `batch` rows of `prompt_tokens`, then `steps` greedy
/// steps.
fn time_decoding<M: Decoder>(
    model: &M,
    vocab: usize,
    batch: usize,
    prompt_tokens: usize,
    steps: usize,
) -> Result<(f64, f64)> {
    let times = time_in_turns(&[model], vocab, batch, prompt_tokens, steps)?;
    Ok(times[0])
}

/// [`time_decoding`] for several models taking turns: each prefills, then every decode
/// step is taken by each model in turn (the first one changing every step), each step
/// timed on its own. Prefill and decode seconds a model.
fn time_in_turns<M: Decoder>(
    models: &[&M],
    vocab: usize,
    batch: usize,
    prompt_tokens: usize,
    steps: usize,
) -> Result<Vec<(f64, f64)>> {
    let prompt: Vec<u32> = (0..batch * prompt_tokens)
        .map(|i| ((i as u64 * 2_654_435_761 + 12_345) % vocab as u64) as u32)
        .collect();
    let positions: Vec<u32> = (0..batch).flat_map(|_| 0..prompt_tokens as u32).collect();
    let mut caches: Vec<M::Cache> = models.iter().map(|m| m.new_cache()).collect();
    let mut logits = Vec::with_capacity(models.len());
    let mut times = Vec::with_capacity(models.len());
    for (model, cache) in models.iter().zip(&mut caches) {
        let started = Instant::now();
        let segments = vec![1; prompt.len()];
        logits.push(model.decode(&prompt, batch, &positions, &segments, cache)?);
        times.push((started.elapsed().as_secs_f64(), 0.0));
    }
    for s in 0..steps {
        let pos = vec![(prompt_tokens + s) as u32; batch];
        for turn in 0..models.len() {
            let i = (s + turn) % models.len();
            let next: Vec<u32> = logits[i].iter().map(|l| argmax(l)).collect();
            let started = Instant::now();
            logits[i] = models[i].decode(&next, batch, &pos, &vec![1; batch], &mut caches[i])?;
            times[i].1 += started.elapsed().as_secs_f64();
        }
    }
    Ok(times)
}

/// Read bandwidth in bytes/s: the best of five parallel sums over `mib` MiB of f32.
pub fn read_bandwidth(mib: usize) -> (f64, f32) {
    let n = (mib.max(1) << 20) / 4;
    let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut best = f64::INFINITY;
    let mut total = 0.0;
    for _ in 0..5 {
        let started = Instant::now();
        total = streaming_sum(&data);
        best = best.min(started.elapsed().as_secs_f64());
        total = std::hint::black_box(total);
    }
    (4.0 * n as f64 / best, total)
}

pub fn run(a: BenchGenerateArgs) -> Result<()> {
    if a.batch == 0 || a.prompt_tokens == 0 || a.max_new_tokens == 0 {
        bail!("--batch, --prompt-tokens and --max-new-tokens must be at least 1");
    }
    let all_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = super::bench::set_threads(a.threads, all_cores);

    if a.composed && a.weights != WeightType::F32 {
        bail!("--composed decodes with the f32 training model; leave out --weights");
    }
    if a.against_f32 && (a.composed || a.weights == WeightType::F32) {
        bail!("--against-f32 compares --weights bf16 or q8_0 with f32 on the engine");
    }
    let source = ModelSource::locate(Some(&a.model), None)?;
    let started = Instant::now();
    let base = source.load()?;
    let config = base.config.clone();
    if a.prompt_tokens + a.max_new_tokens > config.max_position_embeddings {
        bail!(
            "{} prompt + {} new tokens exceed the model's context ({})",
            a.prompt_tokens,
            a.max_new_tokens,
            config.max_position_embeddings
        );
    }
    let b = a.batch;
    // The first token comes from the prefill; the rest are decode steps.
    let steps = a.max_new_tokens - 1;
    let vocab = config.vocab_size;
    // With --against-f32: the f32 engine's decode seconds and bytes a token.
    let mut f32_side = None;
    let (load_s, before, (prefill_s, decode_s), bytes) = if a.composed {
        let load_s = started.elapsed().as_secs_f64();
        // Every weight in f32, but an untied embedding matrix (one row read per token).
        let embed = config.vocab_size * config.hidden_size;
        let untied = if base.lm_head.is_some() { embed } else { 0 };
        let bytes = 4 * (config.num_parameters() - untied);
        let (before, _) = read_bandwidth(a.bandwidth_mib);
        let times = time_decoding(&base, vocab, b, a.prompt_tokens, steps)?;
        (load_s, before, times, bytes)
    } else if a.against_f32 {
        let reference = InferenceModel::new(base.clone(), WeightType::F32)?;
        let model = InferenceModel::new(base, a.weights)?;
        let load_s = started.elapsed().as_secs_f64();
        let (before, _) = read_bandwidth(a.bandwidth_mib);
        let times = time_in_turns(&[&model, &reference], vocab, b, a.prompt_tokens, steps)?;
        f32_side = Some((times[1].1, reference.bytes_per_token()));
        (load_s, before, times[0], model.bytes_per_token())
    } else {
        let model = InferenceModel::new(base, a.weights)?;
        let load_s = started.elapsed().as_secs_f64();
        let (before, _) = read_bandwidth(a.bandwidth_mib);
        let times = time_decoding(&model, vocab, b, a.prompt_tokens, steps)?;
        (load_s, before, times, model.bytes_per_token())
    };
    // Measured on both sides of the decoding, the higher taken: on a shared machine the
    // bandwidth available moves, and the bound should not flatter the result.
    let (after, _) = read_bandwidth(a.bandwidth_mib);
    let bandwidth = before.max(after);
    let bound = bandwidth / bytes as f64;
    let per_sequence = if steps > 0 {
        steps as f64 / decode_s
    } else {
        f64::NAN
    };
    // The f32 side: tokens/s a sequence and its percent of its own bound.
    let f32_figures = f32_side.map(|(seconds, f32_bytes)| {
        let speed = steps as f64 / seconds;
        (speed, 100.0 * speed / (bandwidth / f32_bytes as f64))
    });
    let mut doc = json!({
        "model": source.name(),
        "weights": a.weights.name(),
        "path": if a.composed { "composed" } else { "engine" },
        "threads": threads,
        "batch": b,
        "prompt_tokens": a.prompt_tokens,
        "new_tokens": a.max_new_tokens,
        "load_s": load_s,
        "bandwidth_gb_s": bandwidth / 1e9,
        "bandwidth_before_after_gb_s": [before / 1e9, after / 1e9],
        "weight_bytes_per_token": bytes,
        "bound_tokens_per_s": bound,
        "prefill_s": prefill_s,
        "prefill_tokens_per_s": (b * a.prompt_tokens) as f64 / prefill_s,
        "decode_s": decode_s,
        "decode_tokens_per_s": per_sequence,
        "percent_of_bound": 100.0 * per_sequence / bound,
        "aggregate_tokens_per_s": per_sequence * b as f64,
    });
    if let Some((speed, percent)) = f32_figures {
        doc["f32"] = json!({
            "decode_tokens_per_s": speed,
            "percent_of_bound": percent,
        });
        doc["speed_vs_f32"] = json!(per_sequence / speed);
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{} ({} weights{}, {:.1} MB read per token), {threads} threads, batch {b}",
        source.name(),
        a.weights,
        if a.composed { ", composed path" } else { "" },
        bytes as f64 / 1e6
    )?;
    writeln!(
        out,
        "read bandwidth {:.2} GB/s (before {:.2}, after {:.2}) -> bound {bound:.1} tokens/s per sequence",
        bandwidth / 1e9,
        before / 1e9,
        after / 1e9
    )?;
    writeln!(
        out,
        "prefill: {} tokens in {:.3} s ({:.0} tokens/s)",
        b * a.prompt_tokens,
        prefill_s,
        (b * a.prompt_tokens) as f64 / prefill_s
    )?;
    writeln!(
        out,
        "decode: {steps} steps in {decode_s:.3} s: {per_sequence:.1} tokens/s per sequence ({:.0}% of the bound), {:.1} tokens/s in all",
        100.0 * per_sequence / bound,
        per_sequence * b as f64
    )?;
    if let Some((speed, percent)) = f32_figures {
        writeln!(
            out,
            "f32, taking turns with it token by token: {speed:.1} tokens/s per sequence ({percent:.0}% of its bound); {} / f32: {:.2}x",
            a.weights,
            per_sequence / speed
        )?;
    }
    Ok(())
}
