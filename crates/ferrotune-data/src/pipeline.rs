//! The data path end to end: source -> format -> template -> tokenize -> mask -> mix,
//! with a report per dataset of what happened to every record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cache;
use crate::cache_build::EntryBuilder;
use crate::config::DataArgs;
use crate::dataset::{self, Limits, ReadRecords};
use crate::encode::{Encoded, Encoder};
use crate::error::{DataError, RecordRef, Result};
use crate::mix::{self, MixStrategy, Share};
use crate::records::{self, Coverage};
use crate::registry::{self, DatasetSpec};
use crate::samples::{Part, Samples};
use crate::sampling;
use crate::source;
use crate::stream::{Position, RecordStream};
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
    /// Token count of every produced example (not serialized: a cache entry's
    /// offsets.u64 holds them).
    #[serde(skip)]
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
    /// Records read from each data file, in reading order (what `num_samples` picks
    /// from; an entry written before this was kept has none).
    #[serde(default)]
    pub records_per_file: Vec<(PathBuf, usize)>,
}

impl DatasetReport {
    pub(crate) fn note(&mut self, message: String) {
        if self.examples.len() < 5 {
            self.examples.push(message);
        }
    }

    pub fn tokens(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// Counts a record read from `file`.
    pub(crate) fn count_record(&mut self, file: &Path) {
        self.records += 1;
        match self.records_per_file.last_mut() {
            Some((last, n)) if last.as_os_str() == file.as_os_str() => *n += 1,
            _ => self.records_per_file.push((file.to_path_buf(), 1)),
        }
    }
}

/// The loaded tokenizer and template with every dataset's examples and reports.
pub struct Prepared {
    pub tokenizer: TokenizerBundle,
    pub template: Option<ChatTemplate>,
    pub pad: PadToken,
    /// The mixture's examples, in order (mapped from the cache where there is one).
    pub samples: Samples,
    pub reports: Vec<DatasetReport>,
    /// Once-per-run warnings (tool use the template drops, ...).
    pub warnings: Vec<String>,
    /// Per dataset read through the tokenized cache: its entry, and whether it was reused.
    pub cache: Vec<CacheUse>,
}

impl Prepared {
    /// What renders, tokenizes and masks a record with this tokenizer and template.
    pub fn encoder(&self, args: &DataArgs) -> Encoder<'_> {
        Encoder {
            tokenizer: &self.tokenizer,
            template: self.template.as_ref(),
            options: args.encode_options(),
        }
    }

    /// The tokenizer and template the arguments name, with nothing prepared yet.
    pub fn empty(args: &DataArgs) -> Result<Self> {
        let (tokenizer, template) = load_tokenizer_and_template(args)?;
        let pad = tokenizer.pad_token();
        Ok(Prepared {
            tokenizer,
            template,
            pad,
            samples: Samples::default(),
            reports: Vec::new(),
            warnings: Vec::new(),
            cache: Vec::new(),
        })
    }
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
        crate::format::Stage::Sft | crate::format::Stage::Dpo | crate::format::Stage::Kto => {
            Some(ChatTemplate::choose(
                &args.template_choice(),
                tokenizer.chat_template.as_deref(),
                &args.custom_templates,
                &tokenizer.specials,
                &args.template_kwargs(),
            )?)
        }
    };
    Ok((tokenizer, template))
}

/// Runs the whole data path. `limit` stops after that many examples (for previews).
pub fn prepare(args: &DataArgs, limit: Option<usize>) -> Result<Prepared> {
    let mut prepared = Prepared::empty(args)?;
    let sources = mixture_sources(args)?;
    let mut per_dataset = Vec::with_capacity(sources.len());
    let mut picked = Vec::with_capacity(sources.len());
    for (index, (spec, _)) in sources.iter().enumerate() {
        let (report, samples, picks) = match (&args.data_cache_dir, limit) {
            (Some(root), None) => cached_dataset(args, spec, index, root, &mut prepared)?,
            _ => {
                let (report, samples, warnings) =
                    prepare_dataset(args, spec, index, limit, &prepared)?;
                add_warnings(&mut prepared.warnings, warnings);
                (report, Part::Memory(samples), None)
            }
        };
        prepared.reports.push(report);
        per_dataset.push(samples);
        picked.push(picks);
    }
    let shares: Vec<Share> = sources.iter().map(|(_, share)| *share).collect();
    prepared.samples = mix_samples(args, &shares, per_dataset, picked, &mut prepared.reports)?;
    if let Some(limit) = limit {
        prepared.samples.truncate(limit);
    }
    Ok(prepared)
}

/// Whether a dataset's `num_samples` is drawn from the whole dataset's cache entry (see
/// [`crate::sampling`]) rather than by reading its records whole: not with
/// `skip_invalid` (skipped lines would shift the record numbers) or `max_samples` (which
/// cuts the picks, not the records).
fn sampled_from_index(args: &DataArgs, spec: &DatasetSpec) -> bool {
    spec.num_samples.is_some() && !args.skip_invalid && args.max_samples.is_none()
}

