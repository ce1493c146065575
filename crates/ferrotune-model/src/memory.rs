//! The memory plan: the peak a training run will need, computed from config.json and the
//! weight files' headers before anything is loaded, so that a run that cannot fit stops
//! with a message instead of failing an allocation halfway.
//!
//! The peak is the sum of:
//! * the weights as they are held: frozen matrices in their storage type (f32, bf16,
//!   q8_0, 4-bit blocks), norms in f32;
//! * what trains, in f32: the parameters (LoRA's adapters, or the weights of full and
//!   freeze tuning, f32 copies of which the model holds), their gradients (the shards'
//!   and their sum) and AdamW's two moments;
//! * the activations the backward pass keeps: every decoder layer's, or with gradient
//!   checkpointing each layer's input plus one layer's activations and its backward's
//!   temporaries;
//! * the head and the loss: whole logits (and their gradient) for a small vocabulary, a
//!   block of at most `LOGITS_BUDGET` logits at a time above it;
//! * the process itself (the binary, its thread stacks and buffers, the tokenizer and the
//!   data).
//!
//! The activation and overhead constants were measured with `bench train` on the 2-core
//! AMD EPYC (docs/PERFORMANCE.md, "The memory plan"), fitted across model widths, layer
//! counts and sequence lengths; attention keeps O(tokens) per head (no seq x seq scores).

use candle_core::quantized::GgmlDType;
use serde::Serialize;

use crate::config::ModelConfig;
use crate::loss::LOGITS_BUDGET;
use crate::stored::{fit_type, storage_name};
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

/// How the weights are held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightStorage {
    /// Every matrix in this type (with llama.cpp's fallback for rows its blocks do not
    /// divide), the embeddings and an untied head in `embeddings`.
    Types {
        matrices: GgmlDType,
        embeddings: GgmlDType,
    },
    /// The bytes a GGUF file's tensors take, as they are.
    Bytes(u64),
}

impl WeightStorage {
    /// Every weight in f32 (a model folder loaded for training).
    pub const F32: WeightStorage = WeightStorage::Types {
        matrices: GgmlDType::F32,
        embeddings: GgmlDType::F32,
    };

    /// Every matrix in `t` (`bench train --base-dtype`, a model info row).
    pub fn uniform(t: GgmlDType) -> WeightStorage {
        WeightStorage::Types {
            matrices: t,
            embeddings: t,
        }
    }

    /// A short description (`q4_k`, `q4_k + bf16 embeddings`, `GGUF file`).
    pub fn describe(&self) -> String {
        match self {
            WeightStorage::Types {
                matrices,
                embeddings,
            } if matrices == embeddings => storage_name(*matrices).to_string(),
            WeightStorage::Types {
                matrices,
                embeddings,
            } => format!(
                "{} + {} embeddings",
                storage_name(*matrices),
                storage_name(*embeddings)
            ),
            WeightStorage::Bytes(_) => "as the GGUF file holds them".to_string(),
        }
    }
}

/// What the plan is for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanInput {
    pub tuning: Tuning,
    pub storage: WeightStorage,
    /// Rows per micro-batch.
    pub batch: usize,
    /// Tokens per row (cutoff_len: the longest a row can be).
    pub seq_len: usize,
    pub checkpointing: bool,
    /// Shards of each batch run side by side, one per thread (`cpu_data_parallel`); 1
    /// when each batch runs whole.
    pub shards: usize,
}

/// The plan's parts, in bytes.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    pub trainable_parameters: usize,
    pub weights_bytes: u64,
    /// Trainable parameters (beyond the weights), gradients and AdamW's moments.
    pub trainable_bytes: u64,
    pub activations_bytes: u64,
    pub head_bytes: u64,
    pub overhead_bytes: u64,
    pub total_bytes: u64,
}

const F32: u64 = 4;

const MIB: u64 = 1 << 20;

/// What the process holds besides the model and its activations: the binary, rayon's
/// thread stacks, gemm's packing buffers, the tokenizer and the data.
const OVERHEAD: u64 = 120 * MIB;

/// f32 values a decoder layer keeps per token for its backward pass, from its widths:
/// hidden h (norm inputs and outputs, residuals, the projections' inputs), q (queries,
/// rotated queries, attention output, the repeated keys and values), kv (keys and values
/// before and after rope) and the MLP's width i (gate, up and their product), as fitted
/// (see the module documentation).
fn kept_per_token_layer(c: &ModelConfig) -> u64 {
    let (h, i) = (c.hidden_size as f64, c.intermediate_size as f64);
    let q = (c.num_attention_heads * c.head_dim) as f64;
    let kv = (c.num_key_value_heads * c.head_dim) as f64;
    (10.0 * h + 6.5 * q + 9.6 * kv + 3.0 * i) as u64
}

/// Bytes a (rows, cols) matrix takes in `t`.
fn matrix_bytes(rows: usize, cols: usize, t: GgmlDType) -> u64 {
    let t = fit_type(t, cols);
    (rows * cols / t.block_size() * t.type_size()) as u64
}

