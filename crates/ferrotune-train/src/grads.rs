//! Gradients over an accumulation window: summed per parameter, measured by their global
//! norm and clipped as torch's `clip_grad_norm_` does.

use candle_core::{backprop::GradStore, DType, Result, Tensor};
use ferrotune_model::ops::fused_kernels_apply;
use ferrotune_model::Param;
use rayon::prelude::*;

use crate::optim::{with_slices, TASK};

/// `a + b`: for f32 CPU tensors one pass split over the threads (candle's add runs on one
/// thread in the binary, and a full fine-tuning step of a large vocabulary sums gradients
/// of hundreds of MB).
fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !fused_kernels_apply(&[a, b]) || a.shape() != b.shape() {
        return a + b;
    }
    let mut out = vec![0f32; a.elem_count()];
    with_slices([a, b], |[x, y]| {
        out.par_chunks_mut(TASK)
            .zip(x.par_chunks(TASK).zip(y.par_chunks(TASK)))
            .for_each(|(o, (x, y))| {
                for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
                    *o = x + y;
                }
            });
        Ok(())
    })?;
    Tensor::from_vec(out, a.shape(), a.device())
}

/// The sum of squares of a tensor's elements, each square added in f64 (the clipping
/// coefficient then depends on no summation order but the split into tasks).
fn sum_of_squares(t: &Tensor) -> Result<f64> {
    if !fused_kernels_apply(&[t]) {
        return Ok(t
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64);
    }
    with_slices([t], |[x]| {
        Ok(x.par_chunks(TASK)
            .map(|c| c.iter().map(|&v| (v * v) as f64).sum::<f64>())
            .sum())
    })
}

/// Adds `g` to the sum in `slot`, or starts it.
fn sum_into(slot: &mut Option<Tensor>, g: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        Some(sum) => add(&sum, &g)?,
        None => g,
    });
    Ok(())
}

/// Summed gradients of the trainable parameters, in a fixed order.
#[derive(Debug, Default)]
pub struct Accumulated {
    pub grads: Vec<Option<Tensor>>,
}

impl Accumulated {
    pub fn new(n: usize) -> Self {
        Accumulated {
            grads: vec![None; n],
        }
    }

    /// Adds one backward pass's gradients.
    pub fn add(&mut self, params: &[&Param], store: &GradStore) -> Result<()> {
        for (slot, p) in self.grads.iter_mut().zip(params) {
            if let Some(g) = store.get(p.tensor()?) {
                sum_into(slot, g.clone())?;
            }
        }
        Ok(())
    }

    /// Adds another window's sums, slot by slot (for data parallelism: the shards of one
    /// micro-batch, merged in shard order so that the result does not depend on timing).
    pub fn merge(&mut self, other: Accumulated) -> Result<()> {
        for (slot, g) in self.grads.iter_mut().zip(other.grads) {
            if let Some(g) = g {
                sum_into(slot, g)?;
            }
        }
        Ok(())
    }

    /// The gradients, zero for parameters that received none (a frozen path this window).
    pub fn finish(self, params: &[&Param]) -> Result<Vec<Tensor>> {
        self.grads
            .into_iter()
            .zip(params)
            .map(|(g, p)| match g {
                Some(g) => Ok(g),
                None => p.tensor()?.zeros_like(),
            })
            .collect()
    }
}

/// The L2 norm of all gradients together.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += sum_of_squares(g)?;
    }
    Ok(total.sqrt())
}

/// Scales the gradients so their global norm is at most `max_norm` (torch's rule:
/// `coef = max_norm / (norm + 1e-6)`, applied when below 1). Returns the norm before.
pub fn clip(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}
