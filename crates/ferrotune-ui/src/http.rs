//! The small HTTP layer over tiny_http: JSON replies, errors as the page shows them,
//! query parameters, request bodies.

use std::io::Read;

use serde_json::{json, Value};
use tiny_http::{Header, Request, Response, StatusCode};

/// Largest request body read (a config, a conversation).
const MAX_BODY: u64 = 4 << 20;

/// A finished answer to a request.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn json(value: &Value) -> Self {
        Reply {
            status: 200,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// An error the page shows as it is: `{"error": message}` (the CLI's wording).
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Reply {
            status,
            ..Reply::json(&json!({ "error": message.into() }))
        }
    }

    pub fn asset(content_type: &'static str, body: &'static [u8]) -> Self {
        Reply {
            status: 200,
            content_type,
            body: body.to_vec(),
            headers: vec![("Cache-Control".into(), "no-cache".into())],
        }
    }

    pub fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_string(), value));
        self
    }

    pub fn send(self, request: Request) {
        let mut response = Response::from_data(self.body)
            .with_status_code(StatusCode(self.status))
            .with_header(header("Content-Type", self.content_type))
            // The page and its answers are never framed or sniffed into another type.
            .with_header(header("X-Content-Type-Options", "nosniff"))
            .with_header(header("X-Frame-Options", "DENY"));
        for (name, value) in &self.headers {
            response = response.with_header(header(name, value));
        }
        let _ = request.respond(response);
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("an ASCII header")
}

/// The value of header `name` (case-insensitive), if any.
pub fn header_value<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Splits a request URL into its path and decoded query parameters.
pub fn split_url(url: &str) -> (&str, Vec<(String, String)>) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let params = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    (path, params)
}

pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request's body as JSON (an empty body is `{}`).
pub fn json_body(request: &mut Request) -> Result<Value, Reply> {
    let mut text = String::new();
    request
        .as_reader()
        .take(MAX_BODY)
        .read_to_string(&mut text)
        .map_err(|e| Reply::error(400, format!("cannot read the request body: {e}")))?;
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(&text).map_err(|e| Reply::error(400, format!("invalid JSON: {e}")))
}

/// A string field of a JSON body, or a 400 naming it.
pub fn field<'a>(body: &'a Value, name: &str) -> Result<&'a str, Reply> {
    body[name]
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| Reply::error(400, format!("missing \"{name}\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded() {
        let (path, params) = split_url("/api/x?path=a%20b%2Fc&token=t+1&flag");
        assert_eq!(path, "/api/x");
        assert_eq!(param(&params, "path"), Some("a b/c"));
        assert_eq!(param(&params, "token"), Some("t 1"));
        assert_eq!(param(&params, "flag"), Some(""));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%e4%b8%ad"), "中");
    }
}
