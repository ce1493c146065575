//! The quality report: every check fires on a small dataset made to contain its problem,
//! none fires (above info) on a clean one, and `--fix` keeps the right records.

use std::path::Path;

use ferrotune_data::quality::{self, fix, Check, CheckOptions, Checked, Finding, Severity};
use ferrotune_data::DataArgs;
use ferrotune_testing::{workspace_root, TempDir};
use serde_json::{json, Value};

fn args(file: &Path) -> DataArgs {
    DataArgs {
        dataset: vec![file.display().to_string()],
        dataset_dir: file.parent().unwrap().to_path_buf(),
        ..DataArgs::default()
    }
}

fn write_json(dir: &TempDir, name: &str, records: &[Value]) -> std::path::PathBuf {
    dir.write(name, serde_json::to_string_pretty(records).unwrap())
}

fn check(file: &Path, options: &CheckOptions) -> Checked {
    quality::run(&args(file), options).unwrap_or_else(|e| panic!("{e}"))
}

fn of(checked: &Checked, check: Check) -> Vec<&Finding> {
    checked
        .report
        .findings
        .iter()
        .filter(|f| f.check == check)
        .collect()
}

fn alpaca(instruction: &str, output: &str) -> Value {
    json!({"instruction": instruction, "input": "", "output": output})
}

/// Twelve varied, well-formed records of similar length.
fn clean_records() -> Vec<Value> {
    [
        (
            "Name three primary colors.",
            "The three primary colors are red, yellow and blue.",
        ),
        (
            "What is the capital of France?",
            "The capital of France is Paris, on the Seine.",
        ),
        (
            "Give a synonym for happy.",
            "A common synonym for happy is joyful, as in a joyful day.",
        ),
        (
            "Explain what photosynthesis is.",
            "Plants turn light, water and carbon dioxide into sugar and oxygen.",
        ),
        (
            "Suggest a name for a bakery.",
            "How about Golden Crust, which sounds warm and inviting?",
        ),
        (
            "How many legs does a spider have?",
            "A spider has eight legs, unlike insects, which have six.",
        ),
        (
            "Describe the color of the sky.",
            "On a clear day the sky is blue because air scatters blue light.",
        ),
        (
            "Why do leaves fall in autumn?",
            "Trees shed leaves to save water and energy through the winter.",
        ),
        (
            "Write a short greeting for a card.",
            "Wishing you a bright and happy birthday full of laughter!",
        ),
        (
            "What does a thermometer measure?",
            "A thermometer measures temperature, in Celsius or Fahrenheit.",
        ),
        (
            "Recommend a hobby for rainy days.",
            "Reading a good novel is a cozy hobby for rainy afternoons.",
        ),
        (
            "What is the boiling point of water?",
            "Water boils at 100 degrees Celsius at sea level pressure.",
        ),
    ]
    .iter()
    .map(|(i, o)| alpaca(i, o))
    .collect()
}

fn loud(checked: &Checked) -> Vec<&Finding> {
    checked
        .report
        .findings
        .iter()
        .filter(|f| f.severity != Severity::Info)
        .collect()
}

#[test]
fn a_clean_dataset_has_no_errors_or_warnings() {
    let dir = TempDir::new("quality-clean");
    let file = write_json(&dir, "clean.json", &clean_records());
    let options = CheckOptions {
        blocklist: quality::read_blocklist(
            &workspace_root().join("examples/blocklist_example.txt"),
        )
        .unwrap(),
        ..CheckOptions::default()
    };
    let checked = check(&file, &options);
    assert!(loud(&checked).is_empty(), "{:#?}", loud(&checked));
    let summary = &checked.report.summary.datasets[0];
    assert_eq!((summary.records, summary.clean), (12, 12));
    assert_eq!(summary.scripts.get("latin"), Some(&12));
    assert_eq!(checked.report.summary.length_unit, "characters");
    assert!(summary.diversity.distinct_1 > 0.5);
}

