//! `ferrotune bench generate`: greedy decoding speed against the machine's memory
//! bandwidth. At small batches every decoded token reads every weight once, so
//! bandwidth / bytes of weights per token bounds tokens/s; the bandwidth is measured here,
//! with the same threads, by summing a buffer much larger than the caches: best of five
//! before and after decoding (the higher of the two bounds the whole run), and best of
//! three between segments of the decoding, each segment then compared with the bound
//! probed on its two sides (the higher), since this machine's memory changes speed
//! within seconds.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use ferrotune_model::generate::{argmax, Decoder};
use ferrotune_model::infer::{streaming_sum, InferenceModel, WeightType};
use serde_json::json;

use ferrotune_serve::ModelSource;

#[derive(Debug, Args)]
pub struct BenchGenerateArgs {
    /// Model folder or Hub id (or a LoRA run's output, merged for the run).
    model: String,
    /// Inference weights: f32, bf16, q8_0 or q4_1 (converted at load time).
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
    /// Decode steps between two bandwidth probes (0: probe before and after only). Each
    /// segment's tokens/s is compared with the bandwidth probed on its two sides.
    #[arg(long, default_value_t = 16)]
    probe_every: usize,
    /// Decode with the training model's composed candle forward pass instead (f32 only):
    /// the path before the inference engine, and the one other devices take.
    #[arg(long)]
    composed: bool,
    /// With --weights bf16, q8_0 or q4_1: also decode with f32 weights, the two taking turns
    /// token by token, and print the speed ratio. This machine's memory changes speed
    /// within seconds, so runs one after the other can compare two different machines.
    /// Both models are then in memory.
    #[arg(long)]
    against_f32: bool,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

/// Decode seconds of each model over a stretch of decode steps, and the read bandwidth
/// probed on its two sides (the higher).
struct Segment {
    steps: usize,
    seconds: Vec<f64>,
    bandwidth: f64,
}

/// What [`time_in_turns`] measured: prefill and decode seconds a model, and the segments
/// between bandwidth probes (empty without probes).
struct Timings {
    prefill_s: Vec<f64>,
    decode_s: Vec<f64>,
    segments: Vec<Segment>,
}

/// Prefill, then `steps` greedy steps, of several models taking turns: each prefills,
/// then every decode step is taken by each model in turn (the first one changing every
/// step), each step timed on its own. With a probe, the bandwidth is measured every
/// `every` steps, between the steps.
fn time_in_turns<M: Decoder>(
    models: &[&M],
    vocab: usize,
    batch: usize,
    prompt_tokens: usize,
    steps: usize,
    probe: Option<(&BandwidthProbe, usize)>,
) -> Result<Timings> {
    let prompt: Vec<u32> = (0..batch * prompt_tokens)
        .map(|i| ((i as u64 * 2_654_435_761 + 12_345) % vocab as u64) as u32)
        .collect();
    let positions: Vec<u32> = (0..batch).flat_map(|_| 0..prompt_tokens as u32).collect();
    let mut caches: Vec<M::Cache> = models.iter().map(|m| m.new_cache()).collect();
    let mut logits = Vec::with_capacity(models.len());
    let mut prefill_s = Vec::with_capacity(models.len());
    for (model, cache) in models.iter().zip(&mut caches) {
        let started = Instant::now();
        let segments = vec![1; prompt.len()];
        logits.push(model.decode(&prompt, batch, &positions, &segments, cache)?);
        prefill_s.push(started.elapsed().as_secs_f64());
    }
    let mut decode_s = vec![0.0; models.len()];
    let mut segments = Vec::new();
    // The bandwidth probed where the current segment began.
    let mut before = probe.map_or(0.0, |(p, _)| p.best_of(3));
    let mut segment = vec![0.0; models.len()];
    let mut segment_steps = 0;
    for s in 0..steps {
        let pos = vec![(prompt_tokens + s) as u32; batch];
        for turn in 0..models.len() {
            let i = (s + turn) % models.len();
            let next: Vec<u32> = logits[i].iter().map(|l| argmax(l)).collect();
            let started = Instant::now();
            logits[i] = models[i].decode(&next, batch, &pos, &vec![1; batch], &mut caches[i])?;
            let seconds = started.elapsed().as_secs_f64();
            decode_s[i] += seconds;
            segment[i] += seconds;
        }
        segment_steps += 1;
        if let Some((p, every)) = probe {
            if segment_steps == every.max(1) || s + 1 == steps {
                let after = p.best_of(3);
                segments.push(Segment {
                    steps: segment_steps,
                    seconds: std::mem::replace(&mut segment, vec![0.0; models.len()]),
                    bandwidth: before.max(after),
                });
                segment_steps = 0;
                before = after;
            }
        }
    }
    Ok(Timings {
        prefill_s,
        decode_s,
        segments,
    })
}

/// A buffer much larger than the caches, summed in parallel to measure the read
/// bandwidth.
pub struct BandwidthProbe {
    data: Vec<f32>,
}

impl BandwidthProbe {
    pub fn new(mib: usize) -> Self {
        let n = (mib.max(1) << 20) / 4;
        BandwidthProbe {
            data: (0..n).map(|i| (i % 7) as f32).collect(),
        }
    }

