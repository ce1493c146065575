//! Command-line interface: argument definitions and dispatch.

mod data;
mod model;
mod train;

use clap::{Parser, Subcommand};

/// Supervised fine-tuning of large language models, in one Rust binary.
///
/// Point it at a Hugging Face model folder and a dataset (alpaca, sharegpt, OpenAI
/// messages or plain text; LLaMA-Factory configs and dataset_info.json work as they are).
#[derive(Debug, Parser)]
#[command(
    name = "ferrotune",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Look at datasets exactly as the model will see them.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Fine-tune (sft) or continue pretraining (pt) a model, as the config says.
    Train(train::TrainCommand),
    /// Inspect, create, import and verify models.
    #[command(subcommand)]
    Model(model::ModelCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(command) => data::run(command),
        Command::Model(command) => model::run(command),
        Command::Train(command) => train::run(command),
    }
}