/// One dataset through the tokenized cache: loaded when an entry for exactly these inputs
/// exists, else prepared into a new one (streamed chunk by chunk, resuming an interrupted
/// preparation) and loaded from it. With `num_samples`, also the examples the picks
/// select (`None`: all of them).
fn cached_dataset(
    args: &DataArgs,
    spec: &DatasetSpec,
    index: usize,
    root: &Path,
    prepared: &mut Prepared,
) -> Result<(DatasetReport, Part, Option<Vec<u32>>)> {
    let (key, mut hit) = fill_cache_entry(args, spec, index, root, prepared)?;
    let dir = root.join(&key);
    let entry = match cache::load(root, &key) {
        Some(entry) => entry,
        None => {
            // A damaged entry was set aside by `load`: prepare it again.
            hit = fill_cache_entry(args, spec, index, root, prepared)?.1;
            cache::load(root, &key).ok_or_else(|| {
                DataError::file(&dir, "the cache entry just written cannot be read")
            })?
        }
    };
    add_warnings(&mut prepared.warnings, entry.warnings);
    prepared.cache.push(CacheUse {
        dataset: spec.name.clone(),
        dir,
        hit,
    });
    if let (true, Some(n)) = (sampled_from_index(args, spec), spec.num_samples) {
        if let Some((picks, report)) =
            sampling::pick_examples(&entry.examples, &entry.report, n, args.seed)
        {
            let part = Part::Mapped {
                dataset: index,
                entry: entry.examples,
            };
            return Ok((report, part, Some(picks)));
        }
        // An entry written before records were counted per file: read the records.
        let (report, samples, warnings) = prepare_dataset(args, spec, index, None, prepared)?;
        add_warnings(&mut prepared.warnings, warnings);
        return Ok((report, Part::Memory(samples), None));
    }
    let part = Part::Mapped {
        dataset: index,
        entry: entry.examples,
    };
    Ok((entry.report, part, None))
}

/// The datasets a live preparation (`streaming: true`) takes one after the other, or an
/// error naming what it does not do yet.
pub fn streaming_sources(args: &DataArgs) -> Result<Vec<DatasetSpec>> {
    let sources = mixture_sources(args)?;
    if sources
        .iter()
        .any(|(spec, share)| *share != Share::All || spec.num_samples.is_some())
        || args.mix_strategy != MixStrategy::Concat
        || args.replay_dataset.is_some()
    {
        return Err(DataError::config(
            "streaming: true takes its datasets one after the other: dataset shares (name:N, name:P%) \
             and num_samples, mix_strategy other than concat and replay_dataset need the datasets \
             prepared first (streaming: false)",
        ));
    }
    Ok(sources.into_iter().map(|(spec, _)| spec).collect())
}

/// The cache key of one dataset prepared with `prepared`'s tokenizer and template.
pub fn cache_key(args: &DataArgs, spec: &DatasetSpec, prepared: &Prepared) -> Result<String> {
    cache::key(args, spec, &prepared.tokenizer, prepared.template.as_ref())
}

/// Makes sure the cache entry of dataset `index` exists (streamed chunk by chunk and
/// resumed); returns its key and whether it was there already. A dataset whose
/// `num_samples` is drawn from the index fills the whole dataset's entry (that key is
/// returned); with `skip_invalid` or `max_samples` its records are read whole.
pub fn fill_cache_entry(
    args: &DataArgs,
    spec: &DatasetSpec,
    index: usize,
    root: &Path,
    prepared: &Prepared,
) -> Result<(String, bool)> {
    if sampled_from_index(args, spec) {
        let whole = DatasetSpec {
            num_samples: None,
            ..spec.clone()
        };
        return fill_cache_entry(args, &whole, index, root, prepared);
    }
    let key = cache::key(args, spec, &prepared.tokenizer, prepared.template.as_ref())?;
    if root.join(&key).join("meta.json").is_file() {
        return Ok((key, true));
    }
    if spec.num_samples.is_some() {
        // Sampling reads the records whole (LLaMA-Factory's seeded pick over them).
        let (report, samples, warnings) = prepare_dataset(args, spec, index, None, prepared)?;
        cache::store(root, &key, &report, &warnings, &samples)?;
        return Ok((key, false));
    }
    let Some(mut builder) = EntryBuilder::open(root, &key)? else {
        return Ok((key, true));
    };
    let progress = builder.progress().clone();
    let mut report = progress.report;
    report.name = spec.name.clone();
    let mut warnings = progress.warnings;
    let files = source::resolve_files(&spec.path)?;
    if progress.position != Position::default() {
        let file = files
            .get(progress.position.file)
            .map(|f| f.display().to_string())
            .unwrap_or_default();
        eprintln!(
            "data: {}: resuming the interrupted preparation at record {} of {file} ({} examples already in the cache)",
            spec.name, progress.position.index, progress.examples
        );
    }
    let mut stream = RecordStream::open(files, progress.position)?;
    let encoder = prepared.encoder(args);
    let limits = Limits {
        records: args.max_samples,
        examples: None,
    };
    dataset::process(
        args,
        spec,
        index,
        &encoder,
        &mut stream,
        &mut builder,
        limits,
        &mut report,
        &mut warnings,
    )?;
    builder.publish(&report, &warnings)?;
    Ok((key, false))
}

