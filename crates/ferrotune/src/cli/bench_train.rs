//! `ferrotune bench train`: training throughput on a randomly initialised model of given
//! shapes, with the trainer's own parts (the model, LoRA, AdamW), side by side with
//! PyTorch + transformers through ../shared/bench/torch_train_bench.py (same arguments).

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use clap::Args;
use ferrotune_model::init::{init_model, init_stored_model};
use ferrotune_model::tuning::{add_lora, train_everything, LoraConfig};
use ferrotune_model::{Batch, CausalLm, Example, ModelConfig, Param};
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
    /// With --lora: also train the same model fully, the two taking turns step by step in
    /// this process, and print LoRA's step time as a fraction of the full step's. Two
    /// runs minutes apart can differ by more than that fraction's margin on a machine
    /// whose speed drifts. Peak memory then covers both models.
    #[arg(long, requires = "lora")]
    against_full: bool,
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
    /// With --lora: how the frozen matrices (the embeddings and head included) are held:
    /// f32, or a storage type they are drawn straight into, one slab of rows at a time
    /// (bf16, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k .. q6_k), so that a 7B shape never
    /// needs an f32 copy.
    #[arg(long, default_value = "f32", value_parser = parse_base_dtype, requires = "lora")]
    base_dtype: GgmlDType,
    /// With --lora: the frozen products in bf16 with f32 sums (the trainer's `bf16: true`;
    /// an f32 base is then held as bf16). AVX512-BF16 where the CPU has it, else the
    /// portable kernel. With --against-f32, the same model in f32 takes turns with it.
    #[arg(long, requires = "lora")]
    bf16: bool,
    /// With --bf16: also train the f32 model, the two taking turns step by step in this
    /// process, and print the bf16 speed as a ratio of the f32 one.
    #[arg(long, requires = "bf16", conflicts_with = "against_full")]
    against_f32: bool,
    /// With --lora: also train the same adapters on a base held as this type (with the
    /// same --bf16), the two taking turns step by step in this process, and print the step
    /// time of --base-dtype's base as a ratio of this one's.
    #[arg(long, value_parser = parse_base_dtype, requires = "lora", conflicts_with_all = ["against_full", "against_f32"])]
    against_base: Option<GgmlDType>,
    /// An output head of its own instead of the tied embeddings.
    #[arg(long)]
    untied: bool,
    /// Gradient checkpointing: each decoder layer recomputed in the backward pass (the
    /// trainer's default).
    #[arg(long, conflicts_with = "whole_logits")]
    checkpointing: bool,
    /// The PyTorch side's precisions (torch_train_bench.py's --precision), run one after
    /// the other and compared at their best: f32, autocast (bf16 autocast over f32
    /// weights), bf16 (bf16 weights); comma-separated.
    #[arg(long, default_value = "f32", value_delimiter = ',', value_parser = ["f32", "autocast", "bf16"])]
    torch_precision: Vec<String>,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

