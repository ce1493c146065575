//! The data path end to end: source -> format -> template -> tokenize -> mask -> mix,
//! with a report per dataset of what happened to every record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::cache;
use crate::config::DataArgs;
use crate::conversation::Sample;
use crate::encode::{Encoded, Encoder, Skip};
use crate::error::{DataError, RecordRef, Result};
use crate::mix::{self, MixStrategy, Share};
use crate::records::{self, Coverage, Formatted};
use crate::registry::{self, DatasetSpec};
use crate::source::RawRecord;
use crate::template::ChatTemplate;
use crate::tokenizer::{PadToken, TokenizerBundle};

/// A training example and where it came from.
#[derive(Debug, Clone)]
pub struct PreparedSample {
    /// Index into [`Prepared::reports`].
    pub dataset: usize,
    pub at: RecordRef,
    pub encoded: Encoded,
}

/// What happened to one dataset's records.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DatasetReport {
    pub name: String,
    /// Records read (after `num_samples` / `max_samples`).
    pub records: usize,
    /// Malformed records skipped with `--skip-invalid`.
    pub invalid: usize,
    /// Training examples produced.
    pub samples: usize,
    pub truncated: usize,
    pub dropped_too_long: usize,
    /// Samples with no supervised token left (reported, never trained on).
    pub all_masked: usize,
    /// Samples the template could not render, or whose assistant turns it rendered in a
    /// way that could not be located.
    pub unrenderable: usize,
    /// Token count of every produced example.
    pub lengths: Vec<usize>,
    pub supervised_tokens: usize,
    /// Examples (and their tokens) the mixture took from this dataset: fewer than
    /// `samples` when undersampled, more when oversampled.
    pub used: usize,
    pub used_tokens: usize,
    /// Placeholder name -> number of records where it stayed unreplaced.
    pub unreplaced: BTreeMap<String, usize>,
    /// The first few problems, for the user to look at.
    pub examples: Vec<String>,
}

impl DatasetReport {
    fn note(&mut self, message: String) {
        if self.examples.len() < 5 {
            self.examples.push(message);
        }
    }

    pub fn tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
}

/// The loaded tokenizer and template with every dataset's examples and reports.
pub struct Prepared {
    pub tokenizer: TokenizerBundle,
    pub template: Option<ChatTemplate>,
    pub pad: PadToken,
    pub samples: Vec<PreparedSample>,
    pub reports: Vec<DatasetReport>,
    /// Once-per-run warnings (tool use the template drops, ...).
    pub warnings: Vec<String>,
    /// Per dataset read through the tokenized cache: its entry, and whether it was reused.
    pub cache: Vec<CacheUse>,
}

#[derive(Debug, Clone)]
pub struct CacheUse {
    pub dataset: String,
    pub dir: PathBuf,
    pub hit: bool,
}

/// Loads the tokenizer and template the arguments name.
pub fn load_tokenizer_and_template(
    args: &DataArgs,
) -> Result<(TokenizerBundle, Option<ChatTemplate>)> {
    let dir = args.tokenizer_dir().ok_or_else(|| {
        DataError::config("no tokenizer: set model_name_or_path (or tokenizer_name_or_path) in the config, or pass --tokenizer DIR")
    })?;
    let tokenizer = TokenizerBundle::load(dir)?;
    let template = match args.stage {
        crate::format::Stage::Pt => None,
        crate::format::Stage::Sft => Some(ChatTemplate::choose(
            &args.template_choice(),
            tokenizer.chat_template.as_deref(),
            &args.custom_templates,
            &tokenizer.specials,
            &args.template_kwargs(),
        )?),
    };
    Ok((tokenizer, template))
}

/// Runs the whole data path. `limit` stops after that many examples (for previews).
pub fn prepare(args: &DataArgs, limit: Option<usize>) -> Result<Prepared> {
    let (tokenizer, template) = load_tokenizer_and_template(args)?;
    let pad = tokenizer.pad_token();
    let mut prepared = Prepared {
        tokenizer,
        template,
        pad,
        samples: Vec::new(),
        reports: Vec::new(),
        warnings: Vec::new(),
        cache: Vec::new(),
    };
    let sources = mixture_sources(args)?;
    let mut per_dataset = Vec::with_capacity(sources.len());
    for (index, (spec, _)) in sources.iter().enumerate() {
        let (report, samples) = match (&args.data_cache_dir, limit) {
            (Some(root), None) => cached_dataset(args, spec, index, root, &mut prepared)?,
            _ => prepare_dataset(args, spec, index, limit, &mut prepared)?,
        };
        prepared.reports.push(report);
        per_dataset.push(samples);
    }
    let shares: Vec<Share> = sources.iter().map(|(_, share)| *share).collect();
    prepared.samples = mix_samples(args, &shares, per_dataset, &mut prepared.reports)?;
    if let Some(limit) = limit {
        prepared.samples.truncate(limit);
    }
    Ok(prepared)
}

