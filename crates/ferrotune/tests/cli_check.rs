//! `ferrotune data check` as a user runs it.

use std::process::Output;

use ferrotune_testing::cli::{stderr, stdout};
use ferrotune_testing::{shared, TempDir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn ferrotune(args: &[&str]) -> Output {
    ferrotune_testing::cli::output(BIN, args)
}

fn report(args: &[&str]) -> Value {
    let o = ferrotune(args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

fn findings<'a>(report: &'a Value, check: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .expect("a findings list")
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

#[test]
fn identity_placeholders_are_flagged_until_configured() {
    let identity = shared("data/identity.json");
    let identity = identity.to_str().unwrap();
    let flagged = report(&["data", "check", "--dataset", identity, "--json"]);
    let placeholders = findings(&flagged, "placeholder");
    assert!(placeholders.len() > 80, "{}", placeholders.len());
    for f in &placeholders {
        assert_eq!(f["severity"], "error");
        assert_eq!(f["records"].as_array().unwrap().len(), 1);
        assert!(f["example"].as_str().unwrap().contains("{{"), "{f}");
    }
    let summary = &flagged["summary"]["datasets"][0];
    assert_eq!(summary["records"], 91);
    assert_eq!(
        summary["checks"]["placeholder"]["records"],
        placeholders.len()
    );

    let configured = report(&[
        "data",
        "check",
        "--dataset",
        identity,
        "--placeholder",
        "name=Ferro",
        "--placeholder",
        "author=the ferrotune project",
        "--json",
    ]);
    assert!(findings(&configured, "placeholder").is_empty());
    // Identity data asks the same question twice with different answers.
    assert!(!findings(&configured, "conflicting_answer").is_empty());
}

#[test]
fn readable_summary_with_examples() {
    let identity = shared("data/identity.json");
    let o = ferrotune(&["data", "check", "--dataset", identity.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("identity.json · 91 records"), "{out}");
    assert!(out.contains("error    placeholder"), "{out}");
    assert!(out.contains("record 0: Hello! I am {{name}}"), "{out}");
    assert!(out.contains("scripts: han 75, latin 16"), "{out}");
    assert!(out.contains("diversity of 91 instructions"), "{out}");
}

#[test]
fn fix_writes_a_clean_copy_and_blocklist_screens() {
    let dir = TempDir::new("cli-check-fix");
    let records = r#"[
  {"instruction": "Name a fruit.", "input": "", "output": "An apple is a crunchy fruit."},
  {"instruction": "Name a fruit.", "input": "", "output": "An apple is a crunchy fruit."},
  {"instruction": "Name a tropical fruit.", "input": "", "output": "The durian is famous for its smell."},
  {"instruction": "Name a vegetable.", "input": "", "output": "A carrot is an orange root vegetable."}
]"#;
    let data = dir.write("fruit.json", records);
    let out = dir.path().join("clean");
    let o = ferrotune(&[
        "data",
        "check",
        "--dataset",
        data.to_str().unwrap(),
        "--blocklist",
        "examples/blocklist_example.txt",
        "--fix",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("2 of 4 records kept"), "{}", stdout(&o));
    let kept: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fruit.json")).unwrap()).unwrap();
    let outputs: Vec<&str> = kept
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["output"].as_str().unwrap())
        .collect();
    assert_eq!(
        outputs,
        vec![
            "An apple is a crunchy fruit.",
            "A carrot is an orange root vegetable."
        ]
    );
    let log = std::fs::read_to_string(out.join("dropped.jsonl")).unwrap();
    assert!(
        log.contains("\"exact_duplicate\"") && log.contains("\"blocklist\""),
        "{log}"
    );
}

#[test]
fn bad_arguments_are_errors() {
    let o = ferrotune(&["data", "check", "--dataset", "no/such/file.json"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no/such/file.json"), "{}", stderr(&o));
    let identity = shared("data/identity.json");
    let o = ferrotune(&[
        "data",
        "check",
        "--dataset",
        identity.to_str().unwrap(),
        "--near-threshold",
        "1.5",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--near-threshold"), "{}", stderr(&o));
}

#[test]
fn explain_documents_every_check_that_a_report_can_name() {
    let o = ferrotune(&["data", "check", "--explain", "--near-threshold", "0.9"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    // Every check name a report can carry, with its severity, rule and --fix line.
    for (name, severity) in [
        ("exact_duplicate", "warning"),
        ("near_duplicate", "warning"),
        ("conflicting_answer", "warning"),
        ("empty_response", "error"),
        ("short_response", "warning"),
        ("repeats_prompt", "warning"),
        ("placeholder", "error"),
        ("control_token", "error"),
        ("broken_tool_call", "error"),
        ("length_outlier", "warning"),
        ("language_mix", "warning"),
        ("blocklist", "error"),
        ("identical_answers", "error"),
        ("invalid_record", "error"),
    ] {
        assert!(
            text.contains(&format!("\n{name} ({severity})\n")),
            "{name}: {text}"
        );
    }
    assert_eq!(text.matches("  rule:  ").count(), 14);
    assert_eq!(text.matches("  fix:   ").count(), 14);
    assert!(text.contains(">= 0.9 (--near-threshold)"), "{text}");
}
