//! `ferrotune bench train`: training throughput on a randomly initialised model of given
//! shapes, with the trainer's own parts (the model, LoRA, AdamW), side by side with
//! PyTorch + transformers through ../shared/bench/torch_train_bench.py (same arguments).

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use ferrotune_model::init::init_model;
use ferrotune_model::tuning::{add_lora, train_everything, LoraConfig};
use ferrotune_model::{Batch, Example, ModelConfig, Param};
use ferrotune_train::parallel::{Pass, Workers};
use ferrotune_train::recipe::peak_rss_mib;
use ferrotune_train::{AdamW, AdamWConfig};
use serde_json::{json, Value};

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Model family: llama, or qwen3 (q/k norms, head_dim = hidden / heads).
    #[arg(long, default_value = "llama", value_parser = ["llama", "qwen3"])]
    arch: String,
    #[arg(long, default_value_t = 8000)]
    vocab: usize,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Intermediate (MLP) size.
    #[arg(long, default_value_t = 688)]
    inter: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 8)]
    heads: usize,
    #[arg(long, default_value_t = 8)]
    kv_heads: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Compute threads (RAYON_NUM_THREADS when not given, else 2); PyTorch gets the same.
    #[arg(long)]
    threads: Option<usize>,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Train rank-8 LoRA adapters (alpha 16) on all seven projections instead of every
    /// weight (PEFT's `all-linear` on the PyTorch side).
    #[arg(long)]
    lora: bool,
    /// Also run the PyTorch + transformers benchmark with this python (which needs torch,
    /// transformers and, for --lora, peft) and print both and the ratio.
    #[arg(long, value_name = "PYTHON")]
    torch: Option<String>,
    /// The PyTorch benchmark script [default: $FERROTUNE_SHARED/bench/torch_train_bench.py,
    /// else ../shared/bench/torch_train_bench.py].
    #[arg(long, value_name = "FILE")]
    torch_script: Option<PathBuf>,
    /// Make the whole (tokens x vocabulary) logits of each step, as the loss did before
    /// it was chunked for large vocabularies, to compare the two.
    #[arg(long)]
    whole_logits: bool,
    /// Run each batch whole, every operation spread over the threads, instead of one
    /// shard of rows per thread (the trainer's `cpu_data_parallel: false`).
    #[arg(long)]
    no_data_parallel: bool,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

/// The figures of one run.
struct Figures {
    tokens_per_s: f64,
    seconds: f64,
    forward_s: f64,
    backward_s: f64,
    optimizer_s: f64,
    parameters: usize,
    trainable: usize,
    final_loss: f64,
    /// Shards each batch was split into (1: none).
    shards: usize,
}