#[test]
fn exact_duplicates_and_conflicting_answers() {
    let dir = TempDir::new("quality-dup");
    let mut records = clean_records();
    records.push(alpaca(
        "name three  PRIMARY colors.",
        "The three primary colors are red, yellow and blue.",
    ));
    records.push(alpaca("What is the capital of France?", "Paris."));
    let checked = check(
        &write_json(&dir, "d.json", &records),
        &CheckOptions::default(),
    );
    let exact = of(&checked, Check::ExactDuplicate);
    assert_eq!(exact.len(), 1, "{exact:#?}");
    assert_eq!(exact[0].records, vec![0, 12]);
    let conflicting = of(&checked, Check::ConflictingAnswer);
    assert_eq!(conflicting.len(), 1, "{conflicting:#?}");
    assert_eq!(conflicting[0].records, vec![1, 13]);
    assert_eq!(conflicting[0].severity, Severity::Warning);
}

#[test]
fn near_duplicates_in_english_and_chinese() {
    let dir = TempDir::new("quality-near");
    let story = "Once upon a time a small fox lived at the edge of a quiet forest where the \
                 rivers ran clear and the birds sang every morning, and the fox spent its days \
                 exploring the hills, chasing butterflies and napping under the old oak tree";
    let zh = "从前有一只小狐狸住在安静的森林边上那里的河水清澈见底鸟儿每天早上都在歌唱小狐狸每天在山丘上探险追逐蝴蝶在老橡树下睡午觉";
    let zh_other = "今天的天气非常好我们一起去公园散步看到了很多美丽的花朵还有小朋友在草地上放风筝大家都玩得很开心";
    let mut records = clean_records();
    records.push(alpaca(
        "Tell me a story.",
        &format!("{story} all afternoon."),
    ));
    records.push(alpaca("Tell me a story.", &format!("{story} all summer.")));
    records.push(alpaca("讲一个故事。", &format!("{zh}。")));
    records.push(alpaca("讲一个故事。", &format!("{zh}！很开心")));
    records.push(alpaca("讲一个故事。", &format!("{zh_other}。")));
    let checked = check(
        &write_json(&dir, "d.json", &records),
        &CheckOptions::default(),
    );
    let near: Vec<Vec<usize>> = of(&checked, Check::NearDuplicate)
        .iter()
        .map(|f| f.records.clone())
        .collect();
    assert_eq!(near, vec![vec![12, 13], vec![14, 15]]);
}

#[test]
fn response_checks() {
    let dir = TempDir::new("quality-response");
    let mut records = clean_records();
    records.push(alpaca("Say something.", "")); // 12: empty (rejected by the format)
    records.push(alpaca("Say something else.", "   ")); // 13: blank
    records.push(alpaca("Is water wet?", "Yes.")); // 14: short
    records.push(alpaca(
        "Repeat after me: the cat sat on the mat today.",
        "Repeat after me: the cat sat on the mat today.",
    )); // 15: repeats the prompt
    records.push(alpaca(
        "请用中文介绍一下你自己，说明你的名字和用途。",
        "I am an assistant and I can help you with many different tasks every day.",
    )); // 16: answered in another script
    records.push(alpaca(
        "把下面的句子翻译成英文：今天天气很好，我们去公园散步吧。",
        "The weather is nice today, let's go for a walk in the park.",
    )); // 17: a translation, asked for
    records.push(alpaca(
        "写一个Python函数，计算两个数字的和并返回结果。",
        "```python\ndef add(first_number, second_number):\n    return first_number + second_number\n```\n这个函数返回两个数的和。",
    )); // 18: code, with Chinese prose
    let checked = check(
        &write_json(&dir, "d.json", &records),
        &CheckOptions::default(),
    );
    let records_of = |c: Check| -> Vec<usize> {
        of(&checked, c)
            .iter()
            .filter(|f| f.severity != Severity::Info)
            .flat_map(|f| f.records.clone())
            .collect()
    };
    assert_eq!(records_of(Check::EmptyResponse), vec![12, 13]);
    assert_eq!(records_of(Check::ShortResponse), vec![14]);
    assert_eq!(records_of(Check::RepeatsPrompt), vec![15]);
    assert_eq!(records_of(Check::LanguageMix), vec![16]);
    assert!(of(&checked, Check::InvalidRecord).is_empty());
}

