//! The sampling flags `chat` and `serve` share.

use clap::Args;
use ferrotune_serve::SamplingOptions;

/// Sampling flags of `chat` and `serve`. Left out, a setting comes from the model's
/// generation_config.json as transformers would use it, else greedy decoding.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Most tokens generated per answer.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding. Sampling flags left out come from the
    /// model's generation_config.json, as in transformers (greedy when it does not sample).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Penalty for tokens already in the prompt or answer (1 = none).
    #[arg(long)]
    pub repetition_penalty: Option<f64>,
    /// Seed of the sampler (answers are reproducible for a seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl From<&SamplingArgs> for SamplingOptions {
    fn from(a: &SamplingArgs) -> Self {
        SamplingOptions {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            repetition_penalty: a.repetition_penalty,
            seed: a.seed,
        }
    }
}
