//! `ferrotune serve` as a process: the flags reach the server (port 0, the served model
//! name, the sampling defaults), the address is printed on stdout, and a chat completion
//! over loopback is the library's chat turn. The protocol itself is tested in-process in
//! ferrotune-serve's tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferrotune_data::conversation::{Message, Role};
use ferrotune_serve::loading::{self, ModelSource};
use ferrotune_serve::{ChatModel, SamplingOptions};
use ferrotune_testing::cli;
use ferrotune_testing::TempDir;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn ferrotune() -> Command {
    cli::command(BIN)
}

fn tiny_model(dir: &Path) -> PathBuf {
    cli::tiny_model(BIN, dir, false)
}

fn start(model: &Path) -> cli::Served {
    let mut command = ferrotune();
    command
        .args(["serve", model.to_str().unwrap(), "--port", "0"])
        .args(["--served-model-name", "tiny", "--temperature", "0"]);
    let server = cli::served(command);
    let line = &server.line;
    assert!(
        line.starts_with("listening on http://127.0.0.1:"),
        "{line:?}"
    );
    assert!(line.trim_end().ends_with("(model tiny)"), "{line:?}");
    server
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

#[test]
fn serve_answers_with_the_chat_turn_on_the_port_it_prints() {
    let tmp = TempDir::new("serve");
    let model = tiny_model(tmp.path());
    let server = start(&model);

    let mut r = agent()
        .get(format!("{}/v1/models", server.url))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let models: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");

    // No temperature in the request: the server's --temperature 0 decides (greedy).
    let body = json!({"messages": [{"role": "system", "content": "You are Ferro."},
        {"role": "user", "content": "Who are you?"}], "max_tokens": 12});
    let mut r = agent()
        .post(format!("{}/v1/chat/completions", server.url))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{text}");
    let c: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(c["model"], "tiny");

    let source = ModelSource::locate(Some(model.to_str().unwrap()), None).unwrap();
    let (tok, template) = loading::tokenizer_and_template(&source, None).unwrap();
    let chat = ChatModel::load(&source, tok, template.unwrap(), Default::default()).unwrap();
    let sampling = SamplingOptions {
        max_new_tokens: 12,
        temperature: Some(0.0),
        top_p: None,
        top_k: None,
        repetition_penalty: None,
        seed: 0,
    };
    let config = sampling.config(&model, chat.stop_ids().to_vec()).unwrap();
    let messages = [
        Message::new(Role::System, "You are Ferro."),
        Message::new(Role::User, "Who are you?"),
    ];
    let expected = chat.reply(&messages, &config).unwrap().text;
    assert!(!expected.is_empty());
    assert_eq!(c["choices"][0]["message"]["content"], expected.as_str());
}
