//! `ferrotune eval predict` as a command on a tiny random model and the example identity
//! data: flags, a config file with overrides, what it prints, and progress in a log
//! reading one update per line.

use std::path::{Path, PathBuf};
use std::process::Output;

use ferrotune_testing::{cli, read_json, workspace_root, TempDir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn ferrotune(args: &[&str]) -> Output {
    cli::run_ok(BIN, args)
}

fn tiny_model(dir: &Path) -> PathBuf {
    cli::tiny_model(BIN, dir, false)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The flags reach the prediction; what it writes is checked in ferrotune-serve's tests.
#[test]
fn flags_choose_the_model_data_batches_and_output() {
    let tmp = TempDir::new("predict");
    let model = tiny_model(tmp.path());
    let out = tmp.path().join("predict");
    let o = ferrotune(&[
        "eval",
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        "identity_demo",
        "--dataset-dir",
        "examples/data",
        "--max-samples",
        "5",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    let predictions = lines(&out.join("generated_predictions.jsonl"));
    assert_eq!(predictions.len(), 5);
    let data: Value = read_json(&workspace_root().join("examples/data/identity_demo.json"));
    for (p, record) in predictions.iter().zip(data.as_array().unwrap()) {
        assert_eq!(p["label"], record["output"]);
    }
    let r = read_json(&out.join("predict_results.json"));
    assert_eq!(r["predict_samples"], 5);
    assert_eq!(r["max_new_tokens"], 8);
    assert_eq!(r["temperature"], 0.0);
    assert_eq!(r["dataset"], serde_json::json!(["identity_demo"]));
    let printed = cli::stdout(&o);
    assert!(printed.starts_with("5 samples: BLEU-4 "), "{printed}");
    assert!(printed.contains("generated_predictions.jsonl"), "{printed}");
    // Not a terminal: one progress line per batch of 2, none rewritten in place.
    let progress = cli::stderr(&o);
    assert!(!progress.contains('\r'), "{progress:?}");
    assert!(
        progress.contains("\ngenerated 2/5\ngenerated 4/5\ngenerated 5/5\n"),
        "{progress:?}"
    );
}

#[test]
fn a_config_file_with_overrides_works_too() {
    let tmp = TempDir::new("predict-config");
    let model = tiny_model(tmp.path());
    let out = tmp.path().join("from-config");
    let config = tmp.path().join("predict.yaml");
    std::fs::write(
        &config,
        format!(
            "model_name_or_path: {}\neval_dataset: identity_demo\ndataset_dir: examples/data\n\
             placeholders: {{name: Ferro, author: the ferrotune project}}\n\
             output_dir: {}\nper_device_eval_batch_size: 4\nmax_new_tokens: 4\nmax_samples: 10\n",
            model.display(),
            out.display()
        ),
    )
    .unwrap();
    ferrotune(&["eval", "predict", config.to_str().unwrap(), "max_samples=3"]);
    let predictions = lines(&out.join("generated_predictions.jsonl"));
    assert_eq!(predictions.len(), 3);
    assert!(predictions[0]["label"].as_str().unwrap().contains("Ferro"));
    let r = read_json(&out.join("predict_results.json"));
    assert_eq!(r["predict_samples"], 3);
    assert_eq!(r["max_new_tokens"], 4);
}
