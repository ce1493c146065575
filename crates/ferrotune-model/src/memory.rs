//! Memory needed to train, estimated before a run so users know before they run out of
//! memory. Counts f32 master weights, gradients of trainable weights, AdamW's two moments,
//! and the activations the backward pass keeps (per layer and for the logits).

use serde::Serialize;

use crate::config::ModelConfig;
use crate::tuning::LINEAR_MODULES;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tuning {
    Full,
    /// LoRA of this rank on every linear projection.
    Lora {
        rank: usize,
    },
    /// The last N decoder layers.
    Freeze {
        layers: usize,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub trainable_parameters: usize,
    pub weights_bytes: usize,
    pub gradients_bytes: usize,
    pub optimizer_bytes: usize,
    pub activations_bytes: usize,
    pub total_bytes: usize,
}

const F32: usize = 4;

/// Parameters of one decoder layer.
fn layer_parameters(c: &ModelConfig) -> usize {
    let mut one_layer = c.clone();
    one_layer.num_hidden_layers = 1;
    one_layer.vocab_size = 0;
    one_layer.num_parameters() - c.hidden_size
}

fn lora_parameters(c: &ModelConfig, rank: usize) -> usize {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let per_layer: usize = LINEAR_MODULES
        .iter()
        .map(|m| match *m {
            "q_proj" => rank * (h + q),
            "k_proj" | "v_proj" => rank * (h + kv),
            "o_proj" => rank * (q + h),
            _ => rank * (h + i),
        })
        .sum();
    per_layer * c.num_hidden_layers
}

/// The estimate for a batch of `batch` rows of `seq_len` tokens.
pub fn estimate(c: &ModelConfig, tuning: Tuning, batch: usize, seq_len: usize) -> MemoryEstimate {
    let total_params = c.num_parameters();
    let trainable = match tuning {
        Tuning::Full => total_params,
        Tuning::Lora { rank } => lora_parameters(c, rank),
        Tuning::Freeze { layers } => layers.min(c.num_hidden_layers) * layer_parameters(c),
    };
    let extra = match tuning {
        Tuning::Lora { .. } => trainable,
        _ => 0,
    };
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let tokens = batch * seq_len;
    // Kept per token and layer: norm inputs and outputs, q/k/v before and after rope,
    // repeated k/v, attention output, MLP gate/up/activation/product, residuals; and per
    // head the attention scores, their exponentials and the probabilities.
    let per_token_layer = 10 * h + 4 * q + 3 * kv + 4 * i + 3 * c.num_attention_heads * seq_len;
    // Logits, their log-softmax and its intermediates.
    let logits = 4 * tokens * c.vocab_size;
    let activations = (tokens * per_token_layer * c.num_hidden_layers + logits) * F32;
    let weights = (total_params + extra) * F32;
    let gradients = trainable * F32;
    let optimizer = 2 * trainable * F32;
    MemoryEstimate {
        trainable_parameters: trainable,
        weights_bytes: weights,
        gradients_bytes: gradients,
        optimizer_bytes: optimizer,
        activations_bytes: activations,
        total_bytes: weights + gradients + optimizer + activations,
    }
}
