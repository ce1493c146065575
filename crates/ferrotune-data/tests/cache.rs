//! The tokenized cache: reused when nothing changed, rebuilt after any change to the data,
//! and never trusted when damaged.

use ferrotune_data::pipeline::{prepare, Prepared};
use ferrotune_data::DataArgs;
use ferrotune_testing::{workspace_root, TempDir};

mod common;

fn args(tmp: &TempDir) -> DataArgs {
    let mut placeholders = std::collections::BTreeMap::new();
    placeholders.insert("name".to_string(), "Ferro".to_string());
    DataArgs {
        tokenizer_name_or_path: Some(workspace_root().join("examples/tokenizer")),
        dataset: vec!["identity_demo.json".into(), "tool_demo.jsonl".into()],
        dataset_dir: tmp.path().join("data"),
        cutoff_len: 64,
        placeholders,
        data_cache_dir: Some(tmp.path().join("cache")),
        ..DataArgs::default()
    }
}

/// The ids file of the second dataset's entry.
fn third_dir(a: &DataArgs) -> std::path::PathBuf {
    prepare(a, None).unwrap().cache[1].dir.join("ids.u32")
}

fn fingerprint(p: &Prepared) -> common::Fingerprint {
    common::fingerprint(p.samples.iter())
}

#[test]
fn unchanged_inputs_hit_and_a_one_byte_change_misses() {
    let tmp = TempDir::new("cache");
    let examples = workspace_root().join("examples/data");
    for f in ["identity_demo.json", "tool_demo.jsonl"] {
        tmp.write(
            &format!("data/{f}"),
            std::fs::read(examples.join(f)).unwrap(),
        );
    }
    let a = args(&tmp);
    let first = prepare(&a, None).unwrap();
    assert!(first.cache.iter().all(|c| !c.hit), "{:?}", first.cache);
    assert!(first.samples.iter().any(|s| s.encoded.truncated));

    let second = prepare(&a, None).unwrap();
    assert!(second.cache.iter().all(|c| c.hit), "{:?}", second.cache);
    assert_eq!(fingerprint(&first), fingerprint(&second));
    assert_eq!(first.reports[0].lengths, second.reports[0].lengths);
    assert_eq!(first.reports[0].unreplaced, second.reports[0].unreplaced);

    // One byte of one file: that dataset misses, the other still hits.
    let path = tmp.path().join("data/identity_demo.json");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.iter().position(|&b| b == b'?').unwrap();
    bytes[at] = b'!';
    std::fs::write(&path, bytes).unwrap();
    let third = prepare(&a, None).unwrap();
    assert!(
        !third.cache[0].hit && third.cache[1].hit,
        "{:?}",
        third.cache
    );
    assert_ne!(third.cache[0].dir, first.cache[0].dir);

    // Another option (cutoff_len) is another key too.
    let mut longer = a.clone();
    longer.cutoff_len = 128;
    assert!(prepare(&longer, None).unwrap().cache.iter().all(|c| !c.hit));

    // A damaged entry is rebuilt, not trusted. (Examples are read from the mapped entry
    // when asked for, so `third`'s are taken before its files are damaged: ferrotune
    // itself never writes into a published entry, it replaces a damaged one.)
    let third = fingerprint(&third);
    std::fs::write(third_dir(&a), b"xx").unwrap();
    let fourth = prepare(&a, None).unwrap();
    assert!(!fourth.cache[1].hit);
    assert_eq!(fingerprint(&fourth), third);
    assert!(prepare(&a, None).unwrap().cache[1].hit);
}

/// Interrupted preparations of other entries are removed once they are stale and no
/// process holds their lock; the entry being prepared and locked ones are kept.
#[test]
fn stale_partial_entries_are_removed() {
    use ferrotune_data::cache_build::{remove_stale_partials, STALE_AFTER};
    use std::time::Duration;
    let tmp = TempDir::new("stale-partials");
    let root = tmp.path();
    for key in ["mine", "old", "busy"] {
        let dir = root.join(format!(".{key}.partial"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("progress.json"), "{}").unwrap();
        std::fs::write(dir.join("ids.u32"), [0u8; 64]).unwrap();
    }
    let busy = std::fs::File::create(root.join(".busy.lock")).unwrap();
    busy.lock().unwrap();
    // Fresh: nothing goes.
    remove_stale_partials(root, "mine", STALE_AFTER);
    for key in ["mine", "old", "busy"] {
        assert!(root.join(format!(".{key}.partial")).is_dir(), "{key}");
    }
    remove_stale_partials(root, "mine", Duration::ZERO);
    assert!(root.join(".mine.partial").is_dir());
    assert!(root.join(".busy.partial").is_dir());
    assert!(!root.join(".old.partial").exists());
    assert!(!root.join(".old.lock").exists());
}

/// The entry keeps a label as "trained or not": one that is neither its token's id nor
/// -100 is refused, not stored wrong; the others come back as they went in.
#[test]
fn labels_round_trip_through_the_trained_mask() {
    use ferrotune_data::cache;
    use ferrotune_data::pipeline::{DatasetReport, PreparedSample};
    use ferrotune_data::{Encoded, RecordRef, IGNORE_INDEX};
    let tmp = TempDir::new("trained-mask");
    let sample = |labels: Vec<i64>| PreparedSample {
        dataset: 0,
        at: RecordRef::new(std::path::Path::new("data.jsonl"), 0, Some(1)),
        encoded: Encoded {
            input_ids: vec![5, 6, 7],
            labels,
            weights: None,
            truncated: false,
            second_start: None,
            desirable: None,
        },
    };
    let report = DatasetReport {
        samples: 1,
        ..DatasetReport::default()
    };
    let good = sample(vec![IGNORE_INDEX, 6, 7]);
    let dir = cache::store(
        tmp.path(),
        "good",
        &report,
        &[],
        std::slice::from_ref(&good),
    )
    .unwrap();
    let entry = cache::load(tmp.path(), "good").expect("the stored entry loads");
    assert_eq!(entry.examples.encoded(0), good.encoded);
    assert!(dir.join("trained.u8").is_file());
    let bad = sample(vec![IGNORE_INDEX, 9, 7]);
    let err = cache::store(tmp.path(), "bad", &report, &[], &[bad]).unwrap_err();
    assert!(err.to_string().contains("label 9"), "{err}");
}
