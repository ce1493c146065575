//! The dataset quality report behind `ferrotune data check`: 1,000 good samples beat
//! 100,000 bad ones, so before training, find what would teach the model the wrong
//! thing — copies, empty or echoed answers, template tokens and placeholders left in the
//! text, broken tool calls, extreme lengths, answers in the wrong language, blocked
//! words — and, with [`fix::write_fixed`], write a copy without them.
//!
//! The checks read the formatted [`Sample`](crate::Sample)s (source -> format, with
//! placeholders replaced as in training), so they need no tokenizer; when one is
//! configured, lengths are counted in its tokens and its special tokens count as
//! control tokens.
//!
//! | module | what |
//! |---|---|
//! | [`load`] | datasets to records and samples, lengths |
//! | [`checks`] | findings about one record |
//! | [`scan`] | the two passes over the records, in bounded memory |
//! | [`groups`] | exact and near duplicates, one prompt with different answers |
//! | [`spill`] | keys past a memory budget to temporary files, read back grouped |
//! | [`summary`] | per-dataset and overall counts, lengths, scripts, diversity |
//! | [`language`] | answers in another script than their prompt, mixed scripts |
//! | [`diversity`] | distinct-n, first words, frequent n-grams |
//! | [`fix`] | the cleaned copy and the log of what was dropped |
//! | [`explain`] | what every check finds and how (`--explain`) |

pub mod checks;
pub mod diversity;
pub mod explain;
pub mod fix;
pub mod groups;
pub mod language;
pub mod load;
pub mod minhash;
pub mod scan;
pub mod spill;
pub mod summary;
pub mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::config::DataArgs;
use crate::error::{DataError, Result};
use crate::stats::LengthStats;

pub use diversity::Diversity;
pub use load::{Dataset, Measure, Record};

/// The checks, with the stable names reports and scripts use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    ExactDuplicate,
    NearDuplicate,
    ConflictingAnswer,
    EmptyResponse,
    ShortResponse,
    RepeatsPrompt,
    Placeholder,
    ControlToken,
    BrokenToolCall,
    LengthOutlier,
    LanguageMix,
    Blocklist,
    /// A preference pair whose chosen and rejected answers are the same.
    IdenticalAnswers,
    /// A record the format cannot read at all (malformed JSON line, missing column).
    InvalidRecord,
}

impl Check {
    pub const ALL: [Check; 14] = [
        Check::ExactDuplicate,
        Check::NearDuplicate,
        Check::ConflictingAnswer,
        Check::EmptyResponse,
        Check::ShortResponse,
        Check::RepeatsPrompt,
        Check::Placeholder,
        Check::ControlToken,
        Check::BrokenToolCall,
        Check::LengthOutlier,
        Check::LanguageMix,
        Check::Blocklist,
        Check::IdenticalAnswers,
        Check::InvalidRecord,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::ExactDuplicate => "exact_duplicate",
            Check::NearDuplicate => "near_duplicate",
            Check::ConflictingAnswer => "conflicting_answer",
            Check::EmptyResponse => "empty_response",
            Check::ShortResponse => "short_response",
            Check::RepeatsPrompt => "repeats_prompt",
            Check::Placeholder => "placeholder",
            Check::ControlToken => "control_token",
            Check::BrokenToolCall => "broken_tool_call",
            Check::LengthOutlier => "length_outlier",
            Check::LanguageMix => "language_mix",
            Check::Blocklist => "blocklist",
            Check::IdenticalAnswers => "identical_answers",
            Check::InvalidRecord => "invalid_record",
        }
    }
}

/// `error`: would teach something wrong, dropped by `--fix`; `warning`: worth a look
/// (duplicates are also dropped by `--fix`, keeping the first); `info`: for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

/// One finding: a check that fired on one record, or on a group of records of one
/// dataset (a duplicate group).
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: Check,
    pub severity: Severity,
    pub dataset: String,
    /// 0-based indices of the records within their dataset (files in order).
    pub records: Vec<usize>,
    /// A short piece of the text concerned.
    pub example: String,
    /// Why it fired.
    pub detail: String,
    #[serde(skip)]
    pub dataset_index: usize,
}

