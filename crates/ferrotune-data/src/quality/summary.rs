//! The report's numbers, counted as the records stream by: records, clean records,
//! findings per check, scripts, lengths (a histogram, so percentiles are exact in
//! bounded memory) and the diversity of the instructions.

use std::collections::BTreeMap;

use super::checks::Facts;
use super::diversity::DiversityCounter;
use super::spill::Bits;
use super::{DatasetSummary, Finding, Measure, Severity, Summary};
use crate::stats::LengthStats;

/// One dataset's (or all datasets') counts so far.
#[derive(Default)]
pub struct Tally {
    pub records: usize,
    pub scripts: BTreeMap<&'static str, usize>,
    /// Length -> records.
    pub lengths: BTreeMap<usize, usize>,
    pub diversity: DiversityCounter,
}

impl Tally {
    pub fn add(&mut self, facts: &Facts) {
        self.records += 1;
        *self.scripts.entry(facts.script).or_insert(0) += 1;
        if let Some(length) = facts.length {
            *self.lengths.entry(length).or_insert(0) += 1;
        }
        if let Some(instruction) = &facts.instruction {
            self.diversity.add(instruction);
        }
    }

    fn summary(self, name: &str) -> DatasetSummary {
        DatasetSummary {
            name: name.to_string(),
            records: self.records,
            scripts: self.scripts,
            lengths: LengthStats::of_counts(&self.lengths),
            diversity: self.diversity.finish(),
            ..DatasetSummary::default()
        }
    }
}

/// The summary of every dataset and of all: `tallies` per dataset, `overall` across them.
pub fn summarize(
    names: &[String],
    tallies: Vec<Tally>,
    overall: Tally,
    findings: &[Finding],
    measure: &Measure,
) -> Summary {
    let mut per: Vec<DatasetSummary> = names
        .iter()
        .zip(tallies)
        .map(|(name, tally)| tally.summary(name))
        .collect();
    let mut flagged: Vec<Bits> = vec![Bits::default(); names.len()];
    for f in findings {
        let s = &mut per[f.dataset_index];
        let count = s.checks.entry(f.check.name()).or_default();
        count.findings += 1;
        count.records += f.records.len();
        if f.severity != Severity::Info {
            for &r in &f.records {
                flagged[f.dataset_index].set(r);
            }
        }
    }
    for (s, flagged) in per.iter_mut().zip(&flagged) {
        s.clean = s.records - flagged.count();
    }
    let mut overall = overall.summary("overall");
    for s in &per {
        overall.clean += s.clean;
        for (k, c) in &s.checks {
            let o = overall.checks.entry(k).or_default();
            o.findings += c.findings;
            o.records += c.records;
        }
    }
    Summary {
        length_unit: measure.unit(),
        datasets: per,
        overall,
    }
}
