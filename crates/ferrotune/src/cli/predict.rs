//! `ferrotune eval predict`: answers an evaluation dataset with the model, as
//! LLaMA-Factory's predict mode does, and scores the answers.
//!
//! Each sample's prompt is its conversation up to the last assistant turn, rendered with
//! the training template and its generation prompt; the label is that last reply.
//! Answers are generated in batches (left padding). The same samples are also scored
//! teacher-forced, encoded exactly as training encodes them, for the eval loss and
//! perplexity. Writes OUT/generated_predictions.jsonl (`prompt`, `predict`, `label` per
//! line) and OUT/predict_results.json (LLaMA-Factory's `predict_bleu-4` /
//! `predict_rouge-*` scores, eval loss, perplexity, timings).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ferrotune_data::config::{DataArgs, DATA_KEYS};
use ferrotune_data::conversation::{Conversation, Role, Sample};
use ferrotune_data::pipeline::replace_placeholders;
use ferrotune_data::template::ChatTemplate;
use ferrotune_data::{registry, source, Encoder, RecordRef, Stage, TokenizerBundle};
use ferrotune_model::batch::Example;
use ferrotune_model::generate::{generate_batch, GenerationConfig};
use ferrotune_model::infer::{InferenceModel, WeightType};
use ferrotune_model::CausalLm;
use ferrotune_train::config::file::{check_key, ConfigFile};
use serde_json::{json, Map, Value};

use super::loading::{self, ModelSource};

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
    /// Inference weights for generating: f32 (as trained), bf16 or q8_0 (faster, and
    /// close to f32: see the README). The eval loss is computed in f32 either way.
    #[arg(long, default_value = "f32", value_name = "f32|bf16|q8_0")]
    weights: WeightType,
}

/// One evaluation sample.
struct Item {
    at: RecordRef,
    prompt: String,
    prompt_ids: Vec<u32>,
    label: String,
    /// The training encoding of the whole conversation, for the loss.
    example: Option<Example>,
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
        let (key, value) = o.split_once('=').expect("contains =");
        check_key(key)?;
        let value: Value =
            serde_saphyr::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        config.values.insert(key.to_string(), value);
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
    let model_spec = data
        .model_name_or_path
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let adapter = v
        .get("adapter_name_or_path")
        .and_then(Value::as_str)
        .map(PathBuf::from);
    let source = ModelSource::locate(model_spec.as_deref(), adapter.as_deref())?;

    let tok = loading::tokenizer(&source)?;
    let template = ChatTemplate::choose(
        &data.template_choice(),
        tok.chat_template.as_deref(),
        &data.custom_templates,
        &tok.specials,
        &data.template_kwargs(),
    )?;
    let (items, skipped) = load_items(&data, &tok, &template)?;
    if items.is_empty() {
        bail!("no sample to predict ({} skipped)", skipped.len());
    }
    eprintln!(
        "predicting {} samples with {} (template {}){}",
        items.len(),
        source.name(),
        template.name(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!("; skipped {}: {}", skipped.len(), skipped[0])
        }
    );
    let model = source.load()?;
    let stop_ids = loading::stop_ids(&model, &tok, Some(&template));
    // Greedy unless the config asks for sampling: scores should not depend on luck.
    let mut config = loading::model_defaults(&source.base);
    config.max_new_tokens = count("max_new_tokens", 512)?;
    config.temperature = number("temperature").unwrap_or(0.0);
    config.top_p = number("top_p").or(config.top_p);
    if let Some(k) = v.get("top_k").filter(|k| !k.is_null()) {
        let k = k
            .as_u64()
            .with_context(|| format!("top_k must be an integer, got {k}"))?;
        config.top_k = Some(k as usize).filter(|&k| k > 0);
    }
    config.repetition_penalty = number("repetition_penalty").unwrap_or(config.repetition_penalty);
    config.seed = data.seed;
    config.stop_token_ids = stop_ids;
    loading::check_sampling(&config).map_err(anyhow::Error::msg)?;

