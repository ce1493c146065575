//! One dataset through parse -> format -> template -> tokenize -> mask, a chunk of records
//! at a time: a chunk's records are processed in parallel and folded into the report in
//! order, so the report and the examples are those of a sequential pass, and memory
//! holds one chunk whatever the dataset's size. Records come from a [`RecordSource`] (a
//! file stream, or records already read) and examples go to an [`ExampleSink`] (a list,
//! or a cache entry written as it goes).

use rayon::prelude::*;

use crate::config::DataArgs;
use crate::conversation::Sample;
use crate::encode::{Encoded, Encoder, Skip};
use crate::error::{DataError, Result};
use crate::format::Stage;
use crate::pipeline::{DatasetReport, PreparedSample};
use crate::records::{self, Formatted};
use crate::registry::DatasetSpec;
use crate::source::RawRecord;
use crate::stream::{PendingRecord, Position, RecordStream, RecordText};

/// Records a chunk holds: enough for every core to have work, few enough that a chunk's
/// records and examples stay small.
pub const CHUNK_RECORDS: usize = 4096;

/// Where a dataset's records come from.
pub trait RecordSource {
    /// Up to `n` records, fewer at the end, none once done.
    fn next_chunk(&mut self, n: usize) -> Result<Vec<PendingRecord>>;
    /// Where the source stands, for resuming (`None`: it cannot resume).
    fn position(&self) -> Option<&Position>;
}

impl RecordSource for RecordStream {
    fn next_chunk(&mut self, n: usize) -> Result<Vec<PendingRecord>> {
        RecordStream::next_chunk(self, n)
    }

    fn position(&self) -> Option<&Position> {
        Some(RecordStream::position(self))
    }
}

/// Records already read (sampled with `num_samples`, or a preview's).
pub struct ReadRecords(pub std::vec::IntoIter<RawRecord>);

impl RecordSource for ReadRecords {
    fn next_chunk(&mut self, n: usize) -> Result<Vec<PendingRecord>> {
        Ok(self
            .0
            .by_ref()
            .take(n)
            .map(|r| PendingRecord {
                at: r.at,
                text: RecordText::Value(r.value),
                origin: None,
            })
            .collect())
    }

    fn position(&self) -> Option<&Position> {
        None
    }
}

/// Where a dataset's examples go.
pub trait ExampleSink {
    fn push(&mut self, sample: PreparedSample) -> Result<()>;
    /// Whether the report should list every example's length as it goes. A cache entry
    /// holds them in its offsets (the report is read back from there), and a list of
    /// 10,000,000 lengths is 80 MB, twice that while it grows.
    fn wants_lengths(&self) -> bool {
        true
    }
    /// A chunk is done: the report and warnings so far, and where the source stands.
    fn chunk_done(
        &mut self,
        _report: &DatasetReport,
        _warnings: &[String],
        _at: Option<&Position>,
    ) -> Result<()> {
        Ok(())
    }
}

impl ExampleSink for Vec<PreparedSample> {
    fn push(&mut self, sample: PreparedSample) -> Result<()> {
        Vec::push(self, sample);
        Ok(())
    }
}

/// Which records and examples to take.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Stop after this many records (`max_samples`).
    pub records: Option<usize>,
    /// Stop after this many examples (previews).
    pub examples: Option<usize>,
}

