//! Differentiable building blocks, composed from candle primitives that have a backward
//! pass. candle-nn's fused `softmax_last_dim`, `rms_norm`, `rope` and `sdpa` have none and
//! silently drop gradients, so none of them is used here; f32 CPU tensors go through our
//! own fused ops instead (`fused`), which have one.

pub mod fused;
pub mod gemm;
pub mod lanes;

use candle_core::backend::BackendStorage;
use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, D,
};

/// `x * rsqrt(mean(x^2) + eps) * weight`, in f32 as transformers computes it.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::applies(&[x, weight]) {
        return fused::rms_norm(x, weight, eps);
    }
    rms_norm_composed(x, weight, eps)
}

/// `rms_norm` from candle ops, for every device and dtype.
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let variance = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x32.broadcast_mul(&(variance + eps)?.sqrt()?.recip()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// `[-x2, x1]` for `x = [x1, x2]` split in halves on the last dimension (HF's rotate_half).
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// Rotary embedding of `x` (batch, heads, seq, head_dim) with `cos`/`sin` of shape
/// (batch, 1, seq, head_dim).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused::applies(&[x, cos, sin]) {
        return fused::rope(x, cos, sin);
    }
    apply_rope_composed(x, cos, sin)
}

/// `apply_rope` from candle ops, for every device and dtype.
pub fn apply_rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?
}

/// `silu(gate) * up`, the gated activation of the SwiGLU MLP.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused::applies(&[gate, up]) {
        return fused::swiglu(gate, up);
    }
    swiglu_composed(gate, up)
}

/// `swiglu` from candle ops, for every device and dtype.
pub fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// Repeats key/value heads for grouped-query attention: (b, kv, s, d) -> (b, kv*n, s, d).
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, s, d))?
        .reshape((b, kv * n_rep, s, d))
}

/// `x @ w^T` for a frozen weight `w` (out, in) and `x` (n, in): the backward pass computes
/// the gradient of `x` only. candle's own matmul backward also computes (and keeps) a
/// gradient for the weight, which LoRA and freeze tuning never use.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (_, k) = x.dims2()?;
    let (_, k2) = w.dims2()?;
    if k != k2 {
        candle_core::bail!("frozen_linear: input has {k} features, weight expects {k2}");
    }
    x.apply_op2(w, FrozenMatmul)
}

struct FrozenMatmul;

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        gemm::cpu_matmul(x, xl, w, &wl.transpose(0, 1)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, k) = xl.shape().dims2()?;
        let (out, _) = wl.shape().dims2()?;
        let res = x.matmul(w, (1, n, out, k), xl, &wl.transpose(0, 1)?)?;
        Ok((res, Shape::from((n, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The input of the first layer is not tracked when the embeddings are frozen.
        let dx = if x.track_op() {
            Some(gemm::matmul(&grad.detach(), &w.detach())?)
        } else {
            None
        };
        Ok((dx, None))
    }
}

/// The forward pass of a three-input op whose value was computed outside the graph (with
/// detached tensors) and stored in its `value` field: it only hands the value over, so
/// the op contributes just its backward pass.
macro_rules! precomputed_forward {
    () => {
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            cpu_storage(&take(&self.value)?)
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            _: &candle_core::CudaStorage,
            _: &Layout,
            _: &candle_core::CudaStorage,
            _: &Layout,
            _: &candle_core::CudaStorage,
            _: &Layout,
        ) -> Result<(candle_core::CudaStorage, Shape)> {
            cuda_storage(&take(&self.value)?)
        }
    };
}

/// A frozen linear layer with a LoRA adapter, `x W^T + b + scale (x A^T) B^T`, as one op.
///
/// Composed from candle ops, the graph would keep three (rows, out) tensors per layer (the
/// base output, the adapter output and their sum) and candle would compute a gradient for
/// the frozen weight. This op keeps only its output and the small (rows, rank) product
/// `x A^T`, and computes gradients for `x`, `A` and `B` alone. The two-term sums (the
/// output, and the input's gradient `g W + s (g B) A`) accumulate in one buffer
/// (`gemm::sum_of_products`).
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    // The value, computed outside the graph.
    let (xd, ad, bd) = (x.detach(), a.detach(), b.detach());
    let u = gemm::matmul(&xd, &ad.t()?)?;
    let mut y = gemm::sum_of_products(&[(&xd, &w.t()?, 1.0), (&u, &bd.t()?, scale)])?;
    if let Some(bias) = bias {
        y = y.broadcast_add(bias)?;
    }
    let op = LoraOp {
        w: w.clone(),
        scale,
        u,
        value: Mutex::new(Some(y.contiguous()?)),
    };
    x.apply_op3(a, b, op)
}

struct LoraOp {
    w: Tensor,
    scale: f64,
    /// `x A^T`, (rows, rank).
    u: Tensor,
    /// The forward result, handed over (and released) by the forward call.
    value: Mutex<Option<Tensor>>,
}

