//! The API the page calls, one handler a route. GET for reading, POST (JSON bodies) for
//! everything that runs something; errors come back as `{"error": message}` with the
//! CLI's wording.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use ferrotune_serve::server::sse::Sse;
use ferrotune_train::config::file::ConfigFile;
use ferrotune_train::recipe::Run;
use serde_json::{json, Value};
use tiny_http::{Method, Request};

use crate::files::{self, Kind};
use crate::guard::{Refusal, RequestHeaders, TOKEN_COOKIE};
use crate::http::{field, header_value, json_body, param, split_url, Reply};
use crate::jobs::{JobKind, JobRecord, Status};
use crate::{runs, State};

const INDEX: &[u8] = include_bytes!("assets/index.html");
const SCRIPT: &[u8] = include_bytes!("assets/app.js");
const STYLE: &[u8] = include_bytes!("assets/style.css");

pub fn handle(state: &State, mut request: Request) {
    let url = request.url().to_string();
    let (path, params) = split_url(&url);
    let headers = RequestHeaders {
        host: header_value(&request, "Host"),
        origin: header_value(&request, "Origin"),
        authorization: header_value(&request, "Authorization"),
        cookie: header_value(&request, "Cookie"),
        query_token: param(&params, "token"),
    };
    if let Err(refusal) = state.guard.check(&headers) {
        let reply = match refusal {
            Refusal::Forbidden(why) => Reply::error(403, why),
            Refusal::Unauthorized => Reply::error(
                401,
                "this server needs the token printed when `ferrotune ui` started: open the page with ?token=TOKEN",
            ),
        };
        return reply.send(request);
    }
    let method = request.method().clone();
    // Event streams take the request over.
    match (&method, path) {
        (Method::Get, "/api/runs/events") => return run_events(state, &params, request),
        (Method::Post, "/api/chat") => return chat(state, request),
        _ => {}
    }
    let reply = match (&method, path) {
        (Method::Get, "/") => {
            let page = Reply::asset("text/html; charset=utf-8", INDEX);
            match (state.guard.token(), param(&params, "token")) {
                // Opened with the token: later requests carry it as a cookie.
                (Some(_), Some(token)) => page.with_header(
                    "Set-Cookie",
                    format!("{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"),
                ),
                _ => page,
            }
        }
        (Method::Get, "/app.js") => Reply::asset("text/javascript; charset=utf-8", SCRIPT),
        (Method::Get, "/style.css") => Reply::asset("text/css; charset=utf-8", STYLE),
        (Method::Get, "/api/files") => list_files(state, &params),
        (Method::Get, "/api/find") => find(state, &params),
        (Method::Get, "/api/models") => models(state),
        (Method::Get, "/api/datasets") => datasets(state, &params),
        (Method::Get, "/api/runs") => Reply::json(&runs::list(state)),
        (Method::Get, "/api/jobs") => jobs(state, &params),
        (Method::Post, _) => match json_body(&mut request) {
            Ok(body) => post(state, path, &body),
            Err(reply) => reply,
        },
        _ => Reply::error(404, format!("no such page: {path}")),
    };
    reply.send(request);
}

fn post(state: &State, path: &str, body: &Value) -> Reply {
    let result = match path {
        "/api/model/info" => model_info(state, body),
        "/api/data/preview" => data_command(state, body, "preview"),
        "/api/data/stats" => data_command(state, body, "stats"),
        "/api/data/check" => data_command(state, body, "check"),
        "/api/data/records" => data_records(state, body),
        "/api/config/check" => config_check(state, body),
        "/api/train/start" => train_start(state, body),
        "/api/train/stop" => job_stop(state, body),
        "/api/train/resume" => train_resume(state, body),
        "/api/export" => export(state, body),
        "/api/evaluate" => evaluate(state, body),
        "/api/jobs/stop" => job_stop(state, body),
        _ => return Reply::error(404, format!("no such action: {path}")),
    };
    match result {
        Ok(value) => Reply::json(&value),
        Err(reply) => reply,
    }
}

type Answer = Result<Value, Reply>;

fn bad(message: impl Into<String>) -> Reply {
    Reply::error(400, message)
}

fn list_files(state: &State, params: &[(String, String)]) -> Reply {
    match files::list(&state.root, param(params, "path").unwrap_or(".")) {
        Ok(entries) => Reply::json(&json!({ "entries": entries })),
        Err(e) => bad(e),
    }
}