pub fn run(a: BenchTrainArgs) -> Result<()> {
    let threads = super::bench::set_threads(a.threads, 2);
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let ours = train(&a)?;
    let peak = peak_rss_mib();
    let gemm = ferrotune_model::ops::gemm::backend_info();
    let mut doc = json!({
        "framework": format!("ferrotune {}", env!("CARGO_PKG_VERSION")),
        "gemm": gemm.clone().unwrap_or_else(|| "candle (gemm crate)".into()),
        "arch": a.arch,
        "lora": a.lora,
        "parameters": ours.parameters,
        "trainable": ours.trainable,
        "batch": a.batch,
        "seq": a.seq,
        "threads": threads,
        "shards": ours.shards,
        "steps": a.steps,
        "tokens_per_s": ours.tokens_per_s,
        "step_s": ours.seconds / a.steps as f64,
        "forward_s": ours.forward_s / a.steps as f64,
        "backward_s": ours.backward_s / a.steps as f64,
        "optimizer_s": ours.optimizer_s / a.steps as f64,
        "final_loss": ours.final_loss,
        "peak_rss_mib": peak,
    });
    let torch = match &a.torch {
        Some(python) => Some(run_torch(&a, python, threads)?),
        None => None,
    };
    let mut out = std::io::stdout().lock();
    if let Some(t) = &torch {
        let speedup = t["tokens_per_s"]
            .as_f64()
            .map(|theirs| ours.tokens_per_s / theirs);
        let memory = match (peak, t["peak_rss_mib"].as_f64()) {
            (Some(p), Some(theirs)) => Some(p / theirs),
            _ => None,
        };
        doc["torch"] = t.clone();
        doc["speedup_vs_torch"] = json!(speedup);
        doc["memory_vs_torch"] = json!(memory);
    }
    if a.json {
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    let per = |s: f64| s / a.steps as f64 * 1e3;
    writeln!(
        out,
        "ferrotune: {} {}, {:.2}M parameters ({:.2}M trainable), batch {} x {}, {threads} threads ({}), gemm: {}",
        a.arch,
        if a.lora { "LoRA r=8" } else { "full" },
        ours.parameters as f64 / 1e6,
        ours.trainable as f64 / 1e6,
        a.batch,
        a.seq,
        if ours.shards > 1 {
            format!("{} shards of rows side by side", ours.shards)
        } else {
            "each operation split over them".to_string()
        },
        gemm.as_deref().unwrap_or("candle (gemm crate)")
    )?;
    writeln!(
        out,
        "  {:.0} tokens/s over {} steps ({:.1} ms/step: forward {:.1}, backward {:.1}, optimizer {:.1}); peak memory {:.0} MiB; last loss {:.4}",
        ours.tokens_per_s,
        a.steps,
        per(ours.seconds),
        per(ours.forward_s),
        per(ours.backward_s),
        per(ours.optimizer_s),
        peak.unwrap_or(f64::NAN),
        ours.final_loss
    )?;
    if let Some(t) = &torch {
        let theirs = t["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        let their_peak = t["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
        writeln!(
            out,
            "{}: {theirs:.0} tokens/s; peak memory {their_peak:.0} MiB",
            t["framework"].as_str().unwrap_or("torch")
        )?;
        writeln!(
            out,
            "ratio (ferrotune / torch): tokens/s {:.2}x, peak memory {:.2}x",
            ours.tokens_per_s / theirs,
            peak.unwrap_or(f64::NAN) / their_peak
        )?;
    }
    Ok(())
}

/// The model config for the flags, as torch_train_bench.py builds it (transformers'
/// defaults: rms_norm_eps 1e-6, rope_theta 10000, tied embeddings).
fn config(a: &BenchTrainArgs) -> Result<ModelConfig> {
    let (class, model_type) = match a.arch.as_str() {
        "qwen3" => ("Qwen3ForCausalLM", "qwen3"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    if a.heads == 0 || !a.hidden.is_multiple_of(a.heads) {
        bail!("--hidden must be a multiple of --heads");
    }
    let value = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": a.vocab,
        "hidden_size": a.hidden,
        "intermediate_size": a.inter,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.hidden / a.heads,
        "max_position_embeddings": a.seq.max(4096),
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": true,
    });
    ModelConfig::from_value(value).map_err(|e| anyhow::anyhow!("model config: {e}"))
}

/// Random token rows (a fixed-seed xorshift), every position supervised as the PyTorch
/// side does with `labels = input_ids`.
fn batches(a: &BenchTrainArgs, n: usize, device: &Device) -> Result<Vec<Batch>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let examples: Vec<Example> = (0..a.batch)
                .map(|_| {
                    let ids: Vec<u32> = (0..a.seq)
                        .map(|_| (next() % a.vocab as u64) as u32)
                        .collect();
                    Example {
                        labels: ids.iter().map(|&t| t as i64).collect(),
                        input_ids: ids,
                        weights: None,
                    }
                })
                .collect();
            Ok(Batch::padded(&examples, 0, 1, device)?)
        })
        .collect()
}

