//! The products of a linear projection, `y = x W^T (+ b)`, in each of the three ways its
//! weight takes part in training, each with its backward beside it.
//!
//! Shapes: x (N, IN), N rows of input; W (OUT, IN); b (OUT); y and its gradient g
//! (N, OUT); LoRA's A (R, IN) and B (OUT, R), u = x A^T (N, R).
//!
//! * `trainable_linear`: W trains; the backward gives dx = g W and dW = g^T x.
//! * `frozen_linear`: W is a [`FrozenWeight`]; the backward gives dx = g W alone.
//! * `lora_linear`: a frozen W with a LoRA adapter, one op; the backward gives dx, dA, dB.
//!
//! The matrix products themselves are `gemm`'s.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::custom_op::{precomputed_forward, slice};
use super::{gemm, stored};
use crate::stored::StoredWeight;

/// A weight that does not train, (out, in), in the storage the products read it from.
///
/// Each storage type is a variant whose arms of [`FrozenWeight::forward_cpu`] (`x W^T`
/// inside the op's forward pass), [`FrozenWeight::input_gradient`] (`g W`) and the two
/// sums with LoRA's terms read it in its own type; `frozen_linear` and `lora_linear`
/// take any of them unchanged.
#[derive(Debug, Clone)]
pub enum FrozenWeight {
    /// A candle tensor of any dtype and device: f32 on the CPU goes through `gemm`'s
    /// kernels, everything else through candle's matmul.
    Dense(Tensor),
    /// GGUF blocks or 16-bit floats on the CPU, multiplied by dequantized panels
    /// (`ops::stored`).
    Stored(StoredWeight),
}

