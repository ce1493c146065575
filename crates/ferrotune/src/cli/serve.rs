//! `ferrotune serve MODEL --port N`: an OpenAI-compatible HTTP API
//! (`POST /v1/chat/completions`, streaming or not, `GET /v1/models`, `GET /health`).
//!
//! One worker thread owns the model and answers queued requests one at a time, so
//! concurrent clients wait their turn instead of competing for memory; each connection
//! has its own thread that checks the request, queues it and writes the answer. Prompts
//! are rendered by the same template code as training, with the template saved with the
//! model.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use ferrotune_data::template::ChatTemplate;
use ferrotune_data::TokenizerBundle;
use ferrotune_model::generate::{Flow, GenerationConfig};
use ferrotune_model::infer::{InferenceModel, WeightType};
use serde_json::{json, Map, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use super::loading::{self, ModelSource, SamplingArgs};
use super::openai::{self, ApiError, ChatRequest};
use super::stream::{complete, Completion};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model folder or Hub id; a LoRA run's output folder works too (its base is read
    /// from adapter_config.json).
    model: String,
    /// A PEFT LoRA adapter to apply on MODEL (merged in memory).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model id clients see in /v1/models and in answers (default: the folder name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Requests that may wait for the model; more are answered 503 (busy).
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Inference weights: f32 (as trained), bf16 (half the bytes to read per token) or
    /// q8_0 (8.5 bits a weight), converted when the model loads; decoding speed follows
    /// the bytes (docs/PERFORMANCE.md).
    #[arg(long, default_value = "f32", value_name = "f32|bf16|q8_0")]
    weights: WeightType,
    /// Defaults for requests that do not set them (max_tokens, temperature, ...).
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Request bodies above this are refused (413): chat requests are small.
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// What the worker tells a connection about its request.
enum Event {
    /// The prompt is valid and generation begins.
    Started,
    Text(String),
    Done(Completion),
    Failed(ApiError),
}

struct Job {
    request: ChatRequest,
    events: Sender<Event>,
}

/// The model side, owned by the worker thread.
struct Engine {
    model: InferenceModel,
    tok: TokenizerBundle,
    template: ChatTemplate,
    stop_strings: Vec<String>,
}

impl Engine {
    fn answer(&self, job: &Job) -> std::result::Result<Completion, ApiError> {
        let r = &job.request;
        let text = self
            .template
            .render(&r.messages, &r.tools, true)
            .map_err(|e| {
                ApiError::invalid(
                    format!("the chat template rejected the messages: {e}"),
                    Some("messages"),
                )
            })?;
        let ids = self
            .tok
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| ApiError::server(500, format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec();
        let context = self.model.config().max_position_embeddings;
        if ids.len() >= context {
            return Err(ApiError::invalid(
                format!(
                    "the prompt is {} tokens; this model's context is {context} tokens",
                    ids.len()
                ),
                Some("messages"),
            ));
        }
        let config = GenerationConfig {
            max_new_tokens: r.config.max_new_tokens.min(context - ids.len()),
            ..r.config.clone()
        };
        let mut stops = self.stop_strings.clone();
        stops.extend(r.stop.iter().cloned());
        if job.events.send(Event::Started).is_err() {
            return Err(ApiError::server(499, "the client left"));
        }
        complete(
            &self.model,
            &self.tok,
            &ids,
            &config,
            &stops,
            true,
            |piece| match job.events.send(Event::Text(piece.to_string())) {
                Ok(()) => Flow::Continue,
                // The connection is gone: stop spending time on it.
                Err(_) => Flow::Stop,
            },
        )
        .map_err(|e| ApiError::server(500, format!("generation failed: {e:#}")))
    }
}

fn worker(engine: Engine, jobs: Receiver<Job>) {
    for job in jobs {
        // A bug must cost one request, not the server.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.answer(&job)));
        let event = match result {
            Ok(Ok(done)) => Event::Done(done),
            Ok(Err(e)) => Event::Failed(e),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!("error: generation panicked: {what}");
                Event::Failed(ApiError::server(500, format!("internal error: {what}")))
            }
        };
        let _ = job.events.send(event);
    }
}

/// What every connection thread shares.
struct Shared {
    jobs: SyncSender<Job>,
    defaults: GenerationConfig,
    name: String,
    created: u64,
    counter: AtomicU64,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let source = ModelSource::locate(Some(&a.model), a.adapter.as_deref())?;
    let (tok, template) = loading::tokenizer_and_template(&source, None)?;
    let Some(template) = template else {
        bail!(
            "{} has no chat template (chat_template.jinja or tokenizer_config.json), which \
             chat completions need",
            source.tokenizer_dir().display()
        );
    };
    eprintln!("loading {} ...", source.name());
    let model = source.load()?;
    let stop_ids = loading::stop_ids(&model, &tok, Some(&template));
    let model = InferenceModel::new(model, a.weights)?;
    let defaults = a.sampling.config(&source.base, stop_ids)?;
    let engine = Engine {
        stop_strings: template.stop_strings(),
        model,
        tok,
        template,
    };
    let server = Server::http((a.host.as_str(), a.port))
        .map_err(|e| anyhow!("cannot listen on {}:{}: {e}", a.host, a.port))?;
    let (jobs, queue) = mpsc::sync_channel(a.max_queue.max(1));
    std::thread::Builder::new()
        .name("model".into())
        .spawn(move || worker(engine, queue))?;
    let shared = Arc::new(Shared {
        jobs,
        defaults,
        name: a.served_model_name.unwrap_or_else(|| source.name()),
        created: now(),
        counter: AtomicU64::new(0),
    });
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow!("not listening on an IP address"))?;
    println!("listening on http://{addr} (model {})", shared.name);
    std::io::stdout().flush()?;
    for request in server.incoming_requests() {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || handle(request, &shared));
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn respond_json(request: Request, status: u16, body: &Value) {
    let header = Header::from_bytes("Content-Type", "application/json").expect("valid header");
    let response = Response::from_data(body.to_string().into_bytes())
        .with_status_code(status)
        .with_header(header);
    let _ = request.respond(response);
}

fn respond_error(request: Request, e: &ApiError) {
    respond_json(request, e.status, &e.body());
}

fn handle(mut request: Request, shared: &Shared) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let method = request.method().clone();
    match (&method, path.trim_end_matches('/')) {
        (Method::Get, "/health") => respond_json(request, 200, &json!({"status": "ok"})),
        (Method::Get, "/v1/models") => {
            let body = json!({"object": "list", "data": [{
                "id": shared.name, "object": "model", "created": shared.created, "owned_by": "ferrotune"}]});
            respond_json(request, 200, &body)
        }
        (Method::Post, "/v1/chat/completions") => {
            let mut body = Vec::new();
            let read = request
                .as_reader()
                .take(MAX_BODY + 1)
                .read_to_end(&mut body);
            if let Err(e) = read {
                let e = ApiError::invalid(format!("cannot read the request body: {e}"), None);
                return respond_error(request, &e);
            }
            if body.len() as u64 > MAX_BODY {
                let e = ApiError {
                    status: 413,
                    ..ApiError::invalid(format!("the body is over {MAX_BODY} bytes"), None)
                };
                return respond_error(request, &e);
            }
            match openai::parse_request(&body, &shared.defaults) {
                Ok(chat) => chat_completion(request, chat, shared),
                Err(e) => respond_error(request, &e),
            }
        }
        (_, "/health" | "/v1/models" | "/v1/chat/completions") => {
            let e = ApiError {
                status: 405,
                ..ApiError::invalid(format!("{method} is not allowed on {path}"), None)
            };
            respond_error(request, &e)
        }
        _ => respond_error(
            request,
            &ApiError::not_found(format!("no route for {method} {path}")),
        ),
    }
}

