//! `ferrotune model info | init | import-gguf | check`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use clap::{Args, Subcommand};
use ferrotune_data::TokenizerBundle;
use ferrotune_model::check::{check, CheckReport, Tolerances};
use ferrotune_model::hub::resolve_model;
use ferrotune_model::memory::{
    available_bytes, human, plan, MemoryPlan, PlanInput, Tuning, WeightStorage,
};
use ferrotune_model::save::{save_model, SaveOptions};
use ferrotune_model::tuning::{load_peft_adapter, train_everything};
use ferrotune_model::weights::load_model;
use ferrotune_model::ModelConfig;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Architecture, parameter count and the memory full, LoRA and freeze training need.
    Info(InfoArgs),
    /// Write a randomly initialised model (HF layout) sized to a tokenizer, for
    /// pretraining from scratch, tests and benchmarks.
    Init(InitArgs),
    /// Convert a llama.cpp GGUF file into a Hugging Face model folder (weights
    /// dequantized, config, tokenizer and chat template).
    ImportGguf(ImportArgs),
    /// Answer one prompt with the model's chat template (greedy unless --temperature).
    Generate(GenerateArgs),
    /// Compare logits, loss and gradients with a reference computed by transformers
    /// (the parity.safetensors layout; scripts/make_reference.py writes one for any model).
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Model folder, GGUF file or Hub id (resolved from the local Hugging Face cache).
    model: String,
    /// Rows per batch for the memory estimate.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Tokens per row for the memory estimate.
    #[arg(long, default_value_t = 1024)]
    seq_len: usize,
    /// LoRA rank for the LoRA estimate.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// Trainable layers for the freeze estimate.
    #[arg(long, default_value_t = 2)]
    freeze_layers: usize,
    /// Plan without gradient checkpointing (the trainer's `gradient_checkpointing: false`).
    #[arg(long)]
    no_checkpointing: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// A config.json with the model's sizes (vocab_size and special-token ids are taken
    /// from the tokenizer).
    #[arg(long)]
    config: PathBuf,
    /// Tokenizer folder (tokenizer.json, tokenizer_config.json); copied into the model.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The .gguf file.
    file: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model folder or Hub id.
    model: String,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// A system message.
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt as raw text instead of through the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Inference weights: f32 (as stored), bf16, q8_0 or q4_1, converted when the model loads
    /// (as `chat --weights`).
    #[arg(long, default_value = "f32", value_name = "f32|bf16|q8_0|q4_1")]
    weights: ferrotune_model::infer::WeightType,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Model folder or Hub id.
    model: String,
    /// Reference file (parity.safetensors layout: input_ids, attention_mask, labels,
    /// logits, loss, and optionally grad.*, packed_*, merged.*).
    #[arg(long, required_unless_present = "trajectory")]
    reference: Option<PathBuf>,
    /// A reference training run to replay instead (a folder with train.json,
    /// train_batches.safetensors and train_final.safetensors): per-step lr, loss and
    /// gradient norm, and the final weights.
    #[arg(long, conflicts_with_all = ["reference", "adapter"])]
    trajectory: Option<PathBuf>,
    /// A PEFT LoRA adapter to apply (gradients are then compared for its weights, and
    /// merged.* after merging).
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 1e-4)]
    logits_atol: f32,
    #[arg(long, default_value_t = 1e-5)]
    loss_rtol: f32,
    #[arg(long, default_value_t = 1e-4)]
    grad_rtol: f32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Info(a) => info(a),
        ModelCommand::Init(a) => init(a),
        ModelCommand::ImportGguf(a) => import(a),
        ModelCommand::Generate(a) => generate(a),
        ModelCommand::Check(a) => check_cmd(a),
    }
}

