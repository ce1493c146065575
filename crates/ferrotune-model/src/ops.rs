//! Differentiable building blocks, composed from candle primitives that have a backward
//! pass. candle-nn's fused `softmax_last_dim`, `rms_norm`, `rope` and `sdpa` have none and
//! silently drop gradients, so none of them is used here.

use candle_core::backend::BackendStorage;
use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, D,
};

/// `x * rsqrt(mean(x^2) + eps) * weight`, in f32 as transformers computes it.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let variance = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x32.broadcast_mul(&(variance + eps)?.sqrt()?.recip()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Softmax over the last dimension. The max is detached: softmax does not depend on the
/// shift, so it needs no gradient.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// `log_softmax` over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
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
    x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?
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
        let (n, k) = xl.shape().dims2()?;
        let (out, _) = wl.shape().dims2()?;
        let res = x.matmul(w, (1, n, out, k), xl, &wl.transpose(0, 1)?)?;
        Ok((res, Shape::from((n, out))))
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
            Some(grad.matmul(w)?)
        } else {
            None
        };
        Ok((dx, None))
    }
}

/// A frozen linear layer with a LoRA adapter, `x W^T + b + scale (x A^T) B^T`, as one op.
///
/// Composed from candle ops, the graph would keep three (rows, out) tensors per layer (the
/// base output, the adapter output and their sum) and candle would compute a gradient for
/// the frozen weight. This op keeps only its output and computes gradients for `x`, `A`
/// and `B` alone, recomputing the small (rows, rank) product `x A^T` in the backward pass.
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
    let mut y = xd.matmul(&w.t()?)?;
    if let Some(bias) = bias {
        y = y.broadcast_add(bias)?;
    }
    let u = xd.matmul(&ad.t()?)?.affine(scale, 0.0)?;
    let y = (y + u.matmul(&bd.t()?)?)?.contiguous()?;
    let op = LoraOp {
        w: w.clone(),
        scale,
        value: Mutex::new(Some(y)),
    };
    x.apply_op3(a, b, op)
}

struct LoraOp {
    w: Tensor,
    scale: f64,
    /// The forward result, handed over (and released) by the forward call.
    value: Mutex<Option<Tensor>>,
}

impl LoraOp {
    fn take_value(&self) -> Result<Tensor> {
        self.value
            .lock()
            .map_err(|_| candle_core::Error::Msg("lora value lock poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("lora op applied twice".into()))
    }
}

impl CustomOp3 for LoraOp {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let value = self.take_value()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("lora-linear: value is not on the CPU"),
        }
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
        let value = self.take_value()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("lora-linear: value is not on the GPU"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x_in, a, b, g) = (x.detach(), a.detach(), b.detach(), grad.detach());
        let u = x_in.matmul(&a.t()?)?;
        let db = g.t()?.matmul(&u)?.affine(self.scale, 0.0)?;
        let gu = g.matmul(&b)?.affine(self.scale, 0.0)?;
        let da = gu.t()?.matmul(&x_in)?;
        let dx = if x.track_op() {
            Some((g.matmul(&self.w)? + gu.matmul(&a)?)?)
        } else {
            None
        };
        Ok((dx, Some(da), Some(db)))
    }
}
