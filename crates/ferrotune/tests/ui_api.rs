//! `ferrotune ui`'s server without a browser: who may talk to it (Host, Origin, the token
//! beyond loopback), errors from bad input as the CLI words them, and a run stopped and
//! resumed from the page's API. Requests are written by hand over TCP, so that the Host
//! header is exactly what a rebinding attacker's page would send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use ferrotune_testing::cli::{self, tiny_model};
use ferrotune_testing::{shared, TempDir};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

struct Ui {
    /// Killed when the test ends.
    _server: cli::Served,
    port: u16,
    /// The token printed at start (bound beyond loopback).
    token: Option<String>,
}

fn start(dir: &Path, host: &str) -> Ui {
    let mut command = cli::command(BIN);
    command
        .args(["ui", "--port", "0", "--host", host, "--dir"])
        .arg(dir);
    let server = cli::served(command);
    let url = server.url.clone();
    let port = url
        .trim_start_matches("http://")
        .split(['/', '?'])
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"));
    let token = url.split("?token=").nth(1).map(str::to_string);
    Ui {
        _server: server,
        port,
        token,
    }
}

/// One request; returns the status, the raw head and the body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    s.write_all(format!("{head}\r\n{body}").as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn host(ui: &Ui) -> String {
    format!("127.0.0.1:{}", ui.port)
}

fn post(ui: &Ui, path: &str, body: Value) -> (u16, Value) {
    let h = host(ui);
    let (status, _, text) = request(
        ui.port,
        "POST",
        path,
        &[("Host", &h), ("Content-Type", "application/json")],
        &body.to_string(),
    );
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}")),
    )
}

fn get(ui: &Ui, path: &str) -> (u16, Value) {
    let h = host(ui);
    let (status, _, text) = request(ui.port, "GET", path, &[("Host", &h)], "");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}")),
    )
}

