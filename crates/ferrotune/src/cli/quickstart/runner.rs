//! Running this binary's own subcommands: each printed, logged to OUT/commands.sh and
//! timed by stage.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The stages, in order, for the progress headers and the timings.
const STAGES: [&str; 8] = [
    "model",
    "self-distillation",
    "evaluate before",
    "SFT",
    "evaluate after",
    "compare",
    "chat probes",
    "export",
];

/// Runs this binary's subcommands, prints each with a progress header, logs it to
/// OUT/commands.sh, and times the stages.
pub struct Runner {
    exe: PathBuf,
    commands: std::fs::File,
    stage: usize,
    /// Seconds per stage, in order.
    pub timings: Vec<(String, f64)>,
    stage_started: Instant,
}

impl Runner {
    pub fn new(out: &Path) -> Result<Self> {
        let exe = std::env::current_exe().context("cannot find the ferrotune executable")?;
        let path = out.join("commands.sh");
        let mut commands = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        writeln!(
            commands,
            "# The commands `ferrotune quickstart` ran, in order (ferrotune = {}).",
            exe.display()
        )?;
        Ok(Runner {
            exe,
            commands,
            stage: 0,
            timings: Vec::new(),
            stage_started: Instant::now(),
        })
    }

    /// Starts the next stage (ending the one before).
    pub fn stage(&mut self, what: &str) {
        self.end_stage();
        self.stage += 1;
        let name = STAGES[self.stage - 1];
        eprintln!("\n==> [{}/{}] {name}: {what}", self.stage, STAGES.len());
        let _ = writeln!(self.commands, "\n# {name}: {what}");
    }

    pub fn end_stage(&mut self) {
        if self.stage > 0 && self.timings.len() < self.stage {
            let seconds = self.stage_started.elapsed().as_secs_f64();
            self.timings
                .push((STAGES[self.stage - 1].to_string(), seconds));
        }
        self.stage_started = Instant::now();
    }

    fn command(&mut self, what: &str, args: &[&OsStr]) -> Command {
        let line = std::iter::once("ferrotune".to_string())
            .chain(args.iter().map(|a| shell_quote(&a.to_string_lossy())))
            .collect::<Vec<_>>()
            .join(" ");
        eprintln!("--> {what}\n    $ {line}");
        let _ = writeln!(self.commands, "{line}");
        let mut c = Command::new(&self.exe);
        c.args(args);
        c
    }

    /// Runs `ferrotune ARGS`, its output going to the terminal.
    pub fn run(&mut self, what: &str, args: &[&OsStr]) -> Result<()> {
        let status = self
            .command(what, args)
            .status()
            .with_context(|| format!("cannot run {}", self.exe.display()))?;
        if !status.success() {
            bail!(
                "{what}: `ferrotune {}` failed ({status})",
                args[0].to_string_lossy()
            );
        }
        Ok(())
    }

    /// Runs `ferrotune ARGS` and returns what it printed on stdout.
    pub fn output(&mut self, what: &str, args: &[&OsStr]) -> Result<String> {
        let output = self
            .command(what, args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {}", self.exe.display()))?;
        if !output.status.success() {
            bail!(
                "{what}: `ferrotune {}` failed ({})",
                args[0].to_string_lossy(),
                output.status
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,%+@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Arguments built from strings and paths.
#[derive(Default)]
pub struct Argv(Vec<OsString>);

impl Argv {
    pub fn new(args: &[&str]) -> Self {
        Argv(args.iter().map(OsString::from).collect())
    }
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.0.push(a.as_ref().to_os_string());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.0
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }
    pub fn kv(self, key: &str, path: &Path) -> Self {
        let mut s = OsString::from(format!("{key}="));
        s.push(path.as_os_str());
        self.arg(s)
    }
    pub fn refs(&self) -> Vec<&OsStr> {
        self.0.iter().map(OsString::as_os_str).collect()
    }
}
