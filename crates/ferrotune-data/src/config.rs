//! The data keys of a training config (LLaMA-Factory's names), shared by `data preview`,
//! `data stats` and, later, `train`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::encode::{EncodeOptions, Overlong};
use crate::error::unknown_choice;
use crate::format::{Formatting, Stage};
use crate::mix::MixStrategy;
use crate::pack::Packing;
use crate::template::{CustomTemplate, TemplateChoice};

/// The keys of [`DataArgs`] as they appear in a config file.
pub const DATA_KEYS: &[&str] = &[
    "model_name_or_path",
    "tokenizer_name_or_path",
    "dataset",
    "dataset_dir",
    "template",
    "custom_templates",
    "cutoff_len",
    "train_on_prompt",
    "mask_history",
    "max_samples",
    "stage",
    "placeholders",
    "enable_thinking",
    "overlong",
    "seed",
    "mix_strategy",
    "interleave_probs",
    "replay_dataset",
    "replay_ratio",
    "packing",
    "neat_packing",
    "data_cache_dir",
    "streaming",
    "buffer_size",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DataArgs {
    /// A model folder; its tokenizer files are used.
    pub model_name_or_path: Option<PathBuf>,
    /// A tokenizer folder, when it differs from the model folder.
    pub tokenizer_name_or_path: Option<PathBuf>,
    /// Dataset names (registry entries or paths), comma-separated or a list.
    #[serde(deserialize_with = "comma_list")]
    pub dataset: Vec<String>,
    pub dataset_dir: PathBuf,
    /// Template name; absent means the tokenizer's own chat template.
    pub template: Option<String>,
    /// Templates defined in the config from slots, by name.
    pub custom_templates: BTreeMap<String, CustomTemplate>,
    pub cutoff_len: usize,
    pub train_on_prompt: bool,
    pub mask_history: bool,
    /// Cap on samples per dataset.
    pub max_samples: Option<usize>,
    /// `sft` (conversations) or `pt` (plain text).
    #[serde(deserialize_with = "stage")]
    pub stage: Stage,
    /// Values for `{{name}}`-style placeholders in the data.
    pub placeholders: BTreeMap<String, String>,
    /// Passed to the chat template (Qwen3: `false` moves the empty think block into the
    /// prompt, so it is not trained).
    pub enable_thinking: Option<bool>,
    /// `truncate` (default) or `drop` samples longer than cutoff_len.
    #[serde(deserialize_with = "overlong")]
    pub overlong: Overlong,
    pub seed: u64,
    /// How several datasets combine: concat, interleave_under or interleave_over.
    #[serde(deserialize_with = "mix_strategy")]
    pub mix_strategy: MixStrategy,
    /// Sampling probabilities of the datasets when interleaving ("0.9, 0.1" or a list).
    pub interleave_probs: Option<serde_json::Value>,
    /// Data of an earlier stage to replay (dataset names, or an earlier run's output
    /// folder, whose saved config names its datasets).
    #[serde(deserialize_with = "optional_names")]
    pub replay_dataset: Option<Vec<String>>,
    /// The share of the mixture the replayed data makes up.
    pub replay_ratio: f64,
    /// Greedy packing into rows of cutoff_len (unset: on for `pt`, off for `sft`).
    pub packing: Option<bool>,
    /// Whole samples bin-packed into rows, kept apart by attention.
    pub neat_packing: bool,
    /// Where tokenized datasets are cached (`ferrotune train` and `data prepare` use
    /// [`crate::cache::default_root`] when this is unset; `none` turns the cache off).
    #[serde(deserialize_with = "cache_dir")]
    pub data_cache_dir: Option<PathBuf>,
    /// Train while preparation runs, in LLaMA-Factory's shuffle-buffer order
    /// ([`crate::live`]).
    pub streaming: bool,
    /// The shuffle buffer of `streaming: true` (LLaMA-Factory's default).
    pub buffer_size: usize,
    /// Not a config key: set by `--format` for files given directly.
    #[serde(skip)]
    pub formatting: Option<Formatting>,
    /// Not a config key: `--skip-invalid`.
    #[serde(skip)]
    pub skip_invalid: bool,
}

impl Default for DataArgs {
    fn default() -> Self {
        DataArgs {
            model_name_or_path: None,
            tokenizer_name_or_path: None,
            dataset: Vec::new(),
            dataset_dir: PathBuf::from("data"),
            template: None,
            custom_templates: BTreeMap::new(),
            cutoff_len: 2048,
            train_on_prompt: false,
            mask_history: false,
            max_samples: None,
            stage: Stage::Sft,
            placeholders: BTreeMap::new(),
            enable_thinking: None,
            overlong: Overlong::Truncate,
            seed: 42,
            mix_strategy: MixStrategy::Concat,
            interleave_probs: None,
            replay_dataset: None,
            replay_ratio: 0.1,
            packing: None,
            neat_packing: false,
            data_cache_dir: None,
            streaming: false,
            buffer_size: 16384,
            formatting: None,
            skip_invalid: false,
        }
    }
}

impl DataArgs {
    pub fn tokenizer_dir(&self) -> Option<&Path> {
        self.tokenizer_name_or_path
            .as_deref()
            .or(self.model_name_or_path.as_deref())
    }

    pub fn template_choice(&self) -> TemplateChoice {
        match &self.template {
            Some(name) => TemplateChoice::Named(name.clone()),
            None => TemplateChoice::Tokenizer,
        }
    }

    pub fn encode_options(&self) -> EncodeOptions {
        EncodeOptions {
            cutoff_len: self.cutoff_len,
            train_on_prompt: self.train_on_prompt,
            mask_history: self.mask_history,
            overlong: self.overlong,
        }
    }

    /// The same settings for other datasets (evaluation, EWC reference): no mixture,
    /// no replay.
    pub fn only_datasets(&self) -> DataArgs {
        DataArgs {
            mix_strategy: MixStrategy::Concat,
            interleave_probs: None,
            replay_dataset: None,
            ..self.clone()
        }
    }

    /// Fills `data_cache_dir` with the default cache folder unless the config set one
    /// (or turned the cache off with `none`).
    pub fn use_default_cache(&mut self) {
        match &self.data_cache_dir {
            Some(dir) if dir.as_os_str() == CACHE_OFF => self.data_cache_dir = None,
            Some(_) => {}
            None => self.data_cache_dir = crate::cache::default_root(),
        }
    }

    pub fn packing(&self) -> Packing {
        Packing::choose(self.packing, self.neat_packing, self.stage)
    }

    /// Extra variables for the chat template.
    pub fn template_kwargs(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut kwargs = serde_json::Map::new();
        if let Some(v) = self.enable_thinking {
            kwargs.insert("enable_thinking".into(), serde_json::Value::Bool(v));
        }
        kwargs
    }

    /// Resolves relative paths: against the working directory as LLaMA-Factory does, or,
    /// when nothing is there, against the config file's folder.
    pub fn resolve_paths(&mut self, config_dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.exists() && config_dir.join(&*p).exists() {
                *p = config_dir.join(&*p);
            }
        };
        fix(&mut self.dataset_dir);
        if let Some(p) = self.model_name_or_path.as_mut() {
            fix(p);
        }
        if let Some(p) = self.tokenizer_name_or_path.as_mut() {
            fix(p);
        }
    }
}

