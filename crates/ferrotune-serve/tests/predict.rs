//! Predicting a dataset on a tiny random model and the example identity data:
//! predictions in LLaMA-Factory's layout, the answers the chat turn gives for the same
//! conversations (batched and left-padded, or one at a time), and the scores, eval loss
//! and perplexity.

mod common;

use std::path::{Path, PathBuf};

use ferrotune_data::config::DataArgs;
use ferrotune_data::conversation::{Message, Role};
use ferrotune_model::infer::WeightType;
use ferrotune_serve::{ModelSource, PredictOptions, Prediction};
use ferrotune_testing::{read_json, workspace_root, TempDir};
use serde_json::{json, Value};

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn options(model: &Path, dataset: &str, dataset_dir: PathBuf, out: PathBuf) -> PredictOptions {
    let data = DataArgs {
        dataset: vec![dataset.to_string()],
        dataset_dir,
        ..DataArgs::default()
    };
    PredictOptions {
        source: ModelSource::locate(Some(model.to_str().unwrap()), None).unwrap(),
        data,
        out,
        batch_size: 2,
        sampling: common::greedy_options(8),
        weights: Some(WeightType::F32),
    }
}

/// The chat turn's greedy answer to one question.
fn chat_answer(model: &Path, question: &str, max_new_tokens: usize) -> String {
    let chat = common::chat_model(model);
    let config = common::greedy(model, &chat, max_new_tokens);
    chat.reply(&[Message::new(Role::User, question)], &config)
        .unwrap()
        .text
}

#[test]
fn predictions_and_scores_in_llamafactory_layout() {
    let tmp = TempDir::new("serve-predict");
    let model = common::tiny_model(tmp.path());
    let out = tmp.path().join("predict");
    let mut o = options(
        &model,
        "identity_demo",
        workspace_root().join("examples/data"),
        out.clone(),
    );
    o.data.max_samples = Some(5);
    let prediction = Prediction::prepare(o).unwrap();
    assert_eq!(prediction.samples(), 5);
    assert!(prediction.skipped().is_empty());
    let mut updates = Vec::new();
    let report = prediction
        .run(|done, total| updates.push((done, total)))
        .unwrap();
    // Batches of 2: progress after each.
    assert_eq!(updates, [(2, 5), (4, 5), (5, 5)]);
    assert_eq!(report.samples, 5);
    assert_eq!(
        report.predictions_path,
        out.join("generated_predictions.jsonl")
    );
    assert_eq!(report.results_path, out.join("predict_results.json"));

    let predictions = lines(&report.predictions_path);
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
    // Batched, left-padded generation answers as the chat turn does, one at a time.
    for (i, p) in predictions.iter().enumerate().take(3) {
        let question = data[i]["instruction"].as_str().unwrap();
        assert_eq!(
            p["predict"].as_str().unwrap(),
            chat_answer(&model, question, 8)
        );
    }

    let r = read_json(&report.results_path);
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
    assert_eq!(r["max_new_tokens"], 8);
    assert_eq!(r["temperature"], 0.0);
    assert_eq!(r["inference_weights"], "f32");
    assert_eq!(r["predict_bleu-4"], json!(report.mean.bleu4));
    // A random model over a 580-token vocabulary: about ln(580) = 6.4 nats per token.
    let loss = r["eval_loss"].as_f64().unwrap();
    assert_eq!(report.eval_loss, Some(loss));
    assert!((4.0..9.0).contains(&loss), "eval_loss {loss}");
    let ppl = r["perplexity"].as_f64().unwrap();
    assert!((ppl - loss.exp()).abs() < 1e-6 * ppl);
    assert!(r["eval_tokens"].as_u64().unwrap() > 20);

    // The scores are those `eval metrics` computes from the predictions file.
    let read = ferrotune_eval::Predictions::read(&report.predictions_path).unwrap();
    let m = ferrotune_eval::MetricsReport::compute(&read, false);
    let m = serde_json::to_value(&m).unwrap();
    assert_eq!(m["llamafactory"]["bleu-4"], r["predict_bleu-4"]);
    assert_eq!(m["llamafactory"]["rouge-l"], r["predict_rouge-l"]);
}

#[test]
fn a_one_record_dataset_at_batch_size_one_answers_as_the_chat_turn() {
    let tmp = TempDir::new("serve-predict-one");
    let model = common::tiny_model(tmp.path());
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let question = "What can you do for me?";
    std::fs::write(
        data_dir.join("one.json"),
        json!([{"instruction": question, "input": "", "output": "Answer questions."}]).to_string(),
    )
    .unwrap();
    std::fs::write(
        data_dir.join("dataset_info.json"),
        json!({"one": {"file_name": "one.json"}}).to_string(),
    )
    .unwrap();
    let out = tmp.path().join("predict");
    let mut o = options(&model, "one", data_dir, out);
    o.batch_size = 1;
    o.sampling.max_new_tokens = 16;
    let prediction = Prediction::prepare(o).unwrap();
    assert_eq!(prediction.samples(), 1);
    let report = prediction.run(|_, _| {}).unwrap();
    let predictions = lines(&report.predictions_path);
    assert_eq!(predictions.len(), 1);
    let predicted = predictions[0]["predict"].as_str().unwrap();
    assert!(!predicted.is_empty());
    assert_eq!(predicted, chat_answer(&model, question, 16));
}
