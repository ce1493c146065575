//! Config files: YAML with LLaMA-Factory's key names. Every key is checked: ferrotune's
//! own and LLaMA-Factory's are accepted, anything else is an error that suggests the
//! nearest known key, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};

use ferrotune_data::config::DATA_KEYS;
use ferrotune_model::ModelError;
use serde_json::{Map, Value};

use super::TRAIN_ARG_KEYS;

type Result<T> = std::result::Result<T, ModelError>;

/// Keys that evaluation, prediction and export will act on (LLaMA-Factory's names).
pub const LATER_KEYS: &[&str] = &[
    "do_train",
    "do_eval",
    "do_predict",
    "predict_with_generate",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "export_dir",
    "plot_loss",
];

/// LLaMA-Factory keys that ferrotune accepts and does not act on, with the reason.
pub const IGNORED_KEYS: &[(&str, &str)] = &[
    (
        "trust_remote_code",
        "ferrotune runs no model code from the model folder",
    ),
    (
        "deepspeed",
        "processes are launched by mpirun or srun instead: docs/DISTRIBUTED.md",
    ),
    (
        "ddp_timeout",
        "MPI has no timeout: a dead process ends the job through the launcher",
    ),
    ("report_to", "metrics go to metrics.jsonl in output_dir"),
    ("preprocessing_num_workers", "preprocessing uses every core"),
    ("dataloader_num_workers", "batches are built in-process"),
    (
        "save_only_model",
        "checkpoints always hold what exact resume needs",
    ),
    ("overwrite_cache", "the tokenized cache is keyed by content"),
    ("flash_attn", "attention is ferrotune's own"),
    ("run_name", "not used"),
    ("logging_dir", "logs go to output_dir"),
    (
        "ddp_find_unused_parameters",
        "every trainable parameter gets a gradient, zero when unused",
    ),
    ("tokenized_path", "ferrotune has its own tokenized cache"),
    ("cache_dir", "models are read from local folders"),
];

/// A parsed config file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub values: Map<String, Value>,
}

impl ConfigFile {
    /// Reads the file and checks every key in it (not the values: `section` reads those).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ModelError::invalid(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let value: Value = if text.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_saphyr::from_str(&text)
                .map_err(|e| ModelError::file(path, format!("invalid YAML: {e}")))?
        };
        let Value::Object(values) = value else {
            return Err(ModelError::file(
                path,
                "expected a mapping of keys to values",
            ));
        };
        for key in values.keys() {
            check_key(key).map_err(|e| {
                ModelError::invalid(format!("in config file {}: {e}", path.display()))
            })?;
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            values,
        })
    }

    /// The folder relative paths may also be resolved against.
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// Sets one key from a command-line `KEY=VALUE`; the value is read as YAML (a number,
    /// a boolean, a list), or taken as a string when it is not valid YAML.
    pub fn set_override(&mut self, assignment: &str) -> Result<()> {
        let (key, value) = assignment.split_once('=').ok_or_else(|| {
            ModelError::invalid(format!("override {assignment:?} is not KEY=VALUE"))
        })?;
        check_key(key)?;
        let value: Value =
            serde_saphyr::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        self.values.insert(key.to_string(), value);
        Ok(())
    }

    /// Deserializes the subset of keys in `keys` into `T`: this is where a value of the
    /// wrong type, or outside a key's choices, is found.
    pub fn section<T: serde::de::DeserializeOwned>(&self, keys: &[&str]) -> Result<T> {
        let subset: Map<String, Value> = self
            .values
            .iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        serde_json::from_value(Value::Object(subset))
            .map_err(|e| ModelError::file(&self.path, e.to_string()))
    }
}

fn known_keys() -> impl Iterator<Item = &'static str> {
    DATA_KEYS
        .iter()
        .copied()
        .chain(TRAIN_ARG_KEYS.iter().copied())
        .chain(LATER_KEYS.iter().copied())
        .chain(IGNORED_KEYS.iter().map(|(k, _)| *k))
}

/// Whether `key` is a known key; an unknown one is an error suggesting the nearest.
pub fn check_key(key: &str) -> Result<()> {
    if known_keys().any(|k| k == key) {
        return Ok(());
    }
    let nearest = known_keys()
        .map(|k| (strsim::jaro_winkler(key, k), k))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score > 0.75)
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    Err(ModelError::invalid(format!("unknown key `{key}`{nearest}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion() {
        let err = check_key("cutof_len").unwrap_err().to_string();
        assert_eq!(err, "unknown key `cutof_len` (did you mean `cutoff_len`?)");
        assert!(check_key("deepspeed").is_ok());
        assert!(check_key("lora_rank").is_ok());
    }
}
