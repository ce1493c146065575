//! Training rows and their order: one example per row (padded to the batch's longest),
//! greedy-packed rows of cutoff_len, or neat-packed rows of several examples kept apart by
//! attention; shuffled each epoch, optionally in length groups.

use candle_core::{Device, Result};
use ferrotune_data::live::{LiveData, ShuffledOrder};
use ferrotune_data::pack::{self, PackReport, Packing, NEAT_WINDOW};
use ferrotune_data::rng::SplitMix64;
use ferrotune_data::samples::Samples;
use ferrotune_data::Encoded;
use ferrotune_model::{Batch, Example};
use std::sync::{Arc, Mutex};

/// The training rows over the examples, which stay where they are (mapped from the
/// cache, or in memory): a batch reads its rows' examples when it is built.
pub struct Rows {
    samples: Samples,
    layout: Layout,
    pub packing: Packing,
    pub report: Option<PackReport>,
}

/// Which tokens make each row.
enum Layout {
    /// Row r is example r.
    OnePerRow,
    /// Row r holds examples `members[starts[r]..starts[r + 1]]`, kept apart.
    Neat { starts: Vec<u32>, members: Vec<u32> },
    /// The examples end to end, cut every `row_len` tokens (greedy packing): `ends[i]`
    /// is the token count up to the end of example i; rows carry weights when any
    /// example does.
    Greedy {
        ends: Vec<u64>,
        row_len: usize,
        weighted: bool,
    },
    /// Preference pairs: row r is example r's chosen and rejected sequences, packed into
    /// one row and kept apart by attention; `reference` holds the reference model's
    /// log-probability of each (2 per example), once computed.
    Pairs { reference: Option<Vec<f64>> },
    /// `streaming: true`: row r is the r-th example of the shuffle buffer's order over
    /// the examples as they arrive (`rows` of them planned).
    Live {
        data: Arc<LiveData>,
        order: Mutex<ShuffledOrder>,
        rows: usize,
    },
}

impl Rows {
    pub fn build(samples: Samples, packing: Packing, row_len: usize) -> Rows {
        let lengths = samples.lengths();
        let (layout, report) = match packing {
            Packing::None => (Layout::OnePerRow, None),
            Packing::Greedy => {
                let row_len = row_len.max(1);
                let ends: Vec<u64> = lengths
                    .iter()
                    .scan(0u64, |total, &l| {
                        *total += l as u64;
                        Some(*total)
                    })
                    .collect();
                let report = pack::greedy_report(&lengths, row_len);
                let weighted = samples.weighted();
                let layout = Layout::Greedy {
                    ends,
                    row_len,
                    weighted,
                };
                (layout, Some(report))
            }
            Packing::Neat => {
                let (rows, report) = pack::pack_neat(&lengths, row_len, NEAT_WINDOW);
                let mut starts = Vec::with_capacity(rows.len() + 1);
                let mut members = Vec::with_capacity(lengths.len());
                starts.push(0);
                for row in rows {
                    members.extend(row.into_iter().map(|i| i as u32));
                    starts.push(members.len() as u32);
                }
                (Layout::Neat { starts, members }, Some(report))
            }
        };
        Rows {
            samples,
            layout,
            packing,
            report,
        }
    }

    /// Rows of one preference pair each (examples with a rejected sequence).
    pub fn pairs(samples: Samples) -> Rows {
        Rows {
            samples,
            layout: Layout::Pairs { reference: None },
            packing: Packing::None,
            report: None,
        }
    }

    /// The examples behind the rows (pairs: one a row).
    pub fn samples(&self) -> &Samples {
        &self.samples
    }

    /// Sets the reference log-probabilities of a pair layout: two per example (chosen,
    /// rejected), in the examples' order.
    pub fn set_reference(&mut self, values: Vec<f64>) -> Result<()> {
        match &mut self.layout {
            Layout::Pairs { reference } if values.len() == 2 * self.samples.len() => {
                *reference = Some(values);
                Ok(())
            }
            _ => candle_core::bail!(
                "reference log-probabilities for {} sequences do not fit these rows",
                values.len()
            ),
        }
    }

    /// Rows of one example each, taken from `data` in the shuffle buffer's order as they
    /// arrive (arrivals from `first` on; the ones before are held out).
    pub fn live(
        data: Arc<LiveData>,
        buffer_size: usize,
        seed: u64,
        first: u64,
        rows: usize,
    ) -> Rows {
        Rows {
            samples: Samples::default(),
            layout: Layout::Live {
                data,
                order: Mutex::new(ShuffledOrder::new(buffer_size, seed, first)),
                rows,
            },
            packing: Packing::None,
            report: None,
        }
    }

