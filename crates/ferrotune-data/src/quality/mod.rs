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
//! | [`groups`] | exact and near duplicates, one prompt with different answers |
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
pub mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rayon::prelude::*;
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
    /// A record the format cannot read at all (malformed JSON line, missing column).
    InvalidRecord,
}

impl Check {
    pub const ALL: [Check; 13] = [
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
/// Without `keep_raw` the records are streamed: a chunk is read, formatted and checked at
/// a time, and only what the group checks and the summary need stays (a few hundred
/// bytes a record); the final answers of records whose prompt recurs are read in a second
/// pass. With `keep_raw` every record is loaded and kept for `--fix`. Both give the same
/// report (tested).
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
    let scanner = checks::Scanner::new(&options);
    if options.keep_raw {
        let datasets = load::load(args)?;
        let names: Vec<String> = datasets.iter().map(|d| d.name.clone()).collect();
        let facts: Vec<Vec<checks::Facts>> = datasets
            .iter()
            .map(|d| {
                d.records
                    .par_iter()
                    .map(|r| scanner.facts(r, &measure))
                    .collect()
            })
            .collect();
        let answers = |wanted: &BTreeSet<(usize, usize)>| -> Result<_> {
            Ok(wanted
                .iter()
                .filter_map(|&(d, r)| {
                    let sample = datasets[d].records[r].sample.as_ref().ok()?;
                    Some(((d, r), groups::final_answer(sample)?))
                })
                .collect())
        };
        let report = analyze(&names, facts, &options, &measure, answers)?;
        return Ok(Checked {
            datasets,
            report,
            notes,
        });
    }
    let specs = load::specs(args)?;
    let mut facts = Vec::with_capacity(specs.len());
    for spec in &specs {
        let mut dataset = Vec::new();
        load::stream_dataset(args, spec, |chunk| {
            dataset.extend(
                chunk
                    .par_iter()
                    .map(|r| scanner.facts(r, &measure))
                    .collect::<Vec<_>>(),
            );
            Ok(())
        })?;
        facts.push(dataset);
    }
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let answers = |wanted: &BTreeSet<(usize, usize)>| -> Result<_> {
        let mut out = std::collections::HashMap::new();
        for (d, spec) in specs.iter().enumerate() {
            if !wanted.iter().any(|&(wd, _)| wd == d) {
                continue;
            }
            let mut at = 0;
            load::stream_dataset(args, spec, |chunk| {
                for record in chunk {
                    if wanted.contains(&(d, at)) {
                        if let Some(a) = record.sample.as_ref().ok().and_then(groups::final_answer)
                        {
                            out.insert((d, at), a);
                        }
                    }
                    at += 1;
                }
                Ok(())
            })?;
        }
        Ok(out)
    };
    let report = analyze(&names, facts, &options, &measure, answers)?;
    Ok(Checked {
        datasets: Vec::new(),
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

/// Runs every check over the facts of every record (`names`: the datasets'). `answers`
/// gives the normalized final answers of the records it is asked for.
pub fn analyze(
    names: &[String],
    mut facts: Vec<Vec<checks::Facts>>,
    options: &CheckOptions,
    measure: &Measure,
    answers: impl FnOnce(
        &BTreeSet<(usize, usize)>,
    ) -> Result<std::collections::HashMap<(usize, usize), String>>,
) -> Result<Report> {
    let mut findings = Vec::new();
    for (di, (name, facts)) in names.iter().zip(facts.iter_mut()).enumerate() {
        for (ri, f) in facts.iter_mut().enumerate() {
            for hit in std::mem::take(&mut f.hits) {
                findings.push(Finding {
                    check: hit.check,
                    severity: hit.severity,
                    dataset: name.clone(),
                    records: vec![ri],
                    example: hit.example,
                    detail: hit.detail,
                    dataset_index: di,
                });
            }
        }
        findings.extend(checks::length_outliers(
            di,
            name,
            facts,
            measure,
            options.cutoff_len,
        ));
    }
    let errors: BTreeSet<(usize, usize)> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| (f.dataset_index, f.records[0]))
        .collect();
    let prompt_groups = groups::prompt_groups(&facts);
    let answers = answers(&prompt_groups.iter().flatten().copied().collect())?;
    let grouped = groups::find(
        names,
        &facts,
        options.near_threshold,
        &errors,
        &prompt_groups,
        &answers,
    );
    findings.extend(grouped.findings);
    findings.sort_by(|a, b| {
        (a.dataset_index, a.records.first(), a.check).cmp(&(
            b.dataset_index,
            b.records.first(),
            b.check,
        ))
    });
    let summary = summarize(names, &facts, &findings, measure);
    Ok(Report {
        findings,
        summary,
        redundant: grouped.redundant,
    })
}

fn summarize(
    names: &[String],
    facts: &[Vec<checks::Facts>],
    findings: &[Finding],
    measure: &Measure,
) -> Summary {
    let mut per: Vec<DatasetSummary> = names
        .iter()
        .zip(facts)
        .map(|(name, f)| {
            let mut scripts = BTreeMap::new();
            for fact in f {
                *scripts.entry(fact.script).or_insert(0) += 1;
            }
            let lengths: Vec<usize> = f.iter().filter_map(|x| x.length).collect();
            DatasetSummary {
                name: name.clone(),
                records: f.len(),
                scripts,
                lengths: LengthStats::of(&lengths),
                diversity: Diversity::of(f.iter().filter_map(|x| x.instruction.as_deref())),
                ..DatasetSummary::default()
            }
        })
        .collect();
    let mut flagged: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); names.len()];
    for f in findings {
        let s = &mut per[f.dataset_index];
        let count = s.checks.entry(f.check.name()).or_default();
        count.findings += 1;
        count.records += f.records.len();
        if f.severity != Severity::Info {
            flagged[f.dataset_index].extend(f.records.iter().copied());
        }
    }
    for (s, flagged) in per.iter_mut().zip(&flagged) {
        s.clean = s.records - flagged.len();
    }
    let all = facts.iter().flatten();
    let lengths: Vec<usize> = all.clone().filter_map(|x| x.length).collect();
    let mut overall = DatasetSummary {
        name: "overall".into(),
        lengths: LengthStats::of(&lengths),
        diversity: Diversity::of(all.filter_map(|x| x.instruction.as_deref())),
        ..DatasetSummary::default()
    };
    for s in &per {
        overall.records += s.records;
        overall.clean += s.clean;
        for (k, c) in &s.checks {
            let o = overall.checks.entry(k).or_default();
            o.findings += c.findings;
            o.records += c.records;
        }
        for (k, n) in &s.scripts {
            *overall.scripts.entry(k).or_insert(0) += n;
        }
    }
    Summary {
        length_unit: measure.unit(),
        datasets: per,
        overall,
    }
}