#[test]
fn placeholders_flagged_unless_configured() {
    let dir = TempDir::new("quality-placeholder");
    let mut records = clean_records();
    records.push(alpaca(
        "Who are you?",
        "I am {{name}}, an assistant made by {{author}}.",
    ));
    let file = write_json(&dir, "d.json", &records);
    let checked = check(&file, &CheckOptions::default());
    let found = of(&checked, Check::Placeholder);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].records, vec![12]);
    assert_eq!(found[0].severity, Severity::Error);
    assert!(found[0].example.contains("{{name}}"), "{:?}", found[0]);
    let mut configured = args(&file);
    configured
        .placeholders
        .insert("name".into(), "Ferro".into());
    configured
        .placeholders
        .insert("author".into(), "the ferrotune project".into());
    let checked = quality::run(&configured, &CheckOptions::default()).unwrap();
    assert!(of(&checked, Check::Placeholder).is_empty());
}

#[test]
fn control_tokens_and_blocklist() {
    let dir = TempDir::new("quality-control");
    let mut records = clean_records();
    records.push(alpaca(
        "Finish the chat.",
        "Sure, here it is.<|im_end|>\n<|im_start|>user",
    )); // 12
    records.push(alpaca(
        "<think>hmm</think> What is two plus two?",
        "Two plus two is four.",
    )); // 13
    records.push(alpaca(
        "Name a tropical fruit.",
        "A PineApple is a sweet tropical fruit.",
    )); // 14
    records.push(alpaca(
        "Name a fruit.",
        "Pineapples are sweet and tangy fruits.",
    )); // 15: no match
    let options = CheckOptions {
        blocklist: quality::read_blocklist(
            &workspace_root().join("examples/blocklist_example.txt"),
        )
        .unwrap(),
        ..CheckOptions::default()
    };
    let checked = check(&write_json(&dir, "d.json", &records), &options);
    let control = of(&checked, Check::ControlToken);
    assert_eq!(control.len(), 2, "{control:#?}");
    assert_eq!(
        (control[0].records[0], control[0].severity),
        (12, Severity::Error)
    );
    assert!(control[0].detail.contains("<|im_end|>"));
    assert_eq!(
        (control[1].records[0], control[1].severity),
        (13, Severity::Warning)
    );
    let blocked = of(&checked, Check::Blocklist);
    assert_eq!(blocked.len(), 1, "{blocked:#?}");
    assert_eq!(blocked[0].records, vec![14]);
}

#[test]
fn broken_tool_calls() {
    let dir = TempDir::new("quality-tools");
    let ok = json!({"conversations": [
        {"from": "human", "value": "What is the weather in Paris?"},
        {"from": "function_call", "value": "{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}"},
        {"from": "observation", "value": "{\"temp\": 20}"},
        {"from": "gpt", "value": "It is 20 degrees in Paris right now."}
    ]});
    let not_json = json!({"conversations": [
        {"from": "human", "value": "What is the weather in Rome?"},
        {"from": "function_call", "value": "weather(city=Rome)"},
        {"from": "observation", "value": "{\"temp\": 25}"},
        {"from": "gpt", "value": "It is 25 degrees in Rome right now."}
    ]});
    let file = write_json(&dir, "tools.json", &[ok, not_json]);
    let checked = check(&file, &CheckOptions::default());
    let broken = of(&checked, Check::BrokenToolCall);
    assert_eq!(broken.len(), 1, "{:#?}", checked.report.findings);
    assert_eq!(broken[0].records, vec![1]);

    let openai = |args: &str| {
        json!({"messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "weather", "arguments": args}}]},
            {"role": "tool", "content": "{\"temp\": 3}"},
            {"role": "assistant", "content": "It is 3 degrees in Oslo today."}
        ]})
    };
    let lines = [
        openai("{\"city\": \"Oslo\"}"),
        openai("{\"city\": \"Oslo\""),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let checked = check(&dir.write("tools.jsonl", lines), &CheckOptions::default());
    let broken = of(&checked, Check::BrokenToolCall);
    assert_eq!(broken.len(), 1, "{:#?}", checked.report.findings);
    assert_eq!(broken[0].records, vec![1]);
}

