//! `ferrotune eval metrics | compare | sheet | summarize` as a user runs them.

use std::path::Path;
use std::process::Output;

use ferrotune_testing::cli::{stderr, stdout};
use ferrotune_testing::TempDir;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn ferrotune(args: &[&str]) -> Output {
    ferrotune_testing::cli::output(BIN, args)
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Three answers, one exact, in English and Chinese.
const PREDICTIONS: &str = r#"{"prompt": "Say hi.", "predict": "hello there", "label": "hello there"}
{"prompt": "Name a fruit.", "predict": "An apple is a fruit.", "label": "A banana is a fruit."}
{"prompt": "你好吗？", "predict": "我很好，谢谢。", "label": "我很好。"}
"#;

#[test]
fn metrics_table_json_and_compare() {
    let dir = TempDir::new("cli-eval-metrics");
    let preds = dir.write("base/generated_predictions.jsonl", PREDICTIONS);
    let out = dir.path().join("base/metrics.json");
    let o = ferrotune(&[
        "eval",
        "metrics",
        "--predictions",
        arg(&preds),
        "--out",
        arg(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    for needle in ["(3 samples)", "BLEU-4", "ROUGE-L", "sacrebleu", "rougeL"] {
        assert!(table.contains(needle), "{needle} missing in:\n{table}");
    }

    let o = ferrotune(&[
        "eval",
        "metrics",
        "--predictions",
        arg(&preds),
        "--json",
        "--per-sample",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: Value = serde_json::from_str(&stdout(&o)).expect("one JSON object");
    assert_eq!(json["samples"], 3);
    let per = json["per_sample"].as_array().unwrap();
    assert_eq!(per[0]["bleu-4"], 100.0, "an exact answer scores 100");
    assert_eq!(per[0]["rouge-l"], 100.0);
    let mean: f64 = per
        .iter()
        .map(|s| s["rouge-1"].as_f64().unwrap())
        .sum::<f64>()
        / 3.0;
    assert!((json["llamafactory"]["rouge-1"].as_f64().unwrap() - mean).abs() < 1e-9);
    assert!(json["sacrebleu"]["signature"]
        .as_str()
        .unwrap()
        .contains("tok:13a"));
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(written["llamafactory"], json["llamafactory"]);

    // A second run (LLaMA-Factory's own results file) beside ours.
    let lf = dir.write(
        "lf/predict_results.json",
        r#"{"predict_bleu-4": 12.5, "predict_rouge-1": 30.0, "predict_rouge-2": 10.0, "predict_rouge-l": 20.0, "predict_samples": 3}"#,
    );
    let md = dir.path().join("compare.md");
    let o = ferrotune(&[
        "eval",
        "compare",
        arg(&out),
        arg(&lf),
        "--markdown",
        arg(&md),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.lines().next().unwrap().contains("base"), "{table}");
    assert!(table.lines().next().unwrap().contains("lf"), "{table}");
    let markdown = std::fs::read_to_string(&md).unwrap();
    assert!(
        markdown.starts_with("| metric | base | lf |\n|---|---|---|\n"),
        "{markdown}"
    );
    assert!(markdown.contains("| BLEU (sacrebleu) |"), "{markdown}");
}

#[test]
fn sheet_then_summarize_filled_sheets() {
    let dir = TempDir::new("cli-eval-sheet");
    let a = dir.write("a.jsonl", PREDICTIONS);
    let b = dir.write(
        "b.jsonl",
        PREDICTIONS.replace("hello there\", \"label", "hi\", \"label"),
    );
    let out = dir.path().join("sheet");
    let o = ferrotune(&[
        "eval",
        "sheet",
        "--predictions",
        arg(&a),
        arg(&b),
        "--out",
        arg(&out),
        "--seed",
        "3",
        "--blind",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(out.join("sheet.html")).unwrap();
    assert!(html.contains("Download CSV") && html.contains("你好吗？"));
    let key: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("blind_key.json")).unwrap())
            .unwrap();
    assert_eq!(key.as_object().unwrap().len(), 2);

    // Two raters fill in the sheet: read it back and rate every row.
    let csv = std::fs::read_to_string(out.join("sheet.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        [
            "id",
            "model",
            "prompt",
            "reference",
            "prediction",
            "relevance",
            "accuracy",
            "fluency",
            "completeness",
            "safety",
            "rater",
            "comment"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 6);
    let fill = |rater: &str, score: &dyn Fn(usize) -> u8| {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&headers).unwrap();
        for (i, row) in rows.iter().enumerate() {
            let mut cells: Vec<String> = row.iter().map(str::to_string).collect();
            for cell in &mut cells[5..10] {
                *cell = score(i).to_string();
            }
            cells[10] = rater.to_string();
            w.write_record(&cells).unwrap();
        }
        String::from_utf8(w.into_inner().unwrap()).unwrap()
    };
    let s1 = dir.write("r1.csv", fill("ann", &|i| (i % 5 + 1) as u8));
    let s2 = dir.write("r2.csv", fill("bob", &|i| (i % 5 + 1) as u8));
    let key_path = out.join("blind_key.json");
    let o = ferrotune(&[
        "eval",
        "summarize",
        arg(&s1),
        arg(&s2),
        "--key",
        arg(&key_path),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["raters"], serde_json::json!(["ann", "bob"]));
    assert_eq!(s["ratings"], 60);
    let models: Vec<&String> = s["models"].as_object().unwrap().keys().collect();
    assert_eq!(models, ["a", "b"], "real names through the key");
    assert_eq!(s["models"]["a"]["relevance"]["n"], 6);
    assert_eq!(
        s["agreement"]["fluency"]["alpha"], 1.0,
        "identical ratings agree fully"
    );

    let o = ferrotune(&["eval", "summarize", arg(&s1), arg(&s2)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Krippendorff"), "{}", stdout(&o));
}

#[test]
fn malformed_inputs_name_file_and_place() {
    let dir = TempDir::new("cli-eval-bad");
    let preds = dir.write(
        "bad.jsonl",
        "{\"predict\": \"a\", \"label\": \"b\"}\n{\"predict\": \"a\"}\n",
    );
    let o = ferrotune(&["eval", "metrics", "--predictions", arg(&preds)]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("bad.jsonl line 2: no \"label\" field"),
        "{err}"
    );

    let header = "id,model,prompt,reference,prediction,relevance,accuracy,fluency,completeness,safety,rater,comment\n";
    let sheet = dir.write(
        "ratings.csv",
        format!("{header}1,A,q,r,p,4,5,3,4,5,ann,\n2,A,q,r,p,4,7,3,4,5,ann,\n"),
    );
    let o = ferrotune(&["eval", "summarize", arg(&sheet)]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("ratings.csv row 3: accuracy: 7 is outside the scale 1 to 5"),
        "{err}"
    );

    let sheet = dir.write(
        "words.csv",
        format!("{header}1,A,q,r,p,good,5,3,4,5,ann,\n"),
    );
    let err = stderr(&ferrotune(&["eval", "summarize", arg(&sheet)]));
    assert!(
        err.contains("words.csv row 2: relevance: \"good\" is not a number"),
        "{err}"
    );

    let sheet = dir.write(
        "nosafety.csv",
        "id,model,relevance,accuracy,fluency,completeness\n1,A,4,4,4,4\n",
    );
    let err = stderr(&ferrotune(&["eval", "summarize", arg(&sheet)]));
    assert!(err.contains("nosafety.csv: no \"safety\" column"), "{err}");
}
