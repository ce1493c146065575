//! `streaming: true`: training starts while the data is prepared into the cache, takes
//! the examples as they land in the shuffle buffer's order, and trains the same rows as a
//! run from the finished cache; what it cannot do is an error naming it.

use std::path::{Path, PathBuf};

use ferrotune_testing::{cli, shared, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

/// 6,000 distinct alpaca records (two chunks and more), as JSON Lines.
fn data(dir: &Path) -> PathBuf {
    let demo: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(shared("data/alpaca_en_demo.json")).unwrap())
            .unwrap();
    let mut text = String::new();
    for i in 0..6000 {
        let mut r = demo[i % demo.len()].clone();
        r["output"] = format!("{} ({i})", r["output"].as_str().unwrap()).into();
        text.push_str(&r.to_string());
        text.push('\n');
    }
    let path = dir.join("big.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &Path, model: &Path, data: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "model_name_or_path: {}\ndataset: {}\ncutoff_len: 128\nfinetuning_type: lora\n\
             output_dir: {}\nper_device_train_batch_size: 2\nlogging_steps: 1\nseed: 3\n\
             data_cache_dir: {}\nbuffer_size: 300\n{extra}",
            model.display(),
            data.display(),
            dir.join(name).display(),
            dir.join("cache").display()
        ),
    )
    .unwrap();
    path
}

fn losses(output: &Path) -> Vec<(u64, f64, u64)> {
    ferrotune_testing::metrics(output, "loss")
        .into_iter()
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
                v["supervised_tokens"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn streaming_trains_the_rows_of_the_finished_cache_and_names_what_it_cannot_do() {
    let tmp = TempDir::new("streaming");
    let model = cli::tiny_model(BIN, tmp.path(), true);
    let data = data(tmp.path());
    let extra = "streaming: true\nmax_steps: 4\nval_size: 3\n";

    // From an empty cache: preparation runs beside training.
    let first = config(tmp.path(), &model, &data, "live", extra);
    let o = cli::output(BIN, &["train", first.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("while training (streaming: true"), "{err}");
    assert!(err.contains("(3 examples for evaluation)"), "{err}");
    let live = losses(&tmp.path().join("live"));
    assert_eq!(live.len(), 4);

    // Again, once the cache is whole (the first run may have left it partial): the same
    // rows, step by step.
    let o = cli::output(BIN, &["data", "prepare", first.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let second = config(tmp.path(), &model, &data, "warm", extra);
    let o = cli::output(BIN, &["train", second.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses(&tmp.path().join("warm")), live);

    // What streaming does not do is an error that says so.
    for (extra, needle) in [
        ("streaming: true\n", "needs max_steps"),
        (
            "streaming: true\nmax_steps: 2\npacking: true\n",
            "one example a row",
        ),
        (
            "streaming: true\nmax_steps: 2\nval_size: 0.1\n",
            "must be a count",
        ),
        (
            "streaming: true\nmax_steps: 30\nmax_samples: 50\n",
            "the data ran out after 50 training rows",
        ),
    ] {
        let cfg = config(tmp.path(), &model, &data, "bad", extra);
        let o = cli::output(BIN, &["train", cfg.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{extra}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
