//! Elastic weight consolidation against catastrophic forgetting: a diagonal Fisher
//! information F estimated on reference data before training, and the penalty
//! `lambda / 2 * sum_i F_i (theta_i - theta*_i)^2` pulling each weight towards its value
//! before training in proportion to how much the reference data depends on it.
//!
//! The Fisher is the empirical one: the mean over reference batches of the squared
//! gradient of the batch loss. The penalty's gradient `lambda F (theta - theta*)` is added
//! to the accumulated gradients directly; no graph is built for it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Result, Tensor};
use ferrotune_dist::Collective;
use ferrotune_model::{Batch, CausalLm, Param};

#[derive(Debug, Clone)]
pub struct Ewc {
    pub lambda: f64,
    /// Per trainable parameter, in the order of the trainable parameters.
    pub fisher: Vec<Tensor>,
    pub anchor: Vec<Tensor>,
}

impl Ewc {
    /// Estimates the Fisher of the trainable parameters of `model` on `batches`. With
    /// several processes each takes every `size`-th batch and the sums are added over
    /// the processes, so every process ends with the Fisher of all the batches.
    pub fn estimate(
        model: &CausalLm,
        batches: &[Batch],
        lambda: f64,
        world: &dyn Collective,
    ) -> Result<Self> {
        let params: Vec<&Param> = model.trainable_params();
        let mut fisher: Vec<Tensor> = params
            .iter()
            .map(|p| p.tensor()?.zeros_like())
            .collect::<Result<_>>()?;
        let mut used = 0usize;
        let ours = batches
            .iter()
            .filter(|b| b.supervised_tokens > 0)
            .enumerate()
            .filter(|(i, _)| i % world.size() == world.rank())
            .map(|(_, b)| b);
        for batch in ours {
            let loss = model.loss(batch, false)?;
            let grads = loss.mean()?.backward()?;
            for (f, p) in fisher.iter_mut().zip(&params) {
                if let Some(g) = grads.get(p.tensor()?) {
                    // Detached: the sum must not keep every batch's graph alive.
                    *f = (&*f + g.sqr()?)?.detach();
                }
            }
            used += 1;
        }
        let mut count = used as f64;
        crate::distributed::all_reduce(world, &mut fisher, std::slice::from_mut(&mut count))?;
        let used = count as usize;
        if used == 0 {
            candle_core::bail!("EWC: the reference data has no supervised token");
        }
        let fisher = fisher
            .into_iter()
            .map(|f| f / used as f64)
            .collect::<Result<_>>()?;
        let anchor = params
            .iter()
            .map(|p| p.tensor()?.detach().copy())
            .collect::<Result<_>>()?;
        Ok(Ewc {
            lambda,
            fisher,
            anchor,
        })
    }

    /// The penalty's value for the current parameters.
    pub fn penalty(&self, params: &[&Param]) -> Result<f64> {
        let mut total = 0f64;
        for ((p, f), a) in params.iter().zip(&self.fisher).zip(&self.anchor) {
            let d = (p.tensor()?.detach() - a)?;
            total += (f * d.sqr()?)?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        Ok(0.5 * self.lambda * total)
    }

    /// Adds the penalty's gradient `lambda F (theta - theta*)` to `grads`.
    pub fn add_gradient(&self, params: &[&Param], grads: &mut [Tensor]) -> Result<()> {
        for (((p, f), a), g) in params
            .iter()
            .zip(&self.fisher)
            .zip(&self.anchor)
            .zip(grads.iter_mut())
        {
            // Detached from the weights: otherwise every step's gradient (and through it
            // AdamW's moments) would keep the previous steps' graphs alive.
            let pull = ((p.tensor()?.detach() - a)? * f)?.affine(self.lambda, 0.0)?;
            *g = (&*g + pull)?.detach();
        }
        Ok(())
    }

    /// Saves the Fisher and anchor by parameter name.
    pub fn save(&self, params: &[&Param], path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        for ((p, f), a) in params.iter().zip(&self.fisher).zip(&self.anchor) {
            map.insert(format!("fisher.{}", p.name()), f.to_device(&Device::Cpu)?);
            map.insert(format!("anchor.{}", p.name()), a.to_device(&Device::Cpu)?);
        }
        candle_core::safetensors::save(&map, path)
    }

    /// Loads a saved Fisher for the given parameters.
    pub fn load(params: &[&Param], path: &Path, lambda: f64) -> Result<Self> {
        let device = params
            .first()
            .and_then(|p| p.tensor().ok().map(|t| t.device().clone()))
            .unwrap_or(Device::Cpu);
        let map = candle_core::safetensors::load(path, &device)?;
        let get = |kind: &str, p: &Param| {
            map.get(&format!("{kind}.{}", p.name()))
                .cloned()
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "{}: no {kind} for {}",
                        path.display(),
                        p.name()
                    ))
                })
        };
        Ok(Ewc {
            lambda,
            fisher: params
                .iter()
                .map(|p| get("fisher", p))
                .collect::<Result<_>>()?,
            anchor: params
                .iter()
                .map(|p| get("anchor", p))
                .collect::<Result<_>>()?,
        })
    }
}
