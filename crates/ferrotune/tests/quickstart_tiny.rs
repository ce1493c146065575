//! `ferrotune quickstart --tiny` end to end, offline: a tiny model made with `model init`
//! and pretrained on the text in examples/quickstart learns the identity of
//! examples/quickstart through the same commands as the real quickstart. The SFT loss
//! falls, the identity eval loss is lower after SFT than before, greedy generation for an
//! identity question names the model, and every output of the report folder is there.

use std::process::Command;
use std::time::Instant;

use ferrotune_testing::{read_json, TempDir};

#[test]
fn tiny_quickstart_learns_the_name() {
    let dir = TempDir::new("quickstart-tiny");
    let out = dir.path().join("run");
    let started = Instant::now();
    // From a folder outside the repository: the quickstart carries its data and configs.
    let o = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .current_dir(dir.path())
        .env("FERROTUNE_CACHE_DIR", dir.path().join("cache").join("data"))
        .env("HF_HUB_OFFLINE", "1")
        .args(["quickstart", "--tiny", "--out"])
        .arg(&out)
        .output()
        .expect("run ferrotune");
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "quickstart failed:\n{stderr}\n{stdout}");
    eprintln!(
        "quickstart --tiny took {:.0} s\n{stdout}",
        started.elapsed().as_secs_f64()
    );

    let s = read_json(&out.join("summary.json"));
    assert_eq!(s["name"], "Ferro");
    // The recipe's own steps: fewer leave the answer to the CPU's rounding.
    assert_eq!(s["sft"]["steps"], 720);

    let losses: Vec<f64> = s["sft"]["losses"]["train_losses"]
        .as_array()
        .expect("train losses")
        .iter()
        .map(|l| l.as_f64().unwrap())
        .collect();
    assert!(losses.len() >= 2, "{losses:?}");
    assert!(
        losses.last().unwrap() < &(losses[0] - 0.5),
        "the SFT loss should fall: {losses:?}"
    );

    let before = s["identity"]["before"]["eval_loss"].as_f64().unwrap();
    let after = s["identity"]["after"]["eval_loss"].as_f64().unwrap();
    assert!(
        after < before - 0.5,
        "identity eval loss should fall: {before} -> {after}"
    );

    let probes = s["probes"].as_array().unwrap();
    let who = probes
        .iter()
        .find(|p| p["prompt"] == "Who are you?")
        .unwrap();
    let answer = who["tuned"].as_str().unwrap();
    assert!(
        answer.contains("Ferro"),
        "greedy answer to \"Who are you?\" should name Ferro: {answer:?}"
    );
    assert_eq!(who["pass"], true);

    for file in [
        "summary.md",
        "comparison.md",
        "commands.sh",
        "configs/tiny_sft.yaml",
        "data/general_replay.json",
        "data/general_probe.json",
        "sft/adapter_model.safetensors",
        "sft/chat_template.jinja",
        "sft/metrics.jsonl",
        "sft/loss.png",
        "eval/before/identity/predict_results.json",
        "eval/after/general/generated_predictions.jsonl",
        "merged/config.json",
        "merged.gguf",
    ] {
        assert!(out.join(file).is_file(), "{file} is missing");
    }
    // The neutral system prompt is saved with the adapter's template.
    let template = std::fs::read_to_string(out.join("sft/chat_template.jinja")).unwrap();
    assert!(template.contains("You are a helpful AI assistant."));
    assert!(!template.contains("SmolLM"));
    // Every step went through a public command.
    let commands = std::fs::read_to_string(out.join("commands.sh")).unwrap();
    for c in [
        "ferrotune model init",
        "ferrotune train",
        "ferrotune eval predict",
        "ferrotune eval compare",
        "ferrotune chat",
        "ferrotune export",
    ] {
        assert!(commands.contains(c), "{c} missing from commands.sh");
    }
    // The base model's own answers to the 48 general prompts (empty answers left out).
    let replay = read_json(&out.join("data/general_replay.json"));
    let n = replay.as_array().map_or(0, Vec::len);
    assert!((1..=48).contains(&n), "{replay}");
}
