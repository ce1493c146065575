//! Preference tuning's reference log-probabilities (`stage: kto`, and `stage: dpo` with a
//! loss that compares against a reference: sigmoid, hinge, ipo). The reference is the
//! model as it stands before the first step: the base for a fresh LoRA adapter (whose
//! product with B = 0 adds exactly nothing, so this is the base with the adapters
//! switched off), the base with the adapter of `adapter_name_or_path` when one
//! continues (an SFT adapter: the SFT model), the loaded model for full and freeze
//! tuning; or, when `ref_model` or `ref_model_adapters` names one, that model (the
//! adapters on `ref_model`, or on the base), loaded alone before the policy and dropped.
//! Its log-probability of every sequence is computed once, without gradients, before
//! training, and kept with the rows: no second copy of the model is ever held.
//!
//! The values are stored in the tokenized cache (`reference/<key>.f64`), keyed by the
//! model's files (names, sizes, modification times), the adapter's, the settings that
//! change the products (storage type, bf16) and every token of the sequences, so a
//! resumed or repeated run reads them back instead of recomputing.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use ferrotune_model::hub::resolve_model;
use ferrotune_model::tuning::load_peft_adapter;
use ferrotune_model::weights::load_model;

use candle_core::Tensor;
use ferrotune_dist::Collective;
use ferrotune_model::loss::pair_preference_loss;
use ferrotune_model::ops::preference::{kto_loss, KTO_SUMS, PREF_METRICS};
use ferrotune_model::{Batch, CausalLm, Example, ModelError};
use sha2::{Digest, Sha256};

use super::data::TrainingData;
use super::step::{kto_kl_term, Loss};
use super::tuning::ModelSource;
use super::{dist_error, Result};
use crate::config::TrainArgs;
use crate::rows::pair_examples;

/// A reference model named by `ref_model` / `ref_model_adapters`.
pub(super) struct OtherModel {
    dir: PathBuf,
    adapter: Option<PathBuf>,
}

/// The reference model the config names, if any: `ref_model` (a folder or a Hub id in
/// the cache) with `ref_model_adapters` on it, or those adapters on the base.
pub(super) fn other_model(t: &TrainArgs, base: &ModelSource) -> Result<Option<OtherModel>> {
    let dir = match &t.ref_model {
        Some(spec) => resolve_model(&spec.to_string_lossy())?,
        None if t.ref_model_adapters.is_some() => base.dir.clone(),
        None => return Ok(None),
    };
    Ok(Some(OtherModel {
        dir,
        adapter: t.ref_model_adapters.clone(),
    }))
}

impl OtherModel {
    /// The model in f32, its adapter merged into its products.
    pub(super) fn load(&self) -> Result<CausalLm> {
        let mut model = load_model(&self.dir, DType::F32, &Device::Cpu)?;
        if let Some(adapter) = &self.adapter {
            load_peft_adapter(&mut model, adapter)?;
        }
        eprintln!(
            "reference: {}{}",
            self.dir.display(),
            self.adapter
                .as_ref()
                .map(|a| format!(" with the adapter {}", a.display()))
                .unwrap_or_default()
        );
        Ok(model)
    }

    pub(super) fn identity(&self) -> Vec<u8> {
        let mut identity = b"ref_model f32 ".to_vec();
        files_identity(&self.dir, &mut identity);
        if let Some(adapter) = &self.adapter {
            files_identity(adapter, &mut identity);
        }
        identity
    }
}

/// The reference log-probabilities of the training rows and the evaluation examples of
/// `data`, from the cache or computed with `model` (split over the processes of
/// `world`); set on the rows and the evaluation examples.
pub(super) fn attach(
    model: &CausalLm,
    data: &mut TrainingData,
    identity: &[u8],
    t: &TrainArgs,
    world: &dyn Collective,
) -> Result<()> {
    let (rows, eval) = (&mut data.rows, &mut data.eval_examples);
    let cache_root = data.args.data_cache_dir.as_deref();
    let (batch_pairs, pad) = (t.per_device_eval_batch_size, data.pad);
    let samples = rows.samples();
    let mut sequences: Vec<Example> = Vec::with_capacity(2 * samples.len() + eval.len());
    for i in 0..samples.len() {
        sequences.extend(pair_examples(&samples.encoded(i))?);
    }
    sequences.extend(eval.iter().cloned());
    let key = cache_key(identity, &sequences);
    let file = cache_root.map(|root| root.join("reference").join(format!("{key}.f64")));
    let values = match file
        .as_deref()
        .and_then(|f| read_values(f, sequences.len()))
    {
        Some(values) => {
            eprintln!(
                "reference: read the log-probabilities of {} sequences from the cache",
                sequences.len()
            );
            values
        }
        None => {
            let started = std::time::Instant::now();
            // The evaluation's pairs in batches of their own, as the evaluation takes
            // them: before the first step its rewards are then exactly 0.
            let train = 2 * samples.len();
            let mut values = sequence_logps(model, &sequences[..train], batch_pairs, pad, world)?;
            values.extend(sequence_logps(
                model,
                &sequences[train..],
                batch_pairs,
                pad,
                world,
            )?);
            eprintln!(
                "reference: log-probabilities of {} sequences computed in {:.1} s (the model before training, no gradients)",
                sequences.len(),
                started.elapsed().as_secs_f64()
            );
            if let (Some(file), 0) = (&file, world.rank()) {
                write_values(file, &values)?;
            }
            values
        }
    };
    let train = 2 * samples.len();
    for (e, v) in eval.iter_mut().zip(&values[train..]) {
        e.reference_logp = Some(*v);
    }
    rows.set_reference(values[..train].to_vec())?;
    Ok(())
}

