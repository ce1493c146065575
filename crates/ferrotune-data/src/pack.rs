//! Stage "pack": examples into training rows, as LLaMA-Factory's `packing` and
//! `neat_packing` keys ask.
//!
//! - Greedy packing concatenates every example and cuts the stream into rows of exactly
//!   `row_len` tokens (the last row keeps the remainder). Samples see each other, which is
//!   what continued pretraining wants and why it is the default for stage `pt`.
//! - Neat packing puts whole examples into rows of at most `row_len` by best-fit
//!   decreasing; the trainer restarts positions at 0 for each example and keeps attention
//!   inside it, so the loss equals the unpacked loss while no compute goes to padding.
//!
//! Neat packing works on windows of [`NEAT_WINDOW`] examples at a time, so memory does not
//! grow with the dataset; docs/perf-log/2026-11-26-speed-rounds.md records the efficiency this costs.

use std::collections::BTreeMap;

use crate::encode::Encoded;
use crate::format::Stage;

/// Examples bin-packed together at most (LLaMA-Factory packs per preprocessing batch of
/// 1,000; a larger window fills rows better at the same streaming memory bound).
pub const NEAT_WINDOW: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// One example per row, padded to the longest row of the batch.
    None,
    Greedy,
    Neat,
}

impl Packing {
    /// LLaMA-Factory's rules: `neat_packing` implies packing; `packing` unset means on for
    /// stage `pt` and off for `sft`.
    pub fn choose(packing: Option<bool>, neat_packing: bool, stage: Stage) -> Packing {
        if neat_packing {
            Packing::Neat
        } else if packing.unwrap_or(stage == Stage::Pt) {
            Packing::Greedy
        } else {
            Packing::None
        }
    }

    /// A warning when the choice is probably not what the user wants.
    pub fn warning(self, stage: Stage) -> Option<String> {
        (self == Packing::Greedy && stage == Stage::Sft).then(|| {
            "packing: true lets SFT samples attend to each other and trains across their boundaries; neat_packing: true packs them apart".to_string()
        })
    }
}

/// How well rows were filled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackReport {
    pub rows: usize,
    /// Tokens of the examples placed in rows.
    pub tokens: usize,
    /// Examples longer than a row, left out.
    pub dropped_too_long: usize,
    pub row_len: usize,
}

impl PackReport {
    /// Non-pad tokens / all tokens of rows of `row_len`.
    pub fn efficiency(&self) -> f64 {
        self.tokens as f64 / (self.rows * self.row_len).max(1) as f64
    }
}

/// Greedy packing: one token stream cut into rows of exactly `row_len` (the last may be
/// shorter). Every token is kept; labels stay where they were.
/// What [`pack_greedy`] reports, from the examples' lengths alone.
pub fn greedy_report(lengths: &[usize], row_len: usize) -> PackReport {
    let row_len = row_len.max(1);
    let tokens: usize = lengths.iter().sum();
    PackReport {
        rows: tokens.div_ceil(row_len),
        tokens,
        dropped_too_long: 0,
        row_len,
    }
}

pub fn pack_greedy(examples: &[&Encoded], row_len: usize) -> (Vec<Encoded>, PackReport) {
    let row_len = row_len.max(1);
    let any_weights = examples.iter().any(|e| e.weights.is_some());
    let mut rows = Vec::new();
    let mut row = empty_row(row_len, any_weights);
    let mut tokens = 0;
    for e in examples {
        tokens += e.len();
        let mut at = 0;
        while at < e.len() {
            let take = (row_len - row.len()).min(e.len() - at);
            row.input_ids.extend_from_slice(&e.input_ids[at..at + take]);
            row.labels.extend_from_slice(&e.labels[at..at + take]);
            if let Some(w) = row.weights.as_mut() {
                match &e.weights {
                    Some(ew) => w.extend_from_slice(&ew[at..at + take]),
                    None => w.extend(std::iter::repeat_n(1.0, take)),
                }
            }
            row.truncated |= e.truncated;
            at += take;
            if row.len() == row_len {
                rows.push(std::mem::replace(&mut row, empty_row(row_len, any_weights)));
            }
        }
    }
    if !row.is_empty() {
        rows.push(row);
    }
    let report = PackReport {
        rows: rows.len(),
        tokens,
        dropped_too_long: 0,
        row_len,
    };
    (rows, report)
}

fn empty_row(row_len: usize, weights: bool) -> Encoded {
    Encoded {
        input_ids: Vec::with_capacity(row_len),
        labels: Vec::with_capacity(row_len),
        weights: weights.then(|| Vec::with_capacity(row_len)),
        truncated: false,
        second_start: None,
        desirable: None,
    }
}

