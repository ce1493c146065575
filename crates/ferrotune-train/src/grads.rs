//! Gradients over an accumulation window: summed per parameter, measured by their global
//! norm and clipped as torch's `clip_grad_norm_` does.

use candle_core::{backprop::GradStore, DType, Result, Tensor};
use ferrotune_model::Param;

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
            if let Some(g) = store.get(p.tensor()) {
                *slot = Some(match slot.take() {
                    Some(sum) => (sum + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    /// Adds another window's sums, slot by slot (for data parallelism: the shards of one
    /// micro-batch, merged in shard order so that the result does not depend on timing).
    pub fn merge(&mut self, other: Accumulated) -> Result<()> {
        for (slot, g) in self.grads.iter_mut().zip(other.grads) {
            if let Some(g) = g {
                *slot = Some(match slot.take() {
                    Some(sum) => (sum + g)?,
                    None => g,
                });
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
                None => p.tensor().zeros_like(),
            })
            .collect()
    }
}

/// The L2 norm of all gradients together.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
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