/// Suggestions for a picker: `kinds=model,adapter,gguf`.
fn find(state: &State, params: &[(String, String)]) -> Reply {
    let kinds: Vec<Kind> = param(params, "kinds")
        .unwrap_or("")
        .split(',')
        .filter_map(|k| serde_json::from_value(json!(k)).ok())
        .collect();
    Reply::json(&json!({ "entries": files::find(&state.root, &kinds, 4) }))
}

/// The model picker's choices: model folders and GGUF files under the served folder,
/// Hub ids with a snapshot in the local Hugging Face cache, and the models ferrotune's
/// own cache holds (those the quickstart imports).
fn models(state: &State) -> Reply {
    let local = files::find(&state.root, &[Kind::Model, Kind::Gguf], 4);
    let hub = ferrotune_model::hub::cached_models();
    let imported: Vec<String> = ferrotune_model::hub::ferrotune_cache("models")
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    Reply::json(&json!({ "local": local, "hub": hub, "cache": imported }))
}

/// The dataset names of `?dir=`'s dataset_info.json (for the dataset picker).
fn datasets(state: &State, params: &[(String, String)]) -> Reply {
    let dir = match files::resolve(&state.root, param(params, "dir").unwrap_or(".")) {
        Ok(d) => d,
        Err(e) => return bad(e),
    };
    let path = dir.join("dataset_info.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Reply::json(&json!({ "names": [] }));
    };
    match serde_json::from_str::<serde_json::Map<String, Value>>(&text) {
        Ok(info) => Reply::json(&json!({ "names": info.keys().collect::<Vec<_>>() })),
        Err(e) => bad(format!("{}: malformed JSON: {e}", path.display())),
    }
}

/// A model given by the page: a path under the served folder, or a Hub id / absolute
/// path as the CLI takes it.
fn model_arg(state: &State, model: &str) -> String {
    match files::resolve(&state.root, model) {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(_) => model.to_string(),
    }
}

fn number(body: &Value, key: &str, default: u64) -> String {
    body[key].as_u64().unwrap_or(default).to_string()
}

fn model_info(state: &State, body: &Value) -> Answer {
    let model = model_arg(state, field(body, "model")?);
    let args = vec![
        "model".into(),
        "info".into(),
        model,
        "--json".into(),
        "--seq-len".into(),
        number(body, "cutoff_len", 1024),
        "--batch-size".into(),
        number(body, "batch_size", 4),
        "--lora-rank".into(),
        number(body, "lora_rank", 8),
    ];
    state.commands.json(&args).map_err(bad)
}

/// The page's YAML in a scratch file of the served folder's `.ferrotune-ui/`, removed
/// when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn write(state: &State, yaml: &str) -> Result<Self, Reply> {
        let dir = state.root.join(".ferrotune-ui").join("scratch");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Reply::error(500, format!("{}: {e}", dir.display())))?;
        let n = state.scratch.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("config-{}-{n}.yaml", std::process::id()));
        std::fs::write(&path, yaml)
            .map_err(|e| Reply::error(500, format!("{}: {e}", path.display())))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `data preview | stats | check` on the page's config, as the run would see its data.
fn data_command(state: &State, body: &Value, which: &str) -> Answer {
    let scratch = Scratch::write(state, field(body, "yaml")?)?;
    let mut args = vec![
        "data".into(),
        which.into(),
        scratch.0.to_string_lossy().into_owned(),
        "--json".into(),
    ];
    if which == "preview" {
        args.extend(["-n".into(), number(body, "num", 5)]);
        return Ok(json!({ "samples": state.commands.json_lines(&args).map_err(bad)? }));
    }
    state.commands.json(&args).map_err(bad)
}

/// The records a finding names, as they are in their file.
fn data_records(state: &State, body: &Value) -> Answer {
    let scratch = Scratch::write(state, field(body, "yaml")?)?;
    let wanted: Vec<usize> = body["records"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_u64())
                .map(|r| r as usize)
                .collect()
        })
        .unwrap_or_default();
    let records =
        crate::records::read(&scratch.0, field(body, "dataset")?, &wanted).map_err(bad)?;
    Ok(json!({ "records": records }))
}

/// Checks the page's YAML as `ferrotune train` would before reading any data: every key,
/// every value; answers the values (to fill the form back) and the output folder.
fn checked_config(state: &State, yaml: &str) -> Result<(Value, String), Reply> {
    let scratch = Scratch::write(state, yaml)?;
    let config = ConfigFile::load(&scratch.0).map_err(|e| {
        bad(format!("{e}").replace(&scratch.0.to_string_lossy().into_owned(), "the config"))
    })?;
    Run::from_config(&config).map_err(|e| bad(e.to_string()))?;
    let output = config
        .values
        .get("output_dir")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad("output_dir is not set"))?;
    Ok((Value::Object(config.values), output))
}

