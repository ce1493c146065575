//! Mixtures as the config asks: shares of the realised mixture, interleaving, and replay of
//! an earlier run's data through its saved config.

use ferrotune_data::mix::MixStrategy;
use ferrotune_data::pipeline::prepare;
use ferrotune_data::DataArgs;
use ferrotune_testing::{workspace_root, TempDir};

fn args(datasets: &[&str]) -> DataArgs {
    let mut placeholders = std::collections::BTreeMap::new();
    placeholders.insert("name".to_string(), "Ferro".to_string());
    placeholders.insert("author".to_string(), "the ferrotune project".to_string());
    DataArgs {
        tokenizer_name_or_path: Some(workspace_root().join("examples/tokenizer")),
        dataset: datasets.iter().map(|s| s.to_string()).collect(),
        dataset_dir: workspace_root().join("examples/data"),
        cutoff_len: 256,
        placeholders,
        ..DataArgs::default()
    }
}

fn used(a: &DataArgs) -> Vec<usize> {
    prepare(a, None)
        .unwrap()
        .reports
        .iter()
        .map(|r| r.used)
        .collect()
}

#[test]
fn shares_interleaving_and_replay() {
    let all = used(&args(&["identity_demo", "tool_demo"]));
    // A share of the mixture: tool_demo makes up 25% of it.
    let shared = used(&args(&["identity_demo", "tool_demo:25%"]));
    assert_eq!(shared[0], all[0]);
    let share = shared[1] as f64 / (shared[0] + shared[1]) as f64;
    assert!((share - 0.25).abs() < 0.01, "{shared:?}");
    // A sample count, repeating the dataset when it holds fewer.
    assert_eq!(used(&args(&["identity_demo", "tool_demo:50"]))[1], 50);
    // Interleaving without probabilities: whole rounds, as many as the shorter set has.
    let mut under = args(&["identity_demo", "tool_demo"]);
    under.mix_strategy = MixStrategy::InterleaveUnder;
    let n = all.iter().copied().min().unwrap();
    assert_eq!(used(&under), vec![n, n]);
    under.mix_strategy = MixStrategy::InterleaveOver;
    let m = all.iter().copied().max().unwrap();
    assert_eq!(used(&under), vec![m, m]);
    // Shares and interleaving do not mix.
    under.dataset = vec!["identity_demo".into(), "tool_demo:10%".into()];
    assert!(prepare(&under, None).is_err());

    // Replay of an earlier run: its saved config names its data.
    let tmp = TempDir::new("replay");
    let run = tmp.path().join("stage1");
    std::fs::create_dir_all(&run).unwrap();
    let saved = serde_json::json!({
        "dataset": "tool_demo",
        "dataset_dir": workspace_root().join("examples/data").display().to_string(),
    });
    std::fs::write(run.join("train_config.json"), saved.to_string()).unwrap();
    let mut replay = args(&["identity_demo"]);
    replay.replay_dataset = Some(vec![run.display().to_string()]);
    replay.replay_ratio = 0.2;
    let p = prepare(&replay, None).unwrap();
    assert_eq!(p.reports.len(), 2);
    assert!(p.reports[1].name.contains("tool_demo"));
    let share = p.reports[1].used as f64 / p.samples.len() as f64;
    assert!((share - 0.2).abs() < 0.01, "{share}");
    // The mixture is reproducible.
    let again = prepare(&replay, None).unwrap();
    let ids = |p: &ferrotune_data::pipeline::Prepared| -> Vec<Vec<u32>> {
        p.samples
            .iter()
            .map(|s| s.encoded.input_ids.clone())
            .collect()
    };
    assert_eq!(ids(&p), ids(&again));
}

/// `name:N` through the cache is drawn from the whole dataset's entry (its index), and
/// gives the examples, in order, that reading the records whole and picking gives, both
/// below and above the dataset's size, alone and with a share of another dataset.
#[test]
fn sample_counts_from_the_cache_index_equal_reading_the_records() {
    let tmp = TempDir::new("index-sampling");
    for datasets in [
        vec!["identity_demo:7"],
        vec!["identity_demo:250"],
        vec!["tool_demo:5", "identity_demo:30%"],
    ] {
        let read = args(&datasets);
        let mut cached = args(&datasets);
        cached.data_cache_dir = Some(tmp.path().join("cache"));
        let (a, b) = (
            prepare(&read, None).unwrap(),
            prepare(&cached, None).unwrap(),
        );
        let ids = |p: &ferrotune_data::pipeline::Prepared| -> Vec<(Vec<u32>, Vec<i64>)> {
            p.samples
                .iter()
                .map(|s| (s.encoded.input_ids, s.encoded.labels))
                .collect()
        };
        assert_eq!(ids(&a), ids(&b), "{datasets:?}");
        assert!(!ids(&a).is_empty());
        let counts = |p: &ferrotune_data::pipeline::Prepared| -> Vec<(usize, usize, usize)> {
            p.reports
                .iter()
                .map(|r| (r.records, r.samples, r.used))
                .collect()
        };
        assert_eq!(counts(&a), counts(&b), "{datasets:?}");
    }
    // The entry is the whole dataset's: the unsampled run reuses it.
    let mut whole = args(&["identity_demo"]);
    whole.data_cache_dir = Some(tmp.path().join("cache"));
    assert!(prepare(&whole, None).unwrap().cache.iter().all(|c| c.hit));
}

/// `streaming: true` cannot sample: a registry entry's `num_samples` (like `name:N`) needs
/// the whole dataset prepared first, and says so.
#[test]
fn streaming_refuses_sampled_datasets() {
    let tmp = TempDir::new("streaming-sampled");
    let data = workspace_root().join("examples/data/identity_demo.json");
    tmp.write(
        "dataset_info.json",
        serde_json::json!({"ids": {"file_name": data.display().to_string(), "num_samples": 5}})
            .to_string(),
    );
    let mut sampled = args(&["ids"]);
    sampled.dataset_dir = tmp.path().to_path_buf();
    let e = ferrotune_data::pipeline::streaming_sources(&sampled).unwrap_err();
    assert!(e.to_string().contains("num_samples"), "{e}");
    let e = ferrotune_data::pipeline::streaming_sources(&args(&["identity_demo:5"])).unwrap_err();
    assert!(e.to_string().contains("name:N"), "{e}");
    assert!(ferrotune_data::pipeline::streaming_sources(&args(&["identity_demo"])).is_ok());
}
