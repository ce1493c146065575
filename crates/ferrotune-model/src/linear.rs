//! A linear projection with an optional bias and an optional LoRA adapter.

use candle_core::{Result, Tensor};

use crate::ops::{frozen_linear, lora_linear, trainable_linear, FrozenWeight};
use crate::param::Param;

/// LoRA: `y = x W^T + b + scale * (dropout(x) A^T) B^T` with A (r, in) and B (out, r).
#[derive(Debug, Clone)]
pub struct LoraWeights {
    pub a: Param,
    pub b: Param,
    pub scale: f64,
    pub dropout: f32,
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
    pub lora: Option<LoraWeights>,
}

impl Linear {
    pub fn new(weight: Param, bias: Option<Param>) -> Self {
        Linear {
            weight,
            bias,
            lora: None,
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x` (..., in) -> (..., out). `train` enables LoRA dropout.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = *dims.last().expect("input has dimensions");
        let rows = x.elem_count() / in_f;
        let x2 = x.reshape((rows, in_f))?;
        let bias = self.bias.as_ref().map(Param::tensor).transpose()?;
        let y = match &self.lora {
            // The common case, frozen base and no dropout: one fused op.
            Some(lora) if self.base_is_frozen() && !(train && lora.dropout > 0.0) => {
                // Adapters keep f32 master weights; compute in the input's dtype.
                let (a, b) = (
                    lora.a.tensor()?.to_dtype(x2.dtype())?,
                    lora.b.tensor()?.to_dtype(x2.dtype())?,
                );
                lora_linear(&x2, &self.frozen_weight(), bias, &a, &b, lora.scale)?
            }
            _ => {
                let mut y = if self.weight.is_trainable() {
                    trainable_linear(&x2, self.weight.tensor()?)?
                } else {
                    frozen_linear(&x2, &self.frozen_weight())?
                };
                if let Some(bias) = bias {
                    y = y.broadcast_add(bias)?;
                }
                if let Some(lora) = &self.lora {
                    let xd = if train && lora.dropout > 0.0 {
                        crate::ops::dropout::dropout(&x2, lora.dropout)?
                    } else {
                        x2
                    };
                    let (a, b) = (
                        lora.a.tensor()?.to_dtype(xd.dtype())?,
                        lora.b.tensor()?.to_dtype(xd.dtype())?,
                    );
                    let u = trainable_linear(&xd, &a)?.affine(lora.scale, 0.0)?;
                    y = (y + trainable_linear(&u, &b)?)?;
                }
                y
            }
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("dims") = y.dim(1)?;
        y.reshape(out_dims)
    }

    /// The base weight as the frozen products read it (when it does not train): a
    /// tensor, or the weight in its storage type.
    pub fn frozen_weight(&self) -> FrozenWeight {
        self.weight.frozen_weight()
    }

    fn base_is_frozen(&self) -> bool {
        !self.weight.is_trainable() && !self.bias.as_ref().is_some_and(Param::is_trainable)
    }

    /// The weights, for visiting every parameter.
    pub fn params(&self) -> impl Iterator<Item = &Param> {
        std::iter::once(&self.weight)
            .chain(self.bias.iter())
            .chain(self.lora.iter().flat_map(|l| [&l.a, &l.b]))
    }

    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        std::iter::once(&mut self.weight)
            .chain(self.bias.iter_mut())
            .chain(self.lora.iter_mut().flat_map(|l| [&mut l.a, &mut l.b]))
    }

    /// `W + scale * B A`: the LoRA update folded into the weight (dequantized when the
    /// base is stored).
    pub fn merged_weight(&self) -> Result<Tensor> {
        let w = &self.weight.to_dense()?;
        match &self.lora {
            Some(l) => {
                let delta = l.b.tensor()?.matmul(l.a.tensor()?)?.affine(l.scale, 0.0)?;
                (w + delta.to_dtype(w.dtype())?)?.detach().copy()
            }
            None => Ok(w.clone()),
        }
    }
}
