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

#[test]
fn the_registry_num_samples_picks_the_records_training_picks() {
    let tmp = TempDir::new("predict-num-samples");
    let model = tiny_model(tmp.path());
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let file = workspace_root().join("examples/data/identity_demo.json");
    std::fs::copy(&file, data_dir.join("identity_demo.json")).unwrap();
    std::fs::write(
        data_dir.join("dataset_info.json"),
        r#"{"identity_3": {"file_name": "identity_demo.json", "num_samples": 3}}"#,
    )
    .unwrap();
    let out = tmp.path().join("predict");
    ferrotune(&[
        "eval",
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        "identity_3",
        "--dataset-dir",
        data_dir.to_str().unwrap(),
        "--max-new-tokens",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let predictions = lines(&out.join("generated_predictions.jsonl"));
    assert_eq!(predictions.len(), 3, "the file holds 24 records");

    // The same seeded subset the training data path draws.
    let trained = ferrotune_data::pipeline::prepare(
        &ferrotune_data::DataArgs {
            model_name_or_path: Some(workspace_root().join("examples/tokenizer")),
            dataset: vec!["identity_3".into()],
            dataset_dir: data_dir,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let records: Value = read_json(&file);
    let labels: Vec<&Value> = trained
        .samples
        .iter()
        .map(|s| &records[s.at.index]["output"])
        .collect();
    let predicted: Vec<&Value> = predictions.iter().map(|p| &p["label"]).collect();
    assert_eq!(predicted, labels);
}