impl FrozenWeight {
    /// (out, in).
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            FrozenWeight::Dense(w) => w.dims2(),
            FrozenWeight::Stored(w) => Ok(w.dims()),
        }
    }

    /// Rows `r0 .. r0 + n` (the head's vocabulary blocks), sharing the storage.
    pub fn narrow_rows(&self, r0: usize, n: usize) -> Result<FrozenWeight> {
        Ok(match self {
            FrozenWeight::Dense(w) => FrozenWeight::Dense(w.narrow(0, r0, n)?),
            FrozenWeight::Stored(w) => FrozenWeight::Stored(w.narrow_rows(r0, n)?),
        })
    }

    /// The rows `ids` (an embedding lookup), (ids, in), in f32 for a stored weight and in
    /// the tensor's dtype for a dense one. Not tracked.
    pub fn gather_rows(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => w.detach().index_select(ids, 0),
            FrozenWeight::Stored(w) => w.gather_rows(&ids.to_vec1::<u32>()?, ids.device()),
        }
    }

    /// The whole weight as a tensor (dequantized to f32 on the CPU, where a stored weight
    /// lives), e.g. to merge or export.
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => Ok(w.clone()),
            FrozenWeight::Stored(w) => w.dequantize(&candle_core::Device::Cpu),
        }
    }

    /// `x W^T` for `x` (n, in). Not tracked.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_plus(x, &[])
    }

    /// `x W^T` for `x` (n, in) on the CPU, inside a custom op's forward pass.
    fn forward_cpu(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        match self {
            FrozenWeight::Dense(w) => {
                let (storage, wl) = w.storage_and_layout();
                match &*storage {
                    Storage::Cpu(ws) => gemm::cpu_matmul(x, xl, ws, &wl.transpose(0, 1)?),
                    _ => {
                        candle_core::bail!("frozen_linear: the input is on the CPU, the weight not")
                    }
                }
            }
            FrozenWeight::Stored(w) => {
                let (n, _) = xl.shape().dims2()?;
                let y = stored::forward(w, slice(x, xl, "frozen_linear")?, n)?;
                Ok((CpuStorage::F32(y), Shape::from((n, w.dims().0))))
            }
        }
    }

    /// `x W^T` for `x` (n, in) on a CUDA device, inside a custom op's forward pass.
    #[cfg(feature = "cuda")]
    fn forward_cuda(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        match self {
            FrozenWeight::Dense(w) => {
                let (storage, wl) = w.storage_and_layout();
                let Storage::Cuda(ws) = &*storage else {
                    candle_core::bail!(
                        "frozen_linear: the input is on a CUDA device, the weight not"
                    );
                };
                let (n, k) = xl.shape().dims2()?;
                let (out, _) = wl.shape().dims2()?;
                let res = x.matmul(ws, (1, n, out, k), xl, &wl.transpose(0, 1)?)?;
                Ok((res, Shape::from((n, out))))
            }
            FrozenWeight::Stored(w) => {
                candle_core::bail!("{w:?}: stored weights are multiplied on the CPU only")
            }
        }
    }

    /// `g W` for `g` (n, out): the input's gradient. Not tracked.
    pub fn input_gradient(&self, g: &Tensor) -> Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => gemm::matmul(g, &w.detach()),
            FrozenWeight::Stored(w) => stored::input_gradient_plus(w, g, &[]),
        }
    }

    /// `x W^T + sum_i s_i (a_i @ b_i)` for `x` (n, in), the terms accumulated into the
    /// same output (`gemm::sum_of_products`). Not tracked.
    pub fn forward_plus(&self, x: &Tensor, terms: &[(&Tensor, &Tensor, f64)]) -> Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => {
                let wt = w.t()?;
                let mut all = vec![(x, &wt, 1.0)];
                all.extend_from_slice(terms);
                gemm::sum_of_products(&all)
            }
            FrozenWeight::Stored(w) => stored::forward_plus(w, x, terms),
        }
    }

    /// `g W + sum_i s_i (a_i @ b_i)` for `g` (n, out), accumulated into one output. Not
    /// tracked.
    pub fn input_gradient_plus(
        &self,
        g: &Tensor,
        terms: &[(&Tensor, &Tensor, f64)],
    ) -> Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => {
                let w = w.detach();
                let mut all = vec![(g, &w, 1.0)];
                all.extend_from_slice(terms);
                gemm::sum_of_products(&all)
            }
            FrozenWeight::Stored(w) => stored::input_gradient_plus(w, g, terms),
        }
    }
}

/// The differentiable `x @ w^T` of a trainable weight `w` (out, in), `x` (n, in): on the
/// CPU in f32 one op whose backward computes `g w` (when `x` needs it) and `g^T x`
/// directly in the weight's layout; candle's matmul and its backward elsewhere.
pub fn trainable_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if gemm::on_cpu_path(x, w) && x.rank() == 2 {
        return x.apply_op2(w, LinearProduct);
    }
    x.matmul(&w.t()?)
}

/// `x @ w^T` of a trainable `w`, with its backward pass.
struct LinearProduct;

impl candle_core::CustomOp2 for LinearProduct {
    fn name(&self) -> &'static str {
        "linear"
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

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.detach();
        let dx = if x.track_op() {
            Some(gemm::matmul(&g, &w.detach())?)
        } else {
            None
        };
        let dw = gemm::matmul(&g.t()?, &x.detach())?;
        Ok((dx, Some(dw)))
    }
}

/// `x @ W^T` for a frozen weight `W` (out, in) and `x` (n, in): the backward pass computes
/// the gradient of `x` only. candle's own matmul backward also computes (and keeps) a
/// gradient for the weight, which LoRA and freeze tuning never use.
pub fn frozen_linear(x: &Tensor, w: &FrozenWeight) -> Result<Tensor> {
    let (_, k) = x.dims2()?;
    let (_, k2) = w.dims()?;
    if k != k2 {
        candle_core::bail!("frozen_linear: input has {k} features, weight expects {k2}");
    }
    // A stored weight's product reads its input as one contiguous f32 block on the CPU.
    let x = match w {
        FrozenWeight::Stored(_) if x.dtype() != candle_core::DType::F32 || !x.device().is_cpu() => {
            candle_core::bail!("frozen_linear: a stored weight multiplies f32 CPU inputs")
        }
        FrozenWeight::Stored(_) => x.contiguous()?,
        FrozenWeight::Dense(_) => x.clone(),
    };
    x.apply_op1(FrozenMatmul { weight: w.clone() })
}

