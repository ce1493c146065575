//! Data parallelism over CPU threads: a micro-batch is split by rows into one shard per
//! thread (each cut to its longest row, or its rows put end to end where a cost estimate
//! says that is cheaper), each thread runs the forward and backward pass of its shard
//! alone, and the shards' gradients are summed in shard order.
//!
//! Why: with candle, one step on two threads splits every operation in two (the matrix
//! products, the element-wise ops, our fused kernels) and waits at the end of each; the
//! many small operations of a step and the serial parts between them leave a core idle
//! for much of the step. Two shards on one thread each keep both cores busy with no
//! waiting, and a single-threaded matrix product runs at the same GFLOP/s per core
//! (docs/perf-log/2026-11-26-speed-rounds.md, "Data parallelism over threads").
//!
//! Each worker is a one-thread rayon pool: code that runs inside it and asks rayon for
//! parallelism (our fused kernels, the gemm crate behind candle's matmul) runs inline on
//! that thread. candle's separate element-wise pool is sized once per process from
//! `CANDLE_NUM_THREADS`; the `ferrotune` binary sets it to 1 (see its main), since two
//! workers sharing that pool would queue on its lock.
//!
//! The sum of the shards' gradients equals the micro-batch's gradient up to the order of
//! floating-point additions; losses are sums over tokens, normalised by the caller's
//! `scale`, so the split changes no loss or gradient beyond rounding.
//!
//! Across processes (`crate::distributed`), the shards of each micro-batch are numbered
//! over all processes' workers, and each process computes its own ([`Share`]).

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use ferrotune_model::loss::pair_preference_loss;
use ferrotune_model::ops::preference::{kto_loss, KtoConfig, PrefConfig};
use ferrotune_model::{Batch, CausalLm, Param, SequenceLogps};

use crate::grads::Accumulated;

/// How a shard's gradients are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// `CausalLm::loss` (the chunked head for large vocabularies) and one backward pass.
    Plain,
    /// `CausalLm::forward_loss`, which keeps the whole logits (for benchmarks).
    WholeLogits,
    /// `CausalLm::backward_checkpointed`: each decoder layer recomputed in the backward.
    Checkpointed,
}

/// What the backward pass differentiates.
#[derive(Debug, Clone, Copy)]
pub enum Objective<'a> {
    /// The summed token cross-entropy (SFT, pretraining).
    Tokens,
    /// A preference loss summed over pairs: each row of a batch is one pair (chosen,
    /// rejected), and the batch carries the reference log-probabilities the loss needs.
    Preference(&'a PrefConfig),
    /// KTO's loss summed over examples: each row one example with its reference
    /// log-probability and label; the KL term of each micro-batch of the step, in order
    /// (a constant, estimated before the step).
    Kto(&'a KtoConfig, &'a [f64]),
}

impl Objective<'_> {
    /// The objective of the step's `k`-th micro-batch.
    fn for_micro(self, k: usize) -> Self {
        match self {
            Objective::Kto(cfg, kl) => Objective::Kto(cfg, &kl[k..k + 1]),
            other => other,
        }
    }
}

/// One micro-batch's summed loss and gradients, with the time the passes took (for
/// several shards, those of the slowest shard).
#[derive(Debug)]
pub struct Gradients {
    /// Sum over the supervised targets of weight * cross-entropy, or over the pairs of
    /// their preference loss (not scaled).
    pub loss_sum: f64,
    /// For a preference objective, the sums over the pairs of its metrics
    /// (`ferrotune_model::ops::preference::PREF_METRICS`); empty otherwise.
    pub metric_sums: Vec<f64>,
    pub grads: Accumulated,
    pub forward_s: f64,
    pub backward_s: f64,
}

impl Gradients {
    /// No loss and no gradient yet: adding a part to it gives that part exactly.
    fn none(params: usize) -> Self {
        Gradients {
            loss_sum: 0.0,
            metric_sums: Vec::new(),
            grads: Accumulated::new(params),
            forward_s: 0.0,
            backward_s: 0.0,
        }
    }

