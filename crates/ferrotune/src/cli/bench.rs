//! `ferrotune bench ...`: throughput measurements that print figures (and ratios against
//! the reference stack where one is given), never pass/fail.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use ferrotune_data::pipeline;
use ferrotune_train::recipe::peak_rss_mib;
use serde_json::json;

use super::bench_allreduce::BenchAllreduceArgs;
use super::bench_generate::BenchGenerateArgs;
use super::bench_train::BenchTrainArgs;
use super::data::{data_args, DataSelection};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Preprocessing throughput: render, tokenize and mask the datasets (repeated
    /// `--repeat` times) and print samples/s, tokens/s and peak memory.
    Data(BenchDataArgs),
    /// Training throughput: a randomly initialised model of the given shapes trained for
    /// `--steps` steps (full or `--lora`) with AdamW; tokens/s, the time split and peak
    /// memory, side by side with PyTorch + transformers with `--torch PYTHON`.
    Train(BenchTrainArgs),
    /// Greedy decoding speed of a model: the machine's read bandwidth, the weight bytes
    /// read per token and the bound they set, decode tokens/s (prefill timed apart) and
    /// its share of the bound; `--weights bf16|q8_0`, `--batch N` for the aggregate.
    Generate(BenchGenerateArgs),
    /// All-reduce bandwidth between the processes of a data-parallel launch
    /// (`mpirun -np N ferrotune bench allreduce --mib 64`): time per reduction and the
    /// algorithm and bus bandwidths (as nccl-tests report them).
    Allreduce(BenchAllreduceArgs),
}

#[derive(Debug, Args)]
pub struct BenchDataArgs {
    #[command(flatten)]
    data: DataSelection,
    /// Process the dataset list this many times over (42 makes the four demo SFT datasets
    /// of ../shared/data about 100k samples).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Seconds the reference (e.g. LLaMA-Factory) took on the same data, to print the
    /// ratio.
    #[arg(long, value_name = "SECONDS")]
    reference_seconds: Option<f64>,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

pub fn run(command: BenchCommand, world: &ferrotune_dist::World) -> Result<()> {
    match command {
        BenchCommand::Data(args) => bench_data(args),
        BenchCommand::Train(args) => super::bench_train::run(args),
        BenchCommand::Generate(args) => super::bench_generate::run(args),
        BenchCommand::Allreduce(args) => super::bench_allreduce::run(args, world),
    }
}

/// Fixes the compute threads for a benchmark: `requested`, else RAYON_NUM_THREADS, else
/// `default`. candle's matmul, its element-wise pool and (with the openblas feature)
/// OpenBLAS all size themselves from RAYON_NUM_THREADS, so it is set before any pool
/// starts, and rayon's global pool is built with the same count.
pub fn set_threads(requested: Option<usize>, default: usize) -> usize {
    let threads = requested
        .or_else(|| std::env::var("RAYON_NUM_THREADS").ok()?.parse().ok())
        .unwrap_or(default)
        .max(1);
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    threads
}

fn bench_data(a: BenchDataArgs) -> Result<()> {
    let mut args = data_args(&a.data)?;
    let once = args.dataset.clone();
    args.dataset = (0..a.repeat.max(1)).flat_map(|_| once.clone()).collect();
    let started = Instant::now();
    let prepared = pipeline::prepare(&args, None)?;
    let seconds = started.elapsed().as_secs_f64();
    let samples = prepared.samples.len();
    let tokens: usize = prepared.samples.lengths().iter().sum();
    let records: usize = prepared.reports.iter().map(|r| r.records).sum();
    let peak = peak_rss_mib();
    let doc = json!({
        "records": records,
        "samples": samples,
        "tokens": tokens,
        "seconds": seconds,
        "samples_per_s": samples as f64 / seconds,
        "tokens_per_s": tokens as f64 / seconds,
        "peak_rss_mib": peak,
        "threads": rayon::current_num_threads(),
        "speedup_vs_reference": a.reference_seconds.map(|r| r / seconds),
    });
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{records} records -> {samples} samples, {tokens} tokens in {seconds:.2} s on {} threads: {:.0} samples/s, {:.0} tokens/s, peak memory {:.0} MiB",
        rayon::current_num_threads(),
        samples as f64 / seconds,
        tokens as f64 / seconds,
        peak.unwrap_or(f64::NAN)
    )?;
    if let Some(r) = a.reference_seconds {
        writeln!(out, "reference {r:.2} s: {:.2}x", r / seconds)?;
    }
    Ok(())
}
