//! Command-line interface: argument definitions and dispatch.

mod bench;
mod bench_allreduce;
mod bench_generate;
mod bench_train;
mod chat;
mod check;
mod data;
mod eval;
mod export;
mod model;
mod predict;
mod quickstart;
mod sampling;
mod serve;
mod train;
mod ui;

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

/// When a command keeps the memory it frees in the process (see `keep_freed_memory` in
/// main.rs).
pub enum FreedMemory {
    /// From the start: loops that free and reallocate the same buffers (benchmarks,
    /// decoding, evaluation, data preparation's chunks).
    Keep,
    /// Once loading is done and the training loop starts (`ferrotune_train::allocator`).
    KeepFromTrainingLoop,
    /// Never: commands that load, convert and write (model, export) hand back what they
    /// free, so that the next conversion finds it.
    HandBack,
}

impl Cli {
    /// Whether the command runs as one process of a data-parallel launch (`mpirun`,
    /// `srun`): training and the all-reduce benchmark. Other commands launched that way
    /// run as independent processes.
    pub fn joins_world(&self) -> bool {
        matches!(
            self.command,
            Command::Train(_) | Command::Bench(bench::BenchCommand::Allreduce(_))
        )
    }

    pub fn freed_memory(&self) -> FreedMemory {
        match self.command {
            Command::Train(_) | Command::Quickstart(_) => FreedMemory::KeepFromTrainingLoop,
            Command::Model(_) | Command::Export(_) => FreedMemory::HandBack,
            _ => FreedMemory::Keep,
        }
    }
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
    /// Score predictions, make and summarize human-evaluation sheets.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Talk to a model in the terminal, with the chat template it was trained with
    /// (`--prompt` answers one message and exits).
    Chat(chat::ChatArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, streaming
    /// or not, /v1/models, /health).
    Serve(serve::ServeArgs),
    /// Measure throughput (preprocessing, ...) and print the figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Merge a LoRA adapter into its base and write a Hugging Face model folder and / or
    /// a GGUF file, after checking that the merged model gives the same logits.
    Export(export::ExportArgs),
    /// The whole story on a real model: teach SmolLM2-135M-Instruct (or --model) a new
    /// identity with LoRA SFT while keeping what it knew, evaluate before and after, chat,
    /// export; `--tiny` runs it offline on a tiny model.
    Quickstart(quickstart::QuickstartArgs),
    /// A local web page for the whole loop: model, data preview and checks, training with
    /// a live chart, chat with base and tuned side by side, evaluation, export.
    Ui(ui::UiArgs),
}

/// Runs the command; `world`: the processes it runs with ([`Cli::joins_world`]).
pub fn run(cli: Cli, world: &ferrotune_dist::World) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(command) => data::run(command),
        Command::Model(command) => model::run(command),
        Command::Eval(command) => eval::run(command),
        Command::Train(command) => train::run(command, world),
        Command::Chat(args) => chat::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(command) => bench::run(command, world),
        Command::Quickstart(args) => quickstart::run(args),
        Command::Ui(args) => ui::run(args),
    }
}
