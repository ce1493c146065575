//! `ferrotune ui` in a real browser: headless Chromium driven through WebDriver
//! (chromedriver; Debian's `chromium` and `chromium-driver`, which .ci/run installs) on the
//! tiny offline model. The page loads the model, previews identity.json with its
//! placeholders, shows the YAML it will run, starts a short LoRA run, draws the chart as
//! steps arrive, is reloaded mid-run and picks the run up again, chats with base and tuned
//! side by side, evaluates them and exports the result. A screenshot of each stage goes to
//! `target/ui-screenshots/` (the README's pictures). Then `ferrotune train` runs the YAML
//! the page showed, and its outputs must equal the page's run's.
//!
//! Without chromedriver the test says so and passes, so that `cargo test` works on a
//! machine with only the Rust toolchain; `.ci/run` installs Chromium and chromedriver and
//! sets FERROTUNE_REQUIRE_BROWSER, which turns a missing browser into a failure: CI never
//! skips it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use ferrotune_testing::cli::{self, tiny_model};
use ferrotune_testing::{shared, workspace_root, TempDir};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

/// Kills a child process when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `ferrotune ui` on a free loopback port, serving `dir`.
fn start_ui(dir: &Path) -> cli::Served {
    let mut command = cli::command(BIN);
    command.args(["ui", "--port", "0", "--dir"]).arg(dir);
    cli::served(command)
}

/// Whether chromedriver can run here (else the test is skipped, or fails under
/// FERROTUNE_REQUIRE_BROWSER).
fn have_chromedriver() -> bool {
    let found = Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("FERROTUNE_REQUIRE_BROWSER").is_none(),
            "FERROTUNE_REQUIRE_BROWSER is set but chromedriver is missing: apt-get install chromium chromium-driver"
        );
        eprintln!(
            "skipped: chromedriver is not installed (apt-get install chromium chromium-driver)"
        );
    }
    found
}

fn start_chromedriver() -> (Killed, u16) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start chromedriver ({e}): this test needs Chromium and its driver \
                 (Debian: apt-get install chromium chromium-driver; .ci/run installs them)"
            )
        });
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (Killed(child), port)
}

async fn browser(driver_port: u16) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1100", "--lang=en-US"
        ]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a Chromium session through chromedriver")
}

/// The page, driven a step at a time.
struct Page {
    client: Client,
    shots: PathBuf,
}

impl Page {
    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Waits until the JavaScript expression is true; fails with `what` and the page's
    /// error box after `secs` seconds.
    async fn until(&self, expression: &str, secs: u64, what: &str) {
        let start = Instant::now();
        loop {
            if self.js(&format!("return !!({expression});")).await == json!(true) {
                return;
            }
            if start.elapsed() > Duration::from_secs(secs) {
                let error = self
                    .js("return document.getElementById('error').textContent;")
                    .await;
                panic!("waited {secs} s for {what}; the page's error box: {error}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn click(&self, id: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click #{id}: {e}"));
    }

    /// Types into an input as a user would (clearing it first).
    async fn type_into(&self, id: &str, text: &str) {
        let input = self.client.find(Locator::Id(id)).await.expect(id);
        input.clear().await.expect("clear");
        input.send_keys(text).await.expect("type");
        self.js(&format!(
            "document.getElementById('{id}').dispatchEvent(new Event('change')); return 0;"
        ))
        .await;
    }

    async fn select(&self, id: &str, value: &str) {
        self.js(&format!(
            "const s = document.getElementById('{id}'); s.value = {value:?}; \
             s.dispatchEvent(new Event('change')); return 0;"
        ))
        .await;
    }

    async fn no_error(&self) {
        let error = self
            .js("const e = document.getElementById('error'); return e.hidden ? '' : e.textContent;")
            .await;
        assert_eq!(error, json!(""), "the page shows an error");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("save screenshot");
    }

    async fn chart_points(&self) -> u64 {
        self.js("return Number(document.getElementById('chart').dataset.points || 0);")
            .await
            .as_u64()
            .unwrap_or(0)
    }
}

fn runs(url: &str) -> Value {
    let text = ureq::get(&format!("{url}api/runs"))
        .call()
        .expect("GET /api/runs")
        .body_mut()
        .read_to_string()
        .expect("body");
    serde_json::from_str(&text).expect("runs JSON")
}

/// The parts of two runs' outputs that must be equal: the resolved config (but where it
/// was written), each step's loss, learning rate and gradient norm, and the adapter.
fn outputs(dir: &Path) -> (Value, Vec<Value>, Vec<u8>) {
    let mut config = ferrotune_testing::read_json(&dir.join("train_config.json"));
    config
        .as_object_mut()
        .expect("a config object")
        .remove("output_dir");
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| {
            let m: Value = serde_json::from_str(l).expect("a metrics line");
            json!({"step": m["step"], "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"], "eval_loss": m["eval_loss"]})
        })
        .collect();
    let adapter = std::fs::read(dir.join("adapter_model.safetensors")).expect("the adapter");
    (config, metrics, adapter)
}

