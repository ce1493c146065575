//! `ferrotune data preview` and `ferrotune data stats` as a user runs them.

use std::process::Output;

use ferrotune_testing::cli::{stderr, stdout};
use ferrotune_testing::{shared, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn ferrotune(args: &[&str]) -> Output {
    ferrotune_testing::cli::output(BIN, args)
}

#[test]
fn preview_marks_the_supervised_text() {
    let o = ferrotune(&["data", "preview", "examples/data_preview.yaml", "-n", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("── sample 1 · examples/data/identity_demo.json record 0"),
        "{out}"
    );
    assert!(
        out.contains("[[I am Ferro, an AI assistant made by the ferrotune project."),
        "{out}"
    );
    assert!(
        out.contains("<|im_end|>\n]]"),
        "the end of turn is supervised: {out}"
    );
    assert!(!out.contains("\x1b["), "no colour when not on a terminal");
    let coloured = stdout(&ferrotune(&[
        "data",
        "preview",
        "examples/data_preview.yaml",
        "-n",
        "1",
        "--color",
        "always",
    ]));
    assert!(coloured.contains("\x1b[1;32m"));
}

#[test]
fn preview_json_lines() {
    let o = ferrotune(&[
        "data",
        "preview",
        "examples/data_preview.yaml",
        "-n",
        "30",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 27, "24 identity + 3 tool samples");
    for line in &lines {
        let ids = line["input_ids"].as_array().unwrap();
        let labels = line["labels"].as_array().unwrap();
        assert_eq!(ids.len(), labels.len());
        assert!(labels.iter().any(|l| l.as_i64() != Some(-100)));
        for (id, label) in ids.iter().zip(labels) {
            assert!(label.as_i64() == Some(-100) || label == id);
        }
        assert!(line["text"]
            .as_str()
            .unwrap()
            .contains("<|im_start|>assistant\n"));
    }
    // The third tool sample has a reply with loss_weight 0: only the last reply is trained.
    let last = lines.last().unwrap();
    assert!(last.get("weights").is_none());
}

#[test]
fn stats_json_counts_everything() {
    let o = ferrotune(&["data", "stats", "examples/data_preview.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["datasets"].as_array().unwrap().len(), 2);
    assert_eq!(doc["total"]["records"], 27);
    assert_eq!(doc["total"]["samples"], 27);
    assert_eq!(doc["template"]["end_of_turn"], "<|im_end|>\n");
    assert_eq!(doc["pad_token"]["token"], "<|endoftext|>");
    let fraction = doc["total"]["supervised_fraction"].as_f64().unwrap();
    assert!(fraction > 0.0 && fraction < 1.0);
    let length = &doc["datasets"][0]["length"];
    assert!(length["p50"].as_u64().unwrap() <= length["p99"].as_u64().unwrap());

    let table = stdout(&ferrotune(&["data", "stats", "examples/data_preview.yaml"]));
    assert!(
        table.contains("identity_demo") && table.contains("total"),
        "{table}"
    );
}

#[test]
fn flags_without_a_config_and_shared_datasets() {
    let data = shared("data/identity.json");
    let tok = shared("tokenizers/llama3");
    let o = ferrotune(&[
        "data",
        "preview",
        "--dataset",
        data.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--template",
        "alpaca",
        "-n",
        "1",
        "--placeholder",
        "name=Ferro",
        "--placeholder",
        "author=the ferrotune project",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("### Instruction:\nhi\n\n### Response:\n[[Hello! I am Ferro, an AI assistant developed by the ferrotune project."), "{out}");
    assert!(
        out.contains("<|end_of_text|>\n\n]]"),
        "alpaca ends a reply with EOS: {out}"
    );

    let o = ferrotune(&[
        "data",
        "stats",
        "--dataset",
        data.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("placeholder {{name}} left unreplaced"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn config_typos_and_bad_input_are_errors_not_panics() {
    let dir = TempDir::new("cli-bad");
    let config = dir.write(
        "c.yaml",
        "model_name_or_path: examples/tokenizer\ndataset: x\ncutof_len: 10\n",
    );
    let o = ferrotune(&["data", "stats", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown key `cutof_len` (did you mean `cutoff_len`?)"),
        "{}",
        stderr(&o)
    );

    let data = dir.write(
        "d.json",
        "[{\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": ]",
    );
    let o = ferrotune(&[
        "data",
        "preview",
        "--dataset",
        data.to_str().unwrap(),
        "--tokenizer",
        "examples/tokenizer",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: ") && err.contains("d.json record 1"),
        "{err}"
    );
    assert!(!err.contains("panicked"));

    let o = ferrotune(&[
        "data",
        "preview",
        "--dataset",
        data.to_str().unwrap(),
        "--tokenizer",
        "examples/tokenizer",
        "--template",
        "nope",
    ]);
    assert!(
        stderr(&o).contains("unknown template \"nope\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_describes_the_commands() {
    let out = stdout(&ferrotune(&["data", "--help"]));
    assert!(out.contains("preview") && out.contains("stats"), "{out}");
    let out = stdout(&ferrotune(&["data", "preview", "--help"]));
    for flag in [
        "--dataset",
        "--format",
        "--stage",
        "--template",
        "--tokenizer",
        "--json",
        "--skip-invalid",
        "--placeholder",
    ] {
        assert!(out.contains(flag), "{flag} missing from\n{out}");
    }
}