    pub fn len(&self) -> usize {
        match &self.layout {
            Layout::Live { rows, .. } => *rows,
            Layout::OnePerRow | Layout::Pairs { .. } => self.samples.len(),
            Layout::Neat { starts, .. } => starts.len() - 1,
            Layout::Greedy { ends, row_len, .. } => {
                let total = ends.last().copied().unwrap_or(0) as usize;
                total.div_ceil(*row_len)
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn members(&self, row: usize) -> &[u32] {
        match &self.layout {
            Layout::Neat { starts, members } => {
                &members[starts[row] as usize..starts[row + 1] as usize]
            }
            _ => &[],
        }
    }

    fn row_tokens(&self, row: usize) -> usize {
        match &self.layout {
            Layout::Live { .. } => self.row(row).map_or(0, |r| r[0].input_ids.len()),
            Layout::OnePerRow | Layout::Pairs { .. } => self.samples.length(row),
            Layout::Neat { .. } => self
                .members(row)
                .iter()
                .map(|&i| self.samples.length(i as usize))
                .sum(),
            Layout::Greedy { ends, row_len, .. } => {
                let total = ends.last().copied().unwrap_or(0) as usize;
                (*row_len).min(total - row * row_len)
            }
        }
    }

    /// Greedy row `row`: tokens `row * row_len ..` of the examples end to end.
    fn greedy_row(&self, row: usize, ends: &[u64], row_len: usize, weighted: bool) -> Example {
        let start = (row * row_len) as u64;
        let end = (start + row_len as u64).min(ends.last().copied().unwrap_or(0));
        let mut out = Example {
            input_ids: Vec::with_capacity(row_len),
            labels: Vec::with_capacity(row_len),
            weights: weighted.then(|| Vec::with_capacity(row_len)),
            reference_logp: None,
            desirable: None,
        };
        let mut i = ends.partition_point(|&e| e <= start);
        let mut at = start;
        while at < end {
            let e = self.samples.encoded(i);
            let first = ends[i] - e.len() as u64;
            let (from, to) = ((at - first) as usize, (end.min(ends[i]) - first) as usize);
            out.input_ids.extend_from_slice(&e.input_ids[from..to]);
            out.labels.extend_from_slice(&e.labels[from..to]);
            if let Some(w) = out.weights.as_mut() {
                match &e.weights {
                    Some(ew) => w.extend_from_slice(&ew[from..to]),
                    None => w.extend(std::iter::repeat_n(1.0, to - from)),
                }
            }
            at = first + to as u64;
            i += 1;
        }
        out
    }

    /// The examples of row `row`: one, or a neat-packed row's several.
    pub fn row(&self, row: usize) -> Result<Vec<Example>> {
        Ok(match &self.layout {
            Layout::Live { data, order, .. } => {
                let mut order = order.lock().expect("order");
                let live_error =
                    |e: ferrotune_data::DataError| candle_core::Error::Msg(e.to_string());
                let arrival = order.at(row, |k| data.has(k)).map_err(live_error)?;
                let example = match arrival {
                    Some(k) => data.example(k).map_err(live_error)?,
                    None => None,
                };
                let Some(e) = example else {
                    candle_core::bail!(
                        "streaming: the data ran out after {row} training rows; max_steps asks for more (lower it, or train without streaming to repeat the data in epochs)"
                    );
                };
                vec![to_example(&e)]
            }
            Layout::OnePerRow => vec![to_example(&self.samples.encoded(row))],
            Layout::Pairs { reference } => {
                let mut pair = pair_examples(&self.samples.encoded(row))?;
                if let Some(values) = reference {
                    pair[0].reference_logp = Some(values[2 * row]);
                    pair[1].reference_logp = Some(values[2 * row + 1]);
                }
                pair.to_vec()
            }
            Layout::Neat { .. } => self
                .members(row)
                .iter()
                .map(|&i| to_example(&self.samples.encoded(i as usize)))
                .collect(),
            Layout::Greedy {
                ends,
                row_len,
                weighted,
            } => vec![self.greedy_row(row, ends, *row_len, *weighted)],
        })
    }

    /// The batch of the given rows. Neat-packed rows restart positions and keep attention
    /// inside each example; the others are plain rows.
    pub fn batch(&self, rows: &[usize], pad: u32, device: &Device) -> Result<Batch> {
        let examples: Vec<Vec<Example>> =
            rows.iter().map(|&r| self.row(r)).collect::<Result<_>>()?;
        if let Layout::Neat { .. } | Layout::Pairs { .. } = self.layout {
            let refs: Vec<Vec<&Example>> =
                examples.iter().map(|row| row.iter().collect()).collect();
            Batch::packed(&refs, pad, 8, device)
        } else {
            let examples: Vec<Example> = examples.into_iter().flatten().collect();
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
        if let Layout::Live { .. } = self.layout {
            // The shuffle buffer made the order; one pass.
            return (0..self.len()).collect();
        }
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
        reference_logp: None,
        desirable: None,
    }
}

/// An example of two sequences as two examples: a preference pair's chosen and
/// rejected, or a KTO example and its KL sequence (both carrying the example's label).
pub fn pair_examples(e: &Encoded) -> Result<[Example; 2]> {
    let Some(k) = e.second_start.filter(|&k| k > 0 && k < e.len()) else {
        candle_core::bail!("an example of a preference run is not a pair (no rejected sequence)");
    };
    let part = |range: std::ops::Range<usize>| Example {
        input_ids: e.input_ids[range.clone()].to_vec(),
        labels: e.labels[range.clone()].to_vec(),
        weights: e.weights.as_ref().map(|w| w[range].to_vec()),
        reference_logp: None,
        desirable: e.desirable,
    };
    Ok([part(0..k), part(k..e.len())])
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
