//! ferrotune's model side: Llama-family decoders (Llama, Mistral, Qwen2, Qwen3) with a
//! forward pass candle can differentiate, matching transformers in f32.

pub mod batch;
pub mod check;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hub;
pub mod infer;
pub mod init;
pub mod linear;
pub mod llama;
pub mod loss;
pub mod memory;
pub mod ops;
pub mod param;
pub mod save;
pub mod stored;
pub mod tuning;
pub mod weights;

pub use batch::{Batch, Example, IGNORE_INDEX};
pub use config::{Architecture, ModelConfig};
pub use error::{ModelError, Result};
pub use llama::{CausalLm, KvCache};
pub use loss::{LossSum, SequenceLogps};
pub use param::Param;