impl CustomOp3 for LoraOp {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    precomputed_forward!();

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x_in, a, b, g) = (x.detach(), a.detach(), b.detach(), grad.detach());
        let s = self.scale;
        let db = gemm::sum_of_products(&[(&g.t()?, &self.u, s)])?;
        let gu = gemm::sum_of_products(&[(&g, &b, s)])?;
        let da = gemm::matmul(&gu.t()?, &x_in)?;
        let dx = if x.track_op() {
            let w = self.w.detach();
            Some(gemm::sum_of_products(&[(&g, &w, 1.0), (&gu, &a, 1.0)])?)
        } else {
            None
        };
        Ok((dx, Some(da), Some(db)))
    }
}

/// Scaled dot-product attention `softmax(q k^T * scale + bias) v` that keeps no
/// (seq x seq) tensor for the backward pass: the forward keeps only its output and the
/// row-wise log-sum-exp, and the backward recomputes the probabilities (the memory-saving
/// idea of FlashAttention, without its tiling). `q` (b, h, s, d), `k` and `v` (b, h, t, d),
/// `bias` (b, 1, s, t) additive.
///
/// f32 CPU tensors compute the softmax (and its gradient) in fused parallel passes
/// (`fused::attention_probs`, `fused::attention_score_grad`).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let fused = fused::applies(&[q, k, v, bias]);
    attention_with(q, k, v, bias, scale, fused)
}

/// `attention` from candle ops alone, for every device and dtype.
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    attention_with(q, k, v, bias, scale, false)
}

fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
    fused: bool,
) -> Result<Tensor> {
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let raw = gemm::matmul(&qd, &kd.t()?)?;
    let (out, lse) = if fused {
        let (p, lse) = fused::attention_probs(&raw, bias, scale, None)?;
        (gemm::matmul(&p, &vd)?, lse)
    } else {
        let scores = raw.affine(scale, 0.0)?.broadcast_add(bias)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let exp = scores.broadcast_sub(&max)?.exp()?;
        let sum = exp.sum_keepdim(D::Minus1)?;
        let out = gemm::matmul(&exp, &vd)?.broadcast_div(&sum)?;
        (out, (max + sum.log()?)?)
    };
    drop(raw);
    q.apply_op3(
        k,
        v,
        AttentionOp {
            bias: bias.clone(),
            scale,
            lse,
            fused,
            value: Mutex::new(Some(out.contiguous()?)),
        },
    )
}

struct AttentionOp {
    bias: Tensor,
    scale: f64,
    /// log(sum(exp(scores))) per query row, (b, h, s, 1).
    lse: Tensor,
    /// Whether the backward pass takes the fused kernels, as the forward did.
    fused: bool,
    value: Mutex<Option<Tensor>>,
}

pub(crate) fn take(value: &Mutex<Option<Tensor>>) -> Result<Tensor> {
    value
        .lock()
        .map_err(|_| candle_core::Error::Msg("custom op value lock poisoned".into()))?
        .take()
        .ok_or_else(|| candle_core::Error::Msg("custom op applied twice".into()))
}

/// The storage of a tensor computed outside the graph, copied out for a custom op.
pub(crate) fn cpu_storage(value: &Tensor) -> Result<(CpuStorage, Shape)> {
    let (storage, layout) = value.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
        _ => candle_core::bail!("expected a CPU tensor"),
    }
}

#[cfg(feature = "cuda")]
pub(crate) fn cuda_storage(value: &Tensor) -> Result<(candle_core::CudaStorage, Shape)> {
    let (storage, layout) = value.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
        _ => candle_core::bail!("expected a CUDA tensor"),
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention"
    }

    precomputed_forward!();

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, o, g) = (
            q.detach(),
            k.detach(),
            v.detach(),
            out.detach(),
            grad.detach(),
        );
        if self.fused {
            let raw = gemm::matmul(&q, &k.t()?)?;
            let (p, _) = fused::attention_probs(&raw, &self.bias, self.scale, Some(&self.lse))?;
            drop(raw);
            let dv = gemm::matmul(&p.t()?, &g)?;
            let dp = gemm::matmul(&g, &v.t()?)?;
            let row = (&g * &o)?.sum_keepdim(D::Minus1)?;
            let ds = fused::attention_score_grad(&p, &dp, &row, self.scale)?;
            let dq = gemm::matmul(&ds, &k)?;
            let dk = gemm::matmul(&ds.t()?, &q)?;
            return Ok((Some(dq), Some(dk), Some(dv)));
        }
        let scores = q
            .matmul(&k.t()?)?
            .affine(self.scale, 0.0)?
            .broadcast_add(&self.bias)?;
        let p = scores.broadcast_sub(&self.lse)?.exp()?;
        let dv = gemm::matmul(&p.t()?, &g)?;
        let dp = gemm::matmul(&g, &v.t()?)?;
        let row = (&g * &o)?.sum_keepdim(D::Minus1)?;
        let ds = (p * dp.broadcast_sub(&row)?)?;
        let dq = gemm::matmul(&ds, &k)?.affine(self.scale, 0.0)?;
        let dk = gemm::matmul(&ds.t()?, &q)?.affine(self.scale, 0.0)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