/// Dataset names as LLaMA-Factory writes them: one comma-separated string, or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    fn into_vec(self) -> Vec<String> {
        match self {
            Names::One(s) => s
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            Names::Many(v) => v,
        }
    }
}

fn comma_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Names::deserialize(d)?.into_vec())
}

/// For other config keys that hold dataset names (`eval_dataset`, ...).
pub fn optional_names<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    Ok(Option::<Names>::deserialize(d)?.map(Names::into_vec))
}

/// Whether `data_cache_dir` was set in the config: `none` is an explicit "off".
pub const CACHE_OFF: &str = "none";

fn cache_dir<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(PathBuf::from))
}

/// A choice key's value, parsed as the config is read, so that a misspelt value fails
/// before any data or tokenizer is read.
fn choice<'de, D: serde::Deserializer<'de>, T: Copy>(
    d: D,
    key: &str,
    choices: &[(&str, T)],
) -> Result<T, D::Error> {
    let value = String::deserialize(d)?;
    match choices.iter().find(|(name, _)| *name == value) {
        Some((_, choice)) => Ok(*choice),
        None => {
            let accepted: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            Err(serde::de::Error::custom(unknown_choice(
                key, &value, &accepted,
            )))
        }
    }
}

fn stage<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Stage, D::Error> {
    choice(d, "stage", Stage::CHOICES)
}

fn mix_strategy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<MixStrategy, D::Error> {
    choice(d, "mix_strategy", MixStrategy::CHOICES)
}

fn overlong<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Overlong, D::Error> {
    choice(d, "overlong", Overlong::CHOICES)
}
