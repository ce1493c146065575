//! AdamW with decoupled weight decay, f32 master weights and moments, as torch.optim.AdamW
//! computes it.

use std::cell::RefCell;

use candle_core::{DType, Layout, Result, Tensor};
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
                // Two storages: the fused update writes each moment in place.
                let m = p.tensor()?.zeros_like()?.to_dtype(DType::F32)?;
                let v = m.zeros_like()?;
                self.moments.push((m, v));
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
            let h = Hyper {
                lr,
                bias1,
                bias2,
                decay: c.weight_decay != 0.0 && (c.decay_everything || decays(p.name())),
            };
            let w = var.as_tensor();
            if fused_applies(w, g, m, v) {
                fused_update(&c, &h, w, g, m, v)?;
                continue;
            }
            let (w, m2, v2) = composed_update(&c, &h, w, g, m, v)?;
            var.set(&w.to_dtype(var.dtype())?)?;
            (*m, *v) = (m2, v2);
        }
        Ok(())
    }
}

/// The step's scalars for one parameter.
struct Hyper {
    lr: f64,
    bias1: f64,
    bias2: f64,
    decay: bool,
}

/// One parameter's update from candle ops (any device and dtype): the new f32 weight and
/// moments.
fn composed_update(
    c: &AdamWConfig,
    h: &Hyper,
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = g.to_dtype(DType::F32)?;
    // torch: m.lerp_(g, 1 - beta1); v.mul_(beta2).addcmul_(g, g, 1 - beta2).
    let m = (m + ((&g - m)? * (1.0 - c.beta1))?)?;
    let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
    let mut w = w.to_dtype(DType::F32)?;
    if h.decay {
        w = (w * (1.0 - h.lr * c.weight_decay))?;
    }
    // torch: denom = sqrt(v) / sqrt(bias2) + eps; w -= lr / bias1 * m / denom.
    let denom = ((v.sqrt()? / h.bias2.sqrt())? + c.eps)?;
    let update = (m.div(&denom)? * (h.lr / h.bias1))?;
    Ok(((w - update)?, m, v))
}

/// Elements per parallel task of the fused update.
pub(crate) const TASK: usize = 1 << 15;

/// The fused update applies to f32 CPU tensors, where the composed update's dozen candle
/// ops (each a pass and a fresh tensor, several on one thread) cost a tenth of a full
/// fine-tuning step of SmolLM2-135M (docs/perf-log/2026-11-26-speed-rounds.md).
fn fused_applies(w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    ferrotune_model::ops::fused_kernels_apply(&[w, g, m, v])
}

/// Runs `f` on the elements of `N` CPU f32 tensors, read in place (made contiguous first
/// where they are not).
pub(crate) fn with_slices<const N: usize, R>(
    ts: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> Result<R>,
) -> Result<R> {
    let mut owned = Vec::with_capacity(N);
    for t in ts {
        owned.push(t.contiguous()?);
    }
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: [&[f32]; N] = [&[]; N];
    for (slot, (storage, layout)) in slices.iter_mut().zip(&guards) {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("a non-contiguous tensor".into()))?;
        *slot = match &**storage {
            candle_core::Storage::Cpu(s) => &s.as_slice::<f32>()?[start..end],
            _ => candle_core::bail!("the fused f32 kernels need CPU tensors"),
        };
    }
    f(slices)
}

