//! A named weight that is either trainable (a candle `Var`, which receives gradients),
//! frozen (a plain tensor, which the graph never differentiates) or frozen and held in
//! a storage type of its own (GGUF blocks, 16-bit floats: `crate::stored`), which only
//! the frozen products read.

use candle_core::{Result, Tensor, Var};

use crate::ops::FrozenWeight;
use crate::stored::StoredWeight;

#[derive(Debug, Clone)]
enum Value {
    Tensor(Tensor),
    Stored(StoredWeight),
}

#[derive(Debug, Clone)]
pub struct Param {
    name: String,
    value: Value,
    var: Option<Var>,
}

impl Param {
    pub fn frozen(name: impl Into<String>, tensor: Tensor) -> Self {
        Param {
            name: name.into(),
            value: Value::Tensor(tensor),
            var: None,
        }
    }

    /// A frozen weight held in its storage type.
    pub fn stored(name: impl Into<String>, weight: StoredWeight) -> Self {
        Param {
            name: name.into(),
            value: Value::Stored(weight),
            var: None,
        }
    }

    pub fn trainable(name: impl Into<String>, tensor: Tensor) -> Result<Self> {
        let mut p = Param::frozen(name, tensor);
        p.set_trainable(true)?;
        Ok(p)
    }

    /// The Hugging Face / PEFT name of the weight.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The weight as a tensor. A weight held in a storage type has none (it is read by
    /// the frozen products, or dequantized with [`Param::to_dense`]): an error names it.
    pub fn tensor(&self) -> Result<&Tensor> {
        match &self.value {
            Value::Tensor(t) => Ok(t),
            Value::Stored(w) => candle_core::bail!(
                "{} is held as {}; this use needs it as a tensor (dequantize it first)",
                self.name,
                crate::stored::storage_name(w.dtype())
            ),
        }
    }

    /// The weight as the frozen products read it.
    pub fn frozen_weight(&self) -> FrozenWeight {
        match &self.value {
            Value::Tensor(t) => FrozenWeight::Dense(t.clone()),
            Value::Stored(w) => FrozenWeight::Stored(w.clone()),
        }
    }

    /// The weight as a tensor: itself, or dequantized to f32 on the CPU (where a stored
    /// weight lives) when it is stored.
    pub fn to_dense(&self) -> Result<Tensor> {
        self.frozen_weight().to_dense()
    }

    /// Whether the weight is held in a storage type (not a tensor).
    pub fn is_stored(&self) -> bool {
        self.stored_type().is_some()
    }

    /// The storage type of a weight held in one.
    pub fn stored_type(&self) -> Option<candle_core::quantized::GgmlDType> {
        match &self.value {
            Value::Stored(w) => Some(w.dtype()),
            Value::Tensor(_) => None,
        }
    }

    pub fn dims(&self) -> Vec<usize> {
        match &self.value {
            Value::Tensor(t) => t.dims().to_vec(),
            Value::Stored(w) => vec![w.dims().0, w.dims().1],
        }
    }

    pub fn elem_count(&self) -> usize {
        self.dims().iter().product()
    }

    pub fn var(&self) -> Option<&Var> {
        self.var.as_ref()
    }

    pub fn is_trainable(&self) -> bool {
        self.var.is_some()
    }

    /// Makes the weight trainable (a `Var` holding a copy) or frozen again. A stored
    /// weight cannot train: training it would need the f32 copy storing avoids.
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        match (trainable, self.var.is_some(), &self.value) {
            (true, false, Value::Tensor(t)) => {
                let var = Var::from_tensor(t)?;
                self.value = Value::Tensor(var.as_tensor().clone());
                self.var = Some(var);
            }
            (true, false, Value::Stored(w)) => candle_core::bail!(
                "{} is held as {}, and a quantized weight does not train: tune a quantized \
                 base with LoRA (finetuning_type: lora), or load the base unquantized",
                self.name,
                crate::stored::storage_name(w.dtype())
            ),
            (false, true, Value::Tensor(t)) => {
                self.value = Value::Tensor(t.detach());
                self.var = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// Replaces the value (same shape), keeping trainability. A stored weight becomes a
    /// tensor.
    pub fn set(&mut self, value: &Tensor) -> Result<()> {
        match &self.var {
            Some(var) => var.set(value),
            None => {
                self.value = Value::Tensor(value.clone());
                Ok(())
            }
        }
    }
}
