//! The two passes of `data check` over the records, in bounded memory.
//!
//! 1. Every record, a chunk at a time (facts in parallel, folded in order): its own
//!    findings, its counts for the summary ([`Tally`]), its length, and the keys the
//!    group checks read ([`Keys`], spilled to temporary files past a budget).
//! 2. The groups ([`groups::find`]) and the length outliers, from the spilled keys.
//! 3. Only when something needs it, a second pass reads the texts the findings show and
//!    the final answers of records that share a prompt; the conflicts are counted from
//!    those ([`groups::PromptGroups`]).
//!
//! What memory holds besides one chunk: the findings (they are the output), a union-find
//! parent per record (4 bytes) and a few bits per record.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rayon::prelude::*;

use super::checks::{self, LengthRule, Scanner};
use super::groups::{self, Keys, Numbering};
use super::load::{self, Dataset, Measure, Record};
use super::spill::{Column, SpillDir};
use super::summary::{self, Tally};
use super::{CheckOptions, Finding, Report, Severity};
use crate::config::DataArgs;
use crate::error::Result;
use crate::registry::DatasetSpec;

/// Records handed to the passes per chunk (for loaded datasets; streamed ones come in
/// the reader's chunks).
const CHUNK: usize = 4096;

/// Where the records come from: loaded whole (for `--fix`) or streamed from the files.
pub enum Source<'a> {
    Loaded(&'a [Dataset]),
    Streamed {
        args: &'a DataArgs,
        specs: &'a [DatasetSpec],
    },
}

impl Source<'_> {
    fn names(&self) -> Vec<String> {
        match self {
            Source::Loaded(datasets) => datasets.iter().map(|d| d.name.clone()).collect(),
            Source::Streamed { specs, .. } => specs.iter().map(|s| s.name.clone()).collect(),
        }
    }

    /// Dataset `d`'s records, a chunk at a time, in order.
    fn each_chunk(&self, d: usize, mut each: impl FnMut(&[Record]) -> Result<()>) -> Result<()> {
        match self {
            Source::Loaded(datasets) => datasets[d].records.chunks(CHUNK).try_for_each(each),
            Source::Streamed { args, specs } => {
                load::stream_dataset(args, &specs[d], |chunk| each(&chunk))
            }
        }
    }
}

/// The whole report over every record of `source`.
pub fn report(source: &Source, options: &CheckOptions, measure: &Measure) -> Result<Report> {
    let names = source.names();
    let scanner = Scanner::new(options);
    let dir = SpillDir::default();
    let mut keys = Keys::new(&dir, options.spill_budget);
    let mut numbering = Numbering::default();
    let mut lengths = Column::<u32>::new(&dir, "lengths", options.spill_budget);
    let mut findings = Vec::new();
    let mut errors = BTreeSet::new();
    let mut tallies = Vec::with_capacity(names.len());
    let mut overall = Tally::default();

    // Pass 1.
    for (d, name) in names.iter().enumerate() {
        let first = keys.count();
        numbering.start_dataset(first);
        let mut tally = Tally::default();
        source.each_chunk(d, |chunk| {
            let facts: Vec<checks::Facts> = chunk
                .par_iter()
                .map(|r| scanner.facts(r, measure))
                .collect();
            for mut f in facts {
                let r = (keys.count() - first) as usize;
                for hit in std::mem::take(&mut f.hits) {
                    if hit.severity == Severity::Error {
                        errors.insert((d, r));
                    }
                    findings.push(Finding {
                        check: hit.check,
                        severity: hit.severity,
                        dataset: name.clone(),
                        records: vec![r],
                        example: hit.example,
                        detail: hit.detail,
                        dataset_index: d,
                    });
                }
                tally.add(&f);
                overall.add(&f);
                lengths.push(
                    f.length
                        .map_or(u32::MAX, |l| l.min(u32::MAX as usize - 1) as u32),
                )?;
                keys.add(&f)?;
            }
            Ok(())
        })?;
        tallies.push(tally);
    }
    let total = keys.count();

    // Length outliers, from each dataset's histogram and the lengths read back in order.
    let rules: Vec<LengthRule> = tallies
        .iter()
        .map(|t| LengthRule::new(&t.lengths, measure, options.cutoff_len))
        .collect();
    // Findings whose example is the text of a record, filled after the second pass.
    let mut shown: Vec<(usize, u32)> = Vec::new();
    lengths.finish()?.each(|item, length| {
        if length == u32::MAX {
            return Ok(());
        }
        let (d, r) = numbering.item(item as u32);
        if let Some(detail) = rules[d].outlier(length as usize) {
            shown.push((findings.len(), item as u32));
            findings.push(Finding {
                check: super::Check::LengthOutlier,
                severity: Severity::Warning,
                dataset: names[d].clone(),
                records: vec![r],
                example: String::new(),
                detail,
                dataset_index: d,
            });
        }
        Ok(())
    })?;

    let (mut found, mut prompts) = groups::find(keys, options.near_threshold, &dir)?;
    let mut wanted: BTreeSet<u32> = shown.iter().map(|&(_, item)| item).collect();
    for group in &found {
        wanted.extend(groups::shown(group, &numbering));
    }
    wanted.extend(prompts.shown(&numbering));

    // Pass 2: the texts shown and the answers of records sharing a prompt.
    let mut headlines: HashMap<u32, String> = HashMap::new();
    for d in 0..names.len() {
        let std::ops::Range { start: first, end } = numbering.range(d, total);
        if wanted.range(first..end).next().is_none() && !prompts.wants_any(first..end) {
            continue;
        }
        let mut at = first;
        source.each_chunk(d, |chunk| {
            let base = at;
            // Per record: its text when shown, its group and final answer when wanted.
            type Read = (Option<String>, Option<(u32, String)>);
            let read: Vec<Read> = chunk
                .par_iter()
                .enumerate()
                .map(|(i, record)| {
                    let item = base + i as u32;
                    let headline = wanted.contains(&item).then(|| checks::headline(record));
                    let answer = prompts.wants(item).and_then(|group| {
                        let sample = record.sample.as_ref().ok()?;
                        Some((group, groups::final_answer(sample)?))
                    });
                    (headline, answer)
                })
                .collect();
            for (i, (headline, answer)) in read.into_iter().enumerate() {
                let item = base + i as u32;
                if let Some(h) = headline {
                    headlines.insert(item, h);
                }
                if let Some((group, text)) = answer {
                    prompts.add(item, group, &text)?;
                }
            }
            at += chunk.len() as u32;
            Ok(())
        })?;
    }
    for (at, item) in shown {
        findings[at].example = headlines.get(&item).cloned().unwrap_or_default();
    }
    found.extend(prompts.conflicts(options.near_threshold)?);

    let mut redundant = BTreeMap::new();
    let keep = matches!(source, Source::Loaded(_)).then_some(&mut redundant);
    findings.extend(groups::findings(
        found, &numbering, &names, &headlines, &errors, keep,
    ));
    findings.sort_by(|a, b| {
        (a.dataset_index, a.records.first(), a.check).cmp(&(
            b.dataset_index,
            b.records.first(),
            b.check,
        ))
    });
    let summary = summary::summarize(&names, tallies, overall, &findings, measure);
    Ok(Report {
        findings,
        summary,
        redundant,
    })
}
