//! Training rows and their order: one example per row (padded to the batch's longest),
//! greedy-packed rows of cutoff_len, or neat-packed rows of several examples kept apart by
//! attention; shuffled each epoch, optionally in length groups.

use candle_core::{Device, Result};
use ferrotune_data::pack::{self, PackReport, Packing, NEAT_WINDOW};
use ferrotune_data::rng::SplitMix64;
use ferrotune_data::Encoded;
use ferrotune_model::{Batch, Example};

pub struct Rows {
    pub examples: Vec<Example>,
    /// Each row: the examples it holds, end to end.
    pub rows: Vec<Vec<usize>>,
    pub packing: Packing,
    pub report: Option<PackReport>,
}

impl Rows {
    pub fn build(encoded: &[&Encoded], packing: Packing, row_len: usize) -> Rows {
        let (examples, rows, report) = match packing {
            Packing::None => {
                let rows = (0..encoded.len()).map(|i| vec![i]).collect();
                (encoded.iter().map(|e| to_example(e)).collect(), rows, None)
            }
            Packing::Greedy => {
                let (packed, report) = pack::pack_greedy(encoded, row_len);
                let rows = (0..packed.len()).map(|i| vec![i]).collect();
                (packed.iter().map(to_example).collect(), rows, Some(report))
            }
            Packing::Neat => {
                let lengths: Vec<usize> = encoded.iter().map(|e| e.len()).collect();
                let (rows, report) = pack::pack_neat(&lengths, row_len, NEAT_WINDOW);
                (
                    encoded.iter().map(|e| to_example(e)).collect(),
                    rows,
                    Some(report),
                )
            }
        };
        Rows {
            examples,
            rows,
            packing,
            report,
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn row_tokens(&self, row: usize) -> usize {
        self.rows[row]
            .iter()
            .map(|&i| self.examples[i].input_ids.len())
            .sum()
    }

    /// The batch of the given rows. Neat-packed rows restart positions and keep attention
    /// inside each example; the others are plain rows.
    pub fn batch(&self, rows: &[usize], pad: u32, device: &Device) -> Result<Batch> {
        if self.packing == Packing::Neat {
            let rows: Vec<Vec<&Example>> = rows
                .iter()
                .map(|&r| self.rows[r].iter().map(|&i| &self.examples[i]).collect())
                .collect();
            Batch::packed(&rows, pad, 8, device)
        } else {
            let examples: Vec<Example> = rows
                .iter()
                .map(|&r| self.examples[self.rows[r][0]].clone())
                .collect();
            Batch::padded(&examples, pad, 8, device)
        }
    }

    /// The row order of `epoch`: a seeded shuffle, or with `group_by_length` transformers'
    /// LengthGroupedSampler (shuffle, sort by length within megabatches of up to 50
    /// batches, longest batch first so that running out of memory happens at once).
    pub fn epoch_order(
        &self,
        seed: u64,
        epoch: usize,
        group_by_length: bool,
        batch_size: usize,
    ) -> Vec<usize> {
        let order = epoch_order(self.len(), seed, epoch);
        if !group_by_length {
            return order;
        }
        let lengths: Vec<usize> = (0..self.len()).map(|r| self.row_tokens(r)).collect();
        group_by_length_order(order, &lengths, batch_size)
    }
}

/// A deterministic shuffle of `0..n` for `epoch` (SplitMix64-driven Fisher-Yates), so the
/// data position alone is enough to resume.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    SplitMix64(seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).permutation(n)
}

fn group_by_length_order(shuffled: Vec<usize>, lengths: &[usize], batch_size: usize) -> Vec<usize> {
    let batch_size = batch_size.max(1);
    let mult = (lengths.len() / (batch_size * 4)).clamp(1, 50);
    let mut megabatches: Vec<Vec<usize>> = shuffled
        .chunks(mult * batch_size)
        .map(|m| {
            let mut m = m.to_vec();
            m.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            m
        })
        .collect();
    if let Some(longest) = (0..megabatches.len()).max_by_key(|&k| lengths[megabatches[k][0]]) {
        let first = megabatches[0][0];
        megabatches[0][0] = megabatches[longest][0];
        megabatches[longest][0] = first;
    }
    megabatches.concat()
}

pub fn to_example(e: &Encoded) -> Example {
    Example {
        input_ids: e.input_ids.clone(),
        labels: e.labels.clone(),
        weights: e.weights.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_groups_put_the_longest_first_and_keep_every_row() {
        let lengths: Vec<usize> = (0..400).map(|i| (i * 37) % 101).collect();
        let order = group_by_length_order(epoch_order(400, 1, 0), &lengths, 4);
        assert_eq!(lengths[order[0]], 100);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..400).collect::<Vec<_>>());
        // Megabatches of min(400 / (4 * 4), 50) = 25 batches of 4: lengths fall within
        // each, apart from the swapped-in first element.
        for m in order.chunks(100) {
            assert!(m[1..].windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]));
        }
    }
}