fn parse_base_dtype(name: &str) -> std::result::Result<GgmlDType, String> {
    ferrotune_model::stored::parse_storage(name).ok_or_else(|| {
        let names: Vec<&str> = ferrotune_model::stored::STORAGE_TYPES
            .iter()
            .map(|(n, _)| *n)
            .collect();
        format!("unknown storage type {name:?}; one of {}", names.join(", "))
    })
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

impl Figures {
    /// Tokens/s, the time split a step and the last loss, as the JSON line gives them.
    fn speed_json(&self, steps: usize) -> Value {
        let per = |s: f64| s / steps as f64;
        json!({
            "tokens_per_s": self.tokens_per_s,
            "step_s": per(self.seconds),
            "forward_s": per(self.forward_s),
            "backward_s": per(self.backward_s),
            "optimizer_s": per(self.optimizer_s),
            "final_loss": self.final_loss,
        })
    }

    /// "N ms/step: forward F, backward B, optimizer O".
    fn time_split(&self, steps: usize) -> String {
        let ms = |s: f64| s / steps as f64 * 1e3;
        format!(
            "{:.1} ms/step: forward {:.1}, backward {:.1}, optimizer {:.1}",
            ms(self.seconds),
            ms(self.forward_s),
            ms(self.backward_s),
            ms(self.optimizer_s)
        )
    }
}

pub fn run(a: BenchTrainArgs) -> Result<()> {
    let threads = super::bench::set_threads(a.threads, 2);
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let (ours, full) = train(&a)?;
    let peak = peak_rss_mib();
    let planned = memory_plan(&a)?;
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
        "base_dtype": ferrotune_model::stored::storage_name(a.base_dtype),
        "untied": a.untied,
        "checkpointing": a.checkpointing,
        "peak_rss_mib": peak,
        "planned_peak_mib": planned,
    });
    if let (Value::Object(doc), Value::Object(speed)) = (&mut doc, ours.speed_json(a.steps)) {
        doc.extend(speed);
    }
    if let Some(f) = &full {
        if a.against_f32 {
            doc["f32"] = f.speed_json(a.steps);
            doc["bf16_speedup_vs_f32"] = json!(f.seconds / ours.seconds);
        } else if let Some(other) = a.against_base {
            doc["against_base"] = json!(ferrotune_model::stored::storage_name(other));
            doc["other_base"] = f.speed_json(a.steps);
            doc["step_time_vs_other_base"] = json!(ours.seconds / f.seconds);
        } else {
            doc["full"] = f.speed_json(a.steps);
            doc["lora_step_vs_full"] = json!(ours.seconds / f.seconds);
        }
    }
    // Every precision asked for; the comparison is with the fastest.
    let mut torch_runs = Vec::new();
    if let Some(python) = &a.torch {
        for precision in &a.torch_precision {
            let mut run = run_torch(&a, python, threads, precision)?;
            run["precision"] = json!(precision);
            torch_runs.push(run);
        }
    }
    let torch = torch_runs
        .iter()
        .max_by(|x, y| {
            let speed = |v: &Value| v["tokens_per_s"].as_f64().unwrap_or(0.0);
            speed(x).total_cmp(&speed(y))
        })
        .cloned();
    if torch_runs.len() > 1 {
        doc["torch_runs"] = json!(torch_runs);
    }
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
    writeln!(
        out,
        "ferrotune: {} {}{}, {:.2}M parameters ({:.2}M trainable), batch {} x {}, {threads} threads ({}), gemm: {}",
        a.arch,
        if a.lora { "LoRA r=8" } else { "full" },
        match (a.lora, a.checkpointing) {
            (true, true) => format!(" on a {} base, checkpointing", ferrotune_model::stored::storage_name(a.base_dtype)),
            (true, false) => format!(" on a {} base", ferrotune_model::stored::storage_name(a.base_dtype)),
            (false, true) => ", checkpointing".to_string(),
            (false, false) => String::new(),
        },
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
        "  {:.0} tokens/s over {} steps ({}); peak memory {:.0} MiB; last loss {:.4}",
        ours.tokens_per_s,
        a.steps,
        ours.time_split(a.steps),
        peak.unwrap_or(f64::NAN),
        ours.final_loss
    )?;
    if let (Some(plan), Some(peak)) = (planned, peak) {
        writeln!(
            out,
            "  memory plan: {plan:.0} MiB; measured peak / plan {:.2}",
            peak / plan
        )?;
    }
    if let Some(f) = &full {
        let (other, ratio) = if a.against_f32 {
            let kernel = if ferrotune_model::ops::bf16::has_avx512_bf16() {
                "AVX512-BF16"
            } else {
                "the portable bf16 kernel"
            };
            (
                "the same model in f32".to_string(),
                format!(
                    "bf16 / f32 speed: {:.2}x (products on {kernel}; ",
                    f.seconds / ours.seconds
                ),
            )
        } else if let Some(other) = a.against_base {
            let name = |t| ferrotune_model::stored::storage_name(t);
            (
                format!("the same LoRA on a {} base", name(other)),
                format!(
                    "step time on the {} base / on the {} base: {:.2}x (",
                    name(a.base_dtype),
                    name(other),
                    ours.seconds / f.seconds
                ),
            )
        } else {
            (
                "full fine-tuning".to_string(),
                format!("LoRA step / full step: {:.2}x (", ours.seconds / f.seconds),
            )
        };
        writeln!(
            out,
            "  {other}, taking turns with it: {:.0} tokens/s ({}); last loss {:.4}",
            f.tokens_per_s,
            f.time_split(a.steps),
            f.final_loss
        )?;
        writeln!(out, "  {ratio}peak memory above: both models)")?;
    }
    for t in &torch_runs {
        writeln!(
            out,
            "{} ({}): {:.0} tokens/s; peak memory {:.0} MiB",
            t["framework"].as_str().unwrap_or("torch"),
            t["precision"].as_str().unwrap_or("f32"),
            t["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            t["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
        )?;
    }
    if let Some(t) = &torch {
        let theirs = t["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        let their_peak = t["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
        writeln!(
            out,
            "PyTorch's best: {}",
            t["precision"].as_str().unwrap_or("f32")
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

/// The memory plan's peak for this run (`ferrotune_model::memory`), in MiB; None for
/// the runs it does not describe (--whole-logits, --against-full's two models).
fn memory_plan(a: &BenchTrainArgs) -> Result<Option<f64>> {
    use ferrotune_model::memory::{plan, PlanInput, Tuning, WeightStorage};
    if a.whole_logits || a.against_full || a.against_f32 || a.against_base.is_some() {
        return Ok(None);
    }
    let input = PlanInput {
        tuning: if a.lora {
            Tuning::Lora { rank: 8 }
        } else {
            Tuning::Full
        },
        storage: match (a.bf16, a.base_dtype) {
            (true, candle_core::quantized::GgmlDType::F32) => {
                WeightStorage::uniform(candle_core::quantized::GgmlDType::BF16)
            }
            (_, t) => WeightStorage::uniform(t),
        },
        batch: a.batch,
        seq_len: a.seq,
        checkpointing: a.checkpointing,
        shards: Workers::shards_for(a.batch, !a.no_data_parallel),
    };
    let p = plan(&config(a)?, &input);
    Ok(Some(p.total_bytes as f64 / (1u64 << 20) as f64))
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
        "tie_word_embeddings": !a.untied,
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
                        reference_logp: None,
                        desirable: None,
                    }
                })
                .collect();
            Ok(Batch::padded(&examples, 0, 1, device)?)
        })
        .collect()
}

