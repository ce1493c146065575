//! `ferrotune eval predict`: the settings from a config, overrides and flags, handed to
//! `ferrotune_serve::predict` (which answers the evaluation dataset as LLaMA-Factory's
//! predict mode does, and scores the answers), and its progress and scores printed.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use ferrotune_data::config::{DataArgs, DATA_KEYS};
use ferrotune_model::infer::WeightType;
use ferrotune_serve::{ModelSource, PredictOptions, Prediction, SamplingOptions};
use serde_json::{json, Map, Value};

use ferrotune_train::config::file::ConfigFile;

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A YAML config (LLaMA-Factory keys: model_name_or_path, adapter_name_or_path,
    /// eval_dataset or dataset, dataset_dir, template, cutoff_len, max_samples,
    /// output_dir, per_device_eval_batch_size, max_new_tokens, temperature, top_p,
    /// top_k, repetition_penalty), then KEY=VALUE overrides. Answers are greedy unless
    /// temperature is set.
    #[arg(value_name = "CONFIG | KEY=VALUE")]
    args: Vec<String>,
    /// The model (folder or Hub id, or a LoRA run's output folder).
    #[arg(long)]
    model: Option<String>,
    /// A PEFT LoRA adapter to apply on the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Evaluation datasets: dataset_info.json names or paths, comma-separated.
    #[arg(long)]
    dataset: Option<String>,
    /// The folder of dataset_info.json and the data files.
    #[arg(long)]
    dataset_dir: Option<PathBuf>,
    /// Template name (default: the template saved with the model, which it was trained with).
    #[arg(long)]
    template: Option<String>,
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// At most this many samples per dataset.
    #[arg(long)]
    max_samples: Option<usize>,
    /// Samples generated (and scored) together (default 8).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Most tokens generated per answer (default 512).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Inference weights for generating: f32 (as trained), bf16, q8_0 or q4_1 (faster, and
    /// close to f32: see the README); default: as the base is held (q8_0 for a quantized
    /// base, bf16 for a 16-bit one). The eval loss is computed in f32 either way.
    #[arg(long, value_name = "f32|bf16|q8_0|q4_1")]
    weights: Option<WeightType>,
}

/// The config: file, overrides, then flags (flags win).
fn settings(a: &PredictArgs) -> Result<ConfigFile> {
    let mut config = None;
    let mut overrides = Vec::new();
    for arg in &a.args {
        if arg.contains('=') && !std::path::Path::new(arg).is_file() {
            overrides.push(arg.as_str());
        } else if config.is_none() {
            config = Some(ConfigFile::load(std::path::Path::new(arg))?);
        } else {
            bail!("{arg:?}: only one config file, then KEY=VALUE overrides");
        }
    }
    let mut config = config.unwrap_or(ConfigFile {
        path: PathBuf::new(),
        values: Map::new(),
    });
    for o in overrides {
        config.set_override(o)?;
    }
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            config.values.insert(key.to_string(), v);
        }
    };
    set("model_name_or_path", a.model.clone().map(Value::from));
    set("adapter_name_or_path", a.adapter.as_ref().map(|p| json!(p)));
    set("eval_dataset", a.dataset.clone().map(Value::from));
    set("dataset_dir", a.dataset_dir.as_ref().map(|p| json!(p)));
    set("template", a.template.clone().map(Value::from));
    set("output_dir", a.out.as_ref().map(|p| json!(p)));
    set("max_samples", a.max_samples.map(Value::from));
    set("per_device_eval_batch_size", a.batch_size.map(Value::from));
    set("max_new_tokens", a.max_new_tokens.map(Value::from));
    Ok(config)
}

pub fn run(a: PredictArgs) -> Result<()> {
    let config = settings(&a)?;
    let v = &config.values;
    let mut data: DataArgs = config.section(DATA_KEYS)?;
    if let Some(names) = v.get("eval_dataset") {
        data.dataset = match names {
            Value::String(s) => s.split(',').map(|s| s.trim().to_string()).collect(),
            Value::Array(list) => list
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            other => bail!("eval_dataset must be a name or a list of names, got {other}"),
        };
        data.dataset.retain(|s| !s.is_empty());
    }
    data.resolve_paths(&config.dir());
    if data.dataset.is_empty() {
        bail!("no dataset: set eval_dataset (or dataset) in the config, or --dataset");
    }
    let out = v
        .get("output_dir")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .context("no output folder: set output_dir in the config, or --out")?;
    let count = |key: &str, default: usize| -> Result<usize> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(n) => n
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .with_context(|| format!("{key} must be a positive integer, got {n}")),
        }
    };
    let batch_size = count("per_device_eval_batch_size", 8)?;
    let number = |key: &str| v.get(key).and_then(Value::as_f64);
    let top_k = match v.get("top_k").filter(|k| !k.is_null()) {
        Some(k) => Some(
            k.as_u64()
                .with_context(|| format!("top_k must be an integer, got {k}"))?
                as usize,
        ),
        None => None,
    };
    // Greedy unless the config asks for sampling: scores should not depend on luck.
    let sampling = SamplingOptions {
        max_new_tokens: count("max_new_tokens", 512)?,
        temperature: Some(number("temperature").unwrap_or(0.0)),
        top_p: number("top_p"),
        top_k,
        repetition_penalty: number("repetition_penalty"),
        seed: data.seed,
    };
    let model_spec = data
        .model_name_or_path
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let adapter = v
        .get("adapter_name_or_path")
        .and_then(Value::as_str)
        .map(PathBuf::from);
    let source = ModelSource::locate(model_spec.as_deref(), adapter.as_deref())?;
    let model_name = source.name();

    let prediction = Prediction::prepare(PredictOptions {
        data,
        source,
        out,
        batch_size,
        sampling,
        weights: a.weights,
    })?;
    let skipped = prediction.skipped();
    eprintln!(
        "predicting {} samples with {model_name} (template {}){}",
        prediction.samples(),
        prediction.template().name(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!("; skipped {}: {}", skipped.len(), skipped[0])
        }
    );
    // On a terminal the count is rewritten in place; a log file gets one line per update.
    let terminal = std::io::stderr().is_terminal();
    let report = prediction.run(|done, total| {
        if terminal {
            eprint!("\rgenerated {done}/{total}");
        } else {
            eprintln!("generated {done}/{total}");
        }
    })?;
    if terminal {
        eprintln!();
    }
    let mean = &report.mean;
    println!(
        "{} samples: BLEU-4 {:.2}, ROUGE-1 {:.2}, ROUGE-2 {:.2}, ROUGE-L {:.2}{}; wrote {} and {}",
        report.samples,
        mean.bleu4,
        mean.rouge1,
        mean.rouge2,
        mean.rouge_l,
        report
            .eval_loss
            .map(|l| format!(", eval loss {l:.4} (perplexity {:.2})", l.exp()))
            .unwrap_or_default(),
        report.predictions_path.display(),
        report.results_path.display()
    );
    Ok(())
}
