//! `ferrotune train` with `stage: dpo` end to end on a tiny model from `model init` and
//! 48 pairs of ../shared/data/dpo_en_demo.json: the pairs are learned (the preference
//! loss falls, the reward margin grows), TRL's metrics are logged for training and
//! evaluation, the reference log-probabilities come from the cache the second time, the
//! adapter chats and exports as an SFT one does, and misconfigured runs are refused.

use std::path::{Path, PathBuf};
use std::process::Output;

use ferrotune_testing::{cli, shared, TempDir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn run(args: &[&str]) -> Output {
    cli::output(BIN, args)
}

/// dpo_en_demo registered as LLaMA-Factory registers it.
fn data_dir(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        shared("data/dpo_en_demo.json"),
        data.join("dpo_en_demo.json"),
    )
    .unwrap();
    std::fs::write(
        data.join("dataset_info.json"),
        r#"{"dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": true, "formatting": "sharegpt",
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}}"#,
    )
    .unwrap();
    data
}

/// The run's config: these keys, with `extra`'s lines in place of any they name.
fn config(dir: &Path, model: &Path, output: &Path, extra: &str) -> PathBuf {
    let path = dir.join(format!(
        "dpo-{}.yaml",
        output.file_name().unwrap().to_string_lossy()
    ));
    let base = format!(
        "model_name_or_path: {}\nstage: dpo\ndataset: dpo_en_demo\ndataset_dir: {}\nmax_samples: 48\n\
         cutoff_len: 64\nfinetuning_type: lora\nlora_rank: 8\nlearning_rate: 1.0e-2\n\
         per_device_train_batch_size: 4\ngradient_accumulation_steps: 1\nnum_train_epochs: 3\n\
         lr_scheduler_type: constant\nlogging_steps: 1\nval_size: 8\neval_strategy: epoch\n\
         per_device_eval_batch_size: 4\ndata_cache_dir: {}\noutput_dir: {}\nseed: 3\n",
        model.display(),
        data_dir(dir).display(),
        dir.join("cache").display(),
        output.display()
    );
    let key = |line: &str| line.split(':').next().unwrap_or("").to_string();
    let replaced: Vec<String> = extra.lines().map(key).collect();
    let mut text: String = base
        .lines()
        .filter(|l| !replaced.contains(&key(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(extra);
    std::fs::write(&path, text).unwrap();
    path
}

fn records(output: &Path) -> Vec<Value> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn lora_dpo_learns_the_pairs_logs_trl_metrics_and_its_adapter_chats() {
    let tmp = TempDir::new("dpo");
    let model = cli::tiny_model(BIN, tmp.path(), true);
    let out = tmp.path().join("out");
    let cfg = config(tmp.path(), &model, &out, "");
    let o = run(&["train", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("reference: log-probabilities of 96 sequences computed"),
        "{err}"
    );
    assert!(
        err.contains("training 40 rows (16 examples for evaluation)"),
        "{err}"
    );

    let all = records(&out);
    let train: Vec<&Value> = all.iter().filter(|r| r.get("loss").is_some()).collect();
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(train.iter().all(|r| r[key].is_f64()), "{key}: {train:?}");
    }
    // Policy = reference at the start: the first step's loss is log 2.
    let first = train[0]["loss"].as_f64().unwrap();
    assert!((first - std::f64::consts::LN_2).abs() < 1e-4, "{first}");
    // 10 steps an epoch: the last epoch's mean loss is well below the first's, and its
    // margins are positive.
    let mean = |steps: &[&Value], key: &str| {
        steps.iter().map(|r| r[key].as_f64().unwrap()).sum::<f64>() / steps.len() as f64
    };
    let (early, late) = (&train[..10], &train[train.len() - 10..]);
    assert!(
        mean(late, "loss") < mean(early, "loss") - 0.04,
        "the pairs are learned: {train:?}"
    );
    assert!(mean(late, "rewards/margins") > 0.1, "{train:?}");

    let eval: Vec<&Value> = all
        .iter()
        .filter(|r| r.get("eval_loss").is_some())
        .collect();
    assert_eq!(
        eval.len(),
        4,
        "before training and after each epoch: {eval:?}"
    );
    assert!((eval[0]["eval_loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-4);
    assert_eq!(eval[0]["eval_pairs"].as_f64(), Some(8.0));
    // Before training the policy is the reference, to the bit: no reward either way.
    assert_eq!(
        eval[0]["eval_rewards/accuracies"].as_f64(),
        Some(0.0),
        "{eval:?}"
    );
    assert_eq!(
        eval[0]["eval_rewards/margins"].as_f64(),
        Some(0.0),
        "{eval:?}"
    );
    for key in [
        "eval_rewards/accuracies",
        "eval_rewards/margins",
        "eval_mean_logps/accuracies",
    ] {
        assert!(eval.iter().all(|r| r[key].is_f64()), "{key}: {eval:?}");
    }

    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["pref_loss"], "sigmoid");
    assert_eq!(saved["stage"], "dpo");
    assert!(out.join("adapter_model.safetensors").is_file());
    assert!(out.join("loss.png").is_file() && out.join("rewards.png").is_file());

    // The adapter is used as an SFT adapter is: a chat turn, and a merged export.
    let o = run(&[
        "chat",
        out.to_str().unwrap(),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let merged = tmp.path().join("merged");
    let o = run(&[
        "export",
        "--adapter",
        out.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(merged.join("config.json").is_file());

    // Again, in a new folder: the reference log-probabilities are read back, and the
    // run is the same.
    let again = tmp.path().join("again");
    let o = run(&[
        "train",
        config(tmp.path(), &model, &again, "").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("reference: read the log-probabilities of 96 sequences from the cache"),
        "{err}"
    );
    let losses = |r: &[Value]| -> Vec<f64> {
        r.iter()
            .filter_map(|v| v.get("loss").and_then(Value::as_f64))
            .collect()
    };
    assert_eq!(losses(&records(&again)), losses(&all));

    // From that adapter (an SFT adapter in practice), the reference is the model with it:
    // policy and reference start equal. With it as `ref_model_adapters` beside a fresh
    // adapter, the reference is the base with it, loaded on its own, and they differ.
    let first_loss = |out: &Path| losses(&records(out))[0];
    let from = tmp.path().join("from-adapter");
    let extra = format!(
        "adapter_name_or_path: {}\nnum_train_epochs: 1\n",
        out.display()
    );
    let o = run(&[
        "train",
        config(tmp.path(), &model, &from, &extra).to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!((first_loss(&from) - std::f64::consts::LN_2).abs() < 1e-6);
    let beside = tmp.path().join("ref-adapters");
    let extra = format!(
        "ref_model_adapters: {}\nnum_train_epochs: 1\n",
        out.display()
    );
    let o = run(&[
        "train",
        config(tmp.path(), &model, &beside, &extra)
            .to_str()
            .unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("with the adapter"), "{err}");
    assert!(
        (first_loss(&beside) - std::f64::consts::LN_2).abs() > 1e-3,
        "{err}"
    );
}

#[test]
fn losses_without_a_reference_train_too() {
    let tmp = TempDir::new("dpo-ref-free");
    let model = cli::tiny_model(BIN, tmp.path(), true);
    for (name, extra) in [
        ("orpo", "pref_loss: orpo\n"),
        (
            "simpo",
            "pref_loss: simpo\npref_beta: 2.0\nsimpo_gamma: 0.5\n",
        ),
    ] {
        let out = tmp.path().join(name);
        let extra =
            format!("{extra}num_train_epochs: 1\nfinetuning_type: full\nlearning_rate: 1.0e-3\n");
        let o = run(&[
            "train",
            config(tmp.path(), &model, &out, &extra).to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{name}: {err}");
        assert!(
            !err.contains("reference:"),
            "{name} needs no reference: {err}"
        );
        assert!(
            records(&out)
                .iter()
                .any(|r| r["rewards/accuracies"].is_f64()),
            "{name}"
        );
    }
}

#[test]
fn misconfigured_preference_runs_are_refused_with_the_reason() {
    let tmp = TempDir::new("dpo-bad");
    let model = cli::tiny_model(BIN, tmp.path(), true);
    let refused = |extra: &str| -> String {
        let out = tmp.path().join("out");
        let o = run(&[
            "train",
            config(tmp.path(), &model, &out, extra).to_str().unwrap(),
        ]);
        assert!(!o.status.success(), "{extra} was accepted");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = refused("stage: sft\n");
    assert!(
        e.contains("dpo_en_demo.json") && e.contains("record 0") && e.contains("stage: dpo"),
        "{e}"
    );
    let e = refused("neat_packing: true\n");
    assert!(e.contains("packing") && e.contains("one pair"), "{e}");
    let e = refused("pref_loss: dpo\n");
    assert!(
        e.contains("pref_loss") && e.contains("sigmoid, hinge, ipo, orpo, simpo"),
        "{e}"
    );
    let e = refused("ref_model: some/model\n");
    assert!(e.contains("\"some/model\" is not a folder"), "{e}");
    let e = refused("ref_model_quantization_bit: 4\n");
    assert!(e.contains("ref_model_quantization_bit"), "{e}");
    let e = refused("pref_bco_weight: 0.5\n");
    assert!(e.contains("pref_bco_weight"), "{e}");
}

/// 48 KTO records from dpo_en_demo: the prompt with the chosen answer (desirable) for
/// even records, the rejected one (undesirable) for odd ones.
fn kto_data(dir: &Path) -> PathBuf {
    let demo: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(shared("data/dpo_en_demo.json")).unwrap())
            .unwrap();
    let records: Vec<Value> = demo[..48]
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
            serde_json::json!({"messages": messages, "label": i % 2 == 0})
        })
        .collect();
    let data = dir.join("kto-data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("kto.json"), Value::Array(records).to_string()).unwrap();
    std::fs::write(
        data.join("dataset_info.json"),
        r#"{"kto_demo": {"file_name": "kto.json", "formatting": "sharegpt",
            "columns": {"messages": "messages", "kto_tag": "label"}}}"#,
    )
    .unwrap();
    data
}

#[test]
fn kto_learns_its_labels_and_logs_its_metrics() {
    let tmp = TempDir::new("kto");
    let model = cli::tiny_model(BIN, tmp.path(), true);
    let data = kto_data(tmp.path());
    let out = tmp.path().join("kto");
    let extra = format!(
        "stage: kto\ndataset: kto_demo\ndataset_dir: {}\nkto_chosen_weight: 1.0\nkto_rejected_weight: 1.0\n",
        data.display()
    );
    let o = run(&[
        "train",
        config(tmp.path(), &model, &out, &extra).to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("reference: log-probabilities of 96 sequences computed"),
        "{err}"
    );
    let all = records(&out);
    let train: Vec<&Value> = all.iter().filter(|r| r.get("loss").is_some()).collect();
    for key in [
        "kl",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "logps/chosen",
    ] {
        assert!(train.iter().all(|r| r[key].is_f64()), "{key}: {train:?}");
    }
    // Policy = reference at the start: every example's loss is 1 - sigmoid(0) = 0.5.
    let first = train[0]["loss"].as_f64().unwrap();
    assert!((first - 0.5).abs() < 1e-4, "{first}");
    let mean = |steps: &[&Value], key: &str| {
        steps.iter().map(|r| r[key].as_f64().unwrap()).sum::<f64>() / steps.len() as f64
    };
    let (early, late) = (&train[..10], &train[train.len() - 10..]);
    assert!(mean(late, "loss") < mean(early, "loss") - 0.02, "{train:?}");
    assert!(mean(late, "rewards/margins") > 0.0, "{train:?}");
    let eval: Vec<&Value> = all
        .iter()
        .filter(|r| r.get("eval_loss").is_some())
        .collect();
    assert_eq!(eval.len(), 4);
    assert_eq!(eval[0]["eval_examples"].as_f64(), Some(8.0));
    assert!(eval.iter().all(|r| r["eval_kl"].is_f64()), "{eval:?}");
    assert!(out.join("adapter_model.safetensors").is_file());
    assert!(out.join("rewards.png").is_file());

    // A batch of one: said.
    let one = tmp.path().join("kto-one");
    let extra = format!("{extra}per_device_train_batch_size: 1\nmax_steps: 1\n");
    let o = run(&[
        "train",
        config(tmp.path(), &model, &one, &extra).to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("per_device_train_batch_size 1") && err.contains("KL term"),
        "{err}"
    );
}

#[test]
fn data_preview_and_stats_show_pairs() {
    let tmp = TempDir::new("dpo-data");
    let data = data_dir(tmp.path());
    let common = [
        "--dataset",
        "dpo_en_demo",
        "--dataset-dir",
        data.to_str().unwrap(),
        "--stage",
        "dpo",
        "--tokenizer",
        "examples/tokenizer",
        "--cutoff-len",
        "64",
    ];
    let mut args = vec!["data", "preview", "--num", "2", "--color", "never"];
    args.extend(common);
    let o = run(&args);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text.matches("── chosen · ").count(), 2, "{text}");
    assert_eq!(text.matches("── rejected · ").count(), 2, "{text}");
    let mut args = vec!["data", "stats"];
    args.extend(common);
    let o = run(&args);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("stage dpo: a sample is a pair"), "{text}");
    assert!(text.contains("dpo_en_demo      300      300"), "{text}");
}
