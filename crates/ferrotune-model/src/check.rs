//! Compares the model with a reference computed by transformers for one batch (the
//! parity.safetensors layout of ../shared/fixtures, which `scripts/make_reference.py`
//! writes for any model): logits, loss, gradients, the packed row, merged LoRA weights.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::batch::Batch;
use crate::error::{ModelError, Result};
use crate::llama::CausalLm;
use crate::tuning::merge_lora;

/// Largest differences found; `None` where the reference holds nothing to compare.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CheckReport {
    pub logits_max_abs_diff: f32,
    /// Unpadded positions where the most likely next token differs from the reference's.
    pub argmax_mismatches: usize,
    pub positions: usize,
    pub loss: f32,
    pub reference_loss: f32,
    pub loss_rel_diff: f32,
    /// (max relative norm difference, parameter) over every reference gradient.
    pub grad_max_rel_diff: Option<(f32, String)>,
    pub grads_checked: usize,
    pub packed_loss_rel_diff: Option<f32>,
    pub packed_logits_max_abs_diff: Option<f32>,
    pub merged_max_abs_diff: Option<f32>,
}

/// Tolerances (defaults: those of ../shared/fixtures/README.md).
#[derive(Debug, Clone, Copy)]
pub struct Tolerances {
    pub logits_atol: f32,
    pub loss_rtol: f32,
    pub grad_rtol: f32,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            logits_atol: 1e-4,
            loss_rtol: 1e-5,
            grad_rtol: 1e-4,
        }
    }
}

/// `value <= tolerance`, false for NaN (a NaN difference is a failure).
fn within(value: f32, tolerance: f32) -> bool {
    value <= tolerance
}

impl CheckReport {
    /// The checks that fail the tolerances, described.
    pub fn failures(&self, t: &Tolerances) -> Vec<String> {
        let mut out = Vec::new();
        if !within(self.logits_max_abs_diff, t.logits_atol) {
            out.push(format!(
                "logits differ by {:.3e} > {:.1e}",
                self.logits_max_abs_diff, t.logits_atol
            ));
        }
        if self.argmax_mismatches > 0 {
            out.push(format!(
                "the most likely next token differs at {} of {} positions",
                self.argmax_mismatches, self.positions
            ));
        }
        if !within(self.loss_rel_diff, t.loss_rtol) {
            out.push(format!(
                "loss differs by {:.3e} (relative) > {:.1e}",
                self.loss_rel_diff, t.loss_rtol
            ));
        }
        if let Some((d, name)) = &self.grad_max_rel_diff {
            if !within(*d, t.grad_rtol) {
                out.push(format!(
                    "gradient of {name} differs by {d:.3e} (relative norm) > {:.1e}",
                    t.grad_rtol
                ));
            }
        }
        if let Some(d) = self
            .packed_loss_rel_diff
            .filter(|d| !within(*d, t.loss_rtol))
        {
            out.push(format!(
                "packed loss differs by {d:.3e} (relative) > {:.1e}",
                t.loss_rtol
            ));
        }
        if let Some(d) = self
            .packed_logits_max_abs_diff
            .filter(|d| !within(*d, t.logits_atol))
        {
            out.push(format!(
                "packed logits differ by {d:.3e} > {:.1e}",
                t.logits_atol
            ));
        }
        if let Some(d) = self
            .merged_max_abs_diff
            .filter(|d| !within(*d, t.logits_atol))
        {
            out.push(format!(
                "merged weights differ by {d:.3e} > {:.1e}",
                t.logits_atol
            ));
        }
        out
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

pub fn rel_norm_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let diff = (a - b)?.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    Ok(diff / norm.max(1e-12))
}

fn ints(t: &Tensor) -> Result<Vec<i64>> {
    Ok(t.flatten_all()?
        .to_dtype(candle_core::DType::I64)?
        .to_vec1::<i64>()?)
}

fn get<'a>(r: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor> {
    r.get(key)
        .ok_or_else(|| ModelError::invalid(format!("the reference has no `{key}`")))
}

/// The padded batch stored in a reference file.
pub fn reference_batch(r: &HashMap<String, Tensor>, device: &Device) -> Result<Batch> {
    stored_batch(r, "", device)
}

/// A padded batch stored as `{prefix}input_ids`, `{prefix}attention_mask`, `{prefix}labels`.
pub fn stored_batch(r: &HashMap<String, Tensor>, prefix: &str, device: &Device) -> Result<Batch> {
    let ids_t = get(r, &format!("{prefix}input_ids"))?;
    let (b, s) = ids_t.dims2()?;
    let ids: Vec<u32> = ints(ids_t)?.into_iter().map(|x| x as u32).collect();
    let mask: Vec<u32> = ints(get(r, &format!("{prefix}attention_mask"))?)?
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let labels = ints(get(r, &format!("{prefix}labels"))?)?;
    let positions = (0..b).flat_map(|_| 0..s as u32).collect();
    Ok(Batch::from_parts(
        ids, labels, None, positions, mask, b, s, device,
    )?)
}

