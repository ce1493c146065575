//! LoRA's inverted dropout, with masks that can be drawn again: gradient checkpointing
//! recomputes a decoder layer in the backward pass, and the recomputation must drop the
//! same inputs the first pass dropped, or its gradient is not the chain rule's.
//!
//! A training pass draws one seed (`pass_seed`), and each decoder layer runs inside
//! [`with_layer_masks`] with a seed made from it and the layer's index: each dropout call
//! in the layer then takes its mask from that seed and the call's place in the layer.
//! Outside a layer (or outside training) masks come from candle's generator.
//!
//! Shapes: x (N, IN); the mask (N, IN), 0 or 1 / (1 - p).

use std::cell::Cell;

use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};

thread_local! {
    /// The current layer's seed and how many masks it has drawn.
    static LAYER: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
    /// A seed for the next passes, set by [`with_pass_seed`].
    static PASS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The seed of a training pass: the one [`with_pass_seed`] set, else a fresh one.
pub fn pass_seed() -> u64 {
    PASS.get().unwrap_or_else(rand::random)
}

/// Runs `f` with every training pass in it seeded by `seed` (reproducible dropout: tests,
/// and checks that compare two ways of computing one step).
pub fn with_pass_seed<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    let old = PASS.replace(Some(seed));
    let out = f();
    PASS.set(old);
    out
}

/// Runs decoder layer `layer`'s forward pass `f` with its dropout masks drawn from the
/// pass seed: the same masks each time it runs with the same seed.
pub fn with_layer_masks<R>(pass: u64, layer: usize, f: impl FnOnce() -> R) -> R {
    let seed = pass ^ (layer as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let old = LAYER.replace(Some((seed, 0)));
    let out = f();
    LAYER.set(old);
    out
}

/// `x` with each element zeroed with probability `p` and the others scaled by
/// `1 / (1 - p)`.
pub fn dropout(x: &Tensor, p: f32) -> Result<Tensor> {
    let Some((seed, drawn)) = LAYER.get() else {
        return candle_nn::ops::dropout(x, p);
    };
    LAYER.set(Some((seed, drawn + 1)));
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability {p} is not in [0, 1)");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(drawn));
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}