/// The rows of `model info`'s memory table: the trainer's three tunings with an f32
/// model, then LoRA on each way of holding the base.
fn plan_rows(dir: &std::path::Path, a: &InfoArgs) -> Result<Vec<(String, PlanInput)>> {
    let input = |tuning, storage| PlanInput {
        tuning,
        storage,
        batch: a.batch_size,
        seq_len: a.seq_len,
        checkpointing: !a.no_checkpointing,
        // The trainer's default: one shard of each batch per thread.
        shards: ferrotune_train::parallel::Workers::shards_for(a.batch_size, true),
    };
    let lora = Tuning::Lora { rank: a.lora_rank };
    let mut rows = vec![
        ("full".to_string(), input(Tuning::Full, WeightStorage::F32)),
        (
            "freeze".to_string(),
            input(
                Tuning::Freeze {
                    layers: a.freeze_layers,
                },
                WeightStorage::F32,
            ),
        ),
    ];
    if let Some(source) = ferrotune_model::gguf::GgufSource::of_folder(dir)? {
        let bytes: u64 = ferrotune_model::gguf::storage_summary(&source.file)?
            .iter()
            .map(|(_, _, b)| *b)
            .sum();
        rows.push((
            "lora, the GGUF file's types".to_string(),
            input(lora, WeightStorage::Bytes(bytes)),
        ));
    }
    for storage in [
        WeightStorage::F32,
        WeightStorage::uniform(GgmlDType::BF16),
        WeightStorage::Types {
            matrices: GgmlDType::Q8_0,
            embeddings: GgmlDType::BF16,
        },
        WeightStorage::Types {
            matrices: GgmlDType::Q4K,
            embeddings: GgmlDType::BF16,
        },
    ] {
        rows.push((
            format!("lora, {}", storage.describe()),
            input(lora, storage),
        ));
    }
    Ok(rows)
}

fn info(a: InfoArgs) -> Result<()> {
    let dir = resolve_model(&a.model)?;
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let rows = plan_rows(&dir, &a)?;
    let plans: Vec<(String, MemoryPlan)> = rows
        .iter()
        .map(|(name, input)| (name.clone(), plan(&config, input)))
        .collect();
    if a.json {
        let mut memory = serde_json::Map::new();
        for (name, p) in &plans {
            // The first rows keep their short names ("full", "freeze"); LoRA's f32 row
            // is also "lora".
            let key = if name == "lora, f32" {
                "lora".to_string()
            } else {
                name.clone()
            };
            memory.insert(key, json!(p));
        }
        let doc = json!({
            "architecture": config.architecture.hf_class(),
            "parameters": config.num_parameters(),
            "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "vocab_size": config.vocab_size,
            "batch_size": a.batch_size,
            "seq_len": a.seq_len,
            "checkpointing": !a.no_checkpointing,
            "shards": rows[0].1.shards,
            "available_bytes": available_bytes(),
            "memory": memory,
        });
        println!("{doc}");
        return Ok(());
    }
    let c = &config;
    println!("{} ({})", dir.display(), c.architecture.hf_class());
    println!(
        "  {:.1}M parameters · {} layers · hidden {} · {} heads ({} kv) · head_dim {} · vocab {} · {} embeddings",
        c.num_parameters() as f64 / 1e6,
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size,
        if c.tie_word_embeddings { "tied" } else { "untied" }
    );
    if let Some(source) = ferrotune_model::gguf::GgufSource::of_folder(&dir)? {
        println!("  weights read in place from {}:", source.file.display());
        for (name, n, bytes) in ferrotune_model::gguf::storage_summary(&source.file)? {
            println!("    {name:<6} {n:>4} tensors {:>12}", human(bytes));
        }
    }
    println!(
        "\nmemory plan at batch {} x {} tokens ({}; AdamW):",
        a.batch_size,
        a.seq_len,
        if a.no_checkpointing {
            "no gradient checkpointing"
        } else {
            "gradient checkpointing"
        }
    );
    let width = plans.iter().map(|(n, _)| n.len()).max().unwrap_or(8);
    println!(
        "  {:<width$} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "", "trainable", "weights", "training", "activations", "head", "total"
    );
    for (name, p) in &plans {
        println!(
            "  {:<width$} {:>9.2}M {:>10} {:>12} {:>12} {:>10} {:>10}",
            name,
            p.trainable_parameters as f64 / 1e6,
            human(p.weights_bytes),
            human(p.trainable_bytes),
            human(p.activations_bytes),
            human(p.head_bytes),
            human(p.total_bytes)
        );
    }
    println!(
        "  (training: trainable parameters, gradients and AdamW's moments in f32; total adds {} for the process)",
        human(plans[0].1.overhead_bytes)
    );
    if let Some(avail) = available_bytes() {
        println!("  available to this process now: {}", human(avail));
    }
    Ok(())
}

