//! `ferrotune bench generate` on a tiny random model (the JSON figures for each weight
//! type and a batch), and the `--weights` flag of `chat` and `eval predict`.

use std::path::{Path, PathBuf};

use ferrotune_testing::cli::{self, stdout};
use ferrotune_testing::{read_json, TempDir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn tiny_model(dir: &Path) -> PathBuf {
    cli::tiny_model(BIN, dir, false)
}

fn bench(model: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "bench",
        "generate",
        model.to_str().unwrap(),
        "--prompt-tokens",
        "5",
        "--max-new-tokens",
        "6",
        "--threads",
        "1",
        "--bandwidth-mib",
        "16",
        "--json",
    ];
    args.extend(extra);
    let text = stdout(&cli::run_ok(BIN, &args));
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn bench_generate_reports_the_bound_and_the_speed() {
    let tmp = TempDir::new("bench-generate");
    let model = tiny_model(tmp.path());
    // hidden 64, intermediate 160, 2 layers, q 64 + k/v 32 each, untied head: the
    // vocabulary is the tokenizer's.
    let vocab = read_json(&model.join("config.json"))["vocab_size"]
        .as_u64()
        .unwrap() as usize;
    let weights = 2 * (64 * 128 + 64 * 64 + 3 * 64 * 160) + vocab * 64;
    let mut bytes = Vec::new();
    for ty in ["f32", "bf16", "q8_0"] {
        let doc = bench(&model, &["--weights", ty]);
        for key in [
            "bandwidth_gb_s",
            "bound_tokens_per_s",
            "prefill_s",
            "prefill_tokens_per_s",
            "decode_s",
            "decode_tokens_per_s",
            "percent_of_bound",
            "aggregate_tokens_per_s",
        ] {
            let v = doc[key].as_f64().unwrap_or_else(|| panic!("{key}: {doc}"));
            assert!(v.is_finite() && v > 0.0, "{key} = {v}");
        }
        assert_eq!(doc["weights"], ty);
        assert_eq!(doc["batch"], 1);
        bytes.push(doc["weight_bytes_per_token"].as_u64().unwrap() as usize);
    }
    assert_eq!(bytes, [4 * weights, 2 * weights, weights + weights / 16]);

    // The composed path reads the same f32 weights (plus the norms).
    let doc = bench(&model, &["--composed"]);
    assert_eq!(doc["path"], "composed");
    let composed = doc["weight_bytes_per_token"].as_u64().unwrap() as usize;
    assert!(
        composed > bytes[0] && composed < bytes[0] + 4 * 1000,
        "{composed}"
    );

    // 6 new tokens are 5 decode steps: probed every 2, segments of 2, 2 and 1 steps, each
    // against the bandwidth probed on its two sides.
    let doc = bench(&model, &["--probe-every", "2"]);
    let segments = doc["segment_percent_of_bound"].as_array().unwrap();
    let probed = doc["segment_bandwidth_gb_s"].as_array().unwrap();
    assert_eq!((segments.len(), probed.len()), (3, 3), "{doc}");
    let mut percents: Vec<f64> = segments.iter().map(|p| p.as_f64().unwrap()).collect();
    assert!(percents.iter().all(|p| p.is_finite() && *p > 0.0), "{doc}");
    percents.sort_by(f64::total_cmp);
    assert_eq!(doc["percent_of_bound_median"].as_f64(), Some(percents[1]));
    let doc = bench(&model, &["--probe-every", "0"]);
    assert!(doc["segment_percent_of_bound"]
        .as_array()
        .unwrap()
        .is_empty());

    let doc = bench(&model, &["--weights", "q8_0", "--batch", "3"]);
    assert_eq!(doc["batch"], 3);
    let (one, all) = (
        doc["decode_tokens_per_s"].as_f64().unwrap(),
        doc["aggregate_tokens_per_s"].as_f64().unwrap(),
    );
    assert!((all - 3.0 * one).abs() < 1e-6 * all, "{one} x 3 != {all}");

    let o = cli::output(
        BIN,
        &[
            "bench",
            "generate",
            model.to_str().unwrap(),
            "--weights",
            "q4",
        ],
    );
    assert!(!o.status.success());
    assert!(cli::stderr(&o).contains("q8_0"), "{}", cli::stderr(&o));
}

#[test]
fn a_weight_type_against_f32_decodes_both_in_turns() {
    let tmp = TempDir::new("bench-generate-against");
    let model = tiny_model(tmp.path());
    let doc = bench(&model, &["--weights", "q8_0", "--against-f32"]);
    assert_eq!(doc["weights"], "q8_0");
    let ours = doc["decode_tokens_per_s"].as_f64().unwrap();
    let f32_side = &doc["f32"];
    let theirs = f32_side["decode_tokens_per_s"].as_f64().unwrap();
    assert!(ours > 0.0 && theirs > 0.0);
    assert!(f32_side["percent_of_bound"].as_f64().unwrap() > 0.0);
    assert!(f32_side["percent_of_bound_median"].as_f64().unwrap() > 0.0);
    let ratio = doc["speed_vs_f32"].as_f64().unwrap();
    assert!((ratio - ours / theirs).abs() < 1e-9 * ratio.max(1.0));

    // f32 against itself, or the composed path, is refused.
    for extra in [&["--against-f32"][..], &["--against-f32", "--composed"]] {
        let mut args = vec!["bench", "generate", model.to_str().unwrap()];
        args.extend(extra);
        let o = cli::output(BIN, &args);
        assert!(!o.status.success());
        assert!(
            cli::stderr(&o).contains("--against-f32"),
            "{}",
            cli::stderr(&o)
        );
    }
}

#[test]
fn chat_and_predict_take_the_weight_type() {
    let tmp = TempDir::new("weights-flag");
    let model = tiny_model(tmp.path());
    for ty in ["f32", "bf16", "q8_0"] {
        let o = cli::run_ok(
            BIN,
            &[
                "chat",
                model.to_str().unwrap(),
                "--prompt",
                "Who are you?",
                "--max-new-tokens",
                "6",
                "--temperature",
                "0",
                "--weights",
                ty,
            ],
        );
        assert!(stdout(&o).ends_with('\n'), "{ty}");
        let out = tmp.path().join(format!("predict-{ty}"));
        cli::run_ok(
            BIN,
            &[
                "eval",
                "predict",
                "--model",
                model.to_str().unwrap(),
                "--dataset",
                "identity_demo",
                "--dataset-dir",
                "examples/data",
                "--max-samples",
                "3",
                "--batch-size",
                "2",
                "--max-new-tokens",
                "4",
                "--weights",
                ty,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        let results = read_json(&out.join("predict_results.json"));
        assert_eq!(results["inference_weights"], ty);
        assert_eq!(results["predict_samples"], 3);
    }
}
