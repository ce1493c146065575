//! The data: read and tokenized by ferrotune-data (through its cache), examples held out
//! for evaluation (`val_size`, `eval_dataset`), the rest laid into training rows (packed
//! when the config asks).

use std::path::Path;

use ferrotune_data::format::Stage;
use ferrotune_data::live::LiveData;
use ferrotune_data::pack::Packing;
use ferrotune_data::pipeline::{self, Prepared};
use ferrotune_data::samples::Samples;
use ferrotune_data::stats::percentile;
use ferrotune_data::DataArgs;
use ferrotune_model::{Example, ModelError};

use super::Result;
use crate::config::{FinetuningType, TrainArgs};
use crate::rows::{epoch_order, pair_examples, to_example, Rows};

pub(super) struct TrainingData {
    /// The data keys, with the model's tokenizer when no other is named.
    pub args: DataArgs,
    pub prepared: Prepared,
    pub rows: Rows,
    pub eval_examples: Vec<Example>,
    pub pad: u32,
}

impl TrainingData {
    /// `data` as the config gives it; `model_dir` supplies the tokenizer unless another is
    /// named.
    pub(super) fn prepare(data: &DataArgs, t: &TrainArgs, model_dir: &Path) -> Result<Self> {
        let mut args = data.clone();
        if args.tokenizer_name_or_path.is_none() {
            args.tokenizer_name_or_path = Some(model_dir.to_path_buf());
        }
        // Preference stages: each example is two sequences (a pair, or a KTO example and
        // its KL sequence), one row each.
        let pairs = matches!(args.stage, Stage::Dpo | Stage::Kto);
        if pairs && args.streaming {
            return Err(ModelError::invalid(
                "streaming: true with a preference stage: the reference log-probabilities are computed over the prepared pairs before training; prepare the data first (streaming: false)",
            ));
        }
        if pairs && args.packing() != Packing::None {
            return Err(ModelError::invalid(
                "packing / neat_packing with a preference stage (dpo, kto): each row holds one pair (its chosen and rejected sequences, kept apart by attention) or one KTO example with its KL sequence; remove packing and neat_packing",
            ));
        }
        if args.streaming {
            return Self::live(args, t);
        }
        let prepared = read_and_tokenize(&args)?;
        let pad = prepared.pad.id;
        if prepared.samples.is_empty() {
            return Err(ModelError::invalid(
                "no training examples: check the data with `ferrotune data stats`",
            ));
        }
        let (train_set, mut eval_examples) =
            hold_out(&prepared.samples, t.val_size, data.seed, pairs)?;
        let rows = if pairs {
            Rows::pairs(train_set)
        } else {
            lay_into_rows(train_set, &args)
        };
        if let Some(names) = &t.eval_dataset {
            eval_examples.extend(eval_dataset(&args, names, pairs)?);
        }
        Ok(TrainingData {
            args,
            prepared,
            rows,
            eval_examples,
            pad,
        })
    }
}

impl TrainingData {
    /// `streaming: true`: preparation runs on a thread of its own and training takes the
    /// examples as they land (ferrotune_data::live), one a row, in the shuffle buffer's
    /// order; `val_size` examples (a count) are the first to arrive.
    fn live(args: DataArgs, t: &TrainArgs) -> Result<Self> {
        let invalid = |m: String| ModelError::invalid(m);
        if t.max_steps <= 0 {
            return Err(invalid(
                "streaming: true needs max_steps: how many rows the data holds is not known \
                 before it is prepared (as in LLaMA-Factory)"
                    .into(),
            ));
        }
        if args.packing() != ferrotune_data::pack::Packing::None {
            return Err(invalid(
                "streaming: true trains one example a row: packing and neat_packing need the \
                 data prepared first (streaming: false)"
                    .into(),
            ));
        }
        if t.val_size > 0.0 && (t.val_size < 1.0 || t.val_size.fract() != 0.0) {
            return Err(invalid(format!(
                "streaming: true holds out the first val_size examples: val_size must be a \
                 count, not {}",
                t.val_size
            )));
        }
        let Some(root) = args.data_cache_dir.clone() else {
            return Err(invalid(
                "streaming: true prepares into the tokenized cache: data_cache_dir must not be none"
                    .into(),
            ));
        };
        let prepared = Prepared::empty(&args).map_err(|e| invalid(e.to_string()))?;
        let pad = prepared.pad.id;
        let data = LiveData::start(&args, &root).map_err(|e| invalid(e.to_string()))?;
        eprintln!(
            "data: preparing into the cache {} while training (streaming: true, buffer_size {})",
            root.display(),
            args.buffer_size
        );
        let held = t.val_size as u64;
        let mut eval_examples = Vec::new();
        for k in 0..held {
            match data.example(k).map_err(|e| invalid(e.to_string()))? {
                Some(e) => eval_examples.push(to_example(&e)),
                None => break,
            }
        }
        let rows = t.max_steps as usize
            * t.per_device_train_batch_size.max(1)
            * t.gradient_accumulation_steps.max(1);
        let rows = Rows::live(data, args.buffer_size, args.seed, held, rows);
        if let Some(names) = &t.eval_dataset {
            eval_examples.extend(eval_dataset(&args, names, false)?);
        }
        Ok(TrainingData {
            args,
            prepared,
            rows,
            eval_examples,
            pad,
        })
    }
}

