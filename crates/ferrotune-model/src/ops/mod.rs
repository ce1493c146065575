//! Differentiable building blocks of the model, one file per operation. Each file holds
//! the op's composed reference version (candle primitives with a backward pass, for every
//! device and dtype), its fused CPU kernel for f32 tensors and that kernel's backward,
//! forward beside backward, under a legend of the shapes it uses.
//!
//! candle-nn's fused `softmax_last_dim`, `rms_norm`, `rope` and `sdpa` have no backward
//! pass and silently drop gradients, so none of them is used here.
//!
//! Composed from candle ops, RMSNorm, the rotary embedding, `silu(gate) * up` and the
//! cross-entropy make several passes over their tensors, each allocating a fresh tensor
//! (several of them kept for the backward pass), mostly on one thread while the other
//! waits; the fused kernels make one pass forward and one backward, split over rows on
//! rayon's pool.
//!
//! Shared helpers: `gemm` (the matrix products), `lanes` (lane-level loops, shared with
//! decoding), `custom_op` (the plumbing of a custom op), `mask` (which keys a query sees,
//! for training and decoding).

mod attention;
pub mod bf16;
mod cross_entropy;
mod custom_op;
pub mod dropout;
pub mod gemm;
pub mod lanes;
mod linear;
pub mod mask;
pub mod preference;
mod rms_norm;
mod rope;
mod stored;
mod swiglu;

use candle_core::{DType, Tensor};

pub use attention::{attention, attention_composed, repeat_kv};
pub use cross_entropy::{
    cross_entropy, cross_entropy_composed, cross_entropy_fused, linear_cross_entropy,
    linear_cross_entropy_frozen,
};
pub use linear::{frozen_linear, lora_linear, trainable_linear, FrozenWeight};
pub use rms_norm::{rms_norm, rms_norm_composed, rms_norm_fused};
pub use rope::{
    apply_rope, apply_rope_composed, apply_rope_fused, inverse_frequencies, rope_tables,
};
pub use swiglu::{swiglu, swiglu_composed, swiglu_fused};

/// Whether the fused kernels apply: every tensor f32 and on the CPU.
pub fn fused_kernels_apply(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}
