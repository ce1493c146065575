//! The data path end to end: source -> format -> template -> tokenize -> mask, with a
//! report per dataset of what happened to every record.

use std::collections::BTreeMap;

use crate::config::DataArgs;
use crate::conversation::Sample;
use crate::encode::{Encoded, Encoder, Skip};
use crate::error::{DataError, RecordRef, Result};
use crate::placeholders;
use crate::registry::{self, DatasetSpec};
use crate::rng::SplitMix64;
use crate::source::{self, RawRecord};
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
#[derive(Debug, Clone, Default)]
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
    let specs = registry::resolve(&args.dataset, &args.dataset_dir, args.formatting)?;
    let pad = tokenizer.pad_token();
    let mut prepared = Prepared {
        tokenizer,
        template,
        pad,
        samples: Vec::new(),
        reports: Vec::new(),
        warnings: Vec::new(),
    };
    for (index, spec) in specs.iter().enumerate() {
        let remaining = limit.map(|l| l.saturating_sub(prepared.samples.len()));
        if remaining == Some(0) {
            break;
        }
        let report = prepare_dataset(args, spec, index, remaining, &mut prepared)?;
        prepared.reports.push(report);
    }
    Ok(prepared)
}

fn read_dataset(
    args: &DataArgs,
    spec: &DatasetSpec,
    report: &mut DatasetReport,
) -> Result<Vec<RawRecord>> {
    let mut records = Vec::new();
    for file in source::resolve_files(&spec.path)? {
        let read = source::read_file(&file)?;
        for error in read.errors {
            if !args.skip_invalid {
                return Err(error);
            }
            report.invalid += 1;
            report.note(error.to_string());
        }
        records.extend(read.records);
    }
    if let Some(n) = spec.num_samples {
        records = sample_records(records, n, args.seed);
    }
    if let Some(max) = args.max_samples {
        records.truncate(max);
    }
    Ok(records)
}

/// LLaMA-Factory's `num_samples`: a seeded random subset, or the whole set repeated and
/// topped up at random when more samples than records are asked for.
fn sample_records(records: Vec<RawRecord>, n: usize, seed: u64) -> Vec<RawRecord> {
    if records.is_empty() {
        return records;
    }
    let mut rng = SplitMix64(seed);
    let order = rng.permutation(records.len());
    let mut picked: Vec<usize> = order
        .iter()
        .copied()
        .cycle()
        .take(n.min(records.len()))
        .collect();
    while picked.len() < n {
        picked.push((rng.next_u64() % records.len() as u64) as usize);
    }
    picked.into_iter().map(|i| records[i].clone()).collect()
}

fn prepare_dataset(
    args: &DataArgs,
    spec: &DatasetSpec,
    index: usize,
    limit: Option<usize>,
    prepared: &mut Prepared,
) -> Result<DatasetReport> {
    let mut report = DatasetReport {
        name: spec.name.clone(),
        ..DatasetReport::default()
    };
    let records = read_dataset(args, spec, &mut report)?;
    report.records = records.len();
    let encoder = Encoder {
        tokenizer: &prepared.tokenizer,
        template: prepared.template.as_ref(),
        options: args.encode_options(),
    };
    let mut warnings = Vec::new();
    let mut samples = Vec::new();
    for raw in &records {
        if limit.is_some_and(|l| samples.len() >= l) {
            break;
        }
        let mut sample = match spec.format.convert(raw, args.stage) {
            Ok(sample) => sample,
            Err(e) if args.skip_invalid && e.is_record_error() => {
                report.invalid += 1;
                report.note(e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        let unreplaced = replace_placeholders(&mut sample, &args.placeholders);
        for key in unreplaced {
            let count = report.unreplaced.entry(key.clone()).or_default();
            *count += 1;
            if *count == 1 {
                report.note(format!("{}: placeholder {{{{{key}}}}} is not replaced (set placeholders.{key} in the config or --placeholder {key}=VALUE)", raw.at));
            }
        }
        if let (Sample::Chat(c), Some(template)) = (&sample, encoder.template) {
            if let Some(w) = template.tool_loss(
                c.has_tool_definitions(),
                c.has_tool_calls(),
                c.has_tool_results(),
            ) {
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
        }
        match encoder.encode(&sample) {
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
    report.samples = samples.len();
    prepared.samples.extend(samples);
    for w in warnings {
        if !prepared.warnings.contains(&w) {
            prepared.warnings.push(w);
        }
    }
    Ok(report)
}

/// Replaces placeholders in every text of the sample; returns the names left unreplaced.
fn replace_placeholders(sample: &mut Sample, values: &BTreeMap<String, String>) -> Vec<String> {
    let mut left = Vec::new();
    let mut scan = |text: &str| {
        for key in placeholders::unreplaced(text) {
            if !left.contains(&key) {
                left.push(key);
            }
        }
    };
    match sample {
        Sample::Chat(c) => {
            if !values.is_empty() {
                c.map_text(|t| placeholders::replace(t, values));
            }
            c.texts().for_each(&mut scan);
        }
        Sample::Text(t) => {
            if !values.is_empty() {
                *t = placeholders::replace(t, values);
            }
            scan(t);
        }
    }
    left
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[usize], p: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
