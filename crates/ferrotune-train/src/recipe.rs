//! The SFT / continued-pretraining recipe: the training loop, readable top to bottom.
//!
//! data (ferrotune-data) -> model + what trains -> plan -> for each optimizer step:
//! micro-batches -> forward/backward with the loss normalised over the whole window ->
//! clip -> AdamW -> log / evaluate / checkpoint -> outputs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use ferrotune_data::pipeline::{self, Prepared};
use ferrotune_data::stats::percentile;
use ferrotune_data::DataArgs;
use ferrotune_model::hub::resolve_model;
use ferrotune_model::save::{save_model, SaveOptions};
use ferrotune_model::tuning::{
    add_lora, freeze_tuning, load_peft_adapter, save_peft_adapter, train_everything, LoraConfig,
};
use ferrotune_model::weights::load_model;
use ferrotune_model::{Batch, CausalLm, Example, ModelError, Param};
use serde_json::json;

use crate::checkpoint::{self, TrainerState};
use crate::config::TrainArgs;
use crate::ewc::Ewc;
use crate::grads::{clip, Accumulated};
use crate::optim::{AdamW, AdamWConfig};
use crate::parallel::{Pass, Workers};
use crate::rows::{epoch_order, to_example, Rows};
use crate::schedule::{Schedule, ScheduleKind};

type Result<T> = std::result::Result<T, ModelError>;

fn invalid(msg: impl Into<String>) -> ModelError {
    ModelError::invalid(msg)
}

/// What a finished run reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub steps: usize,
    pub wall_seconds: f64,
    pub tokens_per_second: f64,
    pub final_train_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub output_dir: PathBuf,
}

/// Everything a run needs; `resolved` is the fully resolved config, saved with the output.
pub struct Run {
    pub data: DataArgs,
    pub train: TrainArgs,
    pub resolved: serde_json::Value,
}

/// The process's peak resident memory, from /proc (Linux); None elsewhere.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

/// Sets up what trains, as the config says.
fn choose_trainable(model: &mut CausalLm, t: &TrainArgs, seed: u64) -> Result<Option<LoraConfig>> {
    match t.finetuning_type.as_str() {
        "full" => {
            train_everything(model)?;
            Ok(None)
        }
        "freeze" => {
            let n = t.freeze_trainable_layers;
            freeze_tuning(model, n.unsigned_abs() as usize, n < 0)?;
            Ok(None)
        }
        "lora" => {
            if let Some(dir) = &t.adapter_name_or_path {
                return Ok(Some(load_peft_adapter(model, dir)?));
            }
            let config = LoraConfig {
                rank: t.lora_rank,
                alpha: t.lora_alpha.unwrap_or(2.0 * t.lora_rank as f64),
                dropout: t.lora_dropout,
                targets: t
                    .lora_target
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect(),
                use_rslora: t.use_rslora,
            };
            add_lora(model, &config, seed)?;
            Ok(Some(config))
        }
        other => Err(invalid(format!(
            "finetuning_type must be full, lora or freeze, not {other:?}"
        ))),
    }
}

/// Warnings for settings outside the usual SFT ranges.
fn sanity_warnings(t: &TrainArgs, data: &DataArgs, prepared: &Prepared) -> Vec<String> {
    let mut w = Vec::new();
    let lr = t.learning_rate;
    let (lo, hi, what) = if t.finetuning_type == "lora" {
        (1e-4, 5e-4, "LoRA")
    } else {
        (1e-5, 5e-5, "full / freeze tuning")
    };
    if lr < lo || lr > hi {
        w.push(format!(
            "learning_rate {lr:e} is outside the usual {lo:e}..{hi:e} for {what}"
        ));
    }
    if t.num_train_epochs > 3.0 && t.max_steps <= 0 {
        w.push(format!(
            "{} epochs: SFT usually needs at most 3; more tends to overfit",
            t.num_train_epochs
        ));
    }
    if t.warmup_steps == 0 && t.warmup_ratio > 0.0 && !(0.03..=0.1).contains(&t.warmup_ratio) {
        w.push(format!(
            "warmup_ratio {} is outside the usual 0.03..0.1",
            t.warmup_ratio
        ));
    }
    let mut lengths: Vec<usize> = prepared
        .reports
        .iter()
        .flat_map(|r| r.lengths.iter().copied())
        .collect();
    lengths.sort_unstable();
    let truncated: usize = prepared.reports.iter().map(|r| r.truncated).sum();
    if truncated > 0 && percentile(&lengths, 99.0) >= data.cutoff_len {
        w.push(format!(
            "cutoff_len {} is below the data's 99th percentile length; {truncated} samples were truncated",
            data.cutoff_len
        ));
    }
    w
}

