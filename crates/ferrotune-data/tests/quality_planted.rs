//! The quality report's precision on the planted set (tests/data/planted, made by
//! scripts/make_planted_set.py from rows of ../shared/data): every planted class is found
//! at >= 80% recall, and fewer than 5% of the clean rows are flagged (errors and
//! warnings; a clean row copied by a planted duplicate or conflicting answer is that
//! finding's partner, not a false positive). `cargo test --test quality_planted --
//! --nocapture` prints the table.

use std::collections::{BTreeMap, BTreeSet};

use ferrotune_data::quality::{self, CheckOptions, Severity};
use ferrotune_data::DataArgs;
use ferrotune_testing::workspace_root;
use serde_json::Value;

#[test]
fn planted_defects_are_found_and_clean_rows_left_alone() {
    let dir = workspace_root().join("crates/ferrotune-data/tests/data/planted");
    let file = dir.join("planted.json");
    let truth: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("truth.json")).unwrap()).unwrap();
    let args = DataArgs {
        dataset: vec![file.display().to_string()],
        dataset_dir: dir.clone(),
        ..DataArgs::default()
    };
    let checked = quality::run(&args, &CheckOptions::default()).unwrap();

    // row -> the checks (errors and warnings) that name it.
    let mut flagged: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    for f in &checked.report.findings {
        if f.severity == Severity::Info {
            continue;
        }
        for &r in &f.records {
            flagged.entry(r).or_default().insert(f.check.name());
        }
    }
    let as_row = |v: &Value| v.as_u64().unwrap() as usize;
    let clean: Vec<usize> = truth["clean"]
        .as_array()
        .unwrap()
        .iter()
        .map(as_row)
        .collect();
    let planted = truth["planted"].as_array().unwrap();
    // A clean row may be flagged by its planted copy's class.
    let mut excused: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    let mut found: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for p in planted {
        let class = p["class"].as_str().unwrap();
        let row = as_row(&p["row"]);
        if let Some(partner) = p.get("partner") {
            excused.entry(as_row(partner)).or_default().insert(class);
        }
        let hit = flagged
            .get(&row)
            .is_some_and(|checks| checks.contains(class));
        let entry = found.entry(class).or_default();
        entry.0 += usize::from(hit);
        entry.1 += 1;
    }
    let mut false_positives: BTreeMap<&str, usize> = BTreeMap::new();
    let mut clean_flagged = 0;
    for &row in &clean {
        let Some(checks) = flagged.get(&row) else {
            continue;
        };
        let unexcused: Vec<&&str> = checks
            .iter()
            .filter(|c| !excused.get(&row).is_some_and(|e| e.contains(**c)))
            .collect();
        if !unexcused.is_empty() {
            clean_flagged += 1;
        }
        for c in unexcused {
            *false_positives.entry(c).or_default() += 1;
        }
    }
    println!("| check | planted | found | recall | clean rows flagged |");
    println!("|---|---|---|---|---|");
    let classes: BTreeSet<&str> = found
        .keys()
        .chain(false_positives.keys())
        .copied()
        .collect();
    for class in &classes {
        let (hit, total) = found.get(class).copied().unwrap_or_default();
        let fp = false_positives.get(class).copied().unwrap_or_default();
        println!(
            "| {class} | {total} | {hit} | {:.1}% | {fp} ({:.2}%) |",
            100.0 * hit as f64 / total.max(1) as f64,
            100.0 * fp as f64 / clean.len() as f64
        );
    }
    println!(
        "clean rows flagged by any check: {clean_flagged} of {} ({:.2}%)",
        clean.len(),
        100.0 * clean_flagged as f64 / clean.len() as f64
    );
    assert_eq!(found.len(), 9, "{found:?}");
    for (class, (hit, total)) in &found {
        assert!(
            *hit * 10 >= *total * 8,
            "{class}: {hit} of {total} planted rows found"
        );
    }
    assert!(
        clean_flagged * 20 < clean.len(),
        "{clean_flagged} of {} clean rows flagged: {false_positives:?}",
        clean.len()
    );
}

/// The streamed check (records read a chunk at a time, without `keep_raw`) reports what
/// the loaded one does, finding for finding, and so do both with the group keys spilled
/// to temporary files: on the planted set, on the demo sets of ../shared/data, on a JSON
/// Lines file with malformed lines, and on all of them at once.
#[test]
fn streamed_and_loaded_checks_give_the_same_report() {
    let tmp = ferrotune_testing::TempDir::new("streamed-check");
    let broken = tmp.write(
        "broken.jsonl",
        "{\"instruction\": \"Say hi\", \"input\": \"\", \"output\": \"Hi there, friend.\"}\nnot json\n{\"instruction\": \"Say hi\", \"input\": \"\", \"output\": \"Hello to you.\"}\n{\"instruction\": \"x\"}\n",
    );
    let mut files = vec![
        workspace_root().join("crates/ferrotune-data/tests/data/planted/planted.json"),
        broken,
    ];
    for name in [
        "alpaca_en_demo.json",
        "alpaca_zh_demo.json",
        "identity.json",
        "glaive_toolcall_en_demo.json",
    ] {
        files.push(ferrotune_testing::shared(&format!("data/{name}")));
    }
    // Each file alone, then all together (groups across datasets).
    let mut selections: Vec<Vec<std::path::PathBuf>> =
        files.iter().map(|f| vec![f.clone()]).collect();
    selections.push(files.clone());
    for selection in selections {
        let args = DataArgs {
            dataset: selection.iter().map(|f| f.display().to_string()).collect(),
            dataset_dir: selection[0].parent().unwrap().to_path_buf(),
            ..DataArgs::default()
        };
        // A budget of 1 KiB sends every key set through the temporary files.
        let report = |keep_raw, spill_budget| {
            let options = CheckOptions {
                keep_raw,
                spill_budget,
                ..CheckOptions::default()
            };
            let checked = quality::run(&args, &options).unwrap();
            assert_eq!(checked.datasets.is_empty(), !keep_raw);
            serde_json::to_value(&checked.report).unwrap()
        };
        let loaded = report(true, CheckOptions::default().spill_budget);
        assert!(
            !loaded["findings"].as_array().unwrap().is_empty(),
            "{selection:?}"
        );
        assert_eq!(
            report(false, CheckOptions::default().spill_budget),
            loaded,
            "{selection:?}"
        );
        assert_eq!(report(false, 1024), loaded, "spilled: {selection:?}");
        assert_eq!(report(true, 1024), loaded, "spilled: {selection:?}");
    }
}