/// Tunables of the checks.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Estimated Jaccard similarity of word (or CJK character) 3-shingles from which two
    /// samples are near-duplicates.
    pub near_threshold: f64,
    /// Final responses with fewer units (words, or CJK characters) are short.
    pub min_response_units: usize,
    /// Words or phrases for the safety screen, matched case-insensitively on word
    /// boundaries (CJK phrases anywhere).
    pub blocklist: Vec<String>,
    /// Control tokens beyond the built-in list (the tokenizer's special tokens).
    pub control_tokens: Vec<String>,
    /// In tokens; only checked when lengths are in tokens.
    pub cutoff_len: Option<usize>,
    /// Keep every record's raw JSON in [`Checked::datasets`] (what `--fix` writes back).
    pub keep_raw: bool,
    /// Bytes of group keys held in memory per key set before they go to temporary files
    /// ([`spill`]); tests set it small to take the file path on small data.
    pub spill_budget: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            near_threshold: 0.8,
            min_response_units: 2,
            blocklist: Vec::new(),
            control_tokens: Vec::new(),
            cutoff_len: None,
            keep_raw: true,
            spill_budget: 32 << 20,
        }
    }
}

/// How many findings of a check, and how many records they involve.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CheckCount {
    pub findings: usize,
    pub records: usize,
}

/// The numbers of one dataset (or of all, as `overall`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatasetSummary {
    pub name: String,
    pub records: usize,
    /// Records with no error and no warning.
    pub clean: usize,
    /// Check name -> findings and records involved; only checks that fired.
    pub checks: BTreeMap<&'static str, CheckCount>,
    /// Dominant script of each record -> records.
    pub scripts: BTreeMap<&'static str, usize>,
    pub lengths: LengthStats,
    pub diversity: Diversity,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `tokens` with a tokenizer, else `characters`.
    pub length_unit: &'static str,
    pub datasets: Vec<DatasetSummary>,
    pub overall: DatasetSummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub summary: Summary,
    /// Duplicates that `--fix` drops: (dataset, record) -> (check, the kept copy).
    #[serde(skip)]
    pub redundant: BTreeMap<(usize, usize), (Check, (usize, usize))>,
}

impl Report {
    /// (dataset, record) pairs named by an error finding.
    pub fn errors(&self) -> BTreeSet<(usize, usize)> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .flat_map(|f| f.records.iter().map(move |&r| (f.dataset_index, r)))
            .collect()
    }
}

/// The report, with the datasets' records when they were kept (`keep_raw`, for `--fix`).
pub struct Checked {
    /// Every record of every dataset with `keep_raw`; empty otherwise (the records were
    /// streamed through the checks, a chunk at a time).
    pub datasets: Vec<Dataset>,
    pub report: Report,
    /// What the run could not do as asked (e.g. the template failed to load).
    pub notes: Vec<String>,
}

/// Checks every dataset the arguments name. With a tokenizer configured, lengths are in
/// its tokens, its special tokens are control tokens, and `cutoff_len` is checked.
///
/// Without `keep_raw` the records are streamed, a chunk at a time, and memory stays
/// bounded whatever their number ([`scan`]). With `keep_raw` every record is loaded and
/// kept for `--fix`. Both give the same report (tested).
pub fn run(args: &DataArgs, options: &CheckOptions) -> Result<Checked> {
    let mut notes = Vec::new();
    let tools = load::load_tokenizer(args, &mut notes)?;
    let mut options = options.clone();
    let measure = match &tools {
        Some((tokenizer, template)) => {
            options
                .control_tokens
                .extend(tokenizer.specials.all.iter().cloned());
            options.cutoff_len.get_or_insert(args.cutoff_len);
            Measure::Tokens {
                tokenizer,
                template: template.as_ref(),
            }
        }
        None => Measure::Chars,
    };
    let (datasets, report) = if options.keep_raw {
        let datasets = load::load(args)?;
        let report = scan::report(&scan::Source::Loaded(&datasets), &options, &measure)?;
        (datasets, report)
    } else {
        let specs = load::specs(args)?;
        let source = scan::Source::Streamed {
            args,
            specs: &specs,
        };
        (Vec::new(), scan::report(&source, &options, &measure)?)
    };
    Ok(Checked {
        datasets,
        report,
        notes,
    })
}

/// Reads a blocklist: one word or phrase per line; blank lines and `#` comments skipped.
pub fn read_blocklist(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DataError::file(path, format!("cannot read blocklist: {e}")))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}
