//! The OpenAI-compatible server on loopback, started in-process on a free port, with a
//! real HTTP client: chat completions streaming and not (the chat turn's greedy answer),
//! the model list, concurrent requests, and malformed requests answered 400 without
//! harming the server.

mod common;

use std::time::Duration;

use ferrotune_data::conversation::{Message, Role};
use ferrotune_serve::{ServeOptions, Server};
use ferrotune_testing::TempDir;
use serde_json::{json, Value};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

fn get(url: &str) -> (u16, Value) {
    let mut r = agent().get(url).call().unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    (r.status().as_u16(), serde_json::from_str(&text).unwrap())
}

fn post(url: &str, body: &str) -> (u16, String) {
    let mut r = agent()
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn request(stream: bool) -> String {
    json!({"model": "tiny", "messages": [{"role": "system", "content": "You are Ferro."},
        {"role": "user", "content": "Who are you?"}], "max_tokens": 12, "temperature": 0, "stream": stream})
    .to_string()
}

#[test]
fn openai_chat_completions_over_loopback() {
    let tmp = TempDir::new("serve-server");
    let dir = common::tiny_model(tmp.path());
    let chat = common::chat_model(&dir);
    let options = ServeOptions {
        name: "tiny".into(),
        max_queue: 64,
        defaults: common::greedy(&dir, &chat, 512),
    };
    let server = Server::bind(chat, options, ("127.0.0.1", 0)).unwrap();
    assert_eq!(server.model_name(), "tiny");
    let url = format!("http://{}", server.addr());
    let stop = server.stop_handle();
    let running = std::thread::spawn(move || server.run());
    let chat_url = format!("{url}/v1/chat/completions");

    assert_eq!(get(&format!("{url}/health")).0, 200);
    let (status, models) = get(&format!("{url}/v1/models"));
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny");

    // Not streaming: a chat.completion with usage, the chat turn's answer.
    let (status, body) = post(&chat_url, &request(false));
    assert_eq!(status, 200, "{body}");
    let c: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["model"], "tiny");
    assert_eq!(c["choices"][0]["message"]["role"], "assistant");
    let answer = c["choices"][0]["message"]["content"]
        .as_str()
        .expect("content is a string")
        .to_string();
    assert!(!answer.is_empty());
    let u = &c["usage"];
    let (prompt, completion) = (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64());
    assert!(
        prompt.unwrap() > 10 && (1..=12).contains(&completion.unwrap()),
        "{u}"
    );
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(prompt.unwrap() + completion.unwrap())
    );
    assert!(["stop", "length"].contains(&c["choices"][0]["finish_reason"].as_str().unwrap()));
    let chat = common::chat_model(&dir);
    let messages = [
        Message::new(Role::System, "You are Ferro."),
        Message::new(Role::User, "Who are you?"),
    ];
    let reply = chat
        .reply(&messages, &common::greedy(&dir, &chat, 12))
        .unwrap();
    assert_eq!(reply.text, answer);
    assert_eq!(reply.prompt_tokens as u64, prompt.unwrap());

    // Streaming: chunks whose deltas add up to the same answer, then [DONE].
    let (status, body) = post(&chat_url, &request(true));
    assert_eq!(status, 200);
    let events: Vec<&str> = body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("an SSE data line"))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let mut streamed = String::new();
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        streamed.push_str(
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or(""),
        );
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
    assert!(chunks.len() >= 3, "{body}");
    assert_eq!(streamed, answer);

    // Two requests at once are queued and both answered.
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| post(&chat_url, &request(false))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        let c: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(c["choices"][0]["message"]["content"], answer.as_str());
    }

    // Malformed requests: 400 with an OpenAI error body; unknown paths 404.
    for (bad, param) in [
        ("{not json", Value::Null),
        (r#"{"model": "tiny"}"#, json!("messages")),
        (r#"{"messages": "hello"}"#, json!("messages")),
        (
            r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#,
            json!("messages[0].role"),
        ),
        (
            r#"{"messages": [{"role": "user", "content": 42}]}"#,
            json!("messages[0].content"),
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "warm"}"#,
            json!("temperature"),
        ),
    ] {
        let (status, body) = post(&chat_url, bad);
        assert_eq!(status, 400, "{bad}: {body}");
        let e: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{body}");
        assert!(e["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(e["error"]["param"], param, "{bad}");
    }
    let (status, e) = get(&format!("{url}/v1/nothing"));
    assert_eq!(status, 404);
    assert!(e["error"]["message"].is_string());

    // Still serving after all that.
    let (status, body) = post(&chat_url, &request(false));
    assert_eq!(status, 200, "{body}");

    stop.stop();
    running.join().unwrap();
}
