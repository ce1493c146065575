//! Training runs as the page lists them: those started from the page (their job records)
//! and any other output folder under the served folder (runs of `ferrotune train`), read
//! from disk on every request; and a run's live view, streamed as server-sent events from
//! its metrics.jsonl and the progress line of its log.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrotune_serve::server::sse::Sse;
use serde_json::{json, Value};

use crate::files::{self, Kind};
use crate::jobs::{JobKind, JobRecord, Status};
use crate::State;

/// How often a live view looks for new lines.
const POLL: Duration = Duration::from_millis(400);

/// One row of the runs list.
pub fn list(state: &State) -> Value {
    let jobs = state.jobs.all();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut rows = Vec::new();
    for j in jobs.iter().filter(|j| j.kind == JobKind::Train) {
        let out = state.jobs.output_path(j);
        seen.push(out.canonicalize().unwrap_or(out.clone()));
        rows.push(row(state, Some(j), &out, &j.output));
    }
    // Output folders of runs started elsewhere.
    for e in files::find(&state.root, &[Kind::Adapter, Kind::Model, Kind::Folder], 3) {
        let out = state.root.join(&e.path);
        if !out.join("train_config.json").is_file() {
            continue;
        }
        let canonical = out.canonicalize().unwrap_or(out.clone());
        if seen.contains(&canonical) {
            continue;
        }
        rows.push(row(state, None, &out, &e.path));
    }
    Value::Array(rows)
}

/// A run's status: its job's, or for a run started elsewhere, finished once it wrote its
/// summary.
fn run_status(state: &State, job: Option<&JobRecord>, out: &Path) -> Status {
    match job {
        Some(j) => state.jobs.status(j),
        None if out.join("train_summary.json").is_file() => Status::Finished,
        None => Status::Stopped,
    }
}

fn row(state: &State, job: Option<&JobRecord>, out: &Path, output: &str) -> Value {
    let status = run_status(state, job, out);
    let metrics = read_metrics(out);
    let last_step = metrics
        .iter()
        .filter_map(|m| m["step"].as_u64())
        .max()
        .unwrap_or(0);
    let loss = metrics.iter().rev().find_map(|m| m["loss"].as_f64());
    let progress = job.map(|j| state.jobs.progress(&j.id));
    let error = match (job, status) {
        (Some(j), Status::Failed) => Some(state.jobs.error(&j.id)),
        _ => None,
    };
    json!({
        "id": job.map(|j| j.id.clone()),
        "output": output,
        "status": status,
        "started": job.map(|j| j.started),
        "step": last_step,
        "loss": loss,
        "progress": progress,
        "error": error,
        "adapter": out.join("adapter_config.json").is_file(),
        "checkpoints": checkpoints(out),
    })
}

fn checkpoints(out: &Path) -> usize {
    std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .count()
}

fn read_metrics(out: &Path) -> Vec<Value> {
    let Ok(file) = std::fs::File::open(out.join("metrics.jsonl")) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// Streams a run: every metrics line (from the start, so a reloaded page redraws its
/// chart), the progress line when it changes, the status when it changes; ends once the
/// run is no longer running and everything it wrote was sent.
pub fn stream(state: &State, job: Option<JobRecord>, out: PathBuf, request: tiny_http::Request) {
    let Ok(mut sse) = Sse::start(request) else {
        return;
    };
    let mut offset = 0u64;
    let mut partial = String::new();
    let mut last_progress = String::new();
    let mut last_status = None;
    loop {
        let status = run_status(state, job.as_ref(), &out);
        // Read what the run wrote since the last look; a half-written line waits.
        if let Ok(mut f) = std::fs::File::open(out.join("metrics.jsonl")) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < offset {
                // A fresh run replaced the file.
                offset = 0;
                partial.clear();
                if sse.send(&json!({"reset": true}).to_string()).is_err() {
                    return;
                }
            }
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let mut text = String::new();
                if std::io::Read::read_to_string(&mut f, &mut text).is_ok() {
                    offset += text.len() as u64;
                    partial.push_str(&text);
                    while let Some(end) = partial.find('\n') {
                        let line: String = partial.drain(..=end).collect();
                        if let Ok(m) = serde_json::from_str::<Value>(&line) {
                            if sse.send(&json!({ "metrics": m }).to_string()).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
        if let Some(j) = &job {
            let progress = state.jobs.progress(&j.id);
            if progress != last_progress {
                if sse
                    .send(&json!({ "progress": progress }).to_string())
                    .is_err()
                {
                    return;
                }
                last_progress = progress;
            }
        }
        if last_status != Some(status) {
            let mut event = json!({ "status": status });
            if let (Some(j), Status::Failed) = (&job, status) {
                event["error"] = state.jobs.error(&j.id).into();
            }
            if sse.send(&event.to_string()).is_err() {
                return;
            }
            last_status = Some(status);
        }
        if status != Status::Running {
            sse.end();
            return;
        }
        std::thread::sleep(POLL);
    }
}
