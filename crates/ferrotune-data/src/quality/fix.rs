//! `--fix OUT`: a cleaned copy of every data file, in its own format, without the records
//! an error finding names and without duplicate copies (the first is kept), and
//! `OUT/dropped.jsonl` saying what went and why. The kept records are the raw input
//! records, re-serialised, so the copy trains exactly like the original minus the drops.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::load::Dataset;
use super::{Check, Report, Severity};
use crate::error::{DataError, Result};

pub const DROPPED_LOG: &str = "dropped.jsonl";

/// One written file.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    pub dataset: String,
    pub source: PathBuf,
    pub path: PathBuf,
    pub kept: usize,
    pub total: usize,
}

#[derive(Debug, Clone)]
pub struct FixSummary {
    pub files: Vec<WrittenFile>,
    pub dropped: usize,
    pub log: PathBuf,
}

/// Writes the cleaned copies and the log into `out` (created when missing). Never writes
/// over an input file.
pub fn write_fixed(datasets: &[Dataset], report: &Report, out: &Path) -> Result<FixSummary> {
    std::fs::create_dir_all(out)
        .map_err(|e| DataError::file(out, format!("cannot create the output folder: {e}")))?;
    let reasons = drop_reasons(datasets, report);
    let inputs: BTreeSet<PathBuf> = datasets
        .iter()
        .flat_map(|d| d.records.iter().map(|r| canonical(&r.at.file)))
        .collect();
    let mut used = BTreeSet::from([DROPPED_LOG.to_string()]);
    // Plan every file before writing any, so a clash leaves nothing half written.
    let mut plan = Vec::new();
    for (di, dataset) in datasets.iter().enumerate() {
        // Records of each source file, in order.
        let mut by_file: Vec<(PathBuf, Vec<usize>)> = Vec::new();
        for (ri, record) in dataset.records.iter().enumerate() {
            match by_file.last_mut() {
                Some((file, list)) if *file == record.at.file => list.push(ri),
                _ => by_file.push((record.at.file.clone(), vec![ri])),
            }
        }
        for (source, indices) in by_file {
            let name = output_name(&source, di, &mut used);
            let path = out.join(&name);
            if inputs.contains(&canonical(&path)) {
                return Err(DataError::file(
                    &path,
                    "--fix would overwrite an input file: choose another output folder",
                ));
            }
            plan.push((di, source, name, path, indices));
        }
    }
    let mut files = Vec::new();
    for (di, source, name, path, indices) in plan {
        let dataset = &datasets[di];
        let kept: Vec<&Value> = indices
            .iter()
            .filter(|&&ri| !reasons.contains_key(&(di, ri)))
            .filter_map(|&ri| dataset.records[ri].raw.as_ref())
            .collect();
        std::fs::write(&path, serialise(&kept, &name))
            .map_err(|e| DataError::file(&path, format!("cannot write: {e}")))?;
        files.push(WrittenFile {
            dataset: dataset.name.clone(),
            source,
            path,
            kept: kept.len(),
            total: indices.len(),
        });
    }
    let mut log = String::new();
    for ((di, ri), (checks, reason)) in &reasons {
        let record = &datasets[*di].records[*ri];
        let line = json!({
            "dataset": datasets[*di].name,
            "record": ri,
            "at": record.at.to_string(),
            "checks": checks,
            "reason": reason,
        });
        let _ = writeln!(log, "{line}");
    }
    let log_path = out.join(DROPPED_LOG);
    std::fs::write(&log_path, log)
        .map_err(|e| DataError::file(&log_path, format!("cannot write: {e}")))?;
    Ok(FixSummary {
        files,
        dropped: reasons.len(),
        log: log_path,
    })
}

/// (dataset, record) -> (check names, reason) of every record to drop.
fn drop_reasons(
    datasets: &[Dataset],
    report: &Report,
) -> BTreeMap<(usize, usize), (Vec<&'static str>, String)> {
    type Reasons = (Vec<&'static str>, Vec<String>);
    let mut reasons: BTreeMap<(usize, usize), Reasons> = BTreeMap::new();
    let mut add = |key: (usize, usize), check: Check, why: String| {
        let entry = reasons.entry(key).or_default();
        if !entry.0.contains(&check.name()) {
            entry.0.push(check.name());
        }
        entry.1.push(why);
    };
    for f in report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
    {
        for &r in &f.records {
            add((f.dataset_index, r), f.check, f.detail.clone());
        }
    }
    for (&key, &(check, (kd, kr))) in &report.redundant {
        let why = format!(
            "{}: a copy of {} record {kr}",
            check.name(),
            datasets[kd].name
        );
        add(key, check, why);
    }
    reasons
        .into_iter()
        .map(|(k, (checks, why))| (k, (checks, why.join("; "))))
        .collect()
}

/// The source file's name, made unique; Parquet is written as JSON Lines.
fn output_name(source: &Path, dataset: usize, used: &mut BTreeSet<String>) -> String {
    let mut name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("dataset{dataset}.jsonl"));
    if let Some(stem) = name.strip_suffix(".parquet") {
        name = format!("{stem}.jsonl");
    }
    let mut candidate = name.clone();
    let mut n = dataset;
    while used.contains(&candidate) {
        candidate = format!("{n}_{name}");
        n += 1;
    }
    used.insert(candidate.clone());
    candidate
}

/// A JSON array (indented, as the demo datasets are), JSON Lines, or text lines.
fn serialise(records: &[&Value], name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".json") {
        let mut text = serde_json::to_string_pretty(records).unwrap_or_else(|_| "[]".into());
        text.push('\n');
        return text;
    }
    let mut text = String::new();
    for r in records {
        if lower.ends_with(".txt") {
            text.push_str(r.get("text").and_then(Value::as_str).unwrap_or_default());
        } else {
            text.push_str(&r.to_string());
        }
        text.push('\n');
    }
    text
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}
