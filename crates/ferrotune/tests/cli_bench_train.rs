//! `ferrotune bench train` on a tiny model: the JSON figures, LoRA's trainable count, and
//! the side-by-side run through a stand-in for the PyTorch script (no Python needed).

use ferrotune_testing::cli;
use ferrotune_testing::TempDir;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

const TINY: [&str; 22] = [
    "bench",
    "train",
    "--vocab",
    "64",
    "--hidden",
    "16",
    "--inter",
    "24",
    "--layers",
    "2",
    "--heads",
    "4",
    "--kv-heads",
    "2",
    "--batch",
    "2",
    "--seq",
    "8",
    "--steps",
    "2",
    "--warmup",
    "1",
];

fn bench(extra: &[&str]) -> Value {
    let args: Vec<&str> = TINY.iter().chain(extra).copied().collect();
    let out = cli::run_ok(BIN, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn full_and_lora_report_throughput_memory_and_parameter_counts() {
    let full = bench(&["--threads", "1", "--json"]);
    // embed 64x16 (tied) + 2 layers x (q 16x16, k/v 8x16, o 16x16, 3 MLP 16x24, 2 norms)
    // + the final norm.
    assert_eq!(full["parameters"], 4944);
    assert_eq!(full["trainable"], 4944);
    assert!(full["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(full["peak_rss_mib"].as_f64().unwrap() > 0.0);
    assert!(full["final_loss"].as_f64().unwrap().is_finite());
    assert_eq!(full["threads"], 1);

    let lora = bench(&["--threads", "1", "--lora", "--json"]);
    assert_eq!(lora["parameters"], 4944 + 3712);
    // r = 8 adapters: 8 x (in + out) per projection, 7 projections, 2 layers.
    assert_eq!(lora["trainable"], 3712);
    assert_eq!(lora["lora"], true);
}

#[test]
fn lora_against_full_times_both_in_one_process() {
    let doc = bench(&["--threads", "1", "--lora", "--against-full", "--json"]);
    assert_eq!(doc["trainable"], 3712);
    let lora_step = doc["step_s"].as_f64().unwrap();
    let full = &doc["full"];
    let full_step = full["step_s"].as_f64().unwrap();
    assert!(lora_step > 0.0 && full_step > 0.0);
    assert!(full["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(full["final_loss"].as_f64().unwrap().is_finite());
    let ratio = doc["lora_step_vs_full"].as_f64().unwrap();
    assert!((ratio - lora_step / full_step).abs() < 1e-9 * ratio.max(1.0));

    // Full fine-tuning against itself is not a comparison.
    let args: Vec<&str> = TINY.iter().copied().chain(["--against-full"]).collect();
    let out = cli::output(BIN, &args);
    assert!(!out.status.success());
    assert!(
        cli::stderr(&out).contains("--lora"),
        "{}",
        cli::stderr(&out)
    );
}

/// Two bases and the bf16 products, each taking turns with its counterpart in one
/// process: the step-time ratio is of the two runs printed beside it, and the same draws
/// give the same start on either base.
#[test]
fn bases_and_bf16_are_timed_against_each_other_in_one_process() {
    let doc = bench(&[
        "--threads",
        "1",
        "--lora",
        "--base-dtype",
        "bf16",
        "--against-base",
        "f32",
        "--json",
    ]);
    assert_eq!(doc["base_dtype"], "bf16");
    assert_eq!(doc["against_base"], "f32");
    let (ours, other) = (
        doc["step_s"].as_f64().unwrap(),
        doc["other_base"]["step_s"].as_f64().unwrap(),
    );
    let ratio = doc["step_time_vs_other_base"].as_f64().unwrap();
    assert!((ratio - ours / other).abs() < 1e-9 * ratio.max(1.0));
    let loss = |v: &Value| v["final_loss"].as_f64().unwrap();
    assert!((loss(&doc) - loss(&doc["other_base"])).abs() < 1e-2);

    let doc = bench(&[
        "--threads",
        "1",
        "--lora",
        "--bf16",
        "--against-f32",
        "--json",
    ]);
    let ratio = doc["bf16_speedup_vs_f32"].as_f64().unwrap();
    let want = doc["f32"]["step_s"].as_f64().unwrap() / doc["step_s"].as_f64().unwrap();
    assert!((ratio - want).abs() < 1e-9 * ratio.max(1.0));
}

#[test]
fn torch_side_runs_the_script_with_the_same_arguments() {
    let dir = TempDir::new("bench-train");
    let script = dir.path().join("fake_torch.sh");
    // Echoes the arguments it was given inside the JSON line the real script prints.
    std::fs::write(
        &script,
        "printf '{\"framework\": \"torch fake\", \"tokens_per_s\": 100.0, \"peak_rss_mib\": 1000.0, \"args\": \"%s\"}\\n' \"$*\"\n",
    )
    .unwrap();
    let script = script.to_string_lossy().to_string();
    let doc = bench(&[
        "--lora",
        "--threads",
        "1",
        "--torch",
        "sh",
        "--torch-script",
        &script,
        "--json",
    ]);
    let args = doc["torch"]["args"].as_str().unwrap();
    for expected in [
        "--arch llama",
        "--vocab 64",
        "--hidden 16",
        "--inter 24",
        "--layers 2",
        "--heads 4",
        "--kv-heads 2",
        "--batch 2",
        "--seq 8",
        "--threads 1",
        "--steps 2",
        "--warmup 1",
        "--lora",
        "--precision f32",
    ] {
        assert!(args.contains(expected), "{expected} missing from {args}");
    }
    let speedup = doc["speedup_vs_torch"].as_f64().unwrap();
    let ours = doc["tokens_per_s"].as_f64().unwrap();
    assert!((speedup - ours / 100.0).abs() < 1e-9);
    assert!(doc["memory_vs_torch"].as_f64().unwrap() > 0.0);

    // The human-readable form prints both and the ratio.
    let args: Vec<&str> = TINY
        .iter()
        .copied()
        .chain(["--torch", "sh", "--torch-script", &script])
        .collect();
    let out = cli::run_ok(BIN, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("torch fake (f32): 100 tokens/s"), "{text}");
    assert!(text.contains("ratio (ferrotune / torch)"), "{text}");
}