/// One dataset through the tokenized cache: loaded when an entry for exactly these inputs
/// exists, else prepared and stored.
fn cached_dataset(
    args: &DataArgs,
    spec: &DatasetSpec,
    index: usize,
    root: &Path,
    prepared: &mut Prepared,
) -> Result<(DatasetReport, Vec<PreparedSample>)> {
    let key = cache::key(args, spec, &prepared.tokenizer, prepared.template.as_ref())?;
    if let Some(entry) = cache::load(root, &key, index) {
        add_warnings(&mut prepared.warnings, entry.warnings);
        prepared.cache.push(CacheUse {
            dataset: spec.name.clone(),
            dir: root.join(&key),
            hit: true,
        });
        return Ok((entry.report, entry.samples));
    }
    let before = prepared.warnings.clone();
    let (report, samples) = prepare_dataset(args, spec, index, None, prepared)?;
    let warnings: Vec<String> = prepared
        .warnings
        .iter()
        .filter(|w| !before.contains(w))
        .cloned()
        .collect();
    let dir = cache::store(root, &key, &report, &warnings, &samples)?;
    prepared.cache.push(CacheUse {
        dataset: spec.name.clone(),
        dir,
        hit: false,
    });
    Ok((report, samples))
}

fn add_warnings(to: &mut Vec<String>, new: Vec<String>) {
    for w in new {
        if !to.contains(&w) {
            to.push(w);
        }
    }
}

/// The datasets of the mixture with their shares: `dataset` (with `name:N` / `name:P%`
/// suffixes) and the replayed data of an earlier stage.
fn mixture_sources(args: &DataArgs) -> Result<Vec<(DatasetSpec, Share)>> {
    let mut entries = Vec::new();
    for entry in &args.dataset {
        entries.push((mix::parse_share(entry)?, args.dataset_dir.clone()));
    }
    if let Some(replay) = &args.replay_dataset {
        if !(args.replay_ratio > 0.0 && args.replay_ratio < 1.0) {
            return Err(DataError::config(format!(
                "replay_ratio must be between 0 and 1, not {}",
                args.replay_ratio
            )));
        }
        let names = replay_names(replay, &args.dataset_dir)?;
        let each = args.replay_ratio / names.len() as f64;
        for (name, dir) in names {
            entries.push(((name, Share::Fraction(each)), dir));
        }
    }
    let mut sources = Vec::new();
    for ((name, share), dir) in entries {
        let mut spec = registry::resolve(std::slice::from_ref(&name), &dir, args.formatting)?
            .pop()
            .expect("one name resolves to one spec");
        if let Share::Samples(n) = share {
            spec.num_samples = Some(n);
        }
        sources.push((spec, share));
    }
    if sources.is_empty() {
        return Err(DataError::config("no dataset given"));
    }
    let fractions = sources.iter().any(|(_, s)| matches!(s, Share::Fraction(_)));
    if fractions && args.mix_strategy != MixStrategy::Concat {
        return Err(DataError::config(
            "dataset shares (name:P%) and replay_dataset mix by share: use mix_strategy: concat with them, or interleave_probs without them",
        ));
    }
    Ok(sources)
}

/// Replayed datasets: names resolve in `dataset_dir`; an earlier run's output folder
/// stands for the datasets its saved config names.
fn replay_names(names: &[String], dataset_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for name in names {
        let saved = Path::new(name).join("train_config.json");
        if !saved.is_file() {
            out.push((name.clone(), dataset_dir.to_path_buf()));
            continue;
        }
        let text = std::fs::read_to_string(&saved)
            .map_err(|e| DataError::file(&saved, format!("cannot read: {e}")))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| DataError::file(&saved, format!("malformed JSON: {e}")))?;
        let dir = config["dataset_dir"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| dataset_dir.to_path_buf());
        let datasets: Vec<String> = match &config["dataset"] {
            serde_json::Value::String(s) => s.split(',').map(|s| s.trim().to_string()).collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if datasets.is_empty() {
            return Err(DataError::file(&saved, "names no dataset to replay"));
        }
        for d in datasets {
            // The earlier run's own shares do not carry over: replay_ratio sets the share.
            let (d, _) = mix::parse_share(&d)?;
            out.push((d, dir.clone()));
        }
    }
    Ok(out)
}

/// Combines the datasets' examples as `mix_strategy` and the shares say, and records in
/// each report how many examples (and tokens) the mixture took from it.
fn mix_samples(
    args: &DataArgs,
    shares: &[Share],
    mut per_dataset: Vec<Vec<PreparedSample>>,
    reports: &mut [DatasetReport],
) -> Result<Vec<PreparedSample>> {
    let fixed: usize = per_dataset
        .iter()
        .zip(shares)
        .filter(|(_, s)| !matches!(s, Share::Fraction(_)))
        .map(|(d, _)| d.len())
        .sum();
    let counts = mix::fraction_counts(shares, fixed)?;
    for (i, share) in shares.iter().enumerate() {
        if let Share::Fraction(_) = share {
            let picks = mix::pick(per_dataset[i].len(), counts[i], args.seed ^ i as u64);
            let source = std::mem::take(&mut per_dataset[i]);
            per_dataset[i] = picks.into_iter().map(|k| source[k].clone()).collect();
        }
    }
    let probs = args
        .interleave_probs
        .as_ref()
        .map(|p| mix::parse_probs(p, per_dataset.len()))
        .transpose()?;
    let mut out = Vec::new();
    if args.mix_strategy == MixStrategy::Concat {
        if probs.is_some() {
            return Err(DataError::config(
                "interleave_probs needs mix_strategy: interleave_under or interleave_over",
            ));
        }
        for samples in per_dataset {
            out.extend(samples);
        }
    } else {
        let sizes: Vec<usize> = per_dataset.iter().map(Vec::len).collect();
        for (s, i) in mix::interleave(&sizes, args.mix_strategy, probs.as_deref(), args.seed) {
            out.push(per_dataset[s][i].clone());
        }
    }
    for sample in &out {
        let report = &mut reports[sample.dataset];
        report.used += 1;
        report.used_tokens += sample.encoded.len();
    }
    Ok(out)
}

