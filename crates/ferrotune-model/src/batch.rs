//! The batch the data side fills and the model consumes: token ids, labels, optional
//! per-token loss weights, position ids and, per row, which sample each token belongs to.
//!
//! Rows are either right-padded single samples or neat-packed rows holding several
//! samples end to end (positions restart at 0 for each; attention stays inside each).

use candle_core::{Device, Result, Tensor};

pub const IGNORE_INDEX: i64 = -100;

#[derive(Debug, Clone)]
pub struct Batch {
    pub batch: usize,
    pub seq_len: usize,
    /// (batch, seq) u32.
    pub input_ids: Tensor,
    /// (batch, seq) i64: the target predicted at each position, i.e. the label of the next
    /// token of the same sample, or [`IGNORE_INDEX`]. The shift is done here, on the host,
    /// so that no target ever crosses from one packed sample into the next.
    pub targets: Option<Tensor>,
    /// (batch, seq) f32 weights of those targets.
    pub target_weights: Option<Tensor>,
    /// Row-major (batch * seq) position ids.
    pub position_ids: Vec<u32>,
    /// Row-major (batch * seq): 0 on padding, k >= 1 for the k-th sample of the row.
    pub segment_ids: Vec<u32>,
    /// Number of targets that are not [`IGNORE_INDEX`].
    pub supervised_tokens: usize,
    /// Per row, one value for each of its samples in order: the reference model's
    /// sequence log-probability of each sequence of a preference pair. Empty when the
    /// examples carry none.
    pub reference: Vec<Vec<f64>>,
    /// Per row, for each of its samples, whether it is a desirable answer (KTO). Empty
    /// when the examples carry no label.
    pub desirable: Vec<Vec<bool>>,
}

/// One sample: ids, labels and optional weights of equal length.
#[derive(Debug, Clone, Default)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub weights: Option<Vec<f32>>,
    /// The reference model's log-probability of this sequence's supervised tokens
    /// (preference tuning).
    pub reference_logp: Option<f64>,
    /// KTO: whether this sequence's answer is desirable.
    pub desirable: Option<bool>,
}

impl Batch {
    /// Right-padded rows, one sample each. Positions run 0..seq_len in every row, as
    /// transformers numbers them without explicit position ids.
    pub fn padded(
        examples: &[Example],
        pad_id: u32,
        multiple_of: usize,
        device: &Device,
    ) -> Result<Self> {
        let rows: Vec<Vec<&Example>> = examples.iter().map(|e| vec![e]).collect();
        Self::build(&rows, pad_id, multiple_of, false, device)
    }

    /// Rows holding several samples each (neat packing): positions restart per sample and
    /// attention stays inside each sample.
    pub fn packed(
        rows: &[Vec<&Example>],
        pad_id: u32,
        multiple_of: usize,
        device: &Device,
    ) -> Result<Self> {
        Self::build(rows, pad_id, multiple_of, true, device)
    }

