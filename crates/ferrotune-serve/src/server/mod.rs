//! An OpenAI-compatible HTTP API (`POST /v1/chat/completions`, streaming or not,
//! `GET /v1/models`, `GET /health`), as `ferrotune serve` runs it.
//!
//! One worker thread owns the model and answers queued requests one at a time, so
//! concurrent clients wait their turn instead of competing for memory; each connection
//! has its own thread that checks the request, queues it and writes the answer. Each
//! request is one chat turn ([`ChatModel::answer`]), rendered with the template saved
//! with the model, as `chat` renders it.

pub mod openai;
pub mod sse;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use ferrotune_model::generate::{Flow, GenerationConfig};
use serde_json::{json, Map, Value};
use tiny_http::{Header, Method, Request, Response};

use crate::stream::Completion;
use crate::turn::{ChatModel, PromptError, Turn, TurnError, TurnEvent};
use openai::{ApiError, ChatRequest};
use sse::Sse;

/// How the server presents itself and how much it queues.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model id clients see in /v1/models and in answers.
    pub name: String,
    /// Requests that may wait for the model; more are answered 503 (busy).
    pub max_queue: usize,
    /// Sampling for requests that do not set it, with the model's stop ids.
    pub defaults: GenerationConfig,
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

/// The thread that owns the model and answers the queued requests in turn.
struct ModelWorker {
    chat: ChatModel,
}

impl ModelWorker {
    fn answer(&self, job: &Job) -> std::result::Result<Completion, ApiError> {
        let r = &job.request;
        let turn = Turn {
            messages: &r.messages,
            tools: &r.tools,
            config: &r.config,
            extra_stops: &r.stop,
        };
        let event = |e: TurnEvent<'_>| match e {
            TurnEvent::Started => Event::Started,
            TurnEvent::Text(piece) => Event::Text(piece.to_string()),
        };
        self.chat
            .answer(&turn, |e| match job.events.send(event(e)) {
                Ok(()) => Flow::Continue,
                // The connection is gone: stop spending time on it.
                Err(_) => Flow::Stop,
            })
            .map_err(|e| match e {
                TurnError::Prompt(PromptError::Template(e)) => ApiError::invalid(
                    format!("the chat template rejected the messages: {e}"),
                    Some("messages"),
                ),
                TurnError::Prompt(PromptError::Tokenizer(e)) => {
                    ApiError::server(500, format!("tokenizer: {e}"))
                }
                TurnError::TooLong { tokens, context } => ApiError::invalid(
                    format!(
                        "the prompt is {tokens} tokens; this model's context is {context} tokens"
                    ),
                    Some("messages"),
                ),
                TurnError::Cancelled => ApiError::server(499, "the client left"),
                TurnError::Generation(e) => {
                    ApiError::server(500, format!("generation failed: {e:#}"))
                }
            })
    }

    fn run(self, jobs: Receiver<Job>) {
        for job in jobs {
            // A bug must cost one request, not the server.
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.answer(&job)));
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
}

/// What every connection thread shares.
struct Shared {
    jobs: SyncSender<Job>,
    defaults: GenerationConfig,
    name: String,
    created: u64,
    counter: AtomicU64,
}

/// A listening server: [`Server::run`] answers requests until [`StopHandle::stop`].
pub struct Server {
    http: Arc<tiny_http::Server>,
    shared: Arc<Shared>,
    addr: SocketAddr,
}

/// Ends a running server's [`Server::run`] from another thread.
#[derive(Clone)]
pub struct StopHandle(Arc<tiny_http::Server>);

impl StopHandle {
    /// Stops accepting requests; requests already accepted are still answered.
    pub fn stop(&self) {
        self.0.unblock();
    }
}

impl Server {
    /// Listens on `(host, port)` (port 0 picks a free one) and starts the model's worker
    /// thread.
    pub fn bind(chat: ChatModel, options: ServeOptions, (host, port): (&str, u16)) -> Result<Self> {
        let http = tiny_http::Server::http((host, port))
            .map_err(|e| anyhow!("cannot listen on {host}:{port}: {e}"))?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow!("not listening on an IP address"))?;
        let (jobs, queue) = mpsc::sync_channel(options.max_queue.max(1));
        let worker = ModelWorker { chat };
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || worker.run(queue))?;
        let shared = Arc::new(Shared {
            jobs,
            defaults: options.defaults,
            name: options.name,
            created: now(),
            counter: AtomicU64::new(0),
        });
        Ok(Server {
            http: Arc::new(http),
            shared,
            addr,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The model id clients see.
    pub fn model_name(&self) -> &str {
        &self.shared.name
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.http))
    }

    /// Answers requests, each on its own thread, until stopped.
    pub fn run(self) {
        for request in self.http.incoming_requests() {
            let shared = Arc::clone(&self.shared);
            std::thread::spawn(move || handle(request, &shared));
        }
    }
}

/// Serves `chat` on `addr` until the process ends: [`Server::bind`] then [`Server::run`].
pub fn serve(chat: ChatModel, options: ServeOptions, addr: (&str, u16)) -> Result<()> {
    Server::bind(chat, options, addr)?.run();
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
