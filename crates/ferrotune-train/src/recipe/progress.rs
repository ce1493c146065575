//! Training progress on stderr. On a terminal a bar is redrawn in place and cleared before
//! each line; written to a file or a pipe there is no bar, only whole lines (one per
//! logging step), so a log reads one update per line.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub(super) struct Progress {
    tty: bool,
    started: Instant,
}

impl Progress {
    pub(super) fn new(started: Instant) -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            started,
        }
    }

    /// `[#####.....] step/total loss lr ETA`, on a terminal only.
    pub(super) fn bar(&self, done: usize, total: usize, loss: f64, lr: f64) {
        if !self.tty {
            return;
        }
        const WIDTH: usize = 30;
        let per_step = self.started.elapsed().as_secs_f64() / done.max(1) as f64;
        let eta = per_step * (total - done) as f64;
        let filled = WIDTH * done / total.max(1);
        eprint!(
            "\r[{}{}] {done}/{total} · loss {loss:.4} · lr {lr:.2e} · ETA {eta:.0} s  ",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled)
        );
        let _ = std::io::stderr().flush();
    }

    /// A whole line, below the bar's last state rather than run into it.
    pub(super) fn line(&self, text: &str) {
        self.clear();
        eprintln!("{text}");
    }

    pub(super) fn clear(&self) {
        if self.tty {
            eprint!("\r{}\r", " ".repeat(100));
        }
    }
}