    fn build(
        rows: &[Vec<&Example>],
        pad_id: u32,
        multiple_of: usize,
        restart_positions: bool,
        device: &Device,
    ) -> Result<Self> {
        let longest = rows
            .iter()
            .map(|r| r.iter().map(|e| e.input_ids.len()).sum::<usize>())
            .max()
            .unwrap_or(0);
        let m = multiple_of.max(1);
        let seq = longest.div_ceil(m) * m;
        let b = rows.len();
        let mut ids = vec![pad_id; b * seq];
        let mut labels = vec![IGNORE_INDEX; b * seq];
        let mut weights = vec![0f32; b * seq];
        let any_weights = rows.iter().flatten().any(|e| e.weights.is_some());
        let mut segments = vec![0u32; b * seq];
        let mut positions: Vec<u32> = (0..b).flat_map(|_| 0..seq as u32).collect();
        for (r, row) in rows.iter().enumerate() {
            let mut at = r * seq;
            for (k, e) in row.iter().enumerate() {
                let n = e.input_ids.len();
                ids[at..at + n].copy_from_slice(&e.input_ids);
                labels[at..at + n].copy_from_slice(&e.labels);
                for i in 0..n {
                    weights[at + i] = match &e.weights {
                        Some(w) => w[i],
                        None => 1.0,
                    };
                    segments[at + i] = k as u32 + 1;
                    if restart_positions {
                        positions[at + i] = i as u32;
                    }
                }
                at += n;
            }
        }
        let mut batch = Self::from_parts(
            ids,
            labels,
            any_weights.then_some(weights),
            positions,
            segments,
            b,
            seq,
            device,
        )?;
        if rows.iter().flatten().all(|e| e.reference_logp.is_some()) {
            batch.reference = rows
                .iter()
                .map(|r| r.iter().filter_map(|e| e.reference_logp).collect())
                .collect();
        }
        if rows.iter().flatten().all(|e| e.desirable.is_some()) {
            batch.desirable = rows
                .iter()
                .map(|r| r.iter().filter_map(|e| e.desirable).collect())
                .collect();
        }
        Ok(batch)
    }

