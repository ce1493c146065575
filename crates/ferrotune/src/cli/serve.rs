//! `ferrotune serve MODEL --port N`: the OpenAI-compatible HTTP API of
//! `ferrotune_serve::server`, on the model and template saved with it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use ferrotune_model::infer::WeightType;
use ferrotune_serve::loading::{self, ModelSource};
use ferrotune_serve::{ChatModel, SamplingOptions, ServeOptions, Server};

use super::sampling::SamplingArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model folder or Hub id; a LoRA run's output folder works too (its base is read
    /// from adapter_config.json).
    model: String,
    /// A PEFT LoRA adapter to apply on MODEL (merged in memory).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model id clients see in /v1/models and in answers (default: the folder name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Requests that may wait for the model; more are answered 503 (busy).
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Inference weights: f32 (as trained), bf16 (half the bytes to read per token) or
    /// q8_0 (8.5 bits a weight) or q4_1 (5 bits), converted when the model loads (an
    /// adapter merged in first); decoding speed follows
    /// the bytes (docs/perf-log/2026-11-26-speed-rounds.md). Default: as the base is
    /// held: f32, bf16 for a 16-bit base, q8_0 for a quantized one (a GGUF file, a 4-bit
    /// run).
    #[arg(long, value_name = "f32|bf16|q8_0|q4_1")]
    weights: Option<WeightType>,
    /// Defaults for requests that do not set them (max_tokens, temperature, ...).
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let source = ModelSource::locate(Some(&a.model), a.adapter.as_deref())?;
    let (tok, template) = loading::tokenizer_and_template(&source, None)?;
    let Some(template) = template else {
        bail!(
            "{} has no chat template (chat_template.jinja or tokenizer_config.json), which \
             chat completions need",
            source.tokenizer_dir().display()
        );
    };
    eprintln!("loading {} ...", source.name());
    let chat = ChatModel::load(&source, tok, template, a.weights)?;
    let defaults =
        SamplingOptions::from(&a.sampling).config(&source.base, chat.stop_ids().to_vec())?;
    let options = ServeOptions {
        name: a.served_model_name.unwrap_or_else(|| source.name()),
        max_queue: a.max_queue,
        defaults,
    };
    let server = Server::bind(chat, options, (a.host.as_str(), a.port))?;
    println!(
        "listening on http://{} (model {})",
        server.addr(),
        server.model_name()
    );
    std::io::stdout().flush()?;
    server.run();
    Ok(())
}
