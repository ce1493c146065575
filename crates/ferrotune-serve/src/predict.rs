//! Predicting an evaluation dataset, as LLaMA-Factory's predict mode does, and scoring
//! the answers (`ferrotune eval predict`).
//!
//! Each sample's prompt is its conversation up to the last assistant turn, built as a
//! chat turn builds it ([`crate::turn::build_prompt`]); the label is that last reply.
//! Answers are generated in batches (left padding) and end as a chat answer ends
//! ([`crate::stream::answer_text`]). The same samples are also scored teacher-forced,
//! encoded exactly as training encodes them, for the eval loss and perplexity. Writes
//! OUT/generated_predictions.jsonl (`prompt`, `predict`, `label` per line) and
//! OUT/predict_results.json (LLaMA-Factory's `predict_bleu-4` / `predict_rouge-*`
//! scores, eval loss, perplexity, timings).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ferrotune_data::config::DataArgs;
use ferrotune_data::conversation::{Conversation, Role, Sample};
use ferrotune_data::records::{self, Coverage};
use ferrotune_data::template::ChatTemplate;
use ferrotune_data::{registry, Encoder, RecordRef, Stage, TokenizerBundle};
use ferrotune_eval::llamafactory::LfScores;
use ferrotune_model::batch::Example;
use ferrotune_model::generate::{generate_batch, GenerationConfig};
use ferrotune_model::infer::WeightType;
use ferrotune_model::CausalLm;
use serde_json::json;

use crate::loading::{self, ModelSource, SamplingOptions};
use crate::stream::answer_text;
use crate::turn::{build_prompt, ChatModel, PromptError};

/// What to predict, with which model, and where to write.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// The datasets, template and encoding (`eval_dataset` already in `dataset`).
    pub data: DataArgs,
    pub source: ModelSource,
    pub out: PathBuf,
    /// Samples generated (and scored) together.
    pub batch_size: usize,
    /// Its seed is the sampler's; greedy answers need `temperature: Some(0.0)`.
    pub sampling: SamplingOptions,
    /// Inference weights for generating; the eval loss is computed in f32 either way.
    /// None: as the base is stored (`loading::inference_weights`).
    pub weights: Option<WeightType>,
}

/// The samples read and ready to predict.
pub struct Prediction {
    options: PredictOptions,
    tok: TokenizerBundle,
    template: ChatTemplate,
    items: Vec<Item>,
    skipped: Vec<String>,
}

/// What a prediction run wrote and scored.
#[derive(Debug, Clone)]
pub struct PredictReport {
    pub samples: usize,
    /// LLaMA-Factory's mean scores, x100.
    pub mean: LfScores,
    pub eval_loss: Option<f64>,
    pub predictions_path: PathBuf,
    pub results_path: PathBuf,
}

impl Prediction {
    /// Reads the tokenizer, the template and the samples; fails when no sample is left.
    pub fn prepare(options: PredictOptions) -> Result<Self> {
        let data = &options.data;
        if data.dataset.is_empty() {
            bail!("no dataset to predict");
        }
        let tok = loading::tokenizer(&options.source)?;
        let template = ChatTemplate::choose(
            &data.template_choice(),
            tok.chat_template.as_deref(),
            &data.custom_templates,
            &tok.specials,
            &data.template_kwargs(),
        )?;
        let (items, skipped) = load_items(data, &tok, &template)?;
        if items.is_empty() {
            bail!("no sample to predict ({} skipped)", skipped.len());
        }
        Ok(Prediction {
            options,
            tok,
            template,
            items,
            skipped,
        })
    }

    pub fn samples(&self) -> usize {
        self.items.len()
    }

    /// A note for each sample skipped (its record and why).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Loads the model, computes the eval loss, generates every answer (calling
    /// `progress(done, total)` after each batch), and writes and scores the predictions.
    pub fn run(self, progress: impl FnMut(usize, usize)) -> Result<PredictReport> {
        let Prediction {
            options: o,
            tok,
            template,
            items,
            skipped,
        } = self;
        // With its adapter unmerged: the eval loss is training's own computation, and the
        // inference weights merge it one layer at a time.
        let model = o.source.load_unmerged()?;
        let stop_ids = loading::stop_ids(&model, &tok, Some(&template));
        let config = o.sampling.config(&o.source.base, stop_ids)?;

        let pad = tok.pad_token().id;
        let (loss_sum, loss_tokens) = eval_loss(&model, &items, pad, o.batch_size)?;
        // Converted after the loss, which keeps training's f32 forward pass.
        let chat = ChatModel::new(model, tok, template, o.weights)?;
        let started = Instant::now();
        let predictions = predict(&chat, &items, &config, pad, o.batch_size, progress)?;
        let generation_seconds = started.elapsed().as_secs_f64();

        let out = &o.out;
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
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
            "model": o.source.name(),
            "dataset": o.data.dataset,
            "template": chat.template().name(),
            "max_new_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "inference_weights": chat.weights().name(),
        });
        let results_path = out.join("predict_results.json");
        std::fs::write(
            &results_path,
            serde_json::to_string_pretty(&results).expect("json") + "\n",
        )
        .with_context(|| format!("cannot write {}", results_path.display()))?;
        Ok(PredictReport {
            samples: items.len(),
            mean,
            eval_loss,
            predictions_path: path,
            results_path,
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
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
        let raw_records = records::read(data, &spec, Coverage::AsTrained)?.into_records();
        for raw in &raw_records {
            let sample = records::format(data, &spec.format, raw, Stage::Sft)?.sample;
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
    let prompt =
        build_prompt(template, tok, &c.messages[..last], &c.tools).map_err(|e| match e {
            PromptError::Template(why) => why,
            PromptError::Tokenizer(_) => e.to_string(),
        })?;
    let (prompt, mut prompt_ids) = (prompt.text, prompt.ids);
    // An overlong prompt keeps its end, where the question and the generation prompt are.
    if prompt_ids.len() > cutoff_len {
        prompt_ids.drain(..prompt_ids.len() - cutoff_len);
    }
    let example = encoder.encode_chat(c).ok().map(|e| Example {
        input_ids: e.input_ids,
        labels: e.labels,
        weights: e.weights,
        reference_logp: None,
        desirable: None,
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
    chat: &ChatModel,
    items: &[Item],
    config: &GenerationConfig,
    pad: u32,
    batch_size: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<String>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].prompt_ids.len()));
    let model = chat.model();
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
        for (&i, ids) in batch.iter().zip(generated) {
            out[i] = answer_text(
                chat.tokenizer(),
                ids,
                &config.stop_token_ids,
                chat.stop_strings(),
            )?;
        }
        done += batch.len();
        progress(done, items.len());
    }
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