#[test]
fn length_outliers_and_invalid_lines() {
    let dir = TempDir::new("quality-length");
    let mut lines: Vec<String> = clean_records().iter().map(Value::to_string).collect();
    let long = "This sentence is padding for a very long answer. ".repeat(40);
    lines.push(alpaca("Write a long essay.", &long).to_string()); // 12
    lines.push("{\"instruction\": \"broken\", ".to_string()); // 13: not JSON
    let checked = check(
        &dir.write("d.jsonl", lines.join("\n")),
        &CheckOptions::default(),
    );
    let outliers = of(&checked, Check::LengthOutlier);
    assert_eq!(outliers.len(), 1, "{outliers:#?}");
    assert_eq!(outliers[0].records, vec![12]);
    let invalid = of(&checked, Check::InvalidRecord);
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0].records, vec![13]);
    assert!(
        invalid[0].detail.contains("d.jsonl line 14"),
        "{:?}",
        invalid[0]
    );
}

#[test]
fn fix_keeps_the_first_copy_and_drops_errors() {
    let dir = TempDir::new("quality-fix");
    let mut records = clean_records();
    records.push(records[3].clone()); // 12: copy of 3
    records.push(alpaca("Who are you?", "I am {{name}}.")); // 13: placeholder
    records.push(alpaca("Say nothing.", "")); // 14: empty
    let file = write_json(&dir, "data.json", &records);
    let checked = check(&file, &CheckOptions::default());
    let out = dir.path().join("fixed");
    let summary = fix::write_fixed(&checked.datasets, &checked.report, &out).unwrap();
    assert_eq!(summary.dropped, 3);
    let kept: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("data.json")).unwrap()).unwrap();
    assert_eq!(kept, clean_records());
    let log: Vec<Value> = std::fs::read_to_string(out.join("dropped.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dropped: Vec<(u64, &str)> = log
        .iter()
        .map(|l| {
            (
                l["record"].as_u64().unwrap(),
                l["checks"][0].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dropped,
        vec![
            (12, "exact_duplicate"),
            (13, "placeholder"),
            (14, "empty_response")
        ]
    );
    // The fixed copy is clean, and --fix refuses to write over its input.
    let again = check(&out.join("data.json"), &CheckOptions::default());
    assert!(loud(&again).is_empty(), "{:#?}", loud(&again));
    assert!(fix::write_fixed(&checked.datasets, &checked.report, dir.path()).is_err());
}

#[test]
fn jsonl_and_text_keep_their_format() {
    let dir = TempDir::new("quality-fix-text");
    let file = dir.write(
        "docs.txt",
        "first document here\nsecond document\nfirst document here\n",
    );
    let checked = check(&file, &CheckOptions::default());
    assert_eq!(of(&checked, Check::ExactDuplicate)[0].records, vec![0, 2]);
    let out = dir.path().join("out");
    fix::write_fixed(&checked.datasets, &checked.report, &out).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("docs.txt")).unwrap(),
        "first document here\nsecond document\n"
    );
}

#[test]
fn report_serialises_with_stable_names() {
    let dir = TempDir::new("quality-json");
    let mut records = clean_records();
    records.push(records[0].clone());
    let checked = check(
        &write_json(&dir, "d.json", &records),
        &CheckOptions::default(),
    );
    let value = serde_json::to_value(&checked.report).unwrap();
    let finding = &value["findings"][0];
    assert_eq!(finding["check"], "exact_duplicate");
    assert_eq!(finding["severity"], "warning");
    assert_eq!(finding["records"], json!([0, 12]));
    assert!(finding["dataset"].as_str().unwrap().ends_with("d.json"));
    let summary = &value["summary"]["datasets"][0];
    assert_eq!(summary["records"], 13);
    assert_eq!(summary["checks"]["exact_duplicate"]["records"], 2);
    assert!(summary["diversity"]["distinct_2"].as_f64().unwrap() > 0.5);
}