/// Runs `source` through the stages into `sink`, folding what happens into `report` and
/// `warnings` (which may hold a resumed run's).
#[allow(clippy::too_many_arguments)]
pub fn process(
    args: &DataArgs,
    spec: &DatasetSpec,
    index: usize,
    encoder: &Encoder,
    source: &mut (dyn RecordSource + Send),
    sink: &mut dyn ExampleSink,
    limits: Limits,
    report: &mut DatasetReport,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let chunk = if limits.examples.is_some() {
        256
    } else if args.stage == Stage::Kto {
        // KTO's KL sequences pair each record with the previous one of its batch of
        // LLaMA-Factory's `preprocessing_batch_size` (see `fill_kl_answers`).
        KTO_BATCH_RECORDS
    } else {
        CHUNK_RECORDS
    };
    // The next chunk is read while this one is processed; its position is taken with it,
    // so that a chunk's progress record says where that chunk ended.
    let read = |source: &mut (dyn RecordSource + Send)| {
        let records = source.next_chunk(chunk);
        (records, source.position().cloned())
    };
    let (mut next, mut next_at) = read(source);
    loop {
        let records = next?;
        let chunk_end = next_at;
        if records.is_empty() {
            return Ok(());
        }
        let (outcomes, ahead) = rayon::join(
            || -> Vec<(crate::error::RecordRef, Result<Outcome>)> {
                let mut formatted: Vec<_> = records
                    .into_par_iter()
                    .map(|pending| {
                        let at = pending.at.clone();
                        (at, format_record(args, spec, pending))
                    })
                    .collect();
                if args.stage == Stage::Kto {
                    fill_kl_answers(&mut formatted);
                }
                formatted
                    .into_par_iter()
                    .map(|(at, outcome)| (at, outcome.map(|o| o.encoded(encoder))))
                    .collect()
            },
            || read(source),
        );
        (next, next_at) = ahead;
        for (at, outcome) in outcomes {
            let full = |report: &DatasetReport| {
                limits.records.is_some_and(|max| report.records >= max)
                    || limits.examples.is_some_and(|max| report.samples >= max)
            };
            if full(report) {
                return Ok(());
            }
            let (unreplaced, warning, encoded) = match outcome? {
                Outcome::Unparsable(e) => {
                    report.invalid += 1;
                    report.note(e.to_string());
                    continue;
                }
                Outcome::Invalid(e) => {
                    report.count_record(&at.file);
                    report.invalid += 1;
                    report.note(e.to_string());
                    continue;
                }
                Outcome::Done {
                    unreplaced,
                    warning,
                    encoded,
                } => (unreplaced, warning, encoded),
                Outcome::Formatted { .. } => unreachable!("every formatted record is encoded"),
            };
            report.count_record(&at.file);
            for key in unreplaced {
                let count = report.unreplaced.entry(key.clone()).or_default();
                *count += 1;
                if *count == 1 {
                    report.note(format!("{at}: placeholder {{{{{key}}}}} is not replaced (set placeholders.{key} in the config or --placeholder {key}=VALUE)"));
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
                    if sink.wants_lengths() {
                        report.lengths.push(encoded.len());
                    }
                    report.supervised_tokens += encoded.supervised_tokens();
                    report.samples += 1;
                    sink.push(PreparedSample {
                        dataset: index,
                        at,
                        encoded,
                    })?;
                }
                Err(skip) => {
                    match skip {
                        Skip::TooLong { .. } => report.dropped_too_long += 1,
                        Skip::NoSupervisedTokens => report.all_masked += 1,
                        Skip::RenderFailed(_) | Skip::TurnNotFound(_) | Skip::Tokenizer(_) => {
                            report.unrenderable += 1
                        }
                    }
                    report.note(format!("{at}: {skip}"));
                }
            }
        }
        sink.chunk_done(report, warnings, chunk_end.as_ref())?;
    }
}

/// What became of one record.
enum Outcome {
    /// Not JSON (a JSON Lines line), skipped under `--skip-invalid`: not a record.
    Unparsable(DataError),
    /// A record of the wrong shape, skipped under `--skip-invalid`.
    Invalid(DataError),
    /// Read and formatted, not yet encoded.
    Formatted {
        unreplaced: Vec<String>,
        sample: Sample,
    },
    Done {
        /// Placeholders left unreplaced.
        unreplaced: Vec<String>,
        /// Tool-use loss the template cannot train.
        warning: Option<String>,
        encoded: std::result::Result<Encoded, Skip>,
    },
}

impl Outcome {
    /// template -> tokenize -> mask, for a formatted record.
    fn encoded(self, encoder: &Encoder) -> Outcome {
        let Outcome::Formatted { unreplaced, sample } = self else {
            return self;
        };
        let warning = match (&sample, encoder.template) {
            (Sample::Chat(c), Some(template)) => template.tool_loss(
                c.has_tool_definitions(),
                c.has_tool_calls(),
                c.has_tool_results(),
            ),
            _ => None,
        };
        Outcome::Done {
            unreplaced,
            warning,
            encoded: encoder.encode(&sample),
        }
    }
}

/// LLaMA-Factory's `preprocessing_batch_size`: KTO's KL pairing runs within batches of
/// this many records.
pub const KTO_BATCH_RECORDS: usize = 1000;

/// KTO's KL (mismatched) answers, LLaMA-Factory's rule: within a batch of records, the
/// KL sequence of example i is its own prompt followed by the answer of example i - 1
/// (the first takes the last one's).
fn fill_kl_answers(batch: &mut [(crate::error::RecordRef, Result<Outcome>)]) {
    let answers: Vec<Option<crate::conversation::Message>> = batch
        .iter()
        .filter_map(|(_, o)| match o {
            Ok(Outcome::Formatted {
                sample: Sample::Feedback(f),
                ..
            }) => Some(f.conversation.messages.last().cloned()),
            _ => None,
        })
        .collect();
    let n = answers.len();
    let mut k = 0;
    for (_, outcome) in batch.iter_mut() {
        if let Ok(Outcome::Formatted {
            sample: Sample::Feedback(f),
            ..
        }) = outcome
        {
            f.kl_answer = answers[(k + n - 1) % n].clone();
            k += 1;
        }
    }
}

/// parse -> format -> placeholders, for one record. Errors that are not about the record
/// stop the run.
fn format_record(args: &DataArgs, spec: &DatasetSpec, pending: PendingRecord) -> Result<Outcome> {
    let skippable = |e: DataError, outcome: fn(DataError) -> Outcome| {
        if args.skip_invalid && e.is_record_error() {
            Ok(outcome(e))
        } else {
            Err(e)
        }
    };
    let raw = match pending.parse() {
        Ok(raw) => raw,
        Err(e) => return skippable(e, Outcome::Unparsable),
    };
    match records::format(args, &spec.format, &raw, args.stage) {
        Ok(Formatted { sample, unreplaced }) => Ok(Outcome::Formatted { unreplaced, sample }),
        Err(e) => skippable(e, Outcome::Invalid),
    }
}
