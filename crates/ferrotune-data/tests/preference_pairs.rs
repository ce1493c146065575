//! Preference pairs (`stage: dpo`): LLaMA-Factory's ranking layouts, the shared prompt
//! and the pair truncation rule against LLaMA-Factory 0.9.5's pairwise processor
//! (ferrotune-train's tests/data/preference/data.json, from
//! scripts/make_preference_fixture.py), and the errors for pairs that are not.

use std::path::Path;

use ferrotune_data::pipeline;
use ferrotune_data::quality::{self, Check, CheckOptions};
use ferrotune_data::{DataArgs, Encoded, Stage, IGNORE_INDEX};
use ferrotune_testing::{shared, TempDir};
use serde_json::{json, Value};

fn lf_fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ferrotune-train/tests/data/preference/data.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn dpo_args(dataset: &str, dir: &Path) -> DataArgs {
    DataArgs {
        tokenizer_name_or_path: Some(shared("tokenizers/qwen3")),
        dataset: vec![dataset.to_string()],
        dataset_dir: dir.to_path_buf(),
        stage: Stage::Dpo,
        ..DataArgs::default()
    }
}

/// A folder with `records` in data.json, registered as `pairs` with `entry`'s keys.
fn registered(records: &Value, entry: Value) -> TempDir {
    let dir = TempDir::new("pairs");
    std::fs::write(dir.path().join("data.json"), records.to_string()).unwrap();
    let mut entry = entry;
    entry["file_name"] = json!("data.json");
    std::fs::write(
        dir.path().join("dataset_info.json"),
        json!({ "pairs": entry }).to_string(),
    )
    .unwrap();
    dir
}