/// Neat packing: example indices grouped into rows whose lengths sum to at most
/// `row_len`, by best-fit decreasing within windows of `window` examples. Examples longer
/// than a row are left out and counted.
pub fn pack_neat(
    lengths: &[usize],
    row_len: usize,
    window: usize,
) -> (Vec<Vec<usize>>, PackReport) {
    let mut report = PackReport {
        row_len,
        ..PackReport::default()
    };
    let mut rows = Vec::new();
    let window = window.max(1);
    for start in (0..lengths.len()).step_by(window) {
        let end = (start + window).min(lengths.len());
        let mut order: Vec<usize> = (start..end).collect();
        // Longest first; ties in data order so packing is deterministic.
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let mut bins: Vec<Vec<usize>> = Vec::new();
        // Remaining room -> bins with that much room left.
        let mut by_room: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in order {
            let len = lengths[i];
            if len > row_len {
                report.dropped_too_long += 1;
                continue;
            }
            report.tokens += len;
            let best = by_room.range_mut(len..).next().map(|(&room, ids)| {
                let bin = ids.pop().expect("entries are never empty");
                (room, bin)
            });
            let (room, bin) = match best {
                Some((room, bin)) => {
                    if by_room[&room].is_empty() {
                        by_room.remove(&room);
                    }
                    (room, bin)
                }
                None => {
                    bins.push(Vec::new());
                    (row_len, bins.len() - 1)
                }
            };
            bins[bin].push(i);
            let left = room - len;
            if left > 0 {
                by_room.entry(left).or_default().push(bin);
            }
        }
        rows.extend(bins);
    }
    report.rows = rows.len();
    (rows, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::IGNORE_INDEX;

    fn example(ids: std::ops::Range<u32>) -> Encoded {
        Encoded {
            input_ids: ids.clone().collect(),
            labels: ids
                .map(|i| {
                    if i % 3 == 0 {
                        IGNORE_INDEX
                    } else {
                        i64::from(i)
                    }
                })
                .collect(),
            weights: None,
            truncated: false,
            second_start: None,
            desirable: None,
        }
    }

    #[test]
    fn greedy_packing_keeps_every_token_in_order() {
        let a = example(0..5);
        let b = example(5..12);
        let c = example(12..13);
        let (rows, report) = pack_greedy(&[&a, &b, &c], 4);
        assert_eq!(
            rows.iter().map(Encoded::len).collect::<Vec<_>>(),
            vec![4, 4, 4, 1]
        );
        let ids: Vec<u32> = rows.iter().flat_map(|r| r.input_ids.clone()).collect();
        assert_eq!(ids, (0..13).collect::<Vec<_>>());
        let labels: Vec<i64> = rows.iter().flat_map(|r| r.labels.clone()).collect();
        let expected: Vec<i64> = [&a, &b, &c].iter().flat_map(|e| e.labels.clone()).collect();
        assert_eq!(labels, expected);
        assert_eq!(report.tokens, 13);
        assert!((report.efficiency() - 13.0 / 16.0).abs() < 1e-12);
    }

    #[test]
    fn neat_packing_never_overfills_a_row_nor_splits_a_sample() {
        let mut rng = crate::rng::SplitMix64(5);
        let lengths: Vec<usize> = (0..2_000)
            .map(|_| 1 + (rng.next_u64() % 300) as usize)
            .collect();
        for window in [100, 10_000] {
            let (rows, report) = pack_neat(&lengths, 256, window);
            let mut seen = vec![0; lengths.len()];
            for row in &rows {
                assert!(row.iter().map(|&i| lengths[i]).sum::<usize>() <= 256);
                for &i in row {
                    seen[i] += 1;
                }
            }
            for (i, &n) in seen.iter().enumerate() {
                assert_eq!(n, usize::from(lengths[i] <= 256), "example {i}");
            }
            assert_eq!(
                report.dropped_too_long,
                lengths.iter().filter(|&&l| l > 256).count()
            );
            assert!(report.efficiency() > 0.9, "{}", report.efficiency());
        }
    }

    #[test]
    fn packing_follows_llamafactory_defaults() {
        assert_eq!(Packing::choose(None, false, Stage::Pt), Packing::Greedy);
        assert_eq!(Packing::choose(None, false, Stage::Sft), Packing::None);
        assert_eq!(
            Packing::choose(Some(false), false, Stage::Pt),
            Packing::None
        );
        assert_eq!(Packing::choose(None, true, Stage::Sft), Packing::Neat);
        assert!(Packing::Greedy.warning(Stage::Sft).is_some());
    }
}
