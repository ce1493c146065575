//! Long work started from the page: training runs, exports and evaluations, each the
//! binary's own command in a child process of the server. A job's record, its config and
//! its log live in `.ferrotune-ui/jobs/<id>/` under the served folder, and the child writes
//! its log there rather than into a pipe, so a job outlives a closed tab and a restarted
//! server, and the list of runs is read back from disk.
//!
//! Layout of a job folder: `job.json` (what was run, where its output goes, the process
//! id), `config.yaml` (training: the exact YAML the page showed), `log.txt` (stdout and
//! stderr), `exit.json` (once the server saw it end).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::commands::{error_text, Commands};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Train,
    Export,
    Evaluate,
}

/// What `job.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub kind: JobKind,
    /// Each step's arguments to the binary, run one after another.
    pub steps: Vec<Vec<String>>,
    /// The folder the job writes (training: output_dir), relative to the served folder
    /// or absolute as the config gave it.
    pub output: String,
    pub started: u64,
    pub pid: Option<u32>,
    /// Set when the page asked it to stop.
    #[serde(default)]
    pub stopped: bool,
}

impl JobRecord {
    /// A job not started yet: [`Jobs::start`] sets when, and which process.
    pub fn new(id: String, kind: JobKind, steps: Vec<Vec<String>>, output: String) -> Self {
        JobRecord {
            id,
            kind,
            steps,
            output,
            started: 0,
            pid: None,
            stopped: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Finished,
    Failed,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Exit {
    success: bool,
    code: Option<i32>,
}

/// The jobs of one served folder.
pub struct Jobs {
    commands: Commands,
    folder: PathBuf,
    /// Children this server started and still holds; the job's current step process.
    children: Mutex<HashMap<String, Child>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Jobs {
    pub fn new(commands: Commands) -> Self {
        let folder = commands.root.join(".ferrotune-ui").join("jobs");
        Jobs {
            commands,
            folder,
            children: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.folder.join(id)
    }

    /// A fresh job id: kind, time and a counter, sortable by start.
    pub fn new_id(&self, kind: JobKind) -> String {
        let base = format!("{}-{}", now(), format!("{kind:?}").to_lowercase());
        let mut id = base.clone();
        let mut n = 1;
        while self.dir(&id).exists() {
            n += 1;
            id = format!("{base}-{n}");
        }
        id
    }

    pub fn record(&self, id: &str) -> Option<JobRecord> {
        valid_id(id).then_some(())?;
        let text = std::fs::read_to_string(self.dir(id).join("job.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write_record(&self, r: &JobRecord) -> Result<(), String> {
        let text = serde_json::to_string_pretty(r).expect("a job record serializes");
        std::fs::write(self.dir(&r.id).join("job.json"), text)
            .map_err(|e| format!("cannot write the job record: {e}"))
    }

    /// Every job on disk, newest first.
    pub fn all(&self) -> Vec<JobRecord> {
        let mut jobs: Vec<JobRecord> = std::fs::read_dir(&self.folder)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.record(&e.file_name().to_string_lossy()))
            .collect();
        jobs.sort_by(|a, b| (b.started, &b.id).cmp(&(a.started, &a.id)));
        jobs
    }

    /// A job of `kind` still running, if any.
    pub fn running(&self, kind: JobKind) -> Option<JobRecord> {
        self.all()
            .into_iter()
            .find(|j| j.kind == kind && self.status(j) == Status::Running)
    }

    /// Starts a job whose folder (with any file it needs, such as config.yaml) exists.
    /// The steps run one after another in a thread of the server; each is a child
    /// process writing to the job's log.
    pub fn start(self: &Arc<Self>, mut record: JobRecord) -> Result<JobRecord, String> {
        let dir = self.dir(&record.id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let _ = std::fs::remove_file(dir.join("exit.json"));
        record.stopped = false;
        record.started = now();
        let first = self.spawn(&record.id, &record.steps[0])?;
        record.pid = Some(first.id());
        self.write_record(&record)?;
        self.children
            .lock()
            .expect("jobs lock")
            .insert(record.id.clone(), first);
        let (jobs, r) = (Arc::clone(self), record.clone());
        std::thread::spawn(move || jobs.follow(r));
        Ok(record)
    }

    /// The job's log, opened for appending.
    fn open_log(&self, id: &str) -> Result<File, String> {
        let path = self.dir(id).join("log.txt");
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn spawn(&self, id: &str, args: &[String]) -> Result<Child, String> {
        let mut log = self.open_log(id)?;
        let err = log.try_clone().map_err(|e| format!("{id} log: {e}"))?;
        let _ = writeln!(log, "$ ferrotune {}", args.join(" "));
        let mut command = self.commands.command(args);
        // A process group of its own: Ctrl-C in the server's terminal stops the server,
        // not the runs it started.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start ferrotune: {e}"))
    }

    /// Waits for the job's current process to end: its exit status (None if it could not
    /// be read), or None when this server no longer holds the process.
    fn wait(&self, id: &str) -> Option<Option<ExitStatus>> {
        loop {
            let mut children = self.children.lock().expect("jobs lock");
            let child = children.get_mut(id)?;
            match child.try_wait() {
                Ok(None) => {}
                ended => {
                    children.remove(id);
                    return Some(ended.ok().flatten());
                }
            }
            drop(children);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Waits for each step, starts the next, and writes exit.json at the end.
    fn follow(&self, mut record: JobRecord) {
        let mut step = 0;
        let exit = loop {
            let Some(status) = self.wait(&record.id) else {
                return;
            };
            let exit = Exit {
                success: status.is_some_and(|s| s.success()),
                code: status.and_then(|s| s.code()),
            };
            step += 1;
            let stopped = self.record(&record.id).is_some_and(|r| r.stopped);
            if !exit.success || stopped || step == record.steps.len() {
                break exit;
            }
            match self.spawn(&record.id, &record.steps[step]) {
                Ok(child) => {
                    record.pid = Some(child.id());
                    let _ = self.write_record(&record);
                    self.children
                        .lock()
                        .expect("jobs lock")
                        .insert(record.id.clone(), child);
                }
                Err(e) => {
                    if let Ok(mut log) = self.open_log(&record.id) {
                        let _ = writeln!(log, "error: {e}");
                    }
                    // The job did not run to its end.
                    break Exit {
                        success: false,
                        code: None,
                    };
                }
            }
        };
        let _ = std::fs::write(
            self.dir(&record.id).join("exit.json"),
            serde_json::to_string(&exit).expect("exit serializes"),
        );
    }

    /// Asks a running job to stop: its process is killed (a training run resumes from its
    /// last checkpoint).
    pub fn stop(&self, id: &str) -> Result<(), String> {
        let mut record = self.record(id).ok_or_else(|| format!("no job {id}"))?;
        record.stopped = true;
        self.write_record(&record)?;
        if let Some(child) = self.children.lock().expect("jobs lock").get_mut(id) {
            let _ = child.kill();
            return Ok(());
        }
        // Started by an earlier server: only its process id is known.
        match record.pid.filter(|&p| process_alive(p, &self.commands.exe)) {
            Some(pid) => kill(pid),
            None => Ok(()),
        }
    }

    pub fn status(&self, r: &JobRecord) -> Status {
        let dir = self.dir(&r.id);
        if let Some(exit) = std::fs::read_to_string(dir.join("exit.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Exit>(&t).ok())
        {
            return if exit.success {
                Status::Finished
            } else if r.stopped {
                Status::Stopped
            } else {
                Status::Failed
            };
        }
        let held = self.children.lock().expect("jobs lock").contains_key(&r.id);
        if held || r.pid.is_some_and(|p| process_alive(p, &self.commands.exe)) {
            return Status::Running;
        }
        // Ended while no server watched it: a training run's summary, written after it
        // started, says it finished.
        let summary_written = std::fs::metadata(self.output_path(r).join("train_summary.json"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|t| t.as_secs());
        if r.kind == JobKind::Train && summary_written.is_some_and(|t| t >= r.started) {
            return Status::Finished;
        }
        Status::Stopped
    }

    /// The job's output folder as a path.
    pub fn output_path(&self, r: &JobRecord) -> PathBuf {
        let p = Path::new(&r.output);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.commands.root.join(p)
        }
    }

    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir(id).join("log.txt")).unwrap_or_default()
    }

    /// The log's last line, as a terminal would show it; only the log's end is read, since
    /// live views ask for it every poll.
    pub fn progress(&self, id: &str) -> String {
        let mut tail = Vec::new();
        if let Ok(mut f) = File::open(self.dir(id).join("log.txt")) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)))
                .is_ok()
            {
                let _ = f.read_to_end(&mut tail);
            }
        }
        progress_line(&String::from_utf8_lossy(&tail))
    }

    /// What a failed job's command said went wrong.
    pub fn error(&self, id: &str) -> String {
        error_text(&self.log(id))
    }
}

/// How much of a log's end [`Jobs::progress`] reads.
const LOG_TAIL: u64 = 16 << 10;

/// The last line of `log` (progress rewritten with `\r` counts as its last state), the
/// command lines the jobs write left out.
fn progress_line(log: &str) -> String {
    log.lines()
        .rev()
        .flat_map(|l| l.rsplit('\r').next())
        .find(|l| !l.trim().is_empty() && !l.starts_with("$ ferrotune"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Job ids are made here; anything else in a URL is refused before it becomes a path.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether process `pid` is alive and is this binary (Linux: /proc; elsewhere a process
/// left by an earlier server is taken as ended).
fn process_alive(pid: u32, exe: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    String::from_utf8_lossy(argv0).ends_with(&name)
}

fn kill(pid: u32) -> Result<(), String> {
    let status = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .map_err(|e| format!("cannot stop process {pid}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cannot stop process {pid}"))
    }
}