fn config_check(state: &State, body: &Value) -> Answer {
    let (values, output) = checked_config(state, field(body, "yaml")?)?;
    Ok(json!({ "values": values, "output_dir": output }))
}

fn train_start(state: &State, body: &Value) -> Answer {
    let yaml = field(body, "yaml")?;
    let (_, output) = checked_config(state, yaml)?;
    if let Some(running) = state.jobs.running(JobKind::Train) {
        return Err(Reply::error(
            409,
            format!(
                "a run is already training into {} (one run at a time): stop it first",
                running.output
            ),
        ));
    }
    let id = state.jobs.new_id(JobKind::Train);
    let dir = state.jobs.dir(&id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Reply::error(500, format!("{}: {e}", dir.display())))?;
    std::fs::write(dir.join("config.yaml"), yaml).map_err(|e| Reply::error(500, e.to_string()))?;
    let config = relative(state, &dir.join("config.yaml"));
    launch(
        state,
        JobRecord::new(
            id,
            JobKind::Train,
            vec![vec!["train".into(), config]],
            output,
        ),
    )
}

/// Starts a job; answers its id.
fn launch(state: &State, record: JobRecord) -> Answer {
    let record = state.jobs.start(record).map_err(|e| Reply::error(500, e))?;
    Ok(json!({ "id": record.id }))
}

