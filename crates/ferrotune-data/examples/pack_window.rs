//! How much neat packing loses by bin-packing within windows of samples instead of the whole
//! dataset at once (docs/perf-log/2026-11-26-speed-rounds.md).
//!
//!     cargo run --release -p ferrotune-data --example pack_window -- TOKENIZER_DIR CUTOFF DATASET...

use ferrotune_data::pack::pack_neat;
use ferrotune_data::pipeline::prepare;
use ferrotune_data::DataArgs;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: pack_window TOKENIZER_DIR CUTOFF DATASET...");
        std::process::exit(2);
    }
    let data = DataArgs {
        tokenizer_name_or_path: Some(args[0].clone().into()),
        cutoff_len: args[1].parse().expect("CUTOFF is a number"),
        dataset: args[2..].to_vec(),
        dataset_dir: ".".into(),
        ..DataArgs::default()
    };
    let prepared = prepare(&data, None).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let lengths: Vec<usize> = prepared.samples.iter().map(|s| s.encoded.len()).collect();
    println!("{} samples, cutoff {}", lengths.len(), data.cutoff_len);
    for window in [1_000, 10_000, 100_000, usize::MAX] {
        let started = std::time::Instant::now();
        let (rows, report) = pack_neat(&lengths, data.cutoff_len, window);
        let label = if window == usize::MAX {
            "all".to_string()
        } else {
            window.to_string()
        };
        println!(
            "window {label:>7}: {} rows, {:.2}% filled, {:.3} s",
            rows.len(),
            100.0 * report.efficiency(),
            started.elapsed().as_secs_f64()
        );
    }
}