/// An evaluation pass whose result goes to metrics.jsonl.
struct EvalRun<'a> {
    model: &'a CausalLm,
    examples: &'a [Example],
    batch_size: usize,
    pad: u32,
}

impl EvalRun<'_> {
    /// Evaluates, writes the record for `step`, returns the eval loss.
    fn log(
        &self,
        step: usize,
        epoch: f64,
        metrics: &mut std::fs::File,
        path: &Path,
    ) -> Result<f64> {
        let (sum, tokens) = self
            .model
            .eval_loss(self.examples, self.batch_size, self.pad)?;
        let loss = sum / tokens.max(1) as f64;
        let record = json!({"step": step, "epoch": epoch, "eval_loss": loss, "eval_perplexity": loss.exp(), "eval_tokens": tokens});
        writeln!(metrics, "{record}").map_err(|e| ModelError::file(path, e.to_string()))?;
        Ok(loss)
    }
}

/// Runs the whole recipe. Progress goes to stderr; returns the summary.
pub fn run(run: &Run) -> Result<Summary> {
    let t = &run.train;
    let unsupported = t.unsupported();
    if !unsupported.is_empty() {
        return Err(invalid(format!(
            "not supported yet: {}",
            unsupported.join("; ")
        )));
    }
    let output_dir = t
        .output_dir
        .clone()
        .ok_or_else(|| invalid("output_dir is not set"))?;
    let resuming = t.resume_from_checkpoint.is_some();
    let has_content = std::fs::read_dir(&output_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if has_content && !t.overwrite_output_dir && !resuming {
        return Err(invalid(format!(
            "output_dir {} exists and is not empty: set overwrite_output_dir: true, or resume_from_checkpoint",
            output_dir.display()
        )));
    }
    std::fs::create_dir_all(&output_dir)
        .map_err(|e| ModelError::file(&output_dir, e.to_string()))?;
    if !resuming {
        // A fresh run over an old output: its metrics and checkpoints must not mix in.
        let _ = std::fs::remove_file(output_dir.join("metrics.jsonl"));
        for (_, dir) in checkpoint::list(&output_dir) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let device = Device::Cpu;
    if t.bf16 {
        eprintln!("note: bf16 requested, but candle's CPU bf16 matrix multiply is slower than f32 (45-95 against 95-115 GFLOP/s measured): training in f32");
    }

    // The model folder (a Hub id resolves through the cache); its tokenizer unless another
    // is named.
    let model_spec = run
        .data
        .model_name_or_path
        .as_ref()
        .ok_or_else(|| invalid("model_name_or_path is not set"))?;
    let model_dir = resolve_model(&model_spec.to_string_lossy())?;
    let mut data_args = run.data.clone();
    if data_args.tokenizer_name_or_path.is_none() {
        data_args.tokenizer_name_or_path = Some(model_dir.clone());
    }

    // Data.
    let prepared = pipeline::prepare(&data_args, None).map_err(|e| invalid(e.to_string()))?;
    for w in &prepared.warnings {
        eprintln!("warning: {w}");
    }
    for c in &prepared.cache {
        let what = if c.hit {
            "reused the tokenized cache"
        } else {
            "tokenized into the cache"
        };
        eprintln!("data: {}: {what} {}", c.dataset, c.dir.display());
    }
    let pad = prepared.pad.id;
    let mut train_set: Vec<&ferrotune_data::Encoded> =
        prepared.samples.iter().map(|s| &s.encoded).collect();
    if train_set.is_empty() {
        return Err(invalid(
            "no training examples: check the data with `ferrotune data stats`",
        ));
    }
    let seed = run.data.seed;
    let eval_count = if t.val_size >= 1.0 {
        t.val_size as usize
    } else {
        (t.val_size * train_set.len() as f64).round() as usize
    };
    let mut eval_examples = Vec::new();
    if eval_count > 0 {
        let order = epoch_order(train_set.len(), seed ^ 0x5eed, 0);
        let held: std::collections::BTreeSet<usize> = order[..eval_count.min(train_set.len() - 1)]
            .iter()
            .copied()
            .collect();
        eval_examples = held.iter().map(|&i| to_example(train_set[i])).collect();
        train_set = train_set
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !held.contains(i))
            .map(|(_, e)| e)
            .collect();
    }
    let packing = data_args.packing();
    if let Some(w) = packing.warning(data_args.stage) {
        eprintln!("warning: {w}");
    }
    let rows = Rows::build(&train_set, packing, data_args.cutoff_len);
    if let Some(r) = &rows.report {
        eprintln!(
            "packing ({packing:?}): {} examples into {} rows of up to {} tokens, {:.1}% filled{}",
            train_set.len(),
            r.rows,
            r.row_len,
            100.0 * r.efficiency(),
            if r.dropped_too_long > 0 {
                format!(
                    ", {} examples longer than a row left out",
                    r.dropped_too_long
                )
            } else {
                String::new()
            }
        );
    }
    if let Some(names) = &t.eval_dataset {
        let mut eval_args = data_args.only_datasets();
        eval_args.dataset = names.clone();
        let eval = pipeline::prepare(&eval_args, None)
            .map_err(|e| invalid(format!("eval_dataset: {e}")))?;
        eval_examples.extend(eval.samples.iter().map(|s| to_example(&s.encoded)));
    }

    // Model and what trains.
    let mut model = load_model(&model_dir, DType::F32, &device)?;
    let lora = choose_trainable(&mut model, t, seed)?;
    let trainable_count: usize = model.trainable_count();
    let ewc = setup_ewc(&model, t, &data_args, &output_dir, &device)?;

    // Plan.
    let batch_size = t.per_device_train_batch_size.max(1);
    let accum = t.gradient_accumulation_steps.max(1);
    let micro_per_epoch = rows.len().div_ceil(batch_size);
    let steps_per_epoch = micro_per_epoch.div_ceil(accum);
    let total_steps = if t.max_steps > 0 {
        t.max_steps as usize
    } else {
        (t.num_train_epochs * steps_per_epoch as f64).ceil() as usize
    };
    let kind: ScheduleKind = t.lr_scheduler_type.parse().map_err(invalid)?;
    let schedule = Schedule {
        kind,
        base_lr: t.learning_rate,
        warmup_steps: Schedule::warmup_from(t.warmup_steps, t.warmup_ratio, total_steps),
        total_steps,
    };
    eprintln!(
        "training {} rows ({} examples for evaluation); effective batch {batch_size} x {accum} accumulation x 1 device = {}; {steps_per_epoch} steps per epoch, {total_steps} steps; {:.2}M trainable parameters ({})",
        rows.len(),
        eval_examples.len(),
        batch_size * accum,
        trainable_count as f64 / 1e6,
        t.finetuning_type
    );
    for w in sanity_warnings(t, &run.data, &prepared) {
        eprintln!("warning: {w}");
    }

    let mut optimizer = AdamW::new(AdamWConfig {
        weight_decay: t.weight_decay,
        ..AdamWConfig::default()
    });
    let mut state = TrainerState {
        global_step: 0,
        micro_batches: 0,
        seed,
    };
    if let Some(spec) = &t.resume_from_checkpoint {
        let dir = if spec == "auto" {
            checkpoint::list(&output_dir).pop().map(|(_, d)| d)
        } else {
            Some(PathBuf::from(spec))
        };
        if let Some(dir) = dir {
            let params: Vec<&Param> = model.trainable_params();
            state = checkpoint::load(&dir, &params, &mut optimizer)?;
            eprintln!(
                "resumed from {} at step {}",
                dir.display(),
                state.global_step
            );
            truncate_metrics(&output_dir.join("metrics.jsonl"), state.global_step)?;
        } else {
            eprintln!(
                "resume_from_checkpoint: auto found no checkpoint in {}; starting fresh",
                output_dir.display()
            );
        }
    }

    // The loop.
    let metrics_path = output_dir.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| ModelError::file(&metrics_path, e.to_string()))?;
    let started = Instant::now();
    let (mut window_loss, mut window_tokens, mut window_seq_tokens) = (0f64, 0usize, 0usize);
    let mut window_started = Instant::now();
    let mut total_seq_tokens = 0usize;
    let (mut last_train, mut last_eval) = (None, None);
    let mut bad_steps = 0;
    // A live progress bar on a terminal; plain lines (every logging step) otherwise.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let save_every = if t.save_strategy == "steps" {
        t.save_steps
    } else {
        0
    };
    // The loss before training: the baseline that eval losses (and forgetting) compare to.
    if state.global_step == 0 && !eval_examples.is_empty() {
        let eval = EvalRun {
            model: &model,
            examples: &eval_examples,
            batch_size: t.per_device_eval_batch_size,
            pad,
        };
        let eval_loss = eval.log(0, 0.0, &mut metrics, &metrics_path)?;
        eprintln!(
            "before training: eval loss {eval_loss:.4} (perplexity {:.2})",
            eval_loss.exp()
        );
    }
    let workers = Workers::for_training(&device, t.cpu_data_parallel)?;
    if workers.count() > 1 {
        eprintln!(
            "each micro-batch is split by rows over {} CPU threads (cpu_data_parallel: false turns this off)",
            workers.count()
        );
    }
    // The shuffled order of the current epoch, computed once per epoch.
    let mut order: (usize, Vec<usize>) = (usize::MAX, Vec::new());
    while state.global_step < total_steps {
        let step = state.global_step;
        // The micro-batches of this step, from the deterministic data order.
        let mut micro = Vec::with_capacity(accum);
        for _ in 0..accum {
            let m = state.micro_batches;
            let (epoch, k) = (m / micro_per_epoch, m % micro_per_epoch);
            if order.0 != epoch {
                let o = rows.epoch_order(seed, epoch, t.group_by_length, batch_size);
                order = (epoch, o);
            }
            let chunk = &order.1[k * batch_size..((k + 1) * batch_size).min(order.1.len())];
            micro.push(rows.batch(chunk, pad, &device)?);
            state.micro_batches += 1;
        }
        let tokens: usize = micro.iter().map(|b| b.supervised_tokens).sum();
        let seq_tokens: usize = micro.iter().map(|b| b.batch * b.seq_len).sum();
        let lr = schedule.lr(step);
        let params: Vec<&Param> = model.trainable_params();
        if tokens == 0 {
            eprintln!(
                "warning: step {} has no supervised token; skipped",
                step + 1
            );
            state.global_step += 1;
            continue;
        }
        let mut accumulated = Accumulated::new(params.len());
        let mut loss_sum = 0f64;
        let pass = if t.checkpointing() {
            Pass::Checkpointed
        } else {
            Pass::Plain
        };
        for batch in &micro {
            let scale = 1.0 / tokens as f64;
            let part = workers.gradients(&model, batch, &params, scale, pass)?;
            accumulated.merge(part.grads)?;
            loss_sum += part.loss_sum;
        }
        let mut grads = accumulated.finish(&params)?;
        let mut ewc_penalty = None;
        if let Some(ewc) = &ewc {
            ewc.add_gradient(&params, &mut grads)?;
            ewc_penalty = Some(ewc.penalty(&params)?);
        }
        let norm = clip(&mut grads, t.max_grad_norm)?;
        let loss = loss_sum / tokens as f64;
        if !loss.is_finite() || !norm.is_finite() {
            bad_steps += 1;
            clear_bar(tty);
            eprintln!(
                "warning: step {}: loss {loss}, gradient norm {norm}: not finite; step skipped (micro-batches {}..{} of the data order)",
                step + 1,
                state.micro_batches - accum,
                state.micro_batches
            );
            if bad_steps >= 5 {
                return Err(invalid("5 steps in a row had a non-finite loss or gradient: stopping. Lower learning_rate, check the data with `ferrotune data preview`, or set max_grad_norm"));
            }
            state.global_step += 1;
            continue;
        }
        bad_steps = 0;
        optimizer.step(&params, &grads, lr)?;
        state.global_step += 1;
        window_loss += loss_sum;
        window_tokens += tokens;
        window_seq_tokens += seq_tokens;
        total_seq_tokens += seq_tokens;
        let done = state.global_step;
        let epoch = state.micro_batches as f64 / micro_per_epoch as f64;
        if tty {
            let per_step = started.elapsed().as_secs_f64() / done.max(1) as f64;
            draw_bar(
                done,
                total_steps,
                loss,
                lr,
                per_step * (total_steps - done) as f64,
            );
        }

        if done.is_multiple_of(t.logging_steps.max(1)) || done == total_steps {
            let elapsed = window_started.elapsed().as_secs_f64();
            let train_loss = window_loss / window_tokens.max(1) as f64;
            let rate = window_seq_tokens as f64 / elapsed.max(1e-9);
            let eta = started.elapsed().as_secs_f64() / done as f64 * (total_steps - done) as f64;
            let mut record = json!({"step": done, "epoch": epoch, "loss": train_loss, "lr": lr, "grad_norm": norm,
                "tokens_per_s": rate, "supervised_tokens": window_tokens});
            if let Some(p) = ewc_penalty {
                record["ewc_penalty"] = json!(p);
            }
            writeln!(metrics, "{record}")
                .map_err(|e| ModelError::file(&metrics_path, e.to_string()))?;
            clear_bar(tty);
            eprintln!("step {done}/{total_steps} · epoch {epoch:.2} · loss {train_loss:.4} · lr {lr:.2e} · grad norm {norm:.3} · {rate:.0} tokens/s · ETA {eta:.0} s");
            last_train = Some(train_loss);
            (window_loss, window_tokens, window_seq_tokens) = (0.0, 0, 0);
            window_started = Instant::now();
        }
        let eval_due = match (t.eval_strategy.as_str(), t.eval_steps) {
            ("steps", Some(n)) if n > 0 => done.is_multiple_of(n),
            ("epoch", _) => done.is_multiple_of(steps_per_epoch),
            _ => false,
        } || (done == total_steps && !eval_examples.is_empty());
        if eval_due && !eval_examples.is_empty() {
            let eval = EvalRun {
                model: &model,
                examples: &eval_examples,
                batch_size: t.per_device_eval_batch_size,
                pad,
            };
            let eval_loss = eval.log(done, epoch, &mut metrics, &metrics_path)?;
            eprintln!(
                "step {done}: eval loss {eval_loss:.4} (perplexity {:.2})",
                eval_loss.exp()
            );
            last_eval = Some(eval_loss);
        }
        let save_due = (save_every > 0 && done.is_multiple_of(save_every))
            || (t.save_strategy == "epoch" && done.is_multiple_of(steps_per_epoch));
        if save_due && done < total_steps {
            let params: Vec<&Param> = model.trainable_params();
            let dir =
                checkpoint::save(&output_dir, &params, &optimizer, &state, t.save_total_limit)?;
            clear_bar(tty);
            eprintln!("saved {}", dir.display());
        }
    }

    clear_bar(tty);
    // Outputs: the adapter or the model, the template and tokenizer, the config, a summary.
    let template = prepared
        .template
        .as_ref()
        .map(|tpl| tpl.source().to_string());
    match &lora {
        Some(config) => {
            save_peft_adapter(
                &model,
                config,
                &output_dir,
                Some(&model_spec.to_string_lossy()),
            )?;
            copy_tokenizer(&prepared.tokenizer.dir, &output_dir, template.as_deref())?;
        }
        None => {
            let options = SaveOptions {
                tokenizer_dir: Some(&prepared.tokenizer.dir),
                chat_template: template.as_deref(),
                ..SaveOptions::default()
            };
            save_model(&model, &output_dir, &options)?;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let summary = Summary {
        steps: state.global_step,
        wall_seconds: wall,
        tokens_per_second: total_seq_tokens as f64 / wall.max(1e-9),
        final_train_loss: last_train,
        final_eval_loss: last_eval,
        peak_rss_mib: peak_rss_mib(),
        output_dir: output_dir.clone(),
    };
    let write = |name: &str, value: &serde_json::Value| -> Result<()> {
        let path = output_dir.join(name);
        std::fs::write(
            &path,
            serde_json::to_string_pretty(value).expect("json") + "\n",
        )
        .map_err(|e| ModelError::file(&path, e.to_string()))
    };
    write("train_config.json", &run.resolved)?;
    let (train_losses, eval_losses) = crate::plot::read_losses(&metrics_path);
    if let Err(e) =
        crate::plot::plot_losses(&train_losses, &eval_losses, &output_dir.join("loss.png"))
    {
        eprintln!("warning: no loss plot: {e}");
    }
    write("train_summary.json", &json!(summary))?;
    Ok(summary)
}

/// `[#####.....] step/total loss lr ETA`, redrawn in place on a terminal.
fn draw_bar(done: usize, total: usize, loss: f64, lr: f64, eta: f64) {
    const WIDTH: usize = 30;
    let filled = WIDTH * done / total.max(1);
    eprint!(
        "\r[{}{}] {done}/{total} · loss {loss:.4} · lr {lr:.2e} · ETA {eta:.0} s  ",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled)
    );
    let _ = std::io::stderr().flush();
}