fn train(a: &BenchTrainArgs) -> Result<Figures> {
    let device = Device::Cpu;
    let mut model = init_model(config(a)?, 0, &device)?;
    if a.lora {
        add_lora(
            &mut model,
            &LoraConfig {
                rank: 8,
                alpha: 16.0,
                ..LoraConfig::default()
            },
            0,
        )?;
    } else {
        train_everything(&mut model)?;
    }
    let parameters: usize = model.params().iter().map(|p| p.tensor().elem_count()).sum();
    let params: Vec<&Param> = model
        .params()
        .into_iter()
        .filter(|p| p.is_trainable())
        .collect();
    let trainable: usize = params.iter().map(|p| p.tensor().elem_count()).sum();
    // torch.optim.AdamW's defaults, given every trainable parameter (weight decay 0.01 on
    // all of them), at the script's learning rate.
    let mut optimizer = AdamW::new(AdamWConfig {
        weight_decay: 0.01,
        decay_everything: true,
        ..AdamWConfig::default()
    });
    let all = batches(a, a.warmup + a.steps, &device)?;
    let workers = Workers::for_training(&device, !a.no_data_parallel)?;
    let pass = if a.whole_logits {
        Pass::WholeLogits
    } else {
        Pass::Plain
    };
    let (mut forward_s, mut backward_s, mut optimizer_s) = (0f64, 0f64, 0f64);
    let mut final_loss = f64::NAN;
    let mut started = Instant::now();
    for (i, batch) in all.iter().enumerate() {
        if i == a.warmup {
            (forward_s, backward_s, optimizer_s) = (0.0, 0.0, 0.0);
            started = Instant::now();
        }
        // The trainer's path: on several CPU threads, one shard of rows per thread.
        let tokens = batch.supervised_tokens.max(1) as f64;
        let part = workers.gradients(&model, batch, &params, 1.0 / tokens, pass)?;
        final_loss = part.loss_sum / tokens;
        let grads = part.grads.finish(&params)?;
        let t = Instant::now();
        optimizer.step(&params, &grads, 1e-4)?;
        drop(grads);
        forward_s += part.forward_s;
        backward_s += part.backward_s;
        optimizer_s += t.elapsed().as_secs_f64();
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Figures {
        tokens_per_s: (a.batch * a.seq * a.steps) as f64 / seconds,
        seconds,
        forward_s,
        backward_s,
        optimizer_s,
        parameters,
        trainable,
        final_loss,
        shards: workers.count().min(a.batch),
    })
}

/// Runs torch_train_bench.py with the same arguments; its JSON line.
fn run_torch(a: &BenchTrainArgs, python: &str, threads: usize) -> Result<Value> {
    let script = match &a.torch_script {
        Some(p) => p.clone(),
        None => std::env::var_os("FERROTUNE_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("../shared"))
            .join("bench/torch_train_bench.py"),
    };
    if !script.is_file() {
        bail!(
            "{} not found: give --torch-script or set FERROTUNE_SHARED",
            script.display()
        );
    }
    let mut cmd = Command::new(python);
    cmd.arg(&script);
    for (flag, value) in [
        ("--arch", a.arch.clone()),
        ("--vocab", a.vocab.to_string()),
        ("--hidden", a.hidden.to_string()),
        ("--inter", a.inter.to_string()),
        ("--layers", a.layers.to_string()),
        ("--heads", a.heads.to_string()),
        ("--kv-heads", a.kv_heads.to_string()),
        ("--batch", a.batch.to_string()),
        ("--seq", a.seq.to_string()),
        ("--threads", threads.to_string()),
        ("--steps", a.steps.to_string()),
        ("--warmup", a.warmup.to_string()),
    ] {
        cmd.arg(flag).arg(value);
    }
    if a.lora {
        cmd.arg("--lora");
    }
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{python} {} failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .with_context(|| format!("no JSON line in the output of {}", script.display()))
}
