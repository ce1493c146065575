//! A named weight that is either trainable (a candle `Var`, which receives gradients) or
//! frozen (a plain tensor, which the graph never differentiates).

use candle_core::{Result, Tensor, Var};

#[derive(Debug, Clone)]
pub struct Param {
    name: String,
    tensor: Tensor,
    var: Option<Var>,
}

impl Param {
    pub fn frozen(name: impl Into<String>, tensor: Tensor) -> Self {
        Param {
            name: name.into(),
            tensor,
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

    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    pub fn var(&self) -> Option<&Var> {
        self.var.as_ref()
    }

    pub fn is_trainable(&self) -> bool {
        self.var.is_some()
    }

    /// Makes the weight trainable (a `Var` holding a copy) or frozen again.
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        match (trainable, self.var.is_some()) {
            (true, false) => {
                let var = Var::from_tensor(&self.tensor)?;
                self.tensor = var.as_tensor().clone();
                self.var = Some(var);
            }
            (false, true) => {
                self.tensor = self.tensor.detach();
                self.var = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// Replaces the value (same shape), keeping trainability.
    pub fn set(&mut self, value: &Tensor) -> Result<()> {
        match &self.var {
            Some(var) => var.set(value),
            None => {
                self.tensor = value.clone();
                Ok(())
            }
        }
    }
}
