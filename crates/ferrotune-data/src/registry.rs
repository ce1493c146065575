//! Dataset names to files: LLaMA-Factory's `dataset_info.json`, so an existing LLaMA-Factory
//! data folder works unchanged, or plain file paths.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{suggest, DataError, Result};
use crate::format::{Columns, Formatting, RecordFormat, Tags};

pub const DATASET_INFO: &str = "dataset_info.json";

/// One dataset to load: where its files are and how to read its records.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    /// The name the user gave (registry name or path).
    pub name: String,
    /// A file, folder or glob pattern.
    pub path: PathBuf,
    pub format: RecordFormat,
    /// `num_samples` from the registry: how many samples to draw from this dataset.
    pub num_samples: Option<usize>,
}

impl DatasetSpec {
    /// A file, folder or glob given directly, read with the given (or detected) format.
    pub fn from_path(path: &Path, formatting: Option<Formatting>) -> Self {
        DatasetSpec {
            name: path.display().to_string(),
            path: path.to_path_buf(),
            format: RecordFormat {
                formatting,
                ..RecordFormat::default()
            },
            num_samples: None,
        }
    }
}

/// Resolves dataset names (comma-separated in configs, as in LLaMA-Factory) against
/// `dataset_dir/dataset_info.json`, falling back to paths (relative to `dataset_dir`, then
/// to the working directory).
pub fn resolve(
    names: &[String],
    dataset_dir: &Path,
    formatting: Option<Formatting>,
) -> Result<Vec<DatasetSpec>> {
    let info_path = dataset_dir.join(DATASET_INFO);
    let info = if info_path.is_file() {
        let text = std::fs::read_to_string(&info_path)
            .map_err(|e| DataError::file(&info_path, format!("cannot read: {e}")))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| DataError::file(&info_path, format!("malformed JSON: {e}")))?;
        match value {
            Value::Object(map) => Some(map),
            _ => {
                return Err(DataError::file(
                    &info_path,
                    "expected an object of dataset entries",
                ))
            }
        }
    } else {
        None
    };
    let mut specs = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if let Some(entry) = info.as_ref().and_then(|info| info.get(name)) {
            let mut spec = from_entry(name, entry, dataset_dir, &info_path)?;
            if formatting.is_some() {
                spec.format.formatting = formatting;
            }
            specs.push(spec);
            continue;
        }
        let candidates = [PathBuf::from(name), dataset_dir.join(name)];
        if let Some(path) = candidates
            .iter()
            .find(|p| p.exists() || name.contains(['*', '?']))
        {
            specs.push(DatasetSpec::from_path(path, formatting));
            continue;
        }
        let mut problem = format!("dataset {name:?} is neither a file nor an entry of ");
        match &info {
            Some(info) => {
                problem.push_str(&info_path.display().to_string());
                if let Some(s) = suggest(name, info.keys().map(String::as_str)) {
                    problem.push_str(&format!(" (did you mean {s:?}?)"));
                } else {
                    let names: Vec<&str> = info.keys().map(String::as_str).collect();
                    problem.push_str(&format!(" (its datasets: {})", names.join(", ")));
                }
            }
            None => problem.push_str(&format!("{} (no such file)", info_path.display())),
        }
        return Err(DataError::config(problem));
    }
    if specs.is_empty() {
        return Err(DataError::config("no dataset given"));
    }
    Ok(specs)
}

fn from_entry(
    name: &str,
    entry: &Value,
    dataset_dir: &Path,
    info_path: &Path,
) -> Result<DatasetSpec> {
    let bad = |problem: String| DataError::file(info_path, format!("entry {name:?}: {problem}"));
    let entry = entry
        .as_object()
        .ok_or_else(|| bad("must be an object".into()))?;
    for remote in [
        "hf_hub_url",
        "ms_hub_url",
        "om_hub_url",
        "script_url",
        "cloud_file_name",
    ] {
        if let Some(url) = entry.get(remote).and_then(Value::as_str) {
            if entry.get("file_name").is_none() {
                return Err(bad(format!(
                    "points at a remote source ({remote}: {url}); ferrotune reads local files only: \
                     download the data and add \"file_name\" to the entry"
                )));
            }
        }
    }
    let file_name = entry
        .get("file_name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("has no \"file_name\"".into()))?;
    let formatting = match entry.get("formatting").and_then(Value::as_str) {
        Some(f) => f.parse::<Formatting>().map_err(|e| bad(e.to_string()))?,
        None => Formatting::Alpaca,
    };
    let ranking = match entry.get("ranking") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("\"ranking\" must be true or false".into())),
    };
    let columns = match entry.get("columns") {
        Some(Value::Object(c)) => explicit_columns(c),
        Some(_) => return Err(bad("\"columns\" must be an object".into())),
        None => Columns::llamafactory_default(),
    };
    let tags = match entry.get("tags") {
        Some(Value::Object(t)) => explicit_tags(t),
        Some(_) => return Err(bad("\"tags\" must be an object".into())),
        None if formatting == Formatting::Openai => openai_tags(),
        None => Tags::default(),
    };
    let num_samples = match entry.get("num_samples") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad("\"num_samples\" must be a positive integer".into()))?
                as usize,
        ),
    };
    let mut path = dataset_dir.join(file_name);
    if let Some(folder) = entry.get("folder").and_then(Value::as_str) {
        path = dataset_dir.join(folder).join(file_name);
    }
    Ok(DatasetSpec {
        name: name.to_string(),
        path,
        format: RecordFormat {
            formatting: Some(formatting),
            columns,
            tags,
            ranking,
        },
        num_samples,
    })
}

/// LLaMA-Factory semantics: with a `columns` object, every column it does not list is unset.
fn explicit_columns(c: &Map<String, Value>) -> Columns {
    let get = |k: &str| c.get(k).and_then(Value::as_str).map(String::from);
    Columns {
        prompt: get("prompt"),
        query: get("query"),
        response: get("response"),
        history: get("history"),
        messages: get("messages"),
        system: get("system"),
        tools: get("tools"),
        chosen: get("chosen"),
        rejected: get("rejected"),
        kto_tag: get("kto_tag"),
        explicit: true,
    }
}

/// Likewise with a `tags` object; role and content tags keep their defaults when missing.
fn explicit_tags(t: &Map<String, Value>) -> Tags {
    let get = |k: &str| t.get(k).and_then(Value::as_str).map(String::from);
    let defaults = Tags::default();
    Tags {
        role: get("role_tag").unwrap_or(defaults.role),
        content: get("content_tag").unwrap_or(defaults.content),
        user: get("user_tag"),
        assistant: get("assistant_tag"),
        observation: get("observation_tag"),
        function: get("function_tag"),
        system: get("system_tag"),
    }
}

fn openai_tags() -> Tags {
    Tags {
        role: "role".into(),
        content: "content".into(),
        user: Some("user".into()),
        assistant: Some("assistant".into()),
        observation: Some("tool".into()),
        function: Some("function_call".into()),
        system: Some("system".into()),
    }
}
