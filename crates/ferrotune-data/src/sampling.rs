//! `num_samples` (a registry entry's, or `name:N`) drawn from a prepared cache entry's
//! index. LLaMA-Factory's seeded pick is over a dataset's records, so the whole dataset is
//! prepared once into its entry (the entry an unsampled run uses too) and the picks are
//! mapped to the examples their records made: the records are not read again, and only
//! the picks are held.

use crate::cache::MappedEntry;
use crate::mix;
use crate::pipeline::DatasetReport;

/// The examples that `n` seeded picks over the entry's records lead to, in pick order (a
/// picked record that made no example is skipped, as when the records are read whole),
/// and the report of the sample; `None` for an entry that does not say how many records
/// each file held (written before it did).
pub(crate) fn pick_examples(
    entry: &MappedEntry,
    whole: &DatasetReport,
    n: usize,
    seed: u64,
) -> Option<(Vec<u32>, DatasetReport)> {
    let per_file = &whole.records_per_file;
    if per_file.iter().map(|(_, k)| k).sum::<usize>() != whole.records {
        return None;
    }
    // The number of the first record of each of the entry's files, counted over the
    // dataset's files in reading order.
    let mut first = Vec::with_capacity(entry.files().len());
    for file in entry.files() {
        let mut before = 0;
        let mut found = None;
        for (path, k) in per_file {
            if path == file {
                found = Some(before);
                break;
            }
            before += k;
        }
        first.push(found?);
    }
    let number = |i: usize| {
        let (file, record) = entry.record_position(i);
        first[file] + record
    };
    let picks = mix::pick(whole.records, n, seed);
    // Unreplaced placeholders and the first problems are the whole dataset's: the picks'
    // own would need the records read again.
    let mut report = DatasetReport {
        name: whole.name.clone(),
        records: picks.len(),
        unreplaced: whole.unreplaced.clone(),
        examples: whole.examples.clone(),
        ..DatasetReport::default()
    };
    let mut examples = Vec::with_capacity(picks.len());
    for pick in picks {
        // Examples are stored in record order: the first one at or after the pick.
        let (mut lo, mut hi) = (0, entry.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if number(mid) < pick {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo < entry.len() && number(lo) == pick {
            examples.push(lo as u32);
            report.samples += 1;
            report.lengths.push(entry.length(lo));
            report.truncated += usize::from(entry.truncated(lo));
            report.supervised_tokens += entry.supervised_tokens(lo);
        }
    }
    let without = report.records - report.samples;
    if without > 0 {
        report.examples.insert(0, format!(
            "{without} of the {} picked records made no example (the whole dataset's reasons: {} too long, {} with nothing to train, {} not renderable)",
            report.records, whole.dropped_too_long, whole.all_masked, whole.unrenderable
        ));
        report.examples.truncate(5);
    }
    Some((examples, report))
}