#[tokio::test(flavor = "current_thread")]
async fn the_whole_loop_in_a_browser() {
    if !have_chromedriver() {
        return;
    }
    let tmp = TempDir::new("ui-browser");
    let root = tmp.path();
    let model = tiny_model(BIN, root, false);
    assert_eq!(model, root.join("model"));
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::copy(
        shared("data/identity.json"),
        root.join("data/identity.json"),
    )
    .expect("../shared/data/identity.json");
    let shots = workspace_root().join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let ui = start_ui(root);
    let url = ui.url.clone();
    let (_driver, driver_port) = start_chromedriver();
    let page = Page {
        client: browser(driver_port).await,
        shots,
    };
    page.client.goto(&url).await.expect("open the page");

    // Model: its info and memory plan.
    page.type_into("model-path", "model").await;
    page.click("model-info-btn").await;
    page.until(
        "document.getElementById('model-info').textContent.includes('LlamaForCausalLM')",
        60,
        "the model's info",
    )
    .await;
    page.no_error().await;
    page.screenshot("1-model").await;

    // Data: identity.json with its placeholders, the supervised part marked.
    page.click("tab-data").await;
    // The dataset picked through the server's listing of the served folder.
    page.js("document.querySelector('button.browse[data-for=f-dataset]').click(); return 0;")
        .await;
    page.until(
        "[...document.querySelectorAll('#browser-list button.link')].some(b => b.textContent === 'data/')",
        30,
        "the file browser",
    )
    .await;
    page.js("[...document.querySelectorAll('#browser-list button.link')].find(b => b.textContent === 'data/').click(); return 0;")
        .await;
    page.until(
        "[...document.querySelectorAll('#browser-list button.link')].some(b => b.textContent === 'identity.json')",
        30,
        "the data folder's listing",
    )
    .await;
    page.js("[...document.querySelectorAll('#browser-list button.link')].find(b => b.textContent === 'identity.json').click(); return 0;")
        .await;
    assert_eq!(
        page.js("return document.getElementById('f-dataset').value;")
            .await,
        json!("data/identity.json")
    );
    page.type_into("f-cutoff_len", "128").await;
    page.type_into("f-placeholders", "name=Ferro, author=the ferrotune project")
        .await;
    page.click("data-preview-btn").await;
    page.until(
        "document.querySelectorAll('#data-out mark.sup').length >= 3",
        60,
        "the preview's supervised marks",
    )
    .await;
    page.no_error().await;
    let preview = page
        .js("return document.getElementById('data-out').textContent;")
        .await;
    let preview = preview.as_str().unwrap();
    assert!(
        preview.contains("Ferro") && !preview.contains("{{name}}"),
        "{preview}"
    );
    let marked = page
        .js("return [...document.querySelectorAll('#data-out mark.sup')].map(m => m.textContent).join('|');")
        .await;
    assert!(
        marked.as_str().unwrap().contains("Ferro"),
        "the answers are supervised: {marked}"
    );
    page.screenshot("2-data").await;

    // The quality report: a finding opened shows its records as they are in the file.
    page.click("data-check-btn").await;
    page.until(
        "document.querySelector('#data-out details.finding')",
        60,
        "the quality report's findings",
    )
    .await;
    page.js("document.querySelector('#data-out details.finding summary').click(); return 0;")
        .await;
    page.until(
        "document.querySelector('#data-out .record pre') && document.querySelector('#data-out .record').textContent.includes('identity.json')",
        60,
        "a finding's records",
    )
    .await;
    page.no_error().await;
    page.screenshot("3-check").await;

    // Train: the form, the YAML it makes, a run long enough to reload the page in.
    page.click("tab-train").await;
    page.select("f-finetuning_type", "lora").await;
    page.type_into("f-learning_rate", "0.001").await;
    page.type_into("f-max_steps", "400").await;
    page.type_into("f-logging_steps", "10").await;
    page.type_into("f-save_steps", "100").await;
    page.type_into("f-output_dir", "runs/ui-run").await;
    page.click("yaml-tab").await;
    let yaml = page
        .js("return document.getElementById('yaml').value;")
        .await
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        yaml.contains("max_steps: 400") && yaml.contains("placeholders:"),
        "{yaml}"
    );
    page.screenshot("4-yaml").await;
    page.click("train-start").await;
    page.until(
        "Number(document.getElementById('chart').dataset.points || 0) >= 3",
        120,
        "the chart's first points",
    )
    .await;
    page.no_error().await;
    page.js("document.getElementById('runs').scrollIntoView(); return 0;")
        .await;
    page.screenshot("5-train").await;

    // Reload mid-run: the page finds the run again and the chart keeps growing.
    let before = page.chart_points().await;
    let listed = runs(&url);
    assert_eq!(listed[0]["status"], "running", "{listed}");
    page.client.refresh().await.expect("reload");
    page.until(
        &format!("Number(document.getElementById('chart').dataset.points || 0) > {before}"),
        120,
        "the chart after the reload",
    )
    .await;
    page.js("document.getElementById('runs').scrollIntoView(); return 0;")
        .await;
    page.screenshot("6-reloaded").await;
    page.until(
        "document.getElementById('run-view').dataset.status === 'finished'",
        300,
        "the run to finish",
    )
    .await;
    assert_eq!(
        page.chart_points().await,
        40,
        "one point every 10 of 400 steps"
    );
    page.no_error().await;

    // Chat: base and tuned side by side.
    page.click("tab-chat").await;
    page.type_into("chat-adapter", "runs/ui-run").await;
    page.type_into("chat-max", "8").await;
    page.type_into("chat-input", "Who are you?").await;
    page.click("chat-send").await;
    page.until(
        "document.querySelector('#chat-base .answer[data-done]') && document.querySelector('#chat-tuned .answer[data-done]')",
        120,
        "both answers",
    )
    .await;
    page.no_error().await;
    page.screenshot("7-chat").await;

    // Evaluate: before / after on four samples.
    page.click("tab-evaluate").await;
    page.type_into("eval-adapter", "runs/ui-run").await;
    page.type_into("eval-dataset", "data/identity.json").await;
    page.type_into("eval-samples", "4").await;
    page.click("eval-start").await;
    page.until(
        "document.querySelector('#eval-table td') && document.getElementById('eval-table').textContent.includes('ROUGE')",
        300,
        "the comparison table",
    )
    .await;
    page.screenshot("8-evaluate").await;

    // Export: an HF folder and a GGUF file, checked by the command itself.
    page.click("tab-export").await;
    page.type_into("export-adapter", "runs/ui-run").await;
    page.type_into("export-out", "exports/merged").await;
    page.type_into("export-gguf", "exports/model.gguf").await;
    page.click("export-start").await;
    page.until(
        "document.getElementById('export-status').dataset.status === 'finished'",
        300,
        "the export",
    )
    .await;
    page.no_error().await;
    page.screenshot("9-export").await;
    assert!(root.join("exports/merged/config.json").is_file());
    assert!(root.join("exports/model.gguf").is_file());
    page.client
        .clone()
        .close()
        .await
        .expect("close the browser");

    // The YAML the page showed, run by `ferrotune train`: the same outputs.
    let config = tmp.write("shown.yaml", &yaml);
    let o = cli::command(BIN)
        .current_dir(root)
        .arg("train")
        .arg(&config)
        .arg("output_dir=runs/cli-run")
        .output()
        .expect("run ferrotune train");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (page_config, page_metrics, page_adapter) = outputs(&root.join("runs/ui-run"));
    let (cli_config, cli_metrics, cli_adapter) = outputs(&root.join("runs/cli-run"));
    assert_eq!(page_config, cli_config);
    assert_eq!(page_metrics, cli_metrics);
    assert!(page_adapter == cli_adapter, "the adapters differ");
}
