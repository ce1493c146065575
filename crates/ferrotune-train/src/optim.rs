//! AdamW with decoupled weight decay, f32 master weights and moments, as torch.optim.AdamW
//! computes it.

use candle_core::{DType, Result, Tensor};
use ferrotune_model::Param;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay biases and norm weights too (torch's default when given all parameters, which
    /// the reference fixtures use); LLaMA-Factory / transformers' Trainer exclude them.
    pub decay_everything: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decay_everything: false,
        }
    }
}

/// Whether transformers' Trainer applies weight decay to a parameter: not to biases and
/// not to normalisation weights.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("norm"))
}

/// Optimizer state: first and second moments per trainable parameter, in the order of the
/// parameters passed to [`AdamW::step`].
#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: usize,
    pub moments: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            moments: Vec::new(),
        }
    }

    /// One update of every parameter with its gradient at learning rate `lr`.
    pub fn step(&mut self, params: &[&Param], grads: &[Tensor], lr: f64) -> Result<()> {
        let c = self.config;
        if self.moments.is_empty() {
            for p in params {
                let z = p.tensor().zeros_like()?.to_dtype(DType::F32)?;
                self.moments.push((z.clone(), z));
            }
        }
        if self.moments.len() != params.len() || grads.len() != params.len() {
            candle_core::bail!(
                "optimizer state has {} parameters, got {}",
                self.moments.len(),
                params.len()
            );
        }
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for ((p, g), (m, v)) in params.iter().zip(grads).zip(self.moments.iter_mut()) {
            let var = p
                .var()
                .ok_or_else(|| candle_core::Error::Msg(format!("{} is not trainable", p.name())))?;
            let g = g.to_dtype(DType::F32)?;
            // torch: m.lerp_(g, 1 - beta1); v.mul_(beta2).addcmul_(g, g, 1 - beta2).
            *m = (&*m + ((&g - &*m)? * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let mut w = var.as_tensor().to_dtype(DType::F32)?;
            if c.weight_decay != 0.0 && (c.decay_everything || decays(p.name())) {
                w = (w * (1.0 - lr * c.weight_decay))?;
            }
            // torch: denom = sqrt(v) / sqrt(bias2) + eps; w -= lr / bias1 * m / denom.
            let denom = ((v.sqrt()? / bias2.sqrt())? + c.eps)?;
            let update = (m.div(&denom)? * (lr / bias1))?;
            let w = (w - update)?;
            var.set(&w.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}