/// The log-probability of each sequence (consecutive pairs packed into rows, as in
/// training), without gradients; each process computes every `size`-th batch and the
/// processes add their parts.
fn sequence_logps(
    model: &CausalLm,
    sequences: &[Example],
    batch_pairs: usize,
    pad: u32,
    world: &dyn Collective,
) -> Result<Vec<f64>> {
    let model = model.detached()?;
    let mut values = vec![0f64; sequences.len()];
    let per_batch = 2 * batch_pairs.max(1);
    for (k, chunk) in sequences.chunks(per_batch).enumerate() {
        if k % world.size() != world.rank() {
            continue;
        }
        let batch = pairs_batch(chunk, pad, model.device())?;
        let logps = model
            .sequence_logps(&batch, false)?
            .logps
            .to_vec1::<f32>()?;
        for (slot, v) in values[k * per_batch..].iter_mut().zip(logps) {
            *slot = f64::from(v);
        }
    }
    world.all_reduce_sum_f64(&mut values).map_err(dist_error)?;
    Ok(values)
}

/// The evaluation of a preference loss over `examples` (pairs: chosen, rejected, ...; or
/// KTO examples each followed by its KL sequence; with their reference
/// log-probabilities): its loss sum and metric sums over this process's part of the
/// batches (`part`: index, parts), and the pairs or examples they cover.
pub(super) fn eval_sums(
    model: &CausalLm,
    examples: &[Example],
    loss: &Loss,
    batch_size: usize,
    pad: u32,
    part: (usize, usize),
) -> Result<(f64, Vec<f64>, usize)> {
    let model = model.detached()?;
    let (mut total, mut metrics, mut count) = (0f64, Vec::<f64>::new(), 0usize);
    for chunk in examples
        .chunks(2 * batch_size.max(1))
        .skip(part.0)
        .step_by(part.1.max(1))
    {
        let (loss_sum, sums, n) = match loss {
            Loss::Pairs(cfg) => {
                let batch = pairs_batch(chunk, pad, model.device())?;
                let seq = model.sequence_logps(&batch, false)?;
                let out = pair_preference_loss(cfg, &seq, &batch.reference.concat())?;
                (out.loss_sum, out.metric_sums.to_vec(), out.pairs)
            }
            Loss::Kto(cfg) => {
                // The examples and their KL sequences, each a batch of one sequence a row.
                let every_other = |first: usize| -> Vec<Example> {
                    chunk.iter().skip(first).step_by(2).cloned().collect()
                };
                let padded =
                    |examples: Vec<Example>| Batch::padded(&examples, pad, 8, model.device());
                let kl = kto_kl_term(&model, &padded(every_other(1))?)?;
                let targets = padded(every_other(0))?;
                let seq = model.sequence_logps(&targets, false)?;
                let reference = Tensor::new(targets.reference.concat(), model.device())?;
                let out = kto_loss(cfg, &seq.logps, &reference, &targets.desirable.concat(), kl)?;
                (out.loss_sum, out.metric_sums.to_vec(), out.examples)
            }
            Loss::Tokens => return Err(ModelError::invalid("eval_sums: not a preference loss")),
        };
        total += loss_sum
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        metrics.resize(sums.len(), 0.0);
        for (m, v) in metrics.iter_mut().zip(sums) {
            *m += v;
        }
        count += n;
    }
    // Every process sends as many sums, even one with no batch.
    let width = match loss {
        Loss::Kto(_) => KTO_SUMS.len(),
        _ => PREF_METRICS.len(),
    };
    metrics.resize(width, 0.0);
    Ok((total, metrics, count))
}

/// Consecutive sequences as pairs, each pair packed into one row (chosen then rejected, or
/// an example then its KL sequence), as training lays them out.
fn pairs_batch(sequences: &[Example], pad: u32, device: &Device) -> Result<Batch> {
    let rows: Vec<Vec<&Example>> = sequences.chunks(2).map(|p| p.iter().collect()).collect();
    Ok(Batch::packed(&rows, pad, 8, device)?)
}

/// What identifies a model's files: each file's name, size and modification time.
pub(super) fn files_identity(dir: &Path, out: &mut Vec<u8>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        out.extend(e.file_name().as_encoded_bytes());
        out.extend(meta.len().to_le_bytes());
        out.extend(modified.to_le_bytes());
    }
}

fn cache_key(identity: &[u8], sequences: &[Example]) -> String {
    let mut h = Sha256::new();
    h.update(b"ferrotune reference log-probabilities v1\0");
    h.update((identity.len() as u64).to_le_bytes());
    h.update(identity);
    for e in sequences {
        h.update((e.input_ids.len() as u64).to_le_bytes());
        for (id, label) in e.input_ids.iter().zip(&e.labels) {
            h.update(id.to_le_bytes());
            h.update([u8::from(*label != ferrotune_model::IGNORE_INDEX)]);
        }
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_values(file: &Path, n: usize) -> Option<Vec<f64>> {
    let bytes = std::fs::read(file).ok()?;
    (bytes.len() == 8 * n).then(|| {
        bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect()
    })
}

fn write_values(file: &Path, values: &[f64]) -> Result<()> {
    let dir = file.parent().expect("a file in the cache");
    std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e.to_string()))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| ModelError::file(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, file).map_err(|e| ModelError::file(file, e.to_string()))
}
