//! The one record reader: training's view (the registry's `num_samples`, `max_samples`,
//! malformed lines stop or are set aside) and the quality report's view (every line in
//! file order).

use ferrotune_data::records::{self, Coverage, Line};
use ferrotune_data::registry;
use ferrotune_data::{DataArgs, Sample, Stage};
use ferrotune_testing::TempDir;

/// Six JSON Lines records with a malformed line (line 3) among them, registered with
/// `num_samples: 4`.
fn dataset(dir: &TempDir) -> DataArgs {
    let mut lines: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"instruction": "q{i} {{{{name}}}}", "output": "a{i}"}}"#))
        .collect();
    lines.insert(2, r#"{"instruction": "broken", "#.to_string());
    dir.write("six.jsonl", lines.join("\n") + "\n");
    dir.write(
        "dataset_info.json",
        r#"{"six": {"file_name": "six.jsonl", "num_samples": 4}}"#,
    );
    DataArgs {
        dataset: vec!["six".into()],
        dataset_dir: dir.path().to_path_buf(),
        ..DataArgs::default()
    }
}

fn outputs(args: &DataArgs, read: records::DatasetRecords) -> Vec<String> {
    let spec = registry::resolve(&args.dataset, &args.dataset_dir, None)
        .unwrap()
        .remove(0);
    read.into_records()
        .iter()
        .map(|raw| {
            match records::format(args, &spec.format, raw, Stage::Sft)
                .unwrap()
                .sample
            {
                Sample::Chat(c) => c.messages.last().unwrap().content.clone(),
                Sample::Text(t) => t,
                Sample::Pair(_) | Sample::Feedback(_) => unreachable!("stage sft gives neither"),
            }
        })
        .collect()
}

fn read(args: &DataArgs, coverage: Coverage) -> ferrotune_data::Result<records::DatasetRecords> {
    let spec = registry::resolve(&args.dataset, &args.dataset_dir, None)?.remove(0);
    records::read(args, &spec, coverage)
}

#[test]
fn as_trained_a_malformed_line_stops_the_read_or_is_set_aside() {
    let dir = TempDir::new("records-trained");
    let mut args = dataset(&dir);
    let e = read(&args, Coverage::AsTrained).unwrap_err().to_string();
    assert!(e.contains("six.jsonl line 3"), "{e}");

    args.skip_invalid = true;
    let got = read(&args, Coverage::AsTrained).unwrap();
    assert_eq!(got.skipped.len(), 1);
    assert!(got.lines.iter().all(|l| matches!(l, Line::Record(_))));
    let picked = outputs(&args, got);
    assert_eq!(picked.len(), 4, "num_samples: 4 of 6 records");
    let mut sorted = picked.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 4, "a subset, no repeats: {picked:?}");

    // The subset follows the seed, the same on every read.
    let again = outputs(&args, read(&args, Coverage::AsTrained).unwrap());
    assert_eq!(again, picked);

    args.max_samples = Some(2);
    let capped = outputs(&args, read(&args, Coverage::AsTrained).unwrap());
    assert_eq!(capped, picked[..2]);
}

#[test]
fn every_record_in_file_order_with_malformed_lines_in_place() {
    let dir = TempDir::new("records-every");
    let mut args = dataset(&dir);
    let got = read(&args, Coverage::Every).unwrap();
    let kinds: Vec<String> = got
        .lines
        .iter()
        .map(|l| match l {
            Line::Record(raw) => format!("record {}", raw.at),
            Line::Malformed { at, .. } => format!("malformed {at}"),
        })
        .map(|s| s.rsplit_once("six.jsonl ").unwrap().1.to_string())
        .collect();
    assert_eq!(
        kinds,
        ["line 1", "line 2", "line 3", "line 4", "line 5", "line 6", "line 7"]
    );
    assert!(matches!(got.lines[2], Line::Malformed { .. }));
    assert!(got.skipped.is_empty());
    assert_eq!(
        outputs(&args, got),
        ["a0", "a1", "a2", "a3", "a4", "a5"],
        "num_samples is not applied"
    );

    // max_samples counts the malformed line too.
    args.max_samples = Some(3);
    let got = read(&args, Coverage::Every).unwrap();
    assert_eq!(got.lines.len(), 3);
    assert_eq!(outputs(&args, got), ["a0", "a1"]);
}

#[test]
fn formatting_replaces_placeholders_and_reports_the_rest() {
    let dir = TempDir::new("records-placeholders");
    let mut args = dataset(&dir);
    args.skip_invalid = true;
    let spec = registry::resolve(&args.dataset, &args.dataset_dir, None)
        .unwrap()
        .remove(0);
    let raw = read(&args, Coverage::Every)
        .unwrap()
        .into_records()
        .remove(0);
    let bare = records::format(&args, &spec.format, &raw, Stage::Sft).unwrap();
    assert_eq!(bare.unreplaced, ["name"]);
    args.placeholders.insert("name".into(), "Ferro".into());
    let filled = records::format(&args, &spec.format, &raw, Stage::Sft).unwrap();
    assert!(filled.unreplaced.is_empty());
    let Sample::Chat(c) = filled.sample else {
        panic!("an alpaca record is a conversation")
    };
    assert_eq!(c.messages[0].content, "q0 Ferro");
}