/// The packed row stored in a reference file, if any.
pub fn reference_packed_batch(
    r: &HashMap<String, Tensor>,
    device: &Device,
) -> Result<Option<Batch>> {
    let Some(ids) = r.get("packed_input_ids") else {
        return Ok(None);
    };
    let ids: Vec<u32> = ints(ids)?.into_iter().map(|x| x as u32).collect();
    let positions: Vec<u32> = ints(get(r, "packed_position_ids")?)?
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let segments = Batch::segments_from_positions(&positions);
    let n = ids.len();
    Ok(Some(Batch::from_parts(
        ids,
        ints(get(r, "packed_labels")?)?,
        None,
        positions,
        segments,
        1,
        n,
        device,
    )?))
}

/// Runs the comparison. Gradients are compared for every `grad.<name>` in the reference
/// (the model's trainable parameters must include them); with `merge`, LoRA adapters are
/// merged afterwards and compared with `merged.<name>`.
pub fn check(
    model: &mut CausalLm,
    r: &HashMap<String, Tensor>,
    merge: bool,
) -> Result<CheckReport> {
    let device = model.device().clone();
    let batch = reference_batch(r, &device)?;
    let mut report = CheckReport::default();
    let (logits, loss) = model.forward_loss(&batch, true)?;
    report.logits_max_abs_diff = max_abs_diff(&logits, get(r, "logits")?)?;
    let mask = ints(get(r, "attention_mask")?)?;
    let ours = logits
        .argmax(candle_core::D::Minus1)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let theirs = get(r, "logits")?
        .argmax(candle_core::D::Minus1)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    report.positions = mask.iter().filter(|&&m| m == 1).count();
    report.argmax_mismatches = (0..mask.len())
        .filter(|&i| mask[i] == 1 && ours[i] != theirs[i])
        .count();
    let mean = loss.mean()?;
    report.loss = mean.to_scalar::<f32>()?;
    report.reference_loss = get(r, "loss")?.flatten_all()?.to_vec1::<f32>()?[0];
    report.loss_rel_diff = ((report.loss - report.reference_loss) / report.reference_loss).abs();

    let grads = mean.backward()?;
    for p in model.params() {
        let Some(reference) = r.get(&format!("grad.{}", p.name())) else {
            continue;
        };
        let g = grads
            .get(p.tensor()?)
            .ok_or_else(|| ModelError::invalid(format!("{} received no gradient", p.name())))?;
        let d = rel_norm_diff(g, reference)?;
        report.grads_checked += 1;
        if report
            .grad_max_rel_diff
            .as_ref()
            .is_none_or(|(worst, _)| d > *worst)
        {
            report.grad_max_rel_diff = Some((d, p.name().to_string()));
        }
    }
    let expected = r.keys().filter(|k| k.starts_with("grad.")).count();
    if report.grads_checked != expected {
        return Err(ModelError::invalid(format!(
            "the reference has {expected} gradients but only {} match trainable parameters",
            report.grads_checked
        )));
    }

    if let Some(packed) = reference_packed_batch(r, &device)? {
        let (packed_logits, packed_loss) = model.forward_loss(&packed, false)?;
        let l = packed_loss.mean()?.to_scalar::<f32>()?;
        report.packed_loss_rel_diff =
            Some(((l - report.reference_loss) / report.reference_loss).abs());
        let mask = ints(get(r, "attention_mask")?)?;
        let (b, s, v) = get(r, "logits")?.dims3()?;
        let keep: Vec<u32> = (0..b * s)
            .filter(|&i| mask[i] == 1)
            .map(|i| i as u32)
            .collect();
        let keep = Tensor::new(keep.as_slice(), &device)?;
        let expected = get(r, "logits")?
            .reshape((b * s, v))?
            .index_select(&keep, 0)?;
        report.packed_logits_max_abs_diff =
            Some(max_abs_diff(&packed_logits.squeeze(0)?, &expected)?);
    }

    if merge {
        merge_lora(model)?;
        let mut worst: Option<f32> = None;
        for p in model.params() {
            if let Some(reference) = r.get(&format!("merged.{}", p.name())) {
                let d = max_abs_diff(p.tensor()?, reference)?;
                worst = Some(worst.map_or(d, |w| w.max(d)));
            }
        }
        report.merged_max_abs_diff = worst;
    }
    Ok(report)
}