/// An example as the evaluation takes it: one sequence, or a pair's two.
fn eval_examples(e: &ferrotune_data::Encoded, pairs: bool) -> Result<Vec<Example>> {
    Ok(if pairs {
        pair_examples(e)?.to_vec()
    } else {
        vec![to_example(e)]
    })
}

fn read_and_tokenize(args: &DataArgs) -> Result<Prepared> {
    let prepared = pipeline::prepare(args, None).map_err(|e| ModelError::invalid(e.to_string()))?;
    for w in &prepared.warnings {
        eprintln!("warning: {w}");
    }
    for c in &prepared.cache {
        let what = if c.hit {
            "reused the tokenized cache"
        } else {
            "tokenized into the cache"
        };
        eprintln!("data: {}: {what} {}", c.dataset, c.dir.display());
    }
    Ok(prepared)
}

/// Splits off `val_size` examples (a fraction below 1, else a count) for evaluation, in a
/// seeded order of their own; at least one example is left to train on. The training
/// examples stay where they are (an order over them). A held-out pair gives two
/// examples, chosen then rejected.
fn hold_out(
    all: &Samples,
    val_size: f64,
    seed: u64,
    pairs: bool,
) -> Result<(Samples, Vec<Example>)> {
    let n = all.len();
    let count = if val_size >= 1.0 {
        val_size as usize
    } else {
        (val_size * n as f64).round() as usize
    };
    if count == 0 {
        return Ok((all.clone(), Vec::new()));
    }
    let order = epoch_order(n, seed ^ 0x5eed, 0);
    let mut held = vec![false; n];
    for &i in &order[..count.min(n - 1)] {
        held[i] = true;
    }
    let mut eval = Vec::new();
    for i in (0..n).filter(|&i| held[i]) {
        eval.extend(eval_examples(&all.encoded(i), pairs)?);
    }
    let train = all.select((0..n).filter(|&i| !held[i]));
    Ok((train, eval))
}

/// One example per row, or packed rows, as the data keys say; reports the packing.
fn lay_into_rows(train_set: Samples, args: &DataArgs) -> Rows {
    let packing = args.packing();
    if let Some(w) = packing.warning(args.stage) {
        eprintln!("warning: {w}");
    }
    let examples = train_set.len();
    let rows = Rows::build(train_set, packing, args.cutoff_len);
    if let Some(r) = &rows.report {
        eprintln!(
            "packing ({packing:?}): {examples} examples into {} rows of up to {} tokens, {:.1}% filled{}",
            r.rows,
            r.row_len,
            100.0 * r.efficiency(),
            if r.dropped_too_long > 0 {
                format!(
                    ", {} examples longer than a row left out",
                    r.dropped_too_long
                )
            } else {
                String::new()
            }
        );
    }
    rows
}

/// The examples of `eval_dataset`, read with the run's data keys.
fn eval_dataset(args: &DataArgs, names: &[String], pairs: bool) -> Result<Vec<Example>> {
    let mut eval_args = args.only_datasets();
    eval_args.dataset = names.to_vec();
    let eval = pipeline::prepare(&eval_args, None)
        .map_err(|e| ModelError::invalid(format!("eval_dataset: {e}")))?;
    let mut out = Vec::new();
    for s in eval.samples.iter() {
        out.extend(eval_examples(&s.encoded, pairs)?);
    }
    Ok(out)
}

/// Warnings for settings outside the usual SFT ranges.
pub(super) fn sanity_warnings(
    t: &TrainArgs,
    stage: Stage,
    cutoff_len: usize,
    prepared: &Prepared,
) -> Vec<String> {
    let mut w = Vec::new();
    let lr = t.learning_rate;
    if matches!(stage, Stage::Dpo | Stage::Kto) {
        // Preference tuning's usual ranges differ (lower rates, one epoch or more of
        // pairs); only the data's truncation is checked.
        return truncation_warning(cutoff_len, prepared)
            .into_iter()
            .collect();
    }
    let (lo, hi, what) = if t.finetuning_type == FinetuningType::Lora {
        (1e-4, 5e-4, "LoRA")
    } else {
        (1e-5, 5e-5, "full / freeze tuning")
    };
    if lr < lo || lr > hi {
        w.push(format!(
            "learning_rate {lr:e} is outside the usual {lo:e}..{hi:e} for {what}"
        ));
    }
    if t.num_train_epochs > 3.0 && t.max_steps <= 0 {
        w.push(format!(
            "{} epochs: SFT usually needs at most 3; more tends to overfit",
            t.num_train_epochs
        ));
    }
    if t.warmup_steps == 0 && t.warmup_ratio > 0.0 && !(0.03..=0.1).contains(&t.warmup_ratio) {
        w.push(format!(
            "warmup_ratio {} is outside the usual 0.03..0.1",
            t.warmup_ratio
        ));
    }
    w.extend(truncation_warning(cutoff_len, prepared));
    w
}

fn truncation_warning(cutoff_len: usize, prepared: &Prepared) -> Option<String> {
    let mut lengths: Vec<usize> = prepared
        .reports
        .iter()
        .flat_map(|r| r.lengths.iter().copied())
        .collect();
    lengths.sort_unstable();
    let truncated: usize = prepared.reports.iter().map(|r| r.truncated).sum();
    (truncated > 0 && percentile(&lengths, 99.0) >= cutoff_len).then(|| format!(
        "cutoff_len {cutoff_len} is below the data's 99th percentile length; {truncated} samples were truncated"
    ))
}
