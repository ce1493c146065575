//! Where tests find the shared reference material (fixtures, tokenizers, demo data).
//!
//! Every test goes through [`shared_dir`], so there is one place that knows the layout:
//! `FERROTUNE_SHARED` when set, else `../shared` beside the repository. The product itself
//! never reads from there.

use std::path::{Path, PathBuf};

/// The shared folder. Panics with a clear message when it is missing, because a test that
/// silently skips its reference check proves nothing.
pub fn shared_dir() -> PathBuf {
    let dir = match std::env::var_os("FERROTUNE_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("..").join("shared"),
    };
    assert!(
        dir.is_dir(),
        "the shared fixtures folder {} does not exist: set FERROTUNE_SHARED to its location",
        dir.display()
    );
    dir
}

/// A path inside the shared folder, which must exist.
pub fn shared(relative: &str) -> PathBuf {
    let path = shared_dir().join(relative);
    assert!(path.exists(), "missing shared file {}", path.display());
    path
}

/// The repository root (the folder holding the workspace Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// Reads and parses a JSON file, panicking with the path on failure.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

/// The records of a run's `output/metrics.jsonl` that carry `key` (`loss` for training
/// steps, `eval_loss` for evaluations).
pub fn metrics(output: &Path, key: &str) -> Vec<serde_json::Value> {
    let path = output.join("metrics.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|v| v.get(key).is_some())
        .collect()
}

/// A fresh, empty temporary folder for one test, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ferrotune-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the folder and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Running the `ferrotune` binary from CLI tests. Test crates pass
/// `env!("CARGO_BIN_EXE_ferrotune")`, which only they can name.
pub mod cli {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    use super::workspace_root;

    /// The binary, run from the repository root and never reaching for the Hub.
    pub fn command(bin: &str) -> Command {
        let mut c = Command::new(bin);
        c.current_dir(workspace_root()).env("HF_HUB_OFFLINE", "1");
        c
    }

    /// Runs it and returns what it printed, whatever its exit status.
    pub fn output(bin: &str, args: &[&str]) -> Output {
        command(bin).args(args).output().expect("run ferrotune")
    }

    /// Runs it and fails the test, with its stderr, unless it succeeds.
    pub fn run_ok(bin: &str, args: &[&str]) -> Output {
        let o = output(bin, args);
        assert!(
            o.status.success(),
            "ferrotune {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// A server started from the binary (`serve`, `ui`), killed when dropped, whether the
    /// test passes or not.
    pub struct Served {
        pub child: std::process::Child,
        /// The first line it printed, and the `http://` address in it.
        pub line: String,
        pub url: String,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Starts `command` (stdout piped here, stderr passed on) and waits for the first line
    /// it prints, which must hold the address it listens on.
    pub fn served(mut command: Command) -> Served {
        use std::io::{BufRead, BufReader};
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("its stdout"))
            .read_line(&mut line)
            .expect("the address line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Served { child, line, url }
    }

    pub fn stdout(o: &Output) -> String {
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn stderr(o: &Output) -> String {
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// A random two-layer Llama (hidden 64) on the tokenizer of examples/, made with
    /// `model init` in `dir/model`. Untied embeddings for generation tests: a tied random
    /// model only ever repeats the last prompt token.
    pub fn tiny_model(bin: &str, dir: &Path, tied: bool) -> PathBuf {
        let config = dir.join("config.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 160,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "tie_word_embeddings": {tied}, "rope_theta": 10000.0, "max_position_embeddings": 512}}"#
            ),
        )
        .expect("write the model config");
        let out = dir.join("model");
        run_ok(
            bin,
            &[
                "model",
                "init",
                "--config",
                config.to_str().expect("utf-8 path"),
                "--tokenizer",
                "examples/tokenizer",
                "--out",
                out.to_str().expect("utf-8 path"),
            ],
        );
        out
    }
}
