//! Every kind of bad input gets an error naming the file, the record and the problem,
//! and `skip_invalid` skips and counts malformed records instead.

use std::path::Path;

use ferrotune_data::mix::MixStrategy;
use ferrotune_data::pipeline::{self, Prepared};
use ferrotune_data::{DataArgs, DataError, Formatting, Overlong, Stage};
use ferrotune_testing::{workspace_root, TempDir};

fn args(dataset: &Path, formatting: Option<Formatting>) -> DataArgs {
    DataArgs {
        model_name_or_path: Some(workspace_root().join("examples/tokenizer")),
        dataset: vec![dataset.display().to_string()],
        dataset_dir: dataset.parent().unwrap().to_path_buf(),
        formatting,
        ..DataArgs::default()
    }
}

fn error(args: &DataArgs) -> String {
    match pipeline::prepare(args, None) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn prepared(args: &DataArgs) -> Prepared {
    pipeline::prepare(args, None).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn malformed_json_array_names_the_record() {
    let dir = TempDir::new("bad-json");
    let file = dir.write(
        "data.json",
        "[\n {\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": \"c\", \"output\": }\n]",
    );
    let e = error(&args(&file, None));
    assert!(
        e.contains("data.json record 1") && e.contains("malformed JSON at line 3"),
        "{e}"
    );
}

#[test]
fn malformed_json_lines_name_the_line_and_can_be_skipped() {
    let dir = TempDir::new("bad-jsonl");
    let file = dir.write(
        "data.jsonl",
        "{\"instruction\": \"a\", \"output\": \"b\"}\n\n{\"instruction\": \"c\", \n{\"instruction\": \"d\", \"output\": \"e\"}\n",
    );
    let e = error(&args(&file, None));
    assert!(
        e.contains("data.jsonl line 3") && e.contains("malformed JSON"),
        "{e}"
    );

    let mut skipping = args(&file, None);
    skipping.skip_invalid = true;
    let p = prepared(&skipping);
    assert_eq!(p.reports[0].invalid, 1);
    assert_eq!(p.reports[0].samples, 2);
    assert!(p.reports[0].examples[0].contains("line 3"));
}

#[test]
fn record_without_the_mapped_columns() {
    let dir = TempDir::new("missing-column");
    let file = dir.write(
        "data.json",
        r#"[{"instruction": "a", "output": "b"}, {"question": "c", "answer": "d"}]"#,
    );
    let e = error(&args(&file, Some(Formatting::Alpaca)));
    assert!(
        e.contains("data.json record 1") && e.contains("no column \"instruction\""),
        "{e}"
    );
    assert!(
        e.contains("question, answer"),
        "lists the columns it has: {e}"
    );
}

#[test]
fn columns_mapped_in_dataset_info() {
    let dir = TempDir::new("mapped-columns");
    dir.write("qa.json", r#"[{"question": "c", "answer": "d"}]"#);
    dir.write(
        "dataset_info.json",
        r#"{"qa": {"file_name": "qa.json", "columns": {"prompt": "question", "response": "answer"}},
            "remote": {"hf_hub_url": "someone/something"}}"#,
    );
    let mut a = args(&dir.path().join("qa.json"), None);
    a.dataset = vec!["qa".into()];
    assert_eq!(prepared(&a).reports[0].samples, 1);
    a.dataset = vec!["remote".into()];
    let e = error(&a);
    assert!(
        e.contains("hf_hub_url") && e.contains("local files only"),
        "{e}"
    );
    a.dataset = vec!["qaa".into()];
    let e = error(&a);
    assert!(e.contains("did you mean \"qa\"?"), "{e}");
}

#[test]
fn roles_out_of_order() {
    let dir = TempDir::new("roles");
    let file = dir.write(
        "data.json",
        r#"[{"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]}]"#,
    );
    let e = error(&args(&file, None));
    assert!(
        e.contains("data.json record 0") && e.contains("two user turns in a row"),
        "{e}"
    );

    let file = dir.write("roles2.json", r#"[{"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}]"#);
    let e = error(&args(&file, None));
    assert!(
        e.contains("role \"robot\"") && e.contains("human, gpt"),
        "{e}"
    );
}

#[test]
fn assistant_turn_without_content_or_tool_calls() {
    let dir = TempDir::new("empty-assistant");
    let file = dir.write(
        "data.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"\"}]}\n",
    );
    let e = error(&args(&file, Some(Formatting::Openai)));
    assert!(
        e.contains("data.jsonl line 1") && e.contains("neither content nor tool calls"),
        "{e}"
    );
}

#[test]
fn conversation_without_a_final_reply() {
    let dir = TempDir::new("no-reply");
    let file = dir.write(
        "data.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    );
    let e = error(&args(&file, None));
    assert!(e.contains("ends with a user turn"), "{e}");
}

#[test]
fn unknown_template_name() {
    let dir = TempDir::new("template");
    let file = dir.write("data.json", r#"[{"instruction": "a", "output": "b"}]"#);
    let mut a = args(&file, None);
    a.template = Some("qwen4".into());
    let e = error(&a);
    assert!(
        e.contains("unknown template \"qwen4\"") && e.contains("did you mean qwen"),
        "{e}"
    );
    assert!(
        e.contains("alpaca, alpaca_zh, chatml"),
        "lists the templates: {e}"
    );
}

#[test]
fn unknown_format_name() {
    let e = "sharegtp".parse::<Formatting>().unwrap_err().to_string();
    assert!(
        e.contains("unknown dataset format \"sharegtp\"") && e.contains("did you mean sharegpt?"),
        "{e}"
    );
    let e = "rm".parse::<Stage>().unwrap_err().to_string();
    assert!(
        e.contains("unknown stage \"rm\"") && e.contains("sft, pt, dpo and kto"),
        "{e}"
    );
}

#[test]
fn undetectable_format_asks_for_one() {
    let dir = TempDir::new("detect");
    let file = dir.write("data.json", r#"[{"prompt": "a", "completion": "b"}]"#);
    let e = error(&args(&file, None));
    assert!(
        e.contains("cannot tell the dataset format") && e.contains("--format"),
        "{e}"
    );
}

#[test]
fn tokenizer_folder_without_tokenizer_json() {
    let dir = TempDir::new("tokenizer");
    dir.write("tok/tokenizer_config.json", "{}");
    let file = dir.write("data.json", r#"[{"instruction": "a", "output": "b"}]"#);
    let mut a = args(&file, None);
    a.model_name_or_path = Some(dir.path().join("tok"));
    let e = error(&a);
    assert!(e.contains("tok") && e.contains("no tokenizer.json"), "{e}");
    assert!(matches!(
        pipeline::prepare(&a, None),
        Err(DataError::File { .. })
    ));
}

#[test]
fn skip_invalid_counts_bad_records_and_keeps_the_rest() {
    let dir = TempDir::new("skip");
    let file = dir.write(
        "data.json",
        r#"[{"instruction": "a", "output": "b"}, {"instruction": 3, "output": "b"}, {"instruction": "c", "output": "d"}]"#,
    );
    let e = error(&args(&file, None));
    assert!(
        e.contains("record 1") && e.contains("must be a string"),
        "{e}"
    );
    let mut a = args(&file, None);
    a.skip_invalid = true;
    let p = prepared(&a);
    assert_eq!(
        (
            p.reports[0].records,
            p.reports[0].invalid,
            p.reports[0].samples
        ),
        (3, 1, 2)
    );
}

#[test]
fn missing_files_and_empty_folders() {
    let dir = TempDir::new("missing");
    let e = error(&args(&dir.path().join("nope.json"), None));
    assert!(
        e.contains("nope.json") && e.contains("neither a file nor an entry"),
        "{e}"
    );
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    let e = error(&args(&dir.path().join("empty"), None));
    assert!(e.contains("holds no data files"), "{e}");
}

#[test]
fn text_records_in_stage_sft_and_pt() {
    let dir = TempDir::new("text");
    let file = dir.write("docs.txt", "first document\n\nsecond document\n");
    let mut a = args(&file, None);
    let e = error(&a);
    assert!(e.contains("use stage pt"), "{e}");
    a.stage = Stage::Pt;
    let p = prepared(&a);
    assert_eq!(p.reports[0].samples, 2);
}

/// A config read as `train`, `data` and `eval predict` read theirs (YAML to JSON values,
/// then the data keys).
fn read_config(values: serde_json::Value) -> Result<DataArgs, String> {
    serde_json::from_value(values).map_err(|e| e.to_string())
}

#[test]
fn a_misspelt_choice_value_fails_when_the_config_is_read() {
    let cases: [(&str, &str, &[&str], Option<&str>); 3] = [
        ("stage", "stf", &["sft", "pt"], None),
        (
            "mix_strategy",
            "interleave_undr",
            &["concat", "interleave_under", "interleave_over"],
            Some("interleave_under"),
        ),
        (
            "overlong",
            "truncated",
            &["truncate", "drop"],
            Some("truncate"),
        ),
    ];
    for (key, value, accepted, nearest) in cases {
        // The dataset and tokenizer do not exist: nothing but the config is read.
        let e = read_config(serde_json::json!({
            "model_name_or_path": "no/such/tokenizer",
            "dataset": "no_such_dataset",
            key: value,
        }))
        .expect_err(key);
        assert!(e.contains(&format!("`{key}`")), "names the key: {e}");
        assert!(e.contains(&format!("{value:?}")), "names the value: {e}");
        assert!(
            e.contains(&format!("accepted values: {}", accepted.join(", "))),
            "names the accepted values: {e}"
        );
        if let Some(nearest) = nearest {
            assert!(e.contains(&format!("did you mean `{nearest}`")), "{e}");
        }
    }
}

#[test]
fn every_accepted_choice_value_still_reads() {
    let a = read_config(serde_json::json!({
        "stage": "pt", "mix_strategy": "interleave_over", "overlong": "drop",
    }))
    .unwrap();
    assert_eq!(
        (a.stage, a.mix_strategy, a.overlong),
        (Stage::Pt, MixStrategy::InterleaveOver, Overlong::Drop)
    );
    let a = read_config(serde_json::json!({
        "stage": "sft", "mix_strategy": "interleave_under", "overlong": "truncate",
    }))
    .unwrap();
    assert_eq!(
        (a.stage, a.mix_strategy, a.overlong),
        (Stage::Sft, MixStrategy::InterleaveUnder, Overlong::Truncate)
    );
    let a = read_config(serde_json::json!({"mix_strategy": "concat"})).unwrap();
    assert_eq!(a.mix_strategy, MixStrategy::Concat);
}
