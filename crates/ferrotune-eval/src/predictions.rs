//! `generated_predictions.jsonl`, as LLaMA-Factory's predict mode (and ferrotune's)
//! writes it: one JSON object per line with `prompt`, `predict` and `label`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{read_to_string, EvalError, Result};

/// One generated answer with what it should have been.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// 1-based line of the file, the sample's id on rating sheets.
    pub line: usize,
    pub prompt: String,
    pub predict: String,
    pub label: String,
}

/// The predictions of one run.
#[derive(Debug, Clone)]
pub struct Predictions {
    pub path: PathBuf,
    pub samples: Vec<Prediction>,
}

impl Predictions {
    /// Reads a predictions file. Blank lines are skipped; any other line that is not an
    /// object with string `predict` and `label` (and `prompt`, when present) is an error
    /// naming its line. A file without predictions is an error too: scores of nothing
    /// would look like a real result.
    pub fn read(path: &Path) -> Result<Self> {
        let text = read_to_string(path)?;
        let samples = parse(path, &text)?;
        if samples.is_empty() {
            return Err(EvalError::file(path, "no predictions in the file"));
        }
        Ok(Predictions {
            path: path.to_path_buf(),
            samples,
        })
    }

    /// A short name for the run: the folder when the file has LLaMA-Factory's
    /// standard name (runs are told apart by their output folders), else the file stem.
    pub fn run_name(&self) -> String {
        run_name(&self.path)
    }
}

/// See [`Predictions::run_name`].
pub fn run_name(path: &Path) -> String {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let generic = [
        "generated_predictions",
        "predictions",
        "metrics",
        "predict_results",
    ];
    if generic.contains(&stem.as_ref()) {
        if let Some(folder) = path.parent().and_then(Path::file_name) {
            return folder.to_string_lossy().into_owned();
        }
    }
    stem.into_owned()
}

fn parse(path: &Path, text: &str) -> Result<Vec<Prediction>> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("line {line_no}");
        let value: Value = serde_json::from_str(line)
            .map_err(|e| EvalError::record(path, &at, format!("not valid JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err(EvalError::record(path, &at, "not a JSON object"));
        };
        let field = |name: &str, required: bool| -> Result<String> {
            match object.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                None if !required => Ok(String::new()),
                None => Err(EvalError::record(
                    path,
                    &at,
                    format!("no \"{name}\" field (a predictions line has \"prompt\", \"predict\" and \"label\")"),
                )),
                Some(other) => Err(EvalError::record(
                    path,
                    &at,
                    format!("\"{name}\" is {}, not a string", kind(other)),
                )),
            }
        };
        samples.push(Prediction {
            line: line_no,
            prompt: field("prompt", false)?,
            predict: field("predict", true)?,
            label: field("label", true)?,
        });
    }
    Ok(samples)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_named() {
        let p = Path::new("preds.jsonl");
        let ok = "{\"prompt\":\"q\",\"predict\":\"a\",\"label\":\"b\"}\n\n{\"predict\":\"c\",\"label\":\"d\"}\n";
        let samples = parse(p, ok).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[1].line, 3);
        let err = parse(
            p,
            "{\"predict\":\"a\",\"label\":\"b\"}\n{\"predict\":1,\"label\":\"b\"}",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "preds.jsonl line 2: \"predict\" is a number, not a string"
        );
        let err = parse(p, "{oops").unwrap_err().to_string();
        assert!(
            err.starts_with("preds.jsonl line 1: not valid JSON"),
            "{err}"
        );
        let err = parse(p, "{\"predict\":\"a\"}").unwrap_err().to_string();
        assert!(err.contains("line 1: no \"label\" field"), "{err}");
    }

    #[test]
    fn run_names() {
        assert_eq!(
            run_name(Path::new("saves/lora-a/generated_predictions.jsonl")),
            "lora-a"
        );
        assert_eq!(run_name(Path::new("out/base.jsonl")), "base");
    }
}