fn relative(state: &State, path: &std::path::Path) -> String {
    path.strip_prefix(&state.root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn job_of(state: &State, body: &Value) -> Result<JobRecord, Reply> {
    let id = field(body, "id")?;
    state
        .jobs
        .record(id)
        .ok_or_else(|| Reply::error(404, format!("no job {id}")))
}

fn job_stop(state: &State, body: &Value) -> Answer {
    let job = job_of(state, body)?;
    state.jobs.stop(&job.id).map_err(|e| Reply::error(500, e))?;
    Ok(json!({ "stopped": job.id }))
}

/// Runs a stopped training job again from its newest checkpoint.
fn train_resume(state: &State, body: &Value) -> Answer {
    let mut job = job_of(state, body)?;
    if job.kind != JobKind::Train {
        return Err(bad(format!("{} is not a training run", job.id)));
    }
    if state.jobs.status(&job) == Status::Running {
        return Err(bad("the run is still training"));
    }
    if let Some(running) = state.jobs.running(JobKind::Train) {
        return Err(Reply::error(
            409,
            format!("a run is already training into {}", running.output),
        ));
    }
    let mut step = job.steps[0].clone();
    step.retain(|a| !a.starts_with("resume_from_checkpoint="));
    step.push("resume_from_checkpoint=auto".into());
    job.steps = vec![step];
    launch(state, job)
}

/// `ferrotune export` of a run's adapter: an HF folder and / or a GGUF file.
fn export(state: &State, body: &Value) -> Answer {
    let adapter = model_arg(state, field(body, "adapter")?);
    let out = body["out"].as_str().filter(|s| !s.is_empty());
    let gguf = body["gguf"].as_str().filter(|s| !s.is_empty());
    if out.is_none() && gguf.is_none() {
        return Err(bad(
            "give a folder (\"out\") or a GGUF file (\"gguf\") to export to",
        ));
    }
    let mut args: Vec<String> = vec!["export".into(), "--adapter".into(), adapter];
    for (flag, value) in [("--out", out), ("--gguf", gguf)] {
        if let Some(v) = value {
            if v.contains("..") || std::path::Path::new(v).is_absolute() {
                return Err(bad(format!("{v}: export only into the served folder")));
            }
            args.extend([flag.into(), v.to_string()]);
        }
    }
    if let Some(t) = body["gguf_type"].as_str().filter(|s| !s.is_empty()) {
        args.extend(["--gguf-type".into(), t.to_string()]);
    }
    let output = out.or(gguf).unwrap_or_default().to_string();
    let id = state.jobs.new_id(JobKind::Export);
    launch(
        state,
        JobRecord::new(id, JobKind::Export, vec![args], output),
    )
}

/// Before / after: `eval predict` with the base and with the tuned adapter on an
/// evaluation dataset, then `eval compare` of the two.
fn evaluate(state: &State, body: &Value) -> Answer {
    let adapter = model_arg(state, field(body, "adapter")?);
    let model = body["model"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(|m| model_arg(state, m));
    let dataset = field(body, "dataset")?.to_string();
    let dataset_dir = body["dataset_dir"].as_str().unwrap_or(".").to_string();
    let id = state.jobs.new_id(JobKind::Evaluate);
    let dir = relative(state, &state.jobs.dir(&id));
    let predict = |name: &str, with_adapter: bool| {
        let mut a: Vec<String> = vec!["eval".into(), "predict".into()];
        match (&model, with_adapter) {
            (Some(m), true) => a.extend([
                "--model".into(),
                m.clone(),
                "--adapter".into(),
                adapter.clone(),
            ]),
            (None, true) => a.extend(["--model".into(), adapter.clone()]),
            (Some(m), false) => a.extend(["--model".into(), m.clone()]),
            (None, false) => {}
        }
        a.extend([
            "--dataset".into(),
            dataset.clone(),
            "--dataset-dir".into(),
            dataset_dir.clone(),
            "--max-samples".into(),
            number(body, "max_samples", 20),
            "--max-new-tokens".into(),
            number(body, "max_new_tokens", 64),
            "--out".into(),
            format!("{dir}/{name}"),
        ]);
        a
    };
    let mut base = predict("base", false);
    if model.is_none() {
        // The base is the one the adapter names.
        let base_dir = ferrotune_serve::loading::ModelSource::locate(Some(&adapter), None)
            .map_err(|e| bad(e.to_string()))?
            .base;
        base.splice(
            2..2,
            [
                "--model".to_string(),
                base_dir.to_string_lossy().into_owned(),
            ],
        );
    }
    let compare = vec![
        "eval".into(),
        "compare".into(),
        format!("{dir}/base/generated_predictions.jsonl"),
        format!("{dir}/tuned/generated_predictions.jsonl"),
        "--name".into(),
        "base,tuned".into(),
        "--markdown".into(),
        format!("{dir}/compare.md"),
    ];
    let steps = vec![base, predict("tuned", true), compare];
    launch(state, JobRecord::new(id, JobKind::Evaluate, steps, dir))
}

/// Export and evaluation jobs: `?id=` one (status, log, its result), else the list.
fn jobs(state: &State, params: &[(String, String)]) -> Reply {
    let describe = |j: &JobRecord| {
        let status = state.jobs.status(j);
        let mut v = json!({
            "id": j.id, "kind": j.kind, "status": status, "output": j.output,
            "progress": state.jobs.progress(&j.id),
        });
        if status == Status::Failed {
            v["error"] = state.jobs.error(&j.id).into();
        }
        if j.kind == JobKind::Evaluate && status == Status::Finished {
            v["table"] = std::fs::read_to_string(state.jobs.output_path(j).join("compare.md"))
                .unwrap_or_default()
                .into();
        }
        v
    };
    match param(params, "id") {
        Some(id) => match state.jobs.record(id) {
            Some(j) => {
                let mut v = describe(&j);
                v["log"] = state.jobs.log(id).into();
                Reply::json(&v)
            }
            None => Reply::error(404, format!("no job {id}")),
        },
        None => Reply::json(&Value::Array(
            state
                .jobs
                .all()
                .iter()
                .filter(|j| j.kind != JobKind::Train)
                .map(describe)
                .collect(),
        )),
    }
}

/// `?id=JOB` (a run started here) or `?output=FOLDER` (any run's output folder).
fn run_events(state: &State, params: &[(String, String)], request: Request) {
    if let Some(id) = param(params, "id") {
        match state.jobs.record(id) {
            Some(job) => {
                let out = state.jobs.output_path(&job);
                runs::stream(state, Some(job), out, request)
            }
            None => Reply::error(404, format!("no run {id}")).send(request),
        }
        return;
    }
    match files::resolve(&state.root, param(params, "output").unwrap_or("")) {
        Ok(out) => runs::stream(state, None, out, request),
        Err(e) => bad(e).send(request),
    }
}

/// One chat answer, streamed as server-sent events in the response to the POST.
fn chat(state: &State, mut request: Request) {
    let body = match json_body(&mut request) {
        Ok(b) => b,
        Err(reply) => return reply.send(request),
    };
    let chat_request =
        match crate::chat::ChatRequest::from_json(&body, |p| files::resolve(&state.root, p)) {
            Ok(r) => r,
            Err(e) => return bad(e).send(request),
        };
    let Ok(mut sse) = Sse::start(request) else {
        return;
    };
    let result = state
        .chat
        .answer(&chat_request, |event| sse.send(&event.to_string()).is_ok());
    if let Err(e) = result {
        let _ = sse.send(&json!({ "error": format!("{e:#}") }).to_string());
    }
    sse.end();
}