/// Every dataset of the mixture prepared into the cache under `root` without loading
/// the examples (`ferrotune data prepare`): the reports (lengths from the entries'
/// offsets), warnings and cache entries, and no samples.
/// `prepared` holds the tokenizer and template ([`Prepared::empty`]).
pub fn prepare_cache(args: &DataArgs, root: &Path, mut prepared: Prepared) -> Result<Prepared> {
    for (index, (spec, _)) in mixture_sources(args)?.iter().enumerate() {
        let (key, hit) = fill_cache_entry(args, spec, index, root, &prepared)?;
        let dir = root.join(&key);
        let (report, warnings) = cache::load_report(&dir)?;
        add_warnings(&mut prepared.warnings, warnings);
        prepared.reports.push(report);
        prepared.cache.push(CacheUse {
            dataset: spec.name.clone(),
            dir,
            hit,
        });
    }
    Ok(prepared)
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

/// Combines the datasets' examples as `mix_strategy` and the shares say (an order over
/// them: no example is copied), and records in each report how many examples (and
/// tokens) the mixture took from it.
fn mix_samples(
    args: &DataArgs,
    shares: &[Share],
    parts: Vec<Part>,
    picked: Vec<Option<Vec<u32>>>,
    reports: &mut [DatasetReport],
) -> Result<Samples> {
    // The examples of each dataset `num_samples` already chose (all when not sampled).
    let chosen: Vec<Vec<u32>> = parts
        .iter()
        .zip(picked)
        .map(|(part, picks)| picks.unwrap_or_else(|| (0..part.len() as u32).collect()))
        .collect();
    let fixed: usize = chosen
        .iter()
        .zip(shares)
        .filter(|(_, s)| !matches!(s, Share::Fraction(_)))
        .map(|(c, _)| c.len())
        .sum();
    let counts = mix::fraction_counts(shares, fixed)?;
    // Each dataset's examples as the mixture takes them: all, or a share's picks.
    let per_dataset: Vec<Vec<u32>> = chosen
        .into_iter()
        .zip(shares)
        .enumerate()
        .map(|(i, (chosen, share))| match share {
            Share::Fraction(_) => mix::pick(chosen.len(), counts[i], args.seed ^ i as u64)
                .into_iter()
                .map(|k| chosen[k])
                .collect(),
            _ => chosen,
        })
        .collect();
    let probs = args
        .interleave_probs
        .as_ref()
        .map(|p| mix::parse_probs(p, per_dataset.len()))
        .transpose()?;
    let mut order: Vec<(u32, u32)> = Vec::new();
    if args.mix_strategy == MixStrategy::Concat {
        if probs.is_some() {
            return Err(DataError::config(
                "interleave_probs needs mix_strategy: interleave_under or interleave_over",
            ));
        }
        for (d, picks) in per_dataset.iter().enumerate() {
            order.extend(picks.iter().map(|&k| (d as u32, k)));
        }
    } else {
        let sizes: Vec<usize> = per_dataset.iter().map(Vec::len).collect();
        for (d, i) in mix::interleave(&sizes, args.mix_strategy, probs.as_deref(), args.seed) {
            order.push((d as u32, per_dataset[d][i]));
        }
    }
    let samples = Samples::new(parts, order);
    for (i, &(d, _)) in samples.order().iter().enumerate() {
        let report = &mut reports[d as usize];
        report.used += 1;
        report.used_tokens += samples.length(i);
    }
    Ok(samples)
}

/// One dataset's examples in memory (no cache, a preview, or `num_samples` sampling),
/// with its report and warnings.
fn prepare_dataset(
    args: &DataArgs,
    spec: &DatasetSpec,
    index: usize,
    limit: Option<usize>,
    prepared: &Prepared,
) -> Result<(DatasetReport, Vec<PreparedSample>, Vec<String>)> {
    let mut report = DatasetReport {
        name: spec.name.clone(),
        ..DatasetReport::default()
    };
    let encoder = prepared.encoder(args);
    let mut warnings = Vec::new();
    let mut samples = Vec::new();
    let limits = Limits {
        records: args.max_samples,
        examples: limit,
    };
    if spec.num_samples.is_some() {
        let read = records::read(args, spec, Coverage::AsTrained)?;
        for error in &read.skipped {
            report.invalid += 1;
            report.note(error.to_string());
        }
        let records = read.into_records();
        let total = records.len();
        let mut source = ReadRecords(records.into_iter());
        let limits = Limits {
            records: None,
            ..limits
        };
        dataset::process(
            args,
            spec,
            index,
            &encoder,
            &mut source,
            &mut samples,
            limits,
            &mut report,
            &mut warnings,
        )?;
        report.records = total;
    } else {
        let mut stream =
            RecordStream::open(source::resolve_files(&spec.path)?, Position::default())?;
        dataset::process(
            args,
            spec,
            index,
            &encoder,
            &mut stream,
            &mut samples,
            limits,
            &mut report,
            &mut warnings,
        )?;
    }
    Ok((report, samples, warnings))
}