fn trainable(model: &CausalLm) -> Vec<&Param> {
    model.trainable_params()
}

/// One model in training, with the trainer's parts, and the time its steps took.
struct Run {
    model: CausalLm,
    optimizer: AdamW,
    step_s: f64,
    forward_s: f64,
    backward_s: f64,
    optimizer_s: f64,
    final_loss: f64,
}

impl Run {
    /// The flags' model, randomly initialised (the same weights either way), with LoRA
    /// adapters or every weight trainable.
    fn new(
        a: &BenchTrainArgs,
        lora: bool,
        base_dtype: GgmlDType,
        bf16: bool,
        device: &Device,
    ) -> Result<Run> {
        let mut model = match base_dtype {
            GgmlDType::F32 => init_model(config(a)?, 0, device)?,
            storage if lora => init_stored_model(config(a)?, 0, storage, device)?,
            _ => bail!("--base-dtype needs --lora: a stored weight does not train"),
        };
        if lora {
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
        if bf16 {
            model.use_bf16_products()?;
        }
        // torch.optim.AdamW's defaults, given every trainable parameter (weight decay
        // 0.01 on all of them), at the script's learning rate.
        let optimizer = AdamW::new(AdamWConfig {
            weight_decay: 0.01,
            decay_everything: true,
            ..AdamWConfig::default()
        });
        Ok(Run {
            model,
            optimizer,
            step_s: 0.0,
            forward_s: 0.0,
            backward_s: 0.0,
            optimizer_s: 0.0,
            final_loss: f64::NAN,
        })
    }

    /// One optimizer step on `batch`, the trainer's path: on several CPU threads, one
    /// shard of rows per thread.
    fn step(&mut self, batch: &Batch, workers: &Workers, pass: Pass) -> Result<()> {
        let started = Instant::now();
        let params = trainable(&self.model);
        let tokens = batch.supervised_tokens.max(1) as f64;
        let part = workers.gradients(&self.model, batch, &params, 1.0 / tokens, pass)?;
        let grads = part.grads.finish(&params)?;
        let t = Instant::now();
        self.optimizer.step(&params, &grads, 1e-4)?;
        drop(grads);
        self.optimizer_s += t.elapsed().as_secs_f64();
        self.forward_s += part.forward_s;
        self.backward_s += part.backward_s;
        self.final_loss = part.loss_sum / tokens;
        self.step_s += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Forgets the warm-up steps' times.
    fn reset_times(&mut self) {
        (
            self.step_s,
            self.forward_s,
            self.backward_s,
            self.optimizer_s,
        ) = (0.0, 0.0, 0.0, 0.0);
    }

    fn figures(&self, a: &BenchTrainArgs, shards: usize) -> Figures {
        let parameters = self.model.params().iter().map(|p| p.elem_count()).sum();
        let trainable = trainable(&self.model).iter().map(|p| p.elem_count()).sum();
        Figures {
            tokens_per_s: (a.batch * a.seq * a.steps) as f64 / self.step_s,
            seconds: self.step_s,
            forward_s: self.forward_s,
            backward_s: self.backward_s,
            optimizer_s: self.optimizer_s,
            parameters,
            trainable,
            final_loss: self.final_loss,
            shards,
        }
    }
}

/// Trains the flags' model (and with --against-full the full fine-tuning of it, the two
/// taking turns, each going first every other step): its figures, and the full run's.
fn train(a: &BenchTrainArgs) -> Result<(Figures, Option<Figures>)> {
    let device = Device::Cpu;
    let mut ours = Run::new(a, a.lora, a.base_dtype, a.bf16, &device)?;
    let mut full = if a.against_full {
        Some(Run::new(a, false, GgmlDType::F32, false, &device)?)
    } else if a.against_f32 {
        Some(Run::new(a, true, a.base_dtype, false, &device)?)
    } else if let Some(other) = a.against_base {
        Some(Run::new(a, true, other, a.bf16, &device)?)
    } else {
        None
    };
    let all = batches(a, a.warmup + a.steps, &device)?;
    let workers = Workers::for_training(&device, !a.no_data_parallel)?;
    let pass = if a.whole_logits {
        Pass::WholeLogits
    } else if a.checkpointing {
        Pass::Checkpointed
    } else {
        Pass::Plain
    };
    for (i, batch) in all.iter().enumerate() {
        if i == a.warmup {
            ours.reset_times();
            full.iter_mut().for_each(Run::reset_times);
        }
        match &mut full {
            Some(full) if i % 2 == 1 => {
                full.step(batch, &workers, pass)?;
                ours.step(batch, &workers, pass)?;
            }
            Some(full) => {
                ours.step(batch, &workers, pass)?;
                full.step(batch, &workers, pass)?;
            }
            None => ours.step(batch, &workers, pass)?,
        }
    }
    let shards = workers.count().min(a.batch);
    Ok((ours.figures(a, shards), full.map(|f| f.figures(a, shards))))
}

/// Runs torch_train_bench.py with the same arguments; its JSON line.
fn run_torch(a: &BenchTrainArgs, python: &str, threads: usize, precision: &str) -> Result<Value> {
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
    cmd.arg("--precision").arg(precision);
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