/// Runs `f` on the elements of a contiguous f32 CPU tensor, written in place: its storage
/// is locked for writing, and every tensor sharing it sees the change (as with
/// `Var::set`, which copies a new value into the same storage).
fn with_mut_slice<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
    type Body<'a, R> = Box<dyn FnOnce(&mut [f32]) -> Result<R> + 'a>;
    struct InPlace<'a, R> {
        body: RefCell<Option<Body<'a, R>>>,
        out: RefCell<Option<R>>,
    }
    impl<R> candle_core::InplaceOp1 for InPlace<'_, R> {
        fn name(&self) -> &'static str {
            "adamw-in-place"
        }
        fn cpu_fwd(&self, storage: &mut candle_core::CpuStorage, layout: &Layout) -> Result<()> {
            let (start, end) = layout
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("a non-contiguous tensor".into()))?;
            let data = match storage {
                candle_core::CpuStorage::F32(v) => &mut v[start..end],
                _ => candle_core::bail!("the fused AdamW update needs f32 tensors"),
            };
            let body = self.body.borrow_mut().take();
            let body = body.ok_or_else(|| candle_core::Error::Msg("applied twice".into()))?;
            *self.out.borrow_mut() = Some(body(data)?);
            Ok(())
        }
    }
    let op = InPlace {
        body: RefCell::new(Some(Box::new(f) as Body<'_, R>)),
        out: RefCell::new(None),
    };
    t.inplace_op1(&op)?;
    op.out
        .into_inner()
        .ok_or_else(|| candle_core::Error::Msg("in-place op did not run".into()))
}

/// The composed update in one pass over the elements, split over threads, writing the
/// weight and both moments in place (no new tensors, no copy into the variable), with
/// the composed update's f32 operations in the same order (candle's `affine(mul, add)`
/// is `x * mul + add` in f32, and `x / s` for a scalar is `x * (1 / s)`), so both paths
/// give the same bits. `w`, `m` and `v` must not share storage (the moments are made
/// apart in `AdamW::step` and by the checkpoint loader).
fn fused_update(
    c: &AdamWConfig,
    h: &Hyper,
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
) -> Result<()> {
    use rayon::prelude::*;
    let n = w.elem_count();
    let k = UpdateConstants {
        a1: (1.0 - c.beta1) as f32,
        b2: c.beta2 as f32,
        a2: (1.0 - c.beta2) as f32,
        keep: (1.0 - h.lr * c.weight_decay) as f32,
        inv_sqrt_bias2: (1.0 / h.bias2.sqrt()) as f32,
        eps: c.eps as f32,
        step: (h.lr / h.bias1) as f32,
        decay: h.decay,
    };
    with_slices([g], |[g]| {
        with_mut_slice(w, |w| {
            with_mut_slice(m, |m| {
                with_mut_slice(v, |v| {
                    if [g.len(), w.len(), m.len(), v.len()] != [n; 4] {
                        candle_core::bail!(
                            "AdamW: the gradient or moments do not match the parameter"
                        );
                    }
                    w.par_chunks_mut(TASK)
                        .zip(m.par_chunks_mut(TASK))
                        .zip(v.par_chunks_mut(TASK))
                        .zip(g.par_chunks(TASK))
                        .for_each(|(((w, m), v), g)| update_chunk(&k, w, m, v, g));
                    Ok(())
                })
            })
        })
    })
}

/// The per-step constants of the fused AdamW update.
struct UpdateConstants {
    a1: f32,
    b2: f32,
    a2: f32,
    keep: f32,
    inv_sqrt_bias2: f32,
    eps: f32,
    step: f32,
    decay: bool,
}

ferrotune_model::wide_where_available! {
    /// The update of one chunk, in AVX-512's 16 lanes where the CPU has them: the
    /// baseline build's 4 lanes left the square roots and divisions in front (the
    /// optimizer's share of a step, before and after: docs/perf-log/).
    fn update_chunk(k: &UpdateConstants, w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        for (((wi, mi), vi), &gi) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let m2 = *mi + ((gi - *mi) * k.a1 + 0.0);
            let v2 = (*vi * k.b2 + 0.0) + (gi * gi * k.a2 + 0.0);
            let w2 = if k.decay { *wi * k.keep + 0.0 } else { *wi };
            let denom = (v2.sqrt() * k.inv_sqrt_bias2 + 0.0) + k.eps;
            *wi = w2 - ((m2 / denom) * k.step + 0.0);
            *mi = m2;
            *vi = v2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Where the CPU has AVX-512F the update takes its AVX-512 build, which must give
    /// the baseline build's bits.
    #[test]
    fn the_avx512_update_gives_the_baseline_bits() {
        let n = 1003;
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 13 % 97) as f32 - 48.0) * 1e-3)
            .collect();
        let w0: Vec<f32> = (0..n)
            .map(|i| ((i * 29 % 89) as f32 - 44.0) * 1e-2)
            .collect();
        for decay in [false, true] {
            let k = UpdateConstants {
                a1: 0.1,
                b2: 0.999,
                a2: 0.001,
                keep: 0.9999,
                inv_sqrt_bias2: 3.2,
                eps: 1e-8,
                step: 1e-3,
                decay,
            };
            let run = |wide: bool| {
                let (mut w, mut m, mut v) = (w0.clone(), vec![0.01f32; n], vec![1e-4f32; n]);
                if wide {
                    update_chunk(&k, &mut w, &mut m, &mut v, &g);
                } else {
                    update_chunk::body(&k, &mut w, &mut m, &mut v, &g);
                }
                [w, m, v].map(|t| t.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
            };
            assert_eq!(run(true), run(false));
        }
    }

    #[test]
    fn the_fused_update_gives_the_composed_update_bit_for_bit() {
        let dev = Device::Cpu;
        let n = 3 * TASK + 17; // several parallel tasks and a ragged end
        let c = AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        };
        for decay in [false, true] {
            let w = Tensor::randn(0f32, 1.0, (n / 17, 17), &dev).unwrap();
            let mut state = (w.clone(), w.zeros_like().unwrap(), w.zeros_like().unwrap());
            // Apart from `state`'s storages: the fused update writes in place.
            let fused = (
                w.copy().unwrap(),
                w.zeros_like().unwrap(),
                w.zeros_like().unwrap(),
            );
            for t in 1..=3 {
                let g = Tensor::randn(0f32, 1e-2, w.shape(), &dev).unwrap();
                let h = Hyper {
                    lr: 1e-3,
                    bias1: 1.0 - c.beta1.powi(t),
                    bias2: 1.0 - c.beta2.powi(t),
                    decay,
                };
                state = composed_update(&c, &h, &state.0, &g, &state.1, &state.2).unwrap();
                fused_update(&c, &h, &fused.0, &g, &fused.1, &fused.2).unwrap();
                for (a, b) in [
                    (&state.0, &fused.0),
                    (&state.1, &fused.1),
                    (&state.2, &fused.2),
                ] {
                    let (a, b) = (
                        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    );
                    let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "step {t}, decay {decay}: the two updates differ");
                }
            }
            assert_ne!(
                state.0.to_vec2::<f32>().unwrap(),
                w.to_vec2::<f32>().unwrap()
            );
        }
    }
}