struct FrozenMatmul {
    weight: FrozenWeight,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        self.weight.forward_cpu(x, xl)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.weight.forward_cuda(x, xl)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // The input of the first layer is not tracked when the embeddings are frozen.
        if !x.track_op() {
            return Ok(None);
        }
        Ok(Some(self.weight.input_gradient(&grad.detach())?))
    }
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
    w: &FrozenWeight,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    // The value, computed outside the graph.
    let (xd, ad, bd) = (x.detach(), a.detach(), b.detach());
    let u = gemm::matmul(&xd, &ad.t()?)?;
    let mut y = w.forward_plus(&xd, &[(&u, &bd.t()?, scale)])?;
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
    w: FrozenWeight,
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
            Some(self.w.input_gradient_plus(&g, &[(&gu, &a, 1.0)])?)
        } else {
            None
        };
        Ok((dx, Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{frozen_linear, lora_linear, trainable_linear, FrozenWeight};
    use crate::ops::gemm::tests::max_diff;

    #[test]
    fn linear_gradients_match_candle() {
        let dev = Device::Cpu;
        let x = candle_core::Var::randn(0f32, 1.0, (8, 5), &dev).unwrap();
        let w = candle_core::Var::randn(0f32, 1.0, (3, 5), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (8, 3), &dev).unwrap();
        let ours = (trainable_linear(x.as_tensor(), w.as_tensor()).unwrap() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let theirs = (x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w] {
            let (a, b) = (
                ours.get(v.as_tensor()).unwrap(),
                theirs.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(a.dims(), b.dims());
            assert!(max_diff(a, b) < 1e-5);
        }
    }

    /// The frozen products' gradients (the input's, and LoRA's A and B) are candle's
    /// matmul gradients of the same expression.
    #[test]
    fn frozen_and_lora_gradients_match_candle() {
        let dev = Device::Cpu;
        let x = candle_core::Var::randn(0f32, 1.0, (8, 5), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap();
        let a = candle_core::Var::randn(0f32, 1.0, (2, 5), &dev).unwrap();
        let b = candle_core::Var::randn(0f32, 1.0, (3, 2), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 3, &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (8, 3), &dev).unwrap();
        let frozen = FrozenWeight::Dense(w.clone());
        let loss = |y: Tensor| (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let base = x.as_tensor().matmul(&w.t().unwrap()).unwrap();

        let ours = loss(frozen_linear(x.as_tensor(), &frozen).unwrap());
        let theirs = loss(base.clone());
        let (got, want) = (
            ours.get(x.as_tensor()).unwrap(),
            theirs.get(x.as_tensor()).unwrap(),
        );
        assert!(max_diff(got, want) < 1e-5);
        assert!(frozen_linear(&x.as_tensor().narrow(1, 0, 4).unwrap(), &frozen).is_err());

        let (xt, at, bt) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
        let y = lora_linear(xt, &frozen, Some(&bias), at, bt, 0.5).unwrap();
        let adapter = xt
            .matmul(&at.t().unwrap())
            .unwrap()
            .matmul(&bt.t().unwrap())
            .unwrap();
        let composed = (base.broadcast_add(&bias).unwrap() + (adapter * 0.5).unwrap()).unwrap();
        assert!(max_diff(&y, &composed) < 1e-5);
        let (ours, theirs) = (loss(y), loss(composed));
        for t in [xt, at, bt] {
            assert!(max_diff(ours.get(t).unwrap(), theirs.get(t).unwrap()) < 1e-5);
        }
    }
}