fn init(a: InitArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("cannot read {}", a.config.display()))?;
    let mut value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed JSON", a.config.display()))?;
    let tok = TokenizerBundle::load(&a.tokenizer)?;
    let vocab = tok.hf()?.get_vocab_size(true);
    value["vocab_size"] = json!(vocab);
    let id = |t: &Option<String>| t.as_deref().and_then(|t| tok.token_id(t));
    if let Some(bos) = id(&tok.specials.bos) {
        value["bos_token_id"] = json!(bos);
    }
    if let Some(eos) = id(&tok.specials.eos) {
        value["eos_token_id"] = json!(eos);
    }
    value["pad_token_id"] = json!(tok.pad_token().id);
    let config = ModelConfig::from_value(value)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.config.display()))?;
    let params = config.num_parameters();
    let model = ferrotune_model::init::init_model(config, a.seed, &Device::Cpu)?;
    let options = SaveOptions {
        dtype: Some(DType::F32),
        tokenizer_dir: Some(&a.tokenizer),
        ..SaveOptions::default()
    };
    save_model(&model, &a.out, &options)?;
    println!(
        "wrote {} ({:.2}M parameters, vocabulary {vocab}, seed {})",
        a.out.display(),
        params as f64 / 1e6,
        a.seed
    );
    Ok(())
}

fn import(a: ImportArgs) -> Result<()> {
    eprintln!("reading {} ...", a.file.display());
    let imported = ferrotune_model::gguf::import_gguf(&a.file, &a.out)?;
    println!(
        "wrote {} ({}, {} tensors dequantized from {}, vocabulary {}, {})",
        a.out.display(),
        imported.architecture,
        imported.tensors,
        imported.quantization.join("/"),
        imported.vocab_size,
        if imported.chat_template {
            "with its chat template"
        } else {
            "no chat template"
        }
    );
    Ok(())
}

fn trajectory_cmd(dir: &std::path::Path, fixture: &std::path::Path, as_json: bool) -> Result<()> {
    let mut model = load_model(dir, DType::F32, &Device::Cpu)?;
    let report = ferrotune_train::trajectory::replay(&mut model, fixture)?;
    let failures = report.failures();
    if as_json {
        println!(
            "{}",
            json!({"report": report, "failures": failures, "ok": failures.is_empty()})
        );
    } else {
        println!(
            "{:>4} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10}",
            "step", "lr", "ref lr", "loss", "ref loss", "grad norm", "ref norm"
        );
        for s in &report.steps {
            println!(
                "{:>4} {:>12.4e} {:>12.4e} {:>10.6} {:>10.6} {:>10.6} {:>10.6}",
                s.step,
                s.lr,
                s.reference_lr,
                s.loss,
                s.reference_loss,
                s.grad_norm,
                s.reference_grad_norm
            );
        }
        println!(
            "max relative diff: loss {:.2e}, lr {:.2e}, grad norm {:.2e}; final weights {:.2e} ({})",
            report.max_loss_rel_diff,
            report.max_lr_rel_diff,
            report.max_grad_norm_rel_diff,
            report.final_weights.0,
            report.final_weights.1
        );
        for f in &failures {
            println!("FAIL: {f}");
        }
    }
    if !failures.is_empty() {
        bail!("{} check(s) beyond tolerance", failures.len());
    }
    Ok(())
}

