//! Datasets to the records the checks read: every record of every file, in order, with
//! its raw JSON (for `--fix`) and its formatted sample, or why it has none.
//!
//! The records come from the one record reader with [`Coverage::Every`]: unlike
//! training, nothing is sampled (`num_samples` would repeat records and fake duplicates)
//! and a malformed record is a finding, not a stop.

use rayon::prelude::*;
use serde_json::Value;

use crate::config::DataArgs;
use crate::conversation::{Feedback, PreferencePair, Sample};
use crate::error::{DataError, RecordRef, Result};
use crate::format::{self, Formatting, RecordFormat, Stage};
use crate::mix;
use crate::pipeline;
use crate::records::{self, Coverage, Formatted, Line};
use crate::registry::{self, DatasetSpec};
use crate::source::{self, RawRecord};
use crate::stream::{Position, RecordStream};
use crate::template::ChatTemplate;
use crate::tokenizer::TokenizerBundle;

/// One record: where it is, its raw value (`None` when the line was not JSON) and its
/// sample (or the format's complaint about it).
#[derive(Debug, Clone)]
pub struct Record {
    pub at: RecordRef,
    pub raw: Option<Value>,
    pub sample: std::result::Result<Sample, String>,
    /// Placeholders left unreplaced in the sample.
    pub unreplaced: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub records: Vec<Record>,
}

/// Reads every dataset the arguments name (registry entries or paths). Mixture shares
/// (`name:500`, `name:10%`) are ignored: the files are checked as they are.
/// Every record keeps its raw JSON (`--fix` writes it back).
pub fn load(args: &DataArgs) -> Result<Vec<Dataset>> {
    specs(args)?
        .iter()
        .map(|spec| load_dataset(args, spec))
        .collect()
}

/// The datasets the arguments name, shares ignored.
pub fn specs(args: &DataArgs) -> Result<Vec<DatasetSpec>> {
    let names = args
        .dataset
        .iter()
        .map(|entry| mix::parse_share(entry).map(|(name, _)| name))
        .collect::<Result<Vec<_>>>()?;
    registry::resolve(&names, &args.dataset_dir, args.formatting)
}

/// Records read a chunk at a time.
const CHUNK: usize = 4096;

/// Every record of one dataset, as [`load`] gives them (malformed lines included, raw
/// JSON kept only for records the format rejected), handed to `each` a chunk at a time in
/// file order, so that memory holds one chunk.
pub fn stream_dataset(
    args: &DataArgs,
    spec: &DatasetSpec,
    mut each: impl FnMut(Vec<Record>) -> Result<()>,
) -> Result<()> {
    let mut stream = RecordStream::open(source::resolve_files(&spec.path)?, Position::default())?;
    let mut left = args.max_samples.unwrap_or(usize::MAX);
    while left > 0 {
        let pending = stream.next_chunk(CHUNK.min(left))?;
        if pending.is_empty() {
            break;
        }
        left -= pending.len();
        let records = pending
            .into_par_iter()
            .map(|p| {
                let at = p.at.clone();
                match p.parse() {
                    Ok(raw) => Ok(convert(args, &spec.format, raw, false)),
                    Err(DataError::Record { record, problem }) => Ok(Record {
                        at: record,
                        raw: None,
                        sample: Err(problem),
                        unreplaced: Vec::new(),
                    }),
                    Err(other) => Err(DataError::file(&at.file, other.to_string())),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        each(records)?;
    }
    Ok(())
}

fn load_dataset(args: &DataArgs, spec: &DatasetSpec) -> Result<Dataset> {
    let records = records::read(args, spec, Coverage::Every)?
        .lines
        .into_iter()
        .map(|line| match line {
            Line::Record(raw) => convert(args, &spec.format, raw, true),
            // A line that is not a record is a finding of its own.
            Line::Malformed { at, problem } => Record {
                at,
                raw: None,
                sample: Err(problem),
                unreplaced: Vec::new(),
            },
        })
        .collect();
    Ok(Dataset {
        name: spec.name.clone(),
        records,
    })
}

/// Formats one record as training would, with placeholders replaced. Plain-text records
/// are read as documents even in stage sft, so `data check` works on pretraining data
/// without `--stage pt`.
fn convert(args: &DataArgs, format: &RecordFormat, raw: RawRecord, keep_raw: bool) -> Record {
    let is_text = match (format.formatting, raw.value.as_object()) {
        (Some(f), _) => f == Formatting::Text,
        (None, Some(obj)) => format::detect(obj, args.stage) == Ok(Formatting::Text),
        (None, None) => false,
    };
    let stage = if is_text { Stage::Pt } else { args.stage };
    let (sample, unreplaced) = match records::format(args, format, &raw, stage) {
        Ok(Formatted { sample, unreplaced }) => (Ok(sample), unreplaced),
        Err(DataError::Record { problem, .. }) => (Err(problem), Vec::new()),
        Err(other) => (Err(other.to_string()), Vec::new()),
    };
    Record {
        at: raw.at,
        raw: (keep_raw || sample.is_err()).then_some(raw.value),
        sample,
        unreplaced,
    }
}

/// Loads the configured tokenizer and, for chat data, its template. A template that does
/// not load is a note (lengths then count the bare texts), not an error.
pub fn load_tokenizer(
    args: &DataArgs,
    notes: &mut Vec<String>,
) -> Result<Option<(TokenizerBundle, Option<ChatTemplate>)>> {
    if args.tokenizer_dir().is_none() {
        return Ok(None);
    }
    match pipeline::load_tokenizer_and_template(args) {
        Ok((tokenizer, template)) => Ok(Some((tokenizer, template))),
        Err(DataError::Template { .. } | DataError::Config(_)) => {
            let dir = args.tokenizer_dir().unwrap_or(std::path::Path::new("."));
            let tokenizer = TokenizerBundle::load(dir)?;
            notes.push(format!(
                "no usable chat template for {}: token lengths count the message texts without it",
                dir.display()
            ));
            Ok(Some((tokenizer, None)))
        }
        Err(e) => Err(e),
    }
}

/// How lengths are counted.
pub enum Measure<'a> {
    Chars,
    /// Tokens of the rendered conversation (of the joined texts without a template).
    Tokens {
        tokenizer: &'a TokenizerBundle,
        template: Option<&'a ChatTemplate>,
    },
}

impl Measure<'_> {
    pub fn unit(&self) -> &'static str {
        match self {
            Measure::Chars => "characters",
            Measure::Tokens { .. } => "tokens",
        }
    }

    pub fn length(&self, sample: &Sample) -> usize {
        let joined = || match sample {
            Sample::Text(t) => t.clone(),
            Sample::Chat(c) => c.texts().collect::<Vec<_>>().join("\n"),
            Sample::Pair(p) => p.texts().collect::<Vec<_>>().join("\n"),
            Sample::Feedback(f) => f.conversation.texts().collect::<Vec<_>>().join("\n"),
        };
        match self {
            Measure::Chars => joined().chars().count(),
            Measure::Tokens {
                tokenizer,
                template,
            } => {
                let rendered = match (sample, template) {
                    (
                        Sample::Chat(c)
                        | Sample::Pair(PreferencePair { chosen: c, .. })
                        | Sample::Feedback(Feedback {
                            conversation: c, ..
                        }),
                        Some(t),
                    ) => t.render(&c.messages, &c.tools, false).ok(),
                    _ => None,
                };
                let text = rendered.unwrap_or_else(joined);
                tokenizer
                    .encode_with_offsets(&text)
                    .map(|(ids, _)| ids.len())
                    .unwrap_or_else(|_| text.chars().count())
            }
        }
    }
}