    let pad = tok.pad_token().id;
    let (loss_sum, loss_tokens) = eval_loss(&model, &items, pad, batch_size)?;
    // Converted after the loss, which keeps training's f32 forward pass.
    let model = InferenceModel::new(model, a.weights)?;
    let started = Instant::now();
    let predictions = predict(&model, &tok, &template, &items, &config, pad, batch_size)?;
    let generation_seconds = started.elapsed().as_secs_f64();

    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let path = out.join("generated_predictions.jsonl");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?,
    );
    for (item, predict) in items.iter().zip(&predictions) {
        let line = json!({"prompt": item.prompt, "predict": predict, "label": item.label});
        writeln!(file, "{line}").with_context(|| format!("cannot write {}", path.display()))?;
    }
    file.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;

    let scores: Vec<_> = items
        .iter()
        .zip(&predictions)
        .map(|(item, p)| ferrotune_eval::llamafactory::score(p, &item.label))
        .collect();
    let mean = ferrotune_eval::llamafactory::mean(&scores);
    let eval_loss = (loss_tokens > 0).then(|| loss_sum / loss_tokens as f64);
    let n = items.len() as f64;
    let results = json!({
        "predict_bleu-4": mean.bleu4,
        "predict_rouge-1": mean.rouge1,
        "predict_rouge-2": mean.rouge2,
        "predict_rouge-l": mean.rouge_l,
        "eval_loss": eval_loss,
        "perplexity": eval_loss.map(f64::exp),
        "eval_tokens": loss_tokens,
        "predict_samples": items.len(),
        "skipped_samples": skipped.len(),
        "predict_runtime": round(generation_seconds),
        "predict_samples_per_second": round(n / generation_seconds.max(1e-9)),
        "model": source.name(),
        "dataset": data.dataset,
        "template": template.name(),
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "inference_weights": a.weights.name(),
    });
    let results_path = out.join("predict_results.json");
    std::fs::write(
        &results_path,
        serde_json::to_string_pretty(&results).expect("json") + "\n",
    )
    .with_context(|| format!("cannot write {}", results_path.display()))?;
    println!(
        "{} samples: BLEU-4 {:.2}, ROUGE-1 {:.2}, ROUGE-2 {:.2}, ROUGE-L {:.2}{}; wrote {} and {}",
        items.len(),
        mean.bleu4,
        mean.rouge1,
        mean.rouge2,
        mean.rouge_l,
        eval_loss
            .map(|l| format!(", eval loss {l:.4} (perplexity {:.2})", l.exp()))
            .unwrap_or_default(),
        path.display(),
        results_path.display()
    );
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Reads the datasets' records as training does and turns every conversation into an
/// [`Item`]. Returns the items and a note for each sample skipped.
fn load_items(
    data: &DataArgs,
    tok: &TokenizerBundle,
    template: &ChatTemplate,
) -> Result<(Vec<Item>, Vec<String>)> {
    let encoder = Encoder {
        tokenizer: tok,
        template: Some(template),
        options: data.encode_options(),
    };
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for spec in registry::resolve(&data.dataset, &data.dataset_dir, data.formatting)? {
        let mut records = Vec::new();
        for file in source::resolve_files(&spec.path)? {
            let read = source::read_file(&file)?;
            if let Some(e) = read.errors.into_iter().next() {
                return Err(e.into());
            }
            records.extend(read.records);
        }
        if let Some(max) = data.max_samples {
            records.truncate(max);
        }
        for raw in &records {
            let mut sample = spec.format.convert(raw, Stage::Sft)?;
            replace_placeholders(&mut sample, &data.placeholders);
            let Sample::Chat(conversation) = sample else {
                bail!("{}: predict needs chat samples, not plain text", raw.at);
            };
            match item(
                raw.at.clone(),
                &conversation,
                tok,
                template,
                &encoder,
                data.cutoff_len,
            ) {
                Ok(item) => items.push(item),
                Err(why) => skipped.push(format!("{}: {why}", raw.at)),
            }
        }
    }
    Ok((items, skipped))
}

fn item(
    at: RecordRef,
    c: &Conversation,
    tok: &TokenizerBundle,
    template: &ChatTemplate,
    encoder: &Encoder,
    cutoff_len: usize,
) -> std::result::Result<Item, String> {
    let last = c
        .messages
        .iter()
        .rposition(|m| m.role == Role::Assistant)
        .ok_or("no assistant turn to predict")?;
    let prompt = template.render(&c.messages[..last], &c.tools, true)?;
    let mut prompt_ids = tok
        .tokenizer
        .encode(prompt.as_str(), false)
        .map_err(|e| format!("tokenizer: {e}"))?
        .get_ids()
        .to_vec();
    // An overlong prompt keeps its end, where the question and the generation prompt are.
    if prompt_ids.len() > cutoff_len {
        prompt_ids.drain(..prompt_ids.len() - cutoff_len);
    }
    let example = encoder.encode_chat(c).ok().map(|e| Example {
        input_ids: e.input_ids,
        labels: e.labels,
        weights: e.weights,
    });
    Ok(Item {
        at,
        prompt,
        prompt_ids,
        label: c.messages[last].content.clone(),
        example,
    })
}

/// Generated answers in sample order. Batches hold prompts of similar length, so little
/// of each batch is padding.
fn predict(
    model: &InferenceModel,
    tok: &TokenizerBundle,
    template: &ChatTemplate,
    items: &[Item],
    config: &GenerationConfig,
    pad: u32,
    batch_size: usize,
) -> Result<Vec<String>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].prompt_ids.len()));
    let stops = template.stop_strings();
    let context = model.config().max_position_embeddings;
    let mut out = vec![String::new(); items.len()];
    let mut done = 0;
    for batch in order.chunks(batch_size) {
        let prompts: Vec<Vec<u32>> = batch.iter().map(|&i| items[i].prompt_ids.clone()).collect();
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let config = GenerationConfig {
            max_new_tokens: config
                .max_new_tokens
                .min(context.saturating_sub(longest).max(1)),
            ..config.clone()
        };
        let generated = generate_batch(model, &prompts, &config, pad)
            .with_context(|| format!("generating for {}", items[batch[0]].at))?;
        for (&i, mut ids) in batch.iter().zip(generated) {
            while ids
                .last()
                .is_some_and(|id| config.stop_token_ids.contains(id))
            {
                ids.pop();
            }
            let mut text = tok
                .tokenizer
                .decode(&ids, true)
                .map_err(|e| anyhow::anyhow!("cannot decode an answer: {e}"))?;
            if let Some(at) = stops.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(at);
            }
            out[i] = text;
        }
        done += batch.len();
        eprint!("\rgenerated {done}/{}", items.len());
    }
    eprintln!();
    Ok(out)
}

/// Summed teacher-forced loss and supervised tokens over the samples that encode.
fn eval_loss(
    model: &CausalLm,
    items: &[Item],
    pad: u32,
    batch_size: usize,
) -> Result<(f64, usize)> {
    let examples: Vec<Example> = items.iter().filter_map(|i| i.example.clone()).collect();
    Ok(model.eval_loss(&examples, batch_size, pad)?)
}
