//! The quickstart's files: the data and configs of examples/quickstart (built into the
//! binary, so the quickstart runs from any folder), written into the run's folder, and the
//! general replay data made from the base model's own answers.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

macro_rules! example {
    ($path:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/",
            $path
        ))
    };
}

/// examples/quickstart: the registry and the data files, written to OUT/data.
const DATA: &[(&str, &str)] = &[
    (
        "dataset_info.json",
        example!("quickstart/dataset_info.json"),
    ),
    ("identity.json", example!("quickstart/identity.json")),
    (
        "identity_eval.json",
        example!("quickstart/identity_eval.json"),
    ),
    (
        "general_prompts.json",
        example!("quickstart/general_prompts.json"),
    ),
    (
        "general_probe_prompts.json",
        example!("quickstart/general_probe_prompts.json"),
    ),
    (
        "tiny_pretrain.txt",
        example!("quickstart/tiny_pretrain.txt"),
    ),
];

/// The configs, written to OUT/configs.
const CONFIGS: &[(&str, &str)] = &[
    ("sft.yaml", example!("quickstart/sft.yaml")),
    ("tiny_sft.yaml", example!("quickstart/tiny_sft.yaml")),
    ("tiny_pt.yaml", example!("quickstart/tiny_pt.yaml")),
    (
        "tiny_instruct.yaml",
        example!("quickstart/tiny_instruct.yaml"),
    ),
    ("tiny_model.json", example!("quickstart/tiny_model.json")),
];

/// The small tokenizer of examples/tokenizer, for the `--tiny` model.
const TINY_TOKENIZER: &[(&str, &str)] = &[
    ("tokenizer.json", example!("tokenizer/tokenizer.json")),
    (
        "tokenizer_config.json",
        example!("tokenizer/tokenizer_config.json"),
    ),
];

/// Registry names of the datasets the quickstart uses.
pub const IDENTITY_EVAL: &str = "quickstart_identity_eval";
pub const GENERAL_PROMPTS: &str = "general_prompts";
pub const GENERAL_PROBE_PROMPTS: &str = "general_probe_prompts";
pub const GENERAL_REPLAY_FILE: &str = "general_replay.json";
pub const GENERAL_PROBE: &str = "general_probe";
pub const GENERAL_PROBE_FILE: &str = "general_probe.json";

fn write_all(dir: &Path, files: &[(&str, &str)]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Writes OUT/data (the datasets and dataset_info.json) and OUT/configs.
pub fn write_setup(out: &Path) -> Result<()> {
    write_all(&out.join("data"), DATA)?;
    write_all(&out.join("configs"), CONFIGS)
}

/// Writes the tiny tokenizer folder and returns it.
pub fn write_tiny_tokenizer(dir: &Path) -> Result<PathBuf> {
    write_all(dir, TINY_TOKENIZER)?;
    Ok(dir.to_path_buf())
}

/// What the quickstart reads from the SFT config.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// `placeholders.name`: what the identity answers should say.
    pub name: String,
    /// The default system prompt of the config's custom template (the neutral one).
    pub system: String,
}

impl Recipe {
    pub fn read(config: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("cannot read {}", config.display()))?;
        let v: Value = serde_saphyr::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid YAML: {e}", config.display()))?;
        let name = v["placeholders"]["name"]
            .as_str()
            .with_context(|| format!("{}: placeholders.name is not set", config.display()))?
            .to_string();
        let system = v["template"]
            .as_str()
            .and_then(|t| v["custom_templates"][t]["default_system"].as_str())
            .unwrap_or("You are a helpful AI assistant.")
            .to_string();
        Ok(Recipe { name, system })
    }
}