fn prepare_dataset(
    args: &DataArgs,
    spec: &DatasetSpec,
    index: usize,
    limit: Option<usize>,
    prepared: &mut Prepared,
) -> Result<(DatasetReport, Vec<PreparedSample>)> {
    let mut report = DatasetReport {
        name: spec.name.clone(),
        ..DatasetReport::default()
    };
    let read = records::read(args, spec, Coverage::AsTrained)?;
    for error in &read.skipped {
        report.invalid += 1;
        report.note(error.to_string());
    }
    let records = read.into_records();
    report.records = records.len();
    let encoder = Encoder {
        tokenizer: &prepared.tokenizer,
        template: prepared.template.as_ref(),
        options: args.encode_options(),
    };
    let mut warnings = Vec::new();
    let mut samples = Vec::new();
    // Records are processed in parallel chunks and folded into the report in order, so
    // the report and the examples are the same as a sequential pass.
    let chunk = if limit.is_some() { 256 } else { 4096 };
    'chunks: for records in records.chunks(chunk) {
        let outcomes: Vec<Result<Outcome>> = records
            .par_iter()
            .map(|raw| process_record(args, spec, &encoder, raw))
            .collect();
        for (raw, outcome) in records.iter().zip(outcomes) {
            if limit.is_some_and(|l| samples.len() >= l) {
                break 'chunks;
            }
            let (unreplaced, warning, encoded) = match outcome? {
                Outcome::Invalid(e) => {
                    report.invalid += 1;
                    report.note(e.to_string());
                    continue;
                }
                Outcome::Done {
                    unreplaced,
                    warning,
                    encoded,
                } => (unreplaced, warning, encoded),
            };
            for key in unreplaced {
                let count = report.unreplaced.entry(key.clone()).or_default();
                *count += 1;
                if *count == 1 {
                    report.note(format!("{}: placeholder {{{{{key}}}}} is not replaced (set placeholders.{key} in the config or --placeholder {key}=VALUE)", raw.at));
                }
            }
            if let Some(w) = warning {
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
            match encoded {
                Ok(encoded) => {
                    report.truncated += usize::from(encoded.truncated);
                    report.lengths.push(encoded.len());
                    report.supervised_tokens += encoded.supervised_tokens();
                    samples.push(PreparedSample {
                        dataset: index,
                        at: raw.at.clone(),
                        encoded,
                    });
                }
                Err(skip) => {
                    match skip {
                        Skip::TooLong { .. } => report.dropped_too_long += 1,
                        Skip::NoSupervisedTokens => report.all_masked += 1,
                        Skip::RenderFailed(_) | Skip::TurnNotFound(_) | Skip::Tokenizer(_) => {
                            report.unrenderable += 1
                        }
                    }
                    report.note(format!("{}: {skip}", raw.at));
                }
            }
        }
    }
    report.samples = samples.len();
    add_warnings(&mut prepared.warnings, warnings);
    Ok((report, samples))
}

/// What became of one record.
enum Outcome {
    /// Malformed, skipped under `--skip-invalid`.
    Invalid(DataError),
    Done {
        /// Placeholders left unreplaced.
        unreplaced: Vec<String>,
        /// Tool-use loss the template cannot train.
        warning: Option<String>,
        encoded: std::result::Result<Encoded, Skip>,
    },
}

/// format -> placeholders -> template -> tokenize -> mask, for one record. Errors that are
/// not about the record (a broken template, say) stop the run.
fn process_record(
    args: &DataArgs,
    spec: &DatasetSpec,
    encoder: &Encoder,
    raw: &RawRecord,
) -> Result<Outcome> {
    let Formatted { sample, unreplaced } =
        match records::format(args, &spec.format, raw, args.stage) {
            Ok(formatted) => formatted,
            Err(e) if args.skip_invalid && e.is_record_error() => return Ok(Outcome::Invalid(e)),
            Err(e) => return Err(e),
        };
    let warning = match (&sample, encoder.template) {
        (Sample::Chat(c), Some(template)) => template.tool_loss(
            c.has_tool_definitions(),
            c.has_tool_calls(),
            c.has_tool_results(),
        ),
        _ => None,
    };
    Ok(Outcome::Done {
        unreplaced,
        warning,
        encoded: encoder.encode(&sample),
    })
}