/// Bytes of the weights held as `storage` says.
pub fn weight_bytes(c: &ModelConfig, storage: WeightStorage) -> u64 {
    let (matrices, embeddings) = match storage {
        WeightStorage::Bytes(b) => return b,
        WeightStorage::Types {
            matrices,
            embeddings,
        } => (matrices, embeddings),
    };
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let layer = matrix_bytes(q, h, matrices)
        + 2 * matrix_bytes(kv, h, matrices)
        + matrix_bytes(h, q, matrices)
        + 2 * matrix_bytes(i, h, matrices)
        + matrix_bytes(h, i, matrices);
    let heads = if c.tie_word_embeddings { 1 } else { 2 };
    let vectors = (c.num_parameters() as u64).saturating_sub(
        layer_matrix_params(c) * c.num_hidden_layers as u64 + (heads * v * h) as u64,
    );
    layer * c.num_hidden_layers as u64
        + heads as u64 * matrix_bytes(v, h, embeddings)
        + vectors * F32
}

/// Matrix parameters of one decoder layer.
fn layer_matrix_params(c: &ModelConfig) -> u64 {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    (2 * q * h + 2 * kv * h + 3 * h * i) as u64
}

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

/// The plan for training `c` as `input` says.
pub fn plan(c: &ModelConfig, input: &PlanInput) -> MemoryPlan {
    let trainable = match input.tuning {
        Tuning::Full => c.num_parameters(),
        Tuning::Lora { rank } => lora_parameters(c, rank),
        Tuning::Freeze { layers } => layers.min(c.num_hidden_layers) * layer_parameters(c),
    };
    // Full and freeze tuning train f32 weights whatever the storage: the weights are f32.
    let storage = match input.tuning {
        Tuning::Lora { .. } => input.storage,
        _ => WeightStorage::F32,
    };
    let weights = weight_bytes(c, storage);
    // LoRA's adapters are parameters beside the weights; every trained parameter has a
    // gradient and two moments, and when a batch's shards run side by side each holds
    // its own gradient until they are summed (`ferrotune_train::parallel`): measured
    // with full fine-tuning on two threads, 1 GiB at SmolLM2's size.
    let extra = match input.tuning {
        Tuning::Lora { .. } => 1,
        _ => 0,
    };
    let shard_gradients = if input.shards > 1 {
        input.shards as u64
    } else {
        0
    };
    let trainable_bytes = (extra + 3 + shard_gradients) * trainable as u64 * F32;

    let tokens = (input.batch * input.seq_len) as u64;
    let h = c.hidden_size as u64;
    let layers = c.num_hidden_layers as u64;
    let per_layer = tokens * kept_per_token_layer(c) * F32;
    let activations = if input.checkpointing {
        // Each layer's input, kept; one layer recomputed with its backward's temporaries
        // (the gradients of its activations: as much again, and more in passing); the
        // gradient flowing between layers.
        layers * tokens * h * F32 + per_layer * 5 / 2 + tokens * h * F32
    } else {
        layers * per_layer
    };
    // Logits and their gradient: whole up to the budget, a block of rows above it, with
    // the input's gradient.
    let logits = (tokens * c.vocab_size as u64).min(LOGITS_BUDGET as u64);
    let head = 2 * logits * F32 + 2 * tokens * h * F32;
    let total = weights + trainable_bytes + activations + head + OVERHEAD;
    MemoryPlan {
        trainable_parameters: trainable,
        weights_bytes: weights,
        trainable_bytes,
        activations_bytes: activations,
        head_bytes: head,
        overhead_bytes: OVERHEAD,
        total_bytes: total,
    }
}

/// Memory available to this process: the lower of the kernel's MemAvailable and the
/// cgroup's limit less its usage (cgroup v2, then v1); None where neither can be read.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024)
        });
    let read = |path: &str| -> Option<u64> {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(used)) => Some(max.saturating_sub(used)),
        _ => match (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
            read("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
        ) {
            // v1 reports "no limit" as a huge number.
            (Some(max), Some(used)) if max < (1 << 60) => Some(max.saturating_sub(used)),
            _ => None,
        },
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Bytes as GiB with two decimals, or MiB below one GiB.
pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / MIB as f64)
    }
}

/// A parsed memory size: `24GiB`, `512 MiB`, `8G`, `1.5TB` or a number of bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024f64.powi(2),
        "g" | "gb" | "gib" => 1024f64.powi(3),
        "t" | "tb" | "tib" => 1024f64.powi(4),
        _ => return None,
    };
    Some((number * scale) as u64)
}