fn check_cmd(a: CheckArgs) -> Result<()> {
    let dir = resolve_model(&a.model)?;
    if let Some(fixture) = &a.trajectory {
        return trajectory_cmd(&dir, fixture, a.json);
    }
    let reference_path = a
        .reference
        .clone()
        .expect("clap requires --reference without --trajectory");
    let mut model = load_model(&dir, DType::F32, &Device::Cpu)?;
    match &a.adapter {
        Some(adapter) => {
            load_peft_adapter(&mut model, adapter)?;
        }
        None => train_everything(&mut model)?,
    }
    let reference = candle_core::safetensors::load(&reference_path, &Device::Cpu)
        .with_context(|| format!("cannot read reference {}", reference_path.display()))?;
    let report: CheckReport = check(&mut model, &reference, a.adapter.is_some())?;
    let tolerances = Tolerances {
        logits_atol: a.logits_atol,
        loss_rtol: a.loss_rtol,
        grad_rtol: a.grad_rtol,
    };
    let failures = report.failures(&tolerances);
    if a.json {
        println!(
            "{}",
            json!({"report": report, "failures": failures, "ok": failures.is_empty()})
        );
    } else {
        println!(
            "logits max |diff|        {:.3e} (atol {:.1e})",
            report.logits_max_abs_diff, a.logits_atol
        );
        println!(
            "argmax                  same next token at {} of {} positions",
            report.positions - report.argmax_mismatches,
            report.positions
        );
        println!(
            "loss                    {:.6} vs {:.6}: relative diff {:.3e} (rtol {:.1e})",
            report.loss, report.reference_loss, report.loss_rel_diff, a.loss_rtol
        );
        if let Some((d, name)) = &report.grad_max_rel_diff {
            println!(
                "gradients ({:>3})         worst relative diff {d:.3e} at {name} (rtol {:.1e})",
                report.grads_checked, a.grad_rtol
            );
        }
        if let (Some(l), Some(g)) = (
            report.packed_loss_rel_diff,
            report.packed_logits_max_abs_diff,
        ) {
            println!(
                "packed row              loss relative diff {l:.3e}, logits max |diff| {g:.3e}"
            );
        }
        if let Some(d) = report.merged_max_abs_diff {
            println!("merged weights          max |diff| {d:.3e}");
        }
        for f in &failures {
            println!("FAIL: {f}");
        }
        if failures.is_empty() {
            println!("ok: within tolerances");
        }
    }
    if !failures.is_empty() {
        bail!("{} check(s) beyond tolerance", failures.len());
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    use ferrotune_data::conversation::{Message, Role};
    use ferrotune_data::template::{ChatTemplate, TemplateChoice};
    use ferrotune_model::generate::{Flow, GenerationConfig};
    use std::io::Write;

    let dir = resolve_model(&a.model)?;
    let tok = TokenizerBundle::load(&dir)?;
    let model = load_model(&dir, DType::F32, &Device::Cpu)?;
    let mut stop_ids = ferrotune_serve::loading::stop_ids(&model, &tok, None);
    let mut stop_strings = Vec::new();
    let text = if a.raw {
        a.prompt.clone()
    } else {
        let template = ChatTemplate::choose(
            &TemplateChoice::Tokenizer,
            tok.chat_template.as_deref(),
            &Default::default(),
            &tok.specials,
            &Default::default(),
        )?;
        stop_ids = ferrotune_serve::loading::stop_ids(&model, &tok, Some(&template));
        stop_strings = template.stop_strings();
        let mut messages = Vec::new();
        if let Some(system) = &a.system {
            messages.push(Message::new(Role::System, system.as_str()));
        }
        messages.push(Message::new(Role::User, a.prompt.as_str()));
        template
            .render(&messages, &[], true)
            .map_err(|e| anyhow::anyhow!("chat template: {e}"))?
    };
    let ids = tok
        .encode_with_offsets(&text)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
        .0;
    let config = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        stop_token_ids: stop_ids,
        seed: a.seed,
    };
    let model = ferrotune_model::infer::InferenceModel::new(model, a.weights)?;
    let mut stdout = std::io::stdout();
    ferrotune_serve::stream::complete(
        &model,
        &tok,
        &ids,
        &config,
        &stop_strings,
        false,
        |piece| {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
            Flow::Continue
        },
    )?;
    println!();
    Ok(())
}
