//! Errors that name the file, the record and the problem.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a record came from: the file and its position in it. JSON Lines and text files
/// are counted by line (1-based, as editors show them); JSON arrays and Parquet by record
/// index (0-based, as Python and `jq` count them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    pub file: PathBuf,
    /// 0-based index of the record within its file.
    pub index: usize,
    /// 1-based line number, for line-oriented files.
    pub line: Option<usize>,
}

impl RecordRef {
    pub fn new(file: &Path, index: usize, line: Option<usize>) -> Self {
        RecordRef {
            file: file.to_path_buf(),
            index,
            line,
        }
    }
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} line {}", self.file.display(), line),
            None => write!(f, "{} record {}", self.file.display(), self.index),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A whole file cannot be used (missing, unreadable, not valid JSON, ...).
    #[error("{}: {problem}", file.display())]
    File { file: PathBuf, problem: String },
    /// One record is malformed; with `--skip-invalid` these are skipped and counted.
    #[error("{record}: {problem}")]
    Record { record: RecordRef, problem: String },
    /// A configuration problem (unknown template, format, dataset name, ...).
    #[error("{0}")]
    Config(String),
    /// A chat template that fails to compile or render.
    #[error("chat template {name}: {problem}")]
    Template { name: String, problem: String },
}

impl DataError {
    pub fn file(file: &Path, problem: impl Into<String>) -> Self {
        DataError::File {
            file: file.to_path_buf(),
            problem: problem.into(),
        }
    }

    pub fn record(record: &RecordRef, problem: impl Into<String>) -> Self {
        DataError::Record {
            record: record.clone(),
            problem: problem.into(),
        }
    }

    pub fn config(problem: impl Into<String>) -> Self {
        DataError::Config(problem.into())
    }

    /// True for errors about a single record, which `--skip-invalid` may skip.
    pub fn is_record_error(&self) -> bool {
        matches!(self, DataError::Record { .. })
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// "did you mean" for a misspelt name, when a known name is close enough.
pub fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// The message for a config value outside its fixed set of choices: it names the key, the
/// value and the accepted values, with the nearest one when it is close. Every choice key
/// (data and training) reports through this, so a misspelt value reads the same everywhere.
pub fn unknown_choice(key: &str, value: &str, accepted: &[&str]) -> String {
    let hint = suggest(value, accepted.iter().copied())
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    format!(
        "`{key}`: unknown value {value:?}{hint}; accepted values: {}",
        accepted.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_choice_names_key_value_and_choices() {
        assert_eq!(
            unknown_choice("eval_strategy", "stpes", &["no", "steps", "epoch"]),
            "`eval_strategy`: unknown value \"stpes\" (did you mean `steps`?); accepted values: no, steps, epoch"
        );
        assert_eq!(
            unknown_choice("stage", "dpo", &["sft", "pt"]),
            "`stage`: unknown value \"dpo\"; accepted values: sft, pt"
        );
    }
}
