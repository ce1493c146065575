//! The page's quick answers come from the binary's own commands, run as they would be on
//! the command line with `--json`: what the page shows is what the CLI prints, and a bad
//! input's error is the CLI's message (file, record, problem).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Runs `ferrotune` subcommands in the served folder.
#[derive(Debug, Clone)]
pub struct Commands {
    pub exe: PathBuf,
    pub root: PathBuf,
}

impl Commands {
    pub fn command(&self, args: &[String]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args).current_dir(&self.root);
        c
    }

    /// Runs the command and returns its standard output, or its error message.
    pub fn text(&self, args: &[String]) -> Result<String, String> {
        let out = self
            .command(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.exe.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(error_text(&String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Runs a command printing one JSON document.
    pub fn json(&self, args: &[String]) -> Result<Value, String> {
        let text = self.text(args)?;
        serde_json::from_str(&text)
            .map_err(|e| format!("unreadable output of ferrotune {}: {e}", args.join(" ")))
    }

    /// Runs a command printing JSON Lines.
    pub fn json_lines(&self, args: &[String]) -> Result<Vec<Value>, String> {
        let text = self.text(args)?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| format!("unreadable output of ferrotune {}: {e}", args.join(" ")))
            })
            .collect()
    }
}

/// What the command said went wrong: its stderr without the progress lines before the
/// error.
pub fn error_text(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("error"))
        .unwrap_or(0);
    let text = lines[start..].join("\n");
    let text = text.strip_prefix("error: ").unwrap_or(&text).trim();
    if text.is_empty() {
        "the command failed without a message".to_string()
    } else {
        text.to_string()
    }
}

/// A path argument as the command line gets it.
pub fn arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_is_what_follows_the_progress() {
        assert_eq!(
            error_text("loading x\nerror: data.json record 3: no \"output\"\n  hint\n"),
            "data.json record 3: no \"output\"\n  hint"
        );
        assert_eq!(error_text(""), "the command failed without a message");
    }
}