    /// From row-major vectors; `segment_ids` 0 marks padding.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        ids: Vec<u32>,
        labels: Vec<i64>,
        weights: Option<Vec<f32>>,
        position_ids: Vec<u32>,
        segment_ids: Vec<u32>,
        batch: usize,
        seq_len: usize,
        device: &Device,
    ) -> Result<Self> {
        let n = batch * seq_len;
        let mut targets = vec![IGNORE_INDEX; n];
        let mut target_weights = weights.as_ref().map(|_| vec![0f32; n]);
        for i in 0..n {
            let next = i + 1;
            let same_sample =
                next % seq_len != 0 && segment_ids[i] != 0 && segment_ids[next] == segment_ids[i];
            if same_sample && labels[next] != IGNORE_INDEX {
                targets[i] = labels[next];
                if let (Some(tw), Some(w)) = (target_weights.as_mut(), weights.as_ref()) {
                    tw[i] = w[next];
                }
            }
        }
        let supervised_tokens = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
        Ok(Batch {
            batch,
            seq_len,
            input_ids: Tensor::from_vec(ids, (batch, seq_len), device)?,
            targets: Some(Tensor::from_vec(targets, (batch, seq_len), device)?),
            target_weights: target_weights
                .map(|w| Tensor::from_vec(w, (batch, seq_len), device))
                .transpose()?,
            position_ids,
            segment_ids,
            supervised_tokens,
            reference: Vec::new(),
            desirable: Vec::new(),
        })
    }

    /// Segment ids of one packed row from its position ids: a new sample starts wherever
    /// the position restarts at 0.
    pub fn segments_from_positions(position_ids: &[u32]) -> Vec<u32> {
        let mut segment = 0;
        position_ids
            .iter()
            .map(|&p| {
                if p == 0 {
                    segment += 1;
                }
                segment.max(1)
            })
            .collect()
    }

    /// The real (non-padding) tokens of each row.
    pub fn row_tokens(&self) -> Vec<usize> {
        self.segment_ids
            .chunks(self.seq_len.max(1))
            .map(|row| row.iter().filter(|&&s| s != 0).count())
            .collect()
    }

    /// The rows split into at most `parts` shards of near-equal real tokens, for data
    /// parallelism: the longest row first, each to the shard with the fewest tokens so far
    /// (rows keep their order within a shard). Each shard drops the trailing columns that
    /// are padding in all of its rows: padding is masked out of attention and loss, so a
    /// shard computes the same per-token values on fewer positions. Shards run side by
    /// side and the step waits for the slowest, so on rows of unequal length this beats
    /// equal row counts: on the quickstart's identity data (rows of very different
    /// lengths, batches of 4 in two shards) the larger shard ends much closer to half the
    /// tokens than when split by row count (docs/perf-log/2026-11-26-speed-rounds.md).
    pub fn split_rows_balanced(&self, parts: usize) -> Result<Vec<Batch>> {
        let parts = parts.clamp(1, self.batch.max(1));
        let tokens = self.row_tokens();
        let mut order: Vec<usize> = (0..self.batch).collect();
        order.sort_by_key(|&r| std::cmp::Reverse(tokens[r]));
        let mut groups = vec![Vec::new(); parts];
        let mut load = vec![0usize; parts];
        for r in order {
            let k = (0..parts).min_by_key(|&k| load[k]).unwrap_or(0);
            groups[k].push(r);
            load[k] += tokens[r];
        }
        groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(|mut g| {
                g.sort_unstable();
                self.select_rows(&g)
            })
            .collect()
    }

    /// The given rows, in that order, as a batch of their own, cut after the last
    /// column that is not padding in all of them.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Batch> {
        if rows.is_empty() || rows.iter().any(|&r| r >= self.batch) {
            candle_core::bail!("select_rows: rows {rows:?} of a batch of {}", self.batch);
        }
        let row = |r: usize| &self.segment_ids[r * self.seq_len..(r + 1) * self.seq_len];
        // The longest row, up to its last non-padding token.
        let len = rows
            .iter()
            .map(|&r| row(r).iter().rposition(|&s| s != 0).map_or(0, |i| i + 1))
            .max()
            .unwrap_or(0)
            .max(1);
        let index = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            self.input_ids.device(),
        )?;
        let cut = |t: &Tensor| -> Result<Tensor> {
            t.index_select(&index, 0)?.narrow(1, 0, len)?.contiguous()
        };
        let targets = self.targets.as_ref().map(cut).transpose()?;
        let supervised_tokens = match &targets {
            Some(t) => t
                .ne(IGNORE_INDEX)?
                .to_dtype(candle_core::DType::U32)?
                .sum_all()?
                .to_scalar::<u32>()? as usize,
            None => 0,
        };
        let columns = |v: &[u32]| -> Vec<u32> {
            rows.iter()
                .flat_map(|&r| v[r * self.seq_len..r * self.seq_len + len].iter().copied())
                .collect()
        };
        Ok(Batch {
            batch: rows.len(),
            seq_len: len,
            input_ids: cut(&self.input_ids)?,
            targets,
            target_weights: self.target_weights.as_ref().map(cut).transpose()?,
            position_ids: columns(&self.position_ids),
            segment_ids: columns(&self.segment_ids),
            supervised_tokens,
            reference: pick_rows(&self.reference, rows),
            desirable: pick_rows(&self.desirable, rows),
        })
    }

    /// All rows as one row without padding: each row's tokens end to end, its samples
    /// given segment ids of their own (numbered on from the previous row's) and their
    /// position ids kept. Attention stays inside each sample and every target stays with
    /// its token, so the per-token losses are those of the padded rows; the padding's
    /// compute is gone, for attention over one longer row.
    pub fn concat_rows(&self) -> Result<Batch> {
        let keep: Vec<usize> = (0..self.batch * self.seq_len)
            .filter(|&i| self.segment_ids[i] != 0)
            .collect();
        let mut segment_ids = Vec::with_capacity(keep.len());
        let (mut offset, mut row, mut row_max) = (0u32, 0usize, 0u32);
        for &i in &keep {
            if i / self.seq_len != row {
                offset += row_max;
                row = i / self.seq_len;
                row_max = 0;
            }
            let s = self.segment_ids[i];
            row_max = row_max.max(s);
            segment_ids.push(offset + s);
        }
        let n = keep.len();
        let index = Tensor::from_vec(
            keep.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            n,
            self.input_ids.device(),
        )?;
        let pick = |t: &Tensor| -> Result<Tensor> {
            t.flatten_all()?.index_select(&index, 0)?.reshape((1, n))
        };
        Ok(Batch {
            batch: 1,
            seq_len: n,
            input_ids: pick(&self.input_ids)?,
            targets: self.targets.as_ref().map(pick).transpose()?,
            target_weights: self.target_weights.as_ref().map(pick).transpose()?,
            position_ids: keep.iter().map(|&i| self.position_ids[i]).collect(),
            segment_ids,
            supervised_tokens: self.supervised_tokens,
            reference: one_row(&self.reference),
            desirable: one_row(&self.desirable),
        })
    }

    /// The `k`-th sample of every row (0-based), one a row, right-padded: e.g. a KTO
    /// row's example (0) or its KL sequence (1). Its reference values and labels go with
    /// it.
    pub fn sample_batch(&self, k: usize) -> Result<Batch> {
        let ids = self.input_ids.flatten_all()?.to_vec1::<u32>()?;
        let targets = match &self.targets {
            Some(t) => t.flatten_all()?.to_vec1::<i64>()?,
            None => vec![IGNORE_INDEX; ids.len()],
        };
        let segment = k as u32 + 1;
        let mut examples = Vec::with_capacity(self.batch);
        for r in 0..self.batch {
            let span = r * self.seq_len..(r + 1) * self.seq_len;
            let picked: Vec<usize> = span.filter(|&i| self.segment_ids[i] == segment).collect();
            if picked.is_empty() {
                candle_core::bail!("sample_batch: row {r} has no sample {k}");
            }
            // A label is the target of the position before it, within the sample.
            let labels = picked
                .iter()
                .enumerate()
                .map(|(j, _)| match j {
                    0 => IGNORE_INDEX,
                    _ => targets[picked[j - 1]],
                })
                .collect();
            examples.push(Example {
                input_ids: picked.iter().map(|&i| ids[i]).collect(),
                labels,
                weights: None,
                reference_logp: self.reference.get(r).and_then(|v| v.get(k)).copied(),
                desirable: self.desirable.get(r).and_then(|v| v.get(k)).copied(),
            });
        }
        let pad = ids.first().copied().unwrap_or(0);
        Batch::padded(&examples, pad, 8, self.input_ids.device())
    }

    /// The samples of the batch in order (row-major, each row's in segment order) and,
    /// for every position, the sample it belongs to (`None` on padding).
    pub fn sample_of_positions(&self) -> (usize, Vec<Option<u32>>) {
        let mut samples = 0u32;
        let mut owner = Vec::with_capacity(self.segment_ids.len());
        for row in self.segment_ids.chunks(self.seq_len.max(1)) {
            let base = samples;
            for &s in row {
                if s == 0 {
                    owner.push(None);
                } else {
                    owner.push(Some(base + s - 1));
                    samples = samples.max(base + s);
                }
            }
        }
        (samples as usize, owner)
    }

    /// Ids only, for inference: one unpadded row.
    pub fn prompt(ids: &[u32], device: &Device) -> Result<Self> {
        let n = ids.len();
        Ok(Batch {
            batch: 1,
            seq_len: n,
            input_ids: Tensor::from_vec(ids.to_vec(), (1, n), device)?,
            targets: None,
            target_weights: None,
            position_ids: (0..n as u32).collect(),
            segment_ids: vec![1; n],
            supervised_tokens: 0,
            reference: Vec::new(),
            desirable: Vec::new(),
        })
    }
}

/// Per-row values as one row's (nothing when there are none).
fn one_row<T: Clone>(values: &[Vec<T>]) -> Vec<Vec<T>> {
    if values.is_empty() {
        Vec::new()
    } else {
        vec![values.concat()]
    }
}

/// `values[r]` for each of `rows` (nothing when `values` is empty).
fn pick_rows<T: Clone>(values: &[Vec<T>], rows: &[usize]) -> Vec<Vec<T>> {
    if values.is_empty() {
        return Vec::new();
    }
    rows.iter().map(|&r| values[r].clone()).collect()
}