/// Ways to make `input` fit in `limit` bytes, each with its planned peak: each change
/// that fits alone (a 4-bit base for LoRA, checkpointing, the longest cutoff_len that
/// fits, the largest batch that fits); when none does, them together.
pub fn what_would_fit(c: &ModelConfig, input: &PlanInput, limit: u64) -> Vec<(String, u64)> {
    let fits = |i: &PlanInput| plan(c, i).total_bytes <= limit;
    let q4 = WeightStorage::Types {
        matrices: GgmlDType::Q4K,
        embeddings: GgmlDType::BF16,
    };
    let mut changes: Vec<(String, PlanInput)> = Vec::new();
    if matches!(input.tuning, Tuning::Lora { .. }) && input.storage != q4 {
        let mut i = *input;
        i.storage = q4;
        changes.push(("a 4-bit base (quantization_bit: 4)".to_string(), i));
    }
    if !input.checkpointing {
        let mut i = *input;
        i.checkpointing = true;
        changes.push((
            "gradient checkpointing (leave gradient_checkpointing on)".to_string(),
            i,
        ));
    }
    let shorter = |mut i: PlanInput| {
        while i.seq_len > 16 && !fits(&i) {
            i.seq_len /= 2;
        }
        i
    };
    let smaller = |mut i: PlanInput| {
        while i.batch > 1 && !fits(&i) {
            i.batch /= 2;
        }
        i
    };
    let i = shorter(*input);
    if i.seq_len < input.seq_len {
        changes.push((format!("cutoff_len: {}", i.seq_len), i));
    }
    let i = smaller(*input);
    if i.batch < input.batch {
        changes.push((batch_advice(i.batch), i));
    }
    let mut out: Vec<(String, u64)> = changes
        .iter()
        .filter(|(_, i)| fits(i))
        .map(|(what, i)| (what.clone(), plan(c, i).total_bytes))
        .collect();
    if out.is_empty() {
        // Everything together: the base and checkpointing, then the batch, then the rows.
        let mut i = *input;
        let mut what = Vec::new();
        if matches!(input.tuning, Tuning::Lora { .. }) && input.storage != q4 {
            i.storage = q4;
            what.push("a 4-bit base (quantization_bit: 4)".to_string());
        }
        if !i.checkpointing {
            i.checkpointing = true;
            what.push("gradient checkpointing".to_string());
        }
        let batch = smaller(i).batch;
        if batch < i.batch {
            i.batch = batch;
            what.push(batch_advice(batch));
        }
        let seq = shorter(i).seq_len;
        if seq < i.seq_len {
            i.seq_len = seq;
            what.push(format!("cutoff_len: {seq}"));
        }
        if fits(&i) && !what.is_empty() {
            out.push((what.join(", with "), plan(c, &i).total_bytes));
        }
    }
    out
}

fn batch_advice(batch: usize) -> String {
    format!(
        "per_device_train_batch_size: {batch} (raise gradient_accumulation_steps to keep the \
         effective batch)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen7b() -> ModelConfig {
        ModelConfig::from_value(serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "vocab_size": 152064, "hidden_size": 3584,
            "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "tie_word_embeddings": false, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 32768
        }))
        .unwrap()
    }

    #[test]
    fn storage_types_shrink_the_weights_and_checkpointing_the_activations() {
        let c = qwen7b();
        let input = |storage, checkpointing| PlanInput {
            tuning: Tuning::Lora { rank: 8 },
            storage,
            batch: 1,
            seq_len: 1024,
            checkpointing,
            shards: 1,
        };
        let f32 = plan(&c, &input(WeightStorage::F32, true));
        let q4 = plan(&c, &input(WeightStorage::uniform(GgmlDType::Q4_0), true));
        // 7.6B parameters: 28 GiB in f32, 4.5 bits a weight in q4_0.
        assert!((f32.weights_bytes as f64 / (1u64 << 30) as f64 - 28.4).abs() < 0.5);
        let ratio = q4.weights_bytes as f64 / f32.weights_bytes as f64;
        assert!((ratio - 4.5 / 32.0).abs() < 0.01, "{ratio}");
        let plain = plan(&c, &input(WeightStorage::F32, false));
        assert!(plain.activations_bytes > 5 * f32.activations_bytes);
        assert_eq!(plain.weights_bytes, f32.weights_bytes);
    }

    #[test]
    fn what_would_fit_names_only_what_fits() {
        let c = qwen7b();
        let input = PlanInput {
            tuning: Tuning::Lora { rank: 8 },
            storage: WeightStorage::F32,
            batch: 4,
            seq_len: 4096,
            checkpointing: false,
            shards: 2,
        };
        let limit = 20u64 << 30;
        let fits = what_would_fit(&c, &input, limit);
        assert!(fits.iter().all(|(_, b)| *b <= limit));
        // An f32 7B base never fits in 20 GiB: only the 4-bit base can.
        assert!(fits.iter().any(|(what, _)| what.contains("4-bit")));
        assert!(!fits.iter().any(|(what, _)| what.contains("cutoff_len")));
        assert_eq!(parse_size("8GiB"), Some(8 << 30));
        assert_eq!(parse_size("512 MiB"), Some(512 << 20));
        assert_eq!(parse_size("lots"), None);
    }
}