fn chat_completion(request: Request, chat: ChatRequest, shared: &Shared) {
    let stream = chat.stream;
    let include_usage = chat.include_usage;
    let (events, replies) = mpsc::channel();
    match shared.jobs.try_send(Job {
        request: chat,
        events,
    }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return respond_error(
                request,
                &ApiError::server(503, "the server is busy: too many requests are waiting"),
            )
        }
        Err(TrySendError::Disconnected(_)) => {
            return respond_error(request, &ApiError::server(500, "the model worker stopped"))
        }
    }
    let n = shared.counter.fetch_add(1, Ordering::Relaxed);
    let id = format!("chatcmpl-{:x}{n:04x}", now());
    let created = now();
    let first = replies
        .recv()
        .unwrap_or_else(|_| Event::Failed(ApiError::server(500, "the model worker stopped")));
    match first {
        Event::Failed(e) => return respond_error(request, &e),
        Event::Started => {}
        Event::Text(_) | Event::Done(_) => {
            return respond_error(request, &ApiError::server(500, "out-of-order events"))
        }
    }
    if !stream {
        for event in replies {
            match event {
                Event::Done(done) => {
                    let body = openai::completion_body(&id, created, &shared.name, &done);
                    return respond_json(request, 200, &body);
                }
                Event::Failed(e) => return respond_error(request, &e),
                Event::Started | Event::Text(_) => {}
            }
        }
        return respond_error(request, &ApiError::server(500, "the model worker stopped"));
    }
    let Ok(mut sse) = Sse::start(request) else {
        return;
    };
    let chunk = |delta: Map<String, Value>, finish, usage| {
        openai::chunk(&id, created, &shared.name, delta, finish, usage).to_string()
    };
    let mut role = Map::new();
    role.insert("role".into(), json!("assistant"));
    role.insert("content".into(), json!(""));
    if sse.send(&chunk(role, None, None)).is_err() {
        return;
    }
    for event in replies {
        let sent = match event {
            Event::Text(text) => {
                let mut delta = Map::new();
                delta.insert("content".into(), json!(text));
                sse.send(&chunk(delta, None, None))
            }
            Event::Done(done) => {
                let mut result = sse.send(&chunk(Map::new(), Some(done.finish), None));
                if include_usage && result.is_ok() {
                    result = sse.send(&chunk(Map::new(), None, Some(openai::usage(&done))));
                }
                result
            }
            Event::Failed(e) => sse.send(&e.body().to_string()),
            Event::Started => Ok(()),
        };
        // A failed write means the client left; dropping `replies` stops the generation.
        if sent.is_err() {
            return;
        }
    }
    let _ = sse.send("[DONE]");
    sse.end();
}

/// A server-sent-events response written by hand, so that every event leaves at once
/// (tiny_http's own responses buffer the body).
struct Sse {
    writer: Box<dyn Write + Send>,
    chunked: bool,
}

impl Sse {
    fn start(request: Request) -> std::io::Result<Self> {
        let v = request.http_version();
        let chunked = (v.0, v.1) >= (1, 1);
        let mut writer = request.into_writer();
        write!(
            writer,
            "HTTP/1.{} 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             Connection: close\r\n{}\r\n",
            u8::from(chunked),
            if chunked {
                "Transfer-Encoding: chunked\r\n"
            } else {
                ""
            }
        )?;
        writer.flush()?;
        Ok(Sse { writer, chunked })
    }

    fn send(&mut self, data: &str) -> std::io::Result<()> {
        let event = format!("data: {data}\n\n");
        if self.chunked {
            write!(self.writer, "{:x}\r\n{event}\r\n", event.len())?;
        } else {
            self.writer.write_all(event.as_bytes())?;
        }
        self.writer.flush()
    }

    fn end(mut self) {
        if self.chunked {
            let _ = self.writer.write_all(b"0\r\n\r\n");
        }
        let _ = self.writer.flush();
    }
}