fn clear_bar(tty: bool) {
    if tty {
        eprint!("\r{}\r", " ".repeat(100));
    }
}

/// The EWC penalty, when `ewc_lambda` is set: a Fisher loaded from `ewc_fisher` or
/// estimated on `ewc_dataset`, saved to `output_dir/ewc_fisher.safetensors` for reuse.
fn setup_ewc(
    model: &CausalLm,
    t: &TrainArgs,
    data: &DataArgs,
    output_dir: &Path,
    device: &Device,
) -> Result<Option<Ewc>> {
    let Some(lambda) = t.ewc_lambda.filter(|l| *l > 0.0) else {
        return Ok(None);
    };
    let params: Vec<&Param> = model.trainable_params();
    let ewc = match (&t.ewc_fisher, &t.ewc_dataset) {
        (Some(path), _) => Ewc::load(&params, path, lambda)?,
        (None, Some(names)) => {
            let mut reference = data.only_datasets();
            reference.dataset = names
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            reference.max_samples = Some(t.ewc_samples);
            let prepared = pipeline::prepare(&reference, None)
                .map_err(|e| invalid(format!("EWC reference data: {e}")))?;
            let examples: Vec<Example> = prepared
                .samples
                .iter()
                .map(|s| to_example(&s.encoded))
                .collect();
            let batches = examples
                .chunks(t.per_device_train_batch_size.max(1))
                .map(|c| Batch::padded(c, prepared.pad.id, 8, device))
                .collect::<candle_core::Result<Vec<_>>>()?;
            eprintln!(
                "EWC: estimating the Fisher information on {} reference samples",
                examples.len()
            );
            Ewc::estimate(model, &batches, lambda)?
        }
        (None, None) => {
            return Err(invalid(
                "ewc_lambda needs ewc_dataset (reference data) or ewc_fisher (a saved Fisher)",
            ))
        }
    };
    ewc.save(&params, &output_dir.join("ewc_fisher.safetensors"))?;
    Ok(Some(ewc))
}

/// Drops the records of steps after `step` (written by a run that was interrupted after
/// its last checkpoint), so a resumed run's metrics read as one run.
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| ModelError::file(path, e.to_string()))
}

/// Tokenizer files and the training template beside an adapter, so inference uses the same.
fn copy_tokenizer(from: &Path, to: &Path, template: Option<&str>) -> Result<()> {
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let src = from.join(file);
        if src.is_file() {
            std::fs::copy(&src, to.join(file))
                .map_err(|e| ModelError::file(&src, e.to_string()))?;
        }
    }
    if let Some(template) = template {
        let path = to.join("chat_template.jinja");
        std::fs::write(&path, template).map_err(|e| ModelError::file(&path, e.to_string()))?;
    }
    Ok(())
}