    /// Adds another part's loss sum and gradients (not its times).
    fn add(&mut self, part: Gradients) -> Result<()> {
        self.loss_sum += part.loss_sum;
        if self.metric_sums.len() < part.metric_sums.len() {
            self.metric_sums.resize(part.metric_sums.len(), 0.0);
        }
        for (sum, v) in self.metric_sums.iter_mut().zip(&part.metric_sums) {
            *sum += v;
        }
        self.grads.merge(part.grads)
    }
}

/// The worker threads; none when the model runs on one thread or off the CPU.
pub struct Workers {
    pools: Vec<rayon::ThreadPool>,
}

impl Workers {
    /// One worker per thread of rayon's global pool when `device` is the CPU, there is
    /// more than one thread and `enabled`; none otherwise (each pass then runs on the
    /// calling thread, with the operations themselves spread over the threads).
    pub fn for_training(device: &Device, enabled: bool) -> Result<Self> {
        let threads = rayon::current_num_threads();
        if !enabled || !device.is_cpu() {
            return Ok(Workers { pools: Vec::new() });
        }
        Self::with_threads(threads)
    }

    /// The shards a micro-batch of `batch` rows is split into by the workers
    /// [`Workers::for_training`] makes on the CPU: one per thread of the calling pool when
    /// `enabled` and there are several, never more than the rows. The memory plan counts a
    /// gradient per shard.
    pub fn shards_for(batch: usize, enabled: bool) -> usize {
        let threads = rayon::current_num_threads();
        if enabled && threads >= 2 {
            threads.min(batch.max(1))
        } else {
            1
        }
    }