    /// Read bandwidth in bytes/s: the best of `passes` sums.
    pub fn best_of(&self, passes: usize) -> f64 {
        let mut best = f64::INFINITY;
        for _ in 0..passes.max(1) {
            let started = Instant::now();
            std::hint::black_box(streaming_sum(std::hint::black_box(&self.data)));
            best = best.min(started.elapsed().as_secs_f64());
        }
        4.0 * self.data.len() as f64 / best
    }
}

/// Percent of the bound in each segment for model `i`, and their median.
fn segment_percents(segments: &[Segment], i: usize, bytes: usize) -> (Vec<f64>, f64) {
    let percents: Vec<f64> = segments
        .iter()
        .map(|g| 100.0 * (g.steps as f64 / g.seconds[i]) / (g.bandwidth / bytes as f64))
        .collect();
    let mut sorted = percents.clone();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    (percents, median)
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
        bail!("--against-f32 compares --weights bf16, q8_0 or q4_1 with f32 on the engine");
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
    let probe = BandwidthProbe::new(a.bandwidth_mib);
    let every = (a.probe_every > 0).then_some((&probe, a.probe_every));
    let (load_s, before, timings, bytes, f32_bytes) = if a.composed {
        let load_s = started.elapsed().as_secs_f64();
        // Every weight in f32, but an untied embedding matrix (one row read per token).
        let embed = config.vocab_size * config.hidden_size;
        let untied = if base.lm_head.is_some() { embed } else { 0 };
        let bytes = 4 * (config.num_parameters() - untied);
        let before = probe.best_of(5);
        let timings = time_in_turns(&[&base], vocab, b, a.prompt_tokens, steps, every)?;
        (load_s, before, timings, bytes, None)
    } else if a.against_f32 {
        let reference = InferenceModel::new(base.clone(), WeightType::F32)?;
        let model = InferenceModel::new(base, a.weights)?;
        let load_s = started.elapsed().as_secs_f64();
        let before = probe.best_of(5);
        let models = [&model, &reference];
        let timings = time_in_turns(&models, vocab, b, a.prompt_tokens, steps, every)?;
        let f32_bytes = reference.bytes_per_token();
        (
            load_s,
            before,
            timings,
            model.bytes_per_token(),
            Some(f32_bytes),
        )
    } else {
        let model = InferenceModel::new(base, a.weights)?;
        let load_s = started.elapsed().as_secs_f64();
        let before = probe.best_of(5);
        let timings = time_in_turns(&[&model], vocab, b, a.prompt_tokens, steps, every)?;
        (load_s, before, timings, model.bytes_per_token(), None)
    };
    let (prefill_s, decode_s) = (timings.prefill_s[0], timings.decode_s[0]);
    // Measured on both sides of the decoding, the higher taken: on a shared machine the
    // bandwidth available moves, and the bound should not flatter the result.
    let after = probe.best_of(5);
    let bandwidth = before.max(after);
    let bound = bandwidth / bytes as f64;
    let per_sequence = if steps > 0 {
        steps as f64 / decode_s
    } else {
        f64::NAN
    };
    let (segments, median) = segment_percents(&timings.segments, 0, bytes);
    // The f32 side: tokens/s a sequence, its percent of its own bound, and the median of
    // its segments' percents.
    let f32_figures = f32_bytes.map(|f32_bytes| {
        let speed = steps as f64 / timings.decode_s[1];
        let (_, median) = segment_percents(&timings.segments, 1, f32_bytes);
        (
            speed,
            100.0 * speed / (bandwidth / f32_bytes as f64),
            median,
        )
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
        "segment_bandwidth_gb_s": timings.segments.iter().map(|g| g.bandwidth / 1e9).collect::<Vec<_>>(),
        "segment_percent_of_bound": segments,
        "percent_of_bound_median": median,
        "aggregate_tokens_per_s": per_sequence * b as f64,
    });
    if let Some((speed, percent, median)) = f32_figures {
        doc["f32"] = json!({
            "decode_tokens_per_s": speed,
            "percent_of_bound": percent,
            "percent_of_bound_median": median,
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
    if !segments.is_empty() {
        let list: Vec<String> = segments.iter().map(|p| format!("{p:.0}%")).collect();
        writeln!(
            out,
            "segments of {} steps against the bandwidth probed on their two sides: {} (median {median:.1}%)",
            a.probe_every,
            list.join(" ")
        )?;
    }
    if let Some((speed, percent, median)) = f32_figures {
        writeln!(
            out,
            "f32, taking turns with it token by token: {speed:.1} tokens/s per sequence ({percent:.0}% of its bound, segments' median {median:.1}%); {} / f32: {:.2}x",
            a.weights,
            per_sequence / speed
        )?;
    }
    Ok(())
}