#[test]
fn foreign_hosts_and_origins_are_refused() {
    let tmp = TempDir::new("ui-guard");
    let ui = start(tmp.path(), "127.0.0.1");
    assert!(ui.token.is_none(), "no token on loopback");
    let own = host(&ui);
    let (ok, _, _) = request(ui.port, "GET", "/api/runs", &[("Host", &own)], "");
    assert_eq!(ok, 200);
    let (ok, _, page) = request(
        ui.port,
        "GET",
        "/",
        &[("Host", &format!("localhost:{}", ui.port))],
        "",
    );
    assert_eq!(ok, 200);
    assert!(page.contains("<title>ferrotune</title>"));
    // DNS rebinding: the attacker's name resolves to 127.0.0.1, the Host header keeps it.
    let rebound = format!("attacker.example:{}", ui.port);
    let (status, _, body) = request(ui.port, "GET", "/api/runs", &[("Host", &rebound)], "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("attacker.example"), "{body}");
    // Another site's page posting to the server.
    let (status, _, body) = request(
        ui.port,
        "POST",
        "/api/train/start",
        &[("Host", &own), ("Origin", "http://attacker.example")],
        "{}",
    );
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = request(ui.port, "GET", "/api/runs", &[], "");
    assert_eq!(status, 403, "no Host header");
    // Nothing outside the served folder.
    let (status, v) = get(&ui, "/api/files?path=..%2F..");
    assert_eq!(status, 400, "{v}");
}

#[test]
fn beyond_loopback_every_request_needs_the_token() {
    let tmp = TempDir::new("ui-token");
    let ui = start(tmp.path(), "0.0.0.0");
    let token = ui.token.clone().expect("a token printed at start");
    assert_eq!(token.len(), 32);
    let h = host(&ui);
    let (status, _, body) = request(ui.port, "GET", "/api/runs", &[("Host", &h)], "");
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = request(ui.port, "GET", "/", &[("Host", &h)], "");
    assert_eq!(status, 401);
    let (status, _, _) = request(
        ui.port,
        "GET",
        "/api/runs",
        &[("Host", &h), ("Authorization", "Bearer wrong")],
        "",
    );
    assert_eq!(status, 401);
    let bearer = format!("Bearer {token}");
    let (status, _, _) = request(
        ui.port,
        "GET",
        "/api/runs",
        &[("Host", &h), ("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 200);
    // Opening the page with the token sets the cookie the page's requests then carry.
    let (status, head, _) = request(
        ui.port,
        "GET",
        &format!("/?token={token}"),
        &[("Host", &h)],
        "",
    );
    assert_eq!(status, 200);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .expect("a cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(
        head.contains("HttpOnly") && head.contains("SameSite=Strict"),
        "{head}"
    );
    let (status, _, _) = request(
        ui.port,
        "GET",
        "/api/runs",
        &[("Host", &h), ("Cookie", &cookie)],
        "",
    );
    assert_eq!(status, 200);
    let (status, _, _) = request(
        ui.port,
        "GET",
        "/api/runs",
        &[
            ("Host", &h),
            ("Cookie", &cookie),
            ("Origin", "http://attacker.example"),
        ],
        "",
    );
    assert_eq!(status, 403);
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "waited {secs} s for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_input_comes_back_as_the_cli_says_it_and_a_stopped_run_resumes() {
    let tmp = TempDir::new("ui-runs");
    let root = tmp.path();
    tiny_model(BIN, root, false);
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::copy(
        shared("data/identity.json"),
        root.join("data/identity.json"),
    )
    .unwrap();
    tmp.write(
        "data/broken.json",
        r#"[{"instruction": "hi", "output": "hello"}, {"instruction": "no answer"}]"#,
    );
    let ui = start(root, "127.0.0.1");

    // A typo in a key: the message names it and the valid keys near it.
    let (status, v) = post(
        &ui,
        "/api/config/check",
        json!({"yaml": "model_name_or_path: model\nlerning_rate: 1e-3\noutput_dir: runs/x\n"}),
    );
    assert_eq!(status, 400);
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("lerning_rate") && error.contains("learning_rate"),
        "{error}"
    );
    // A bad choice: the valid ones.
    let (status, v) = post(
        &ui,
        "/api/config/check",
        json!({"yaml": "model_name_or_path: model\nfinetuning_type: lorra\noutput_dir: runs/x\n"}),
    );
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("lora"), "{v}");
    // A record without its answer: the file and the record.
    let (status, v) = post(
        &ui,
        "/api/data/preview",
        json!({"yaml": "model_name_or_path: model\ndataset: data/broken.json\noutput_dir: runs/x\n"}),
    );
    assert_eq!(status, 400);
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("broken.json") && error.contains("output"),
        "{error}"
    );

    // A run stopped after its first checkpoint resumes from it and finishes.
    let yaml = "model_name_or_path: model\ndataset: data/identity.json\ncutoff_len: 128\n\
                placeholders: {name: Ferro, author: the team}\nfinetuning_type: lora\n\
                learning_rate: 1.0e-3\nmax_steps: 2000\nlogging_steps: 10\nsave_steps: 50\n\
                output_dir: runs/stopped\noverwrite_output_dir: true\n";
    let (status, v) = post(&ui, "/api/train/start", json!({"yaml": yaml}));
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (status, v) = post(&ui, "/api/train/start", json!({"yaml": yaml}));
    assert_eq!(status, 409, "one run at a time: {v}");
    wait_for("the first checkpoint", 120, || {
        root.join("runs/stopped/checkpoint-50").is_dir()
    });
    let (status, _) = post(&ui, "/api/train/stop", json!({"id": id}));
    assert_eq!(status, 200);
    let status_of = |ui: &Ui| {
        get(ui, "/api/runs").1[0]["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    wait_for("the run to stop", 60, || status_of(&ui) == "stopped");
    let (_, listed) = get(&ui, "/api/runs");
    let stopped_at = listed[0]["step"].as_u64().unwrap();
    assert!(stopped_at < 2000, "stopped before the end: {listed}");

    // A new server (as after a restart) lists the run from disk, and resumes it.
    drop(ui);
    let ui = start(root, "127.0.0.1");
    assert_eq!(status_of(&ui), "stopped");
    let (status, v) = post(&ui, "/api/train/resume", json!({"id": id}));
    assert_eq!(status, 200, "{v}");
    wait_for("the resumed run to finish", 300, || {
        status_of(&ui) == "finished"
    });
    let (_, listed) = get(&ui, "/api/runs");
    assert_eq!(listed[0]["step"], 2000, "{listed}");
    let log =
        std::fs::read_to_string(root.join(format!(".ferrotune-ui/jobs/{id}/log.txt"))).unwrap();
    assert!(log.contains("resum"), "the log says it resumed: {log}");
}
