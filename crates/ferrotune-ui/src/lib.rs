//! `ferrotune ui`: a local web page for the whole loop (model, data, training, chat,
//! evaluation, export), served by the binary itself from HTML, CSS and JavaScript compiled
//! into it, with no request to any other host.
//!
//! The page is a client of this server's JSON API (`routes`). Quick answers run the
//! binary's own commands with `--json` (`commands`), so they are what the CLI prints;
//! long work (training, export, evaluation) runs as child processes whose records and
//! logs live on disk under `.ferrotune-ui/` (`jobs`), so runs survive a closed tab and a
//! restarted server; chat loads models into the server (`chat`). Every request passes
//! `guard` first: the Host and Origin headers, and the token when bound beyond loopback.

pub mod chat;
pub mod commands;
pub mod files;
pub mod guard;
pub mod http;
pub mod jobs;
pub mod records;
mod routes;
mod runs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};

use crate::commands::Commands;
use crate::guard::Guard;
use crate::jobs::Jobs;

/// How `ferrotune ui` was started.
#[derive(Debug, Clone)]
pub struct UiOptions {
    /// The served folder: the file pickers' root, and the working folder of every command.
    pub dir: PathBuf,
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// The ferrotune binary the page's commands run.
    pub exe: PathBuf,
}

/// What every request handler shares.
pub(crate) struct State {
    pub root: PathBuf,
    pub commands: Commands,
    pub jobs: Arc<Jobs>,
    pub chat: chat::ChatModels,
    pub guard: Guard,
    pub scratch: std::sync::atomic::AtomicU64,
}

pub struct Ui {
    server: tiny_http::Server,
    state: Arc<State>,
}

impl Ui {
    pub fn bind(options: UiOptions) -> Result<Self> {
        let root = options
            .dir
            .canonicalize()
            .with_context(|| format!("--dir {}", options.dir.display()))?;
        let server = tiny_http::Server::http((options.host.as_str(), options.port))
            .map_err(|e| anyhow!("cannot listen on {}:{}: {e}", options.host, options.port))?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .ok_or_else(|| anyhow!("the server has no IP address"))?;
        let guard = if guard::is_loopback(&options.host) {
            Guard::loopback(port)
        } else {
            Guard::with_token(guard::new_token())
        };
        let commands = Commands {
            exe: options.exe,
            root: root.clone(),
        };
        let state = State {
            jobs: Arc::new(Jobs::new(commands.clone())),
            chat: Default::default(),
            root,
            commands,
            guard,
            scratch: Default::default(),
        };
        Ok(Ui {
            server,
            state: Arc::new(state),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server
            .server_addr()
            .to_ip()
            .expect("bound to an IP address")
    }

    /// The token requests need (bound beyond loopback), to print at start.
    pub fn token(&self) -> Option<&str> {
        self.state.guard.token()
    }

    /// Answers requests until the process ends; each in a thread of its own, since
    /// event streams stay open.
    pub fn run(self) {
        for request in self.server.incoming_requests() {
            let state = Arc::clone(&self.state);
            std::thread::spawn(move || routes::handle(&state, request));
        }
    }
}