    /// `threads` workers (none below 2).
    pub fn with_threads(threads: usize) -> Result<Self> {
        if threads < 2 {
            return Ok(Workers { pools: Vec::new() });
        }
        let pools = (0..threads)
            .map(|i| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("ferrotune-shard-{i}"))
                    .build()
                    .map_err(|e| candle_core::Error::Msg(format!("worker thread: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(Workers { pools })
    }

    /// The number of shards a micro-batch is split into (1: no split).
    pub fn count(&self) -> usize {
        self.pools.len().max(1)
    }

    /// The loss and the gradients of `params` for `batch`, the loss scaled by `scale`
    /// before the backward pass. `batch` is split into up to `count()` shards of rows
    /// holding near-equal numbers of tokens (`Batch::split_rows_balanced`).
    pub fn gradients(
        &self,
        model: &CausalLm,
        batch: &Batch,
        params: &[&Param],
        scale: f64,
        pass: Pass,
    ) -> Result<Gradients> {
        self.step_gradients(
            model,
            std::slice::from_ref(batch),
            params,
            (scale, Objective::Tokens),
            pass,
            Share::WHOLE,
        )
    }

    /// The loss and gradients of this process's part of an optimizer step's micro-batches.
    /// Each micro-batch is split into `count() x share.processes` shards; this process
    /// computes shards `share.process * count()..` of each, one per worker. Each worker
    /// sums its shards over the micro-batches, and the workers' sums are added in worker
    /// order at the end: the same additions, in the same order, as the processes' sums
    /// of a data-parallel run then make (`crate::distributed`), so that two processes of
    /// one thread compute bit for bit what one process of two threads does.
    pub fn step_gradients(
        &self,
        model: &CausalLm,
        micro: &[Batch],
        params: &[&Param],
        (scale, objective): (f64, Objective),
        pass: Pass,
        share: Share,
    ) -> Result<Gradients> {
        let threads = self.count();
        let shards = threads * share.processes.max(1);
        let mut sums: Vec<Gradients> = (0..threads)
            .map(|_| Gradients::none(params.len()))
            .collect();
        let mut total = Gradients::none(params.len());
        for (k, batch) in micro.iter().enumerate() {
            let objective = objective.for_micro(k);
            let split = self.split(model, batch, shards)?;
            let all: Vec<&Batch> = if split.is_empty() {
                vec![batch]
            } else {
                split.iter().collect()
            };
            let mine: Vec<&Batch> = all
                .into_iter()
                .skip(share.process * threads)
                .take(threads)
                .collect();
            let parts = self.run_shards(model, &mine, params, (scale, objective), pass)?;
            // The slowest shard of each micro-batch sets its time.
            let (mut f, mut b) = (0f64, 0f64);
            for (sum, part) in sums.iter_mut().zip(parts) {
                f = f.max(part.forward_s);
                b = b.max(part.backward_s);
                sum.add(part)?;
            }
            total.forward_s += f;
            total.backward_s += b;
        }
        for sum in sums {
            total.add(sum)?;
        }
        Ok(total)
    }

    /// `batch` split into up to `total` shards (each in its cheapest layout); empty when
    /// it is not split.
    fn split(&self, model: &CausalLm, batch: &Batch, total: usize) -> Result<Vec<Batch>> {
        if total < 2 || batch.batch < 2 {
            return Ok(Vec::new());
        }
        let cost = Cost::of(model);
        batch
            .split_rows_balanced(total)?
            .into_iter()
            .map(|s| cost.cheapest(s))
            .collect()
    }

    /// Each shard on its own worker (on the calling thread when there is one shard).
    fn run_shards(
        &self,
        model: &CausalLm,
        shards: &[&Batch],
        params: &[&Param],
        objective: (f64, Objective),
        pass: Pass,
    ) -> Result<Vec<Gradients>> {
        if shards.len() < 2 || self.pools.len() < 2 {
            return shards
                .iter()
                .map(|shard| shard_gradients(model, shard, params, objective, pass))
                .collect();
        }
        let results: Vec<Result<Gradients>> = std::thread::scope(|s| {
            let handles: Vec<_> = shards
                .iter()
                .zip(&self.pools)
                .map(|(shard, pool)| {
                    s.spawn(move || {
                        pool.install(|| shard_gradients(model, shard, params, objective, pass))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(candle_core::Error::Msg("a training worker panicked".into()))
                    })
                })
                .collect()
        });
        results.into_iter().collect()
    }
}

/// Which part of each micro-batch a process computes in a data-parallel run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// This process's rank.
    pub process: usize,
    /// The processes of the run.
    pub processes: usize,
}

impl Share {
    /// A run of one process.
    pub const WHOLE: Share = Share {
        process: 0,
        processes: 1,
    };
}

/// The relative compute of a decoder stack over rows: per token, the projections; per
/// token and key of its row, the attention's two products (computed over the whole row,
/// the mask applied after).
struct Cost {
    per_token: f64,
    per_key: f64,
}

impl Cost {
    fn of(model: &CausalLm) -> Self {
        let c = &model.config;
        let (h, q, kv) = (
            c.hidden_size as f64,
            (c.num_attention_heads * c.head_dim) as f64,
            (c.num_key_value_heads * c.head_dim) as f64,
        );
        let projections = h * q * 2.0 + h * kv * 2.0 + 3.0 * h * c.intermediate_size as f64;
        Cost {
            per_token: 2.0 * projections,
            per_key: 4.0 * q,
        }
    }

    fn rows(&self, rows: usize, len: usize) -> f64 {
        let (rows, len) = (rows as f64, len as f64);
        rows * len * (self.per_token + self.per_key * len)
    }

    /// The shard as it is, or its rows end to end without padding (`Batch::concat_rows`)
    /// when that costs clearly less: rows of unequal length, short enough that the
    /// longer attention row does not eat the saving.
    fn cheapest(&self, shard: Batch) -> Result<Batch> {
        if shard.batch < 2 {
            return Ok(shard);
        }
        let tokens = shard.segment_ids.iter().filter(|&&s| s != 0).count();
        if self.rows(1, tokens) < 0.95 * self.rows(shard.batch, shard.seq_len) {
            return shard.concat_rows();
        }
        Ok(shard)
    }
}

/// Forward and backward of one shard on the calling thread.
fn shard_gradients(
    model: &CausalLm,
    batch: &Batch,
    params: &[&Param],
    (scale, objective): (f64, Objective),
    pass: Pass,
) -> Result<Gradients> {
    match objective {
        Objective::Preference(cfg) => {
            let reference = batch.reference.concat();
            return shard_sequence_gradients(model, batch, params, scale, pass, |seq| {
                let out = pair_preference_loss(cfg, seq, &reference)?;
                Ok((out.loss_sum, out.metric_sums.to_vec()))
            });
        }
        Objective::Kto(cfg, kl) => {
            let reference = Tensor::new(batch.reference.concat(), batch.input_ids.device())?;
            let desirable = batch.desirable.concat();
            return shard_sequence_gradients(model, batch, params, scale, pass, |seq| {
                let out = kto_loss(cfg, &seq.logps, &reference, &desirable, kl[0])?;
                Ok((out.loss_sum, out.metric_sums.to_vec()))
            });
        }
        Objective::Tokens => {}
    }
    let mut grads = Accumulated::new(params.len());
    let started = Instant::now();
    let (loss, forward_s) = match pass {
        Pass::Checkpointed => {
            // Forward and backward interleave; the whole pass counts as backward.
            let loss = model.backward_checkpointed(batch, scale, true, |g| grads.add(params, g))?;
            (loss, 0.0)
        }
        Pass::Plain | Pass::WholeLogits => {
            let loss = if pass == Pass::Plain {
                model.loss(batch, true)?
            } else {
                model.forward_loss(batch, true)?.1
            };
            let forward_s = started.elapsed().as_secs_f64();
            let store = loss.sum.affine(scale, 0.0)?.backward()?;
            grads.add(params, &store)?;
            (loss, forward_s)
        }
    };
    Ok(Gradients {
        loss_sum: loss.sum.to_scalar::<f32>()? as f64,
        metric_sums: Vec::new(),
        grads,
        forward_s,
        backward_s: started.elapsed().as_secs_f64() - forward_s,
    })
}

/// [`shard_gradients`] for a loss of the shard's sequence log-probabilities (`loss`: its
/// sum over the shard and its metric sums): the checkpointed or plain backward pass of
/// the loss scaled by `scale`.
fn shard_sequence_gradients(
    model: &CausalLm,
    batch: &Batch,
    params: &[&Param],
    scale: f64,
    pass: Pass,
    loss: impl Fn(&SequenceLogps) -> Result<(Tensor, Vec<f64>)>,
) -> Result<Gradients> {
    let mut grads = Accumulated::new(params.len());
    let started = Instant::now();
    let objective = |seq: &SequenceLogps| -> Result<(Tensor, (f64, Vec<f64>))> {
        let (loss_sum, metric_sums) = loss(seq)?;
        let value = loss_sum
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        Ok((loss_sum.affine(scale, 0.0)?, (value, metric_sums)))
    };
    let ((loss_sum, metric_sums), forward_s) = match pass {
        Pass::Checkpointed => {
            let kept = model.backward_sequences_checkpointed(batch, true, objective, |g| {
                grads.add(params, g)
            })?;
            (kept, 0.0)
        }
        Pass::Plain | Pass::WholeLogits => {
            let (scaled, kept) = objective(&model.sequence_logps(batch, true)?)?;
            let forward_s = started.elapsed().as_secs_f64();
            grads.add(params, &scaled.backward()?)?;
            (kept, forward_s)
        }
    };
    Ok(Gradients {
        loss_sum,
        metric_sums,
        grads,
        forward_s,
        backward_s: started.elapsed().as_secs_f64() - forward_s,
    })
}
