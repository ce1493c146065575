//! A Hub id that is not in the cache is downloaded into it, in huggingface_hub's layout,
//! from a Hub served on loopback by this test (never the real Hub).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;

use candle_core::{DType, Device};
use ferrotune_model::hub::{resolve_model_with, HubOptions};
use ferrotune_model::weights::load_model;
use ferrotune_testing::{shared, TempDir};

/// Serves `requests` HTTP requests: the revision API and file downloads of one repo.
fn fake_hub(files: PathBuf, requests: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            seen.push(path.clone());
            let (status, body) = if path == "/api/models/Org/Tiny/revision/main" {
                let body = serde_json::json!({"sha": "0123abcd", "siblings": [
                    {"rfilename": "config.json"}, {"rfilename": "model.safetensors"},
                    {"rfilename": "generation_config.json"}, {"rfilename": "README.md"}]});
                ("200 OK", body.to_string().into_bytes())
            } else if let Some(file) = path.strip_prefix("/Org/Tiny/resolve/0123abcd/") {
                match std::fs::read(files.join(file)) {
                    Ok(bytes) => ("200 OK", bytes),
                    Err(_) => ("404 Not Found", b"no".to_vec()),
                }
            } else {
                ("404 Not Found", b"no".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        }
        seen
    });
    (endpoint, handle)
}

#[test]
fn downloads_into_the_cache_then_reuses_it() {
    let cache = TempDir::new("hub-cache");
    let (endpoint, server) = fake_hub(shared("fixtures/models/llama_gqa_untied"), 4);
    let options = HubOptions {
        caches: vec![cache.path().to_path_buf()],
        endpoint,
        offline: false,
        token: None,
    };
    let dir = resolve_model_with("Org/Tiny", &options).unwrap();
    assert_eq!(
        dir,
        cache.path().join("models--Org--Tiny/snapshots/0123abcd")
    );
    let seen = server.join().unwrap();
    assert_eq!(
        seen.len(),
        4,
        "revision info + 3 wanted files, not README.md: {seen:?}"
    );
    assert_eq!(
        std::fs::read_to_string(cache.path().join("models--Org--Tiny/refs/main")).unwrap(),
        "0123abcd"
    );
    let model = load_model(&dir, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config.num_hidden_layers, 2);
    // Second time: found in the cache, no server needed.
    let offline = HubOptions {
        offline: true,
        ..options
    };
    assert_eq!(resolve_model_with("Org/Tiny", &offline).unwrap(), dir);
}

#[test]
fn an_unreachable_hub_is_a_clear_error() {
    let cache = TempDir::new("hub-unreachable");
    // Nothing listens on this port of this machine's loopback.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let options = HubOptions {
        caches: vec![cache.path().to_path_buf()],
        endpoint,
        offline: false,
        token: None,
    };
    let e = resolve_model_with("Org/Missing", &options)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("downloading from http://127.0.0.1:") && e.contains("model_name_or_path"),
        "{e}"
    );
}