fn demo_registry() -> TempDir {
    let records: Value =
        serde_json::from_str(&std::fs::read_to_string(shared("data/dpo_en_demo.json")).unwrap())
            .unwrap();
    registered(
        &records,
        json!({"ranking": true, "formatting": "sharegpt",
               "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}),
    )
}

fn ints<T: serde::de::DeserializeOwned>(v: &Value) -> Vec<T> {
    serde_json::from_value(v.clone()).unwrap()
}

/// (prompt, chosen answer, rejected answer) of an encoded pair.
fn split(e: &Encoded) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let k = e.second_start.expect("a pair");
    let prompt = e.labels[..k]
        .iter()
        .take_while(|&&l| l == IGNORE_INDEX)
        .count();
    let ids = &e.input_ids;
    (
        ids[..prompt].to_vec(),
        ids[prompt..k].to_vec(),
        ids[k + prompt..].to_vec(),
    )
}

#[test]
fn pairs_encode_as_llamafactory_encodes_them() {
    let lf = lf_fixture();
    let dir = demo_registry();
    let mut args = dpo_args("pairs", dir.path());
    args.max_samples = Some(8);

    // Untruncated: the same prompt and answers, token for token, as far as LLaMA-Factory
    // kept them, and the lengths it started from.
    args.cutoff_len = 100_000;
    let whole = pipeline::prepare(&args, None).unwrap();
    assert_eq!(whole.samples.len(), 8);
    for (s, p) in whole.samples.iter().zip(lf["pairs"].as_array().unwrap()) {
        let (prompt, chosen, rejected) = split(&s.encoded);
        let lf_prompt_len = p["prompt_len"].as_u64().unwrap() as usize;
        let lf_chosen: Vec<u32> = ints(&p["chosen_input_ids"]);
        let lf_rejected: Vec<u32> = ints(&p["rejected_input_ids"]);
        assert_eq!(
            (prompt.len(), chosen.len(), rejected.len()),
            (
                p["untruncated_prompt_len"].as_u64().unwrap() as usize,
                p["untruncated_chosen_response_len"].as_u64().unwrap() as usize,
                p["untruncated_rejected_response_len"].as_u64().unwrap() as usize,
            ),
            "{}: lengths before truncation",
            s.at
        );
        assert_eq!(
            prompt[..lf_prompt_len],
            lf_chosen[..lf_prompt_len],
            "{}",
            s.at
        );
        assert_eq!(
            chosen[..lf_chosen.len() - lf_prompt_len],
            lf_chosen[lf_prompt_len..],
            "{}: chosen",
            s.at
        );
        assert_eq!(
            rejected[..lf_rejected.len() - lf_prompt_len],
            lf_rejected[lf_prompt_len..],
            "{}: rejected",
            s.at
        );
    }

    // At cutoff_len 128: LLaMA-Factory's lengths (infer_seqlen on the prompt and the
    // longer answer, one answer length for both); where a cut falls, ferrotune keeps the
    // assistant header at the prompt's end and each answer's end of turn, so only the
    // tokens before those are compared.
    args.cutoff_len = lf["cutoff_len"].as_u64().unwrap() as usize;
    let cut = pipeline::prepare(&args, None).unwrap();
    let end_of_turn: Vec<u32> = vec![151645, 198]; // "<|im_end|>\n"
    let header: Vec<u32> = vec![151644, 77091, 198]; // "<|im_start|>assistant\n"
    for (s, p) in cut.samples.iter().zip(lf["pairs"].as_array().unwrap()) {
        let e = &s.encoded;
        let (prompt, chosen, rejected) = split(e);
        let want = |k: &str| p[k].as_u64().unwrap() as usize;
        assert_eq!(
            (prompt.len(), chosen.len(), rejected.len()),
            (
                want("prompt_len"),
                want("chosen_response_len"),
                want("rejected_response_len")
            ),
            "{}: lengths at cutoff_len 128",
            s.at
        );
        assert!(e.truncated, "{}", s.at);
        assert!(prompt.ends_with(&header), "{}: the header stays", s.at);
        let lf_chosen: Vec<u32> = ints(&p["chosen_input_ids"]);
        let kept = prompt.len() - header.len();
        assert_eq!(prompt[..kept], lf_chosen[..kept], "{}", s.at);
        for (ours, lf_key) in [
            (&chosen, "chosen_input_ids"),
            (&rejected, "rejected_input_ids"),
        ] {
            let lf_ids: Vec<u32> = ints(&p[lf_key]);
            let lf_answer = &lf_ids[prompt.len()..];
            assert!(
                ours.ends_with(&end_of_turn),
                "{}: {lf_key} ends its turn",
                s.at
            );
            let head = ours.len() - end_of_turn.len();
            assert_eq!(ours[..head], lf_answer[..head], "{}: {lf_key}", s.at);
        }
        // Labels: the answers are supervised, the prompts not.
        let k = e.second_start.unwrap();
        let supervised: usize = e.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
        assert_eq!(supervised, chosen.len() + rejected.len(), "{}", s.at);
        assert_eq!(
            e.input_ids[k..k + prompt.len()],
            prompt[..],
            "{}: shared prompt",
            s.at
        );
    }
}

#[test]
fn alpaca_and_openai_pairs_and_registry_columns() {
    let alpaca = json!([{"instruction": "Name a colour.", "input": "", "chosen": "Blue.", "rejected": "Seven."}]);
    let dir = registered(
        &alpaca,
        json!({"ranking": true, "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}}),
    );
    let p = pipeline::prepare(&dpo_args("pairs", dir.path()), None).unwrap();
    assert_eq!(p.samples.len(), 1);
    let (prompt, chosen, rejected) = split(&p.samples.encoded(0));
    let text = |ids: &[u32]| p.tokenizer.hf().unwrap().decode(ids, false).unwrap();
    assert!(text(&prompt).contains("Name a colour."));
    assert!(text(&chosen).starts_with("<think>") && text(&chosen).contains("Blue."));
    assert!(text(&rejected).contains("Seven."));

    let openai = json!([{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                         "chosen": {"role": "assistant", "content": "4"},
                         "rejected": {"role": "assistant", "content": "5"}}]);
    let dir = registered(
        &openai,
        json!({"ranking": true, "formatting": "openai", "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}}),
    );
    let p = pipeline::prepare(&dpo_args("pairs", dir.path()), None).unwrap();
    let (prompt, chosen, rejected) = split(&p.samples.encoded(0));
    let text = |ids: &[u32]| p.tokenizer.hf().unwrap().decode(ids, false).unwrap();
    assert!(text(&prompt).contains("Be brief.") && text(&prompt).contains("2+2?"));
    assert!(text(&chosen).contains('4') && text(&rejected).contains('5'));

    // A file given directly is read as pairs by its chosen and rejected columns.
    let file = dir.path().join("data.json");
    let p = pipeline::prepare(&dpo_args(&file.display().to_string(), dir.path()), None).unwrap();
    assert_eq!(p.samples.len(), 1);
}

fn error_of(records: Value, entry: Value, stage: Stage) -> String {
    let dir = registered(&records, entry);
    let mut args = dpo_args("pairs", dir.path());
    args.stage = stage;
    match pipeline::prepare(&args, None) {
        Ok(_) => panic!("{records} was accepted with stage {stage:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_pairs_are_errors_naming_the_file_and_record() {
    let ranking = json!({"ranking": true, "formatting": "sharegpt",
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}});
    let prompt = json!([{"from": "human", "value": "Hi"}]);
    let answer = |v: &str| json!({"from": "gpt", "value": v});
    let ok =
        json!({"conversations": prompt, "chosen": answer("Hello"), "rejected": answer("Go away")});

    let e = error_of(
        json!([ok, {"conversations": prompt, "chosen": answer("Hello")}]),
        ranking.clone(),
        Stage::Dpo,
    );
    assert!(e.contains("data.json") && e.contains("record 1"), "{e}");
    assert!(e.contains("no rejected answer"), "{e}");

    let e = error_of(
        json!([{"conversations": prompt, "chosen": answer("  "), "rejected": answer("No")}]),
        ranking.clone(),
        Stage::Dpo,
    );
    assert!(
        e.contains("record 0") && e.contains("chosen answer") && e.contains("is empty"),
        "{e}"
    );

    let e = error_of(json!([ok]), ranking.clone(), Stage::Sft);
    assert!(e.contains("record 0") && e.contains("stage: dpo"), "{e}");

    let sft = json!([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]);
    let e = error_of(sft, json!({"formatting": "sharegpt"}), Stage::Dpo);
    assert!(
        e.contains("record 0") && e.contains("needs preference pairs"),
        "{e}"
    );

    let e = error_of(
        json!([{"conversations": prompt, "chosen": {"from": "human", "value": "x"}, "rejected": answer("y")}]),
        ranking,
        Stage::Dpo,
    );
    assert!(
        e.contains("chosen answer") && e.contains("expected the assistant tag"),
        "{e}"
    );
}

#[test]
fn the_quality_report_flags_pairs_whose_answers_are_the_same() {
    let prompt = json!([{"from": "human", "value": "Hi"}]);
    let answer = |v: &str| json!({"from": "gpt", "value": v});
    let records = json!([
        {"conversations": prompt, "chosen": answer("Hello there."), "rejected": answer("hello   there.")},
        {"conversations": prompt, "chosen": answer("Hello there."), "rejected": answer("Go away.")},
    ]);
    let dir = registered(
        &records,
        json!({"ranking": true, "formatting": "sharegpt",
               "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}),
    );
    let args = dpo_args("pairs", dir.path());
    let checked = quality::run(&args, &CheckOptions::default()).unwrap();
    let flagged: Vec<usize> = checked
        .report
        .findings
        .iter()
        .filter(|f| f.check == Check::IdenticalAnswers)
        .flat_map(|f| f.records.iter().copied())
        .collect();
    assert_eq!(flagged, vec![0], "{:?}", checked.report.findings);
}

#[test]
fn kto_examples_and_their_kl_sequences_follow_llamafactory() {
    let lf = lf_fixture();
    let demo: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(shared("data/dpo_en_demo.json")).unwrap())
            .unwrap();
    // Record i: the prompt with the chosen answer (even i, desirable) or the rejected one.
    let records: Vec<Value> = demo[..8]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let answer = if i % 2 == 0 {
                &r["chosen"]
            } else {
                &r["rejected"]
            };
            let mut messages = r["conversations"].as_array().unwrap().clone();
            messages.push(answer.clone());
            json!({"messages": messages, "kto_tag": i % 2 == 0})
        })
        .collect();
    let dir = registered(
        &Value::Array(records),
        json!({"formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "kto_tag"}}),
    );
    let mut args = dpo_args("pairs", dir.path());
    args.stage = Stage::Kto;
    args.cutoff_len = lf["cutoff_len"].as_u64().unwrap() as usize;
    let p = pipeline::prepare(&args, None).unwrap();
    assert_eq!(p.samples.len(), 8);
    let header: Vec<u32> = vec![151644, 77091, 198];
    let end_of_turn: Vec<u32> = vec![151645, 198];
    for (s, k) in p.samples.iter().zip(lf["kto"].as_array().unwrap()) {
        let e = &s.encoded;
        assert_eq!(e.desirable, k["kto_tags"].as_bool(), "{}", s.at);
        let second = e.second_start.unwrap();
        let want = |key: &str| k[key].as_u64().unwrap() as usize;
        for (range, prefix, ids_key) in [
            (0..second, "", "input_ids"),
            (second..e.len(), "kl_", "kl_input_ids"),
        ] {
            let ids = &e.input_ids[range.clone()];
            let labels = &e.labels[range];
            let prompt = labels.iter().take_while(|&&l| l == IGNORE_INDEX).count();
            assert_eq!(
                (prompt, ids.len() - prompt),
                (
                    want(&format!("{prefix}prompt_len")),
                    want(&format!("{prefix}response_len"))
                ),
                "{} {ids_key}: prompt and answer lengths",
                s.at
            );
            let lf_ids: Vec<u32> = ints(&k[ids_key]);
            // Where a cut falls, the header and the end of turn stay (see the pairs).
            let head = if ids[..prompt].ends_with(&header) && lf_ids[..prompt] != ids[..prompt] {
                prompt - header.len()
            } else {
                prompt
            };
            assert_eq!(ids[..head], lf_ids[..head], "{} {ids_key}: prompt", s.at);
            let answer_head = ids.len() - end_of_turn.len();
            assert!(ids.ends_with(&end_of_turn), "{} {ids_key}", s.at);
            assert_eq!(
                ids[prompt..answer_head],
                lf_ids[prompt..answer_head],
                "{} {ids_key}: answer",
                s.at
            );
        }
    }
    // Each KL answer is the previous record's (the first takes the last's).
    let text = |ids: &[u32]| p.tokenizer.hf().unwrap().decode(ids, false).unwrap();
    let answer = |e: &Encoded, range: std::ops::Range<usize>| {
        let labels = &e.labels[range.clone()];
        let prompt = labels.iter().take_while(|&&l| l == IGNORE_INDEX).count();
        text(&e.input_ids[range.start + prompt..range.start + prompt + 20])
    };
    let all: Vec<Encoded> = p.samples.iter().map(|s| s.encoded).collect();
    for i in 0..8 {
        let e = &all[i];
        let previous = &all[(i + 7) % 8];
        assert_eq!(
            answer(e, e.second_start.unwrap()..e.len()),
            answer(previous, 0..previous.second_start.unwrap()),
            "record {i}"
        );
    }

    // Without a label, or with pairs: errors naming the record.
    let e = error_of(
        json!([{"messages": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]),
        json!({"formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "kto_tag"}}),
        Stage::Kto,
    );
    assert!(e.contains("record 0") && e.contains("kto_tag"), "{e}");
}
