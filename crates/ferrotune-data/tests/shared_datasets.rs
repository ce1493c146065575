//! The demo datasets in ../shared/data, through the whole data path, with the real Qwen3
//! and Llama 3 tokenizers and their jinja templates, and with built-in templates.

use ferrotune_data::pipeline::{self, Prepared};
use ferrotune_data::{DataArgs, Stage, IGNORE_INDEX};

mod common;

const SFT: &[(&str, usize)] = &[
    ("alpaca_en_demo.json", 999),
    ("alpaca_zh_demo.json", 1000),
    ("identity.json", 91),
    ("glaive_toolcall_en_demo.json", 300),
];

fn args(tokenizer: &str, dataset: &str, template: Option<&str>) -> DataArgs {
    common::shared_args(tokenizer, dataset, template)
}

/// Every record became an example, each with supervised tokens that end the way the
/// template ends a turn, and nothing was lost or left unreplaced.
fn check_all_records_become_examples(p: &Prepared, records: usize, what: &str) {
    let r = &p.reports[0];
    assert_eq!(
        (
            r.records,
            r.samples,
            r.invalid,
            r.all_masked,
            r.unrenderable,
            r.dropped_too_long
        ),
        (records, records, 0, 0, 0, 0),
        "{what}: {:?}",
        r.examples
    );
    assert!(r.unreplaced.is_empty(), "{what}: {:?}", r.unreplaced);
    let template = p.template.as_ref().unwrap();
    let stop = template.stop_strings()[0].clone();
    for s in &p.samples {
        let e = &s.encoded;
        assert!(e.supervised_tokens() > 0, "{what}: {}", s.at);
        assert_eq!(e.input_ids.len(), e.labels.len());
        // The last supervised run ends with the end-of-turn marker: the model learns to stop.
        let (_, last_run) = e.runs().into_iter().rfind(|(sup, _)| *sup).unwrap();
        let text = p
            .tokenizer
            .hf()
            .unwrap()
            .decode(&e.input_ids[last_run], false)
            .unwrap();
        assert!(
            text.trim_end().ends_with(&stop),
            "{what} {}: {text:?} does not end with {stop:?}",
            s.at
        );
    }
}

#[test]
fn sft_datasets_with_the_tokenizers_own_templates() {
    for tokenizer in ["qwen3", "llama3"] {
        for (dataset, records) in SFT {
            let p = pipeline::prepare(&args(tokenizer, dataset, None), None).unwrap();
            check_all_records_become_examples(&p, *records, &format!("{tokenizer} {dataset}"));
            let tools_dropped = p.warnings.iter().any(|w| w.contains("drops"));
            assert_eq!(
                tools_dropped,
                tokenizer == "llama3" && dataset.starts_with("glaive"),
                "{tokenizer} {dataset}: {:?}",
                p.warnings
            );
        }
    }
}

#[test]
fn alpaca_datasets_with_builtin_templates() {
    for template in ["alpaca", "qwen3_nothink"] {
        for (dataset, records) in SFT.iter().filter(|(d, _)| !d.starts_with("glaive")) {
            let p = pipeline::prepare(&args("qwen3", dataset, Some(template)), None).unwrap();
            check_all_records_become_examples(&p, *records, &format!("{template} {dataset}"));
        }
    }
    let p = pipeline::prepare(
        &args("qwen3", "alpaca_en_demo.json", Some("alpaca")),
        Some(1),
    )
    .unwrap();
    let text = p
        .tokenizer
        .hf()
        .unwrap()
        .decode(&p.samples.get(0).encoded.input_ids, false)
        .unwrap();
    assert!(
        text.starts_with("Below is an instruction that describes a task."),
        "{text}"
    );
    assert!(
        text.contains("\n\n### Instruction:\n") && text.contains("\n\n### Response:\n"),
        "{text}"
    );
}

#[test]
fn identity_placeholders_are_replaced_or_reported() {
    let p = pipeline::prepare(&args("qwen3", "identity.json", None), None).unwrap();
    let all: String = p
        .samples
        .iter()
        .map(|s| {
            p.tokenizer
                .hf()
                .unwrap()
                .decode(&s.encoded.input_ids, false)
                .unwrap()
        })
        .collect();
    assert!(all.contains("Ferro") && all.contains("the ferrotune project"));
    assert!(!all.contains("{{name}}") && !all.contains("{{author}}"));

    let mut unset = args("qwen3", "identity.json", None);
    unset.placeholders.clear();
    let p = pipeline::prepare(&unset, None).unwrap();
    let unreplaced = &p.reports[0].unreplaced;
    assert!(
        unreplaced["name"] > 0 && unreplaced["author"] > 0,
        "{unreplaced:?}"
    );
}

#[test]
fn c4_as_pretraining_text() {
    let mut a = args("qwen3", "c4_demo.jsonl", None);
    a.stage = Stage::Pt;
    a.cutoff_len = 4096;
    let p = pipeline::prepare(&a, None).unwrap();
    let r = &p.reports[0];
    assert_eq!((r.records, r.samples, r.invalid), (300, 300, 0));
    let (end_id, end) = p.tokenizer.document_end().unwrap();
    assert_eq!(end, "<|endoftext|>");
    for s in &p.samples {
        let e = &s.encoded;
        assert!(e.labels.iter().all(|&l| l != IGNORE_INDEX));
        if !e.truncated {
            assert_eq!(*e.input_ids.last().unwrap(), end_id);
        }
    }
}

#[test]
fn the_registry_in_the_shared_data_folder_is_not_required() {
    // ../shared/data has no dataset_info.json; names resolve as files in dataset_dir.
    let mut a = args("qwen3", "identity.json", None);
    a.dataset = vec!["identity.json".into()];
    let p = pipeline::prepare(&a, Some(2)).unwrap();
    assert_eq!(p.samples.len(), 2);
}