/// A fingerprint of everything the base model's answers and scores depend on: the base
/// model's files, the config's template and data keys, the data, and `extra` (generation
/// settings). Equal fingerprints let a rerun reuse them.
pub fn base_fingerprint(base: &Path, config: &Path, extra: &[&str]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"ferrotune-quickstart-base-1");
    field(base.to_string_lossy().as_bytes());
    for name in [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        let meta = std::fs::metadata(base.join(name)).ok();
        let stamp = meta.map(|m| {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{name} {} {modified}", m.len())
        });
        field(stamp.unwrap_or_default().as_bytes());
    }
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let v: Value = serde_saphyr::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: invalid YAML: {e}", config.display()))?;
    for key in [
        "template",
        "custom_templates",
        "placeholders",
        "cutoff_len",
        "seed",
    ] {
        field(v[key].to_string().as_bytes());
    }
    for (name, text) in DATA {
        field(name.as_bytes());
        field(text.as_bytes());
    }
    for e in extra {
        field(e.as_bytes());
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The instructions of a prompt file of examples/quickstart, in order.
fn instructions(file: &str) -> Result<Vec<String>> {
    let text = DATA
        .iter()
        .find(|(n, _)| *n == file)
        .map(|(_, t)| *t)
        .with_context(|| format!("{file} is not a quickstart file"))?;
    let records: Vec<Value> = serde_json::from_str(text).context(file.to_string())?;
    Ok(records
        .iter()
        .map(|r| r["instruction"].as_str().unwrap_or_default().to_string())
        .collect())
}

/// One line of a generated_predictions.jsonl.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Prediction {
    pub predict: String,
}

pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {}: not a prediction", path.display(), i + 1))
        })
        .collect()
}

/// Turns the base model's answers to general_prompts + general_probe_prompts (predicted in
/// that order) into OUT/data/general_replay.json (mixed into SFT) and general_probe.json
/// (held out: the forgetting probe). Returns the number of answers in each.
pub fn write_replay(predictions: &Path, data_dir: &Path) -> Result<(usize, usize)> {
    let answers = read_predictions(predictions)?;
    let replay = instructions("general_prompts.json")?;
    let probe = instructions("general_probe_prompts.json")?;
    if answers.len() != replay.len() + probe.len() {
        bail!(
            "{}: {} answers for {} prompts (were some skipped?)",
            predictions.display(),
            answers.len(),
            replay.len() + probe.len()
        );
    }
    let mut counts = (0, 0);
    for (name, prompts, answers, count) in [
        (
            GENERAL_REPLAY_FILE,
            &replay,
            &answers[..replay.len()],
            &mut counts.0,
        ),
        (
            GENERAL_PROBE_FILE,
            &probe,
            &answers[replay.len()..],
            &mut counts.1,
        ),
    ] {
        // An empty answer teaches nothing (and is an invalid sample).
        let records: Vec<Value> = prompts
            .iter()
            .zip(answers)
            .filter(|(_, a)| !a.predict.trim().is_empty())
            .map(|(p, a)| json!({"instruction": p, "input": "", "output": a.predict.trim()}))
            .collect();
        *count = records.len();
        let path = data_dir.join(name);
        let text = serde_json::to_string_pretty(&records).expect("json") + "\n";
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_data_is_valid() {
        for (name, text) in DATA.iter().filter(|(n, _)| n.ends_with(".json")) {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(v.is_array() || v.is_object(), "{name}");
        }
        let info: Value = serde_json::from_str(DATA[0].1).unwrap();
        for name in [
            IDENTITY_EVAL,
            GENERAL_PROMPTS,
            GENERAL_PROBE_PROMPTS,
            GENERAL_PROBE,
        ] {
            assert!(
                info.get(name).is_some(),
                "{name} missing in dataset_info.json"
            );
        }
        assert!(instructions("general_probe_prompts.json")
            .unwrap()
            .contains(&"What is the capital of France?".to_string()));
    }

    #[test]
    fn configs_name_the_identity() {
        let dir = ferrotune_testing::TempDir::new("quickstart-files");
        write_setup(dir.path()).unwrap();
        for config in ["sft.yaml", "tiny_sft.yaml"] {
            let r = Recipe::read(&dir.path().join("configs").join(config)).unwrap();
            assert_eq!(r.name, "Ferro");
            assert_eq!(r.system, "You are a helpful AI assistant.");
        }
    }
}
