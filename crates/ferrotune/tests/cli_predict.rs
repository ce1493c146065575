//! `ferrotune eval predict` end to end on a tiny random model and the example identity
//! data: predictions in LLaMA-Factory's layout (the answers `chat` gives for the same
//! prompts), and the scores, eval loss and perplexity.

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

#[test]
fn predictions_and_scores_in_llamafactory_layout() {
    let tmp = TempDir::new("predict");
    let model = tiny_model(tmp.path());
    let out = tmp.path().join("predict");
    ferrotune(&[
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
        let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["prompt", "predict", "label"]);
        assert_eq!(p["label"], record["output"]);
        let prompt = p["prompt"].as_str().unwrap();
        assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
        assert!(prompt.contains(record["instruction"].as_str().unwrap()));
        assert!(p["predict"].is_string());
    }
    // Batched, left-padded generation answers as `chat` does, one prompt at a time.
    for (i, p) in predictions.iter().enumerate().take(3) {
        let question = data[i]["instruction"].as_str().unwrap();
        let o = ferrotune(&[
            "chat",
            model.to_str().unwrap(),
            "--prompt",
            question,
            "--max-new-tokens",
            "8",
            "--temperature",
            "0",
        ]);
        let answer = String::from_utf8(o.stdout).unwrap();
        assert_eq!(
            p["predict"].as_str().unwrap(),
            answer.strip_suffix('\n').unwrap()
        );
    }

    let r = read_json(&out.join("predict_results.json"));
    for key in [
        "predict_bleu-4",
        "predict_rouge-1",
        "predict_rouge-2",
        "predict_rouge-l",
    ] {
        let v = r[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {r}"));
        assert!((0.0..=100.0).contains(&v), "{key} = {v}");
    }
    assert_eq!(r["predict_samples"], 5);
    // A random model over a 580-token vocabulary: about ln(580) = 6.4 nats per token.
    let loss = r["eval_loss"].as_f64().unwrap();
    assert!((4.0..9.0).contains(&loss), "eval_loss {loss}");
    let ppl = r["perplexity"].as_f64().unwrap();
    assert!((ppl - loss.exp()).abs() < 1e-6 * ppl);
    assert!(r["eval_tokens"].as_u64().unwrap() > 20);

    // The scores are those `eval metrics` computes from the predictions file.
    let o = ferrotune(&[
        "eval",
        "metrics",
        "--predictions",
        out.join("generated_predictions.jsonl").to_str().unwrap(),
        "--json",
    ]);
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["llamafactory"]["bleu-4"], r["predict_bleu-4"]);
    assert_eq!(m["llamafactory"]["rouge-l"], r["predict_rouge-l"]);
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
