//! The OpenAI chat-completions wire format: requests checked field by field (every
//! mistake becomes a 400 that names the field, never a crash), and the
//! `chat.completion` / `chat.completion.chunk` objects clients parse.

use ferrotune_data::conversation::{Message, Role, ToolCall};
use ferrotune_model::generate::GenerationConfig;
use serde_json::{json, Map, Value};

use crate::loading::check_sampling;
use crate::stream::{Completion, Finish};

/// An error answered to the client: status and an OpenAI-style error body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(String::from),
            code: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: 404,
            code: Some("not_found"),
            ..ApiError::invalid(message, None)
        }
    }

    pub fn server(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// A checked chat-completion request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub tools: Vec<Value>,
    pub config: GenerationConfig,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(param: &str, want: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        format!("'{param}' must be {want}, got {}", kind(got)),
        Some(param),
    )
}

/// Parses and checks a request body; `defaults` are the server's sampling settings.
pub fn parse_request(body: &[u8], defaults: &GenerationConfig) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    let Value::Object(req) = value else {
        return Err(ApiError::invalid(
            format!(
                "the request body must be a JSON object, got {}",
                kind(&value)
            ),
            None,
        ));
    };
    let messages = match req.get("messages") {
        None => {
            return Err(ApiError::invalid(
                "'messages' is required",
                Some("messages"),
            ))
        }
        Some(Value::Array(list)) if list.is_empty() => {
            return Err(ApiError::invalid(
                "'messages' must hold at least one message",
                Some("messages"),
            ))
        }
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, m)| parse_message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(wrong("messages", "an array of messages", other)),
    };
    let tools = match req.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.clone(),
        Some(other) => return Err(wrong("tools", "an array", other)),
    };
    let number = |name: &str| -> Result<Option<f64>, ApiError> {
        match req.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => Err(wrong(name, "a number", other)),
        }
    };
    let count = |name: &str| -> Result<Option<u64>, ApiError> {
        match req.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(other) => Err(wrong(name, "a non-negative integer", other)),
        }
    };
    let flag = |name: &str| -> Result<bool, ApiError> {
        match req.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(wrong(name, "a boolean", other)),
        }
    };
    if let Some(n) = count("n")? {
        if n != 1 {
            return Err(ApiError::invalid("only n = 1 is supported", Some("n")));
        }
    }
    for name in ["presence_penalty", "frequency_penalty"] {
        if number(name)?.is_some_and(|p| p != 0.0) {
            return Err(ApiError::invalid(
                format!("'{name}' is not supported (use repetition_penalty)"),
                Some(name),
            ));
        }
    }
    if let Some(model) = req.get("model").filter(|m| !m.is_null() && !m.is_string()) {
        return Err(wrong("model", "a string", model));
    }
    let mut config = defaults.clone();
    let max = match count("max_completion_tokens")? {
        Some(n) => Some(n),
        None => count("max_tokens")?,
    };
    if let Some(n) = max {
        config.max_new_tokens = n as usize;
    }
    if let Some(t) = number("temperature")? {
        config.temperature = t;
    }
    if let Some(p) = number("top_p")? {
        config.top_p = Some(p);
    }
    if let Some(k) = count("top_k")? {
        config.top_k = Some(k as usize).filter(|&k| k > 0);
    }
    if let Some(p) = number("repetition_penalty")? {
        config.repetition_penalty = p;
    }
    if let Some(seed) = req.get("seed").filter(|s| !s.is_null()) {
        config.seed = match seed.as_i64() {
            Some(s) => s as u64,
            None => return Err(wrong("seed", "an integer", seed)),
        };
    }
    check_sampling(&config).map_err(|e| {
        let param = e.split_whitespace().next().unwrap_or_default().to_string();
        ApiError::invalid(e, Some(&param))
    })?;
    let stop = match req.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|s| match s {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong("stop", "a string or an array of strings", other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong("stop", "a string or an array of strings", other)),
    };
    let include_usage = match req.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(wrong("stream_options.include_usage", "a boolean", other)),
        },
        Some(other) => return Err(wrong("stream_options", "an object", other)),
    };
    Ok(ChatRequest {
        messages,
        tools,
        config,
        stop,
        stream: flag("stream")?,
        include_usage,
    })
}

fn parse_message(i: usize, m: &Value) -> Result<Message, ApiError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let Value::Object(m) = m else {
        return Err(wrong(&format!("messages[{i}]"), "an object", m));
    };
    let role = match m.get("role") {
        Some(Value::String(r)) => match r.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(ApiError::invalid(
                    format!(
                        "{}: unknown role {other:?} (system, developer, user, assistant or tool)",
                        at("role")
                    ),
                    Some(&at("role")),
                ))
            }
        },
        Some(other) => return Err(wrong(&at("role"), "a string", other)),
        None => {
            return Err(ApiError::invalid(
                format!("{} is required", at("role")),
                Some(&at("role")),
            ))
        }
    };
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) if role == Role::Assistant => String::new(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (k, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text") {
                        Some(Value::String(s)) => text.push_str(s),
                        _ => {
                            return Err(ApiError::invalid(
                                format!("{}[{k}] has no string 'text'", at("content")),
                                Some(&at("content")),
                            ))
                        }
                    },
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{}[{k}]: only text parts are supported", at("content")),
                            Some(&at("content")),
                        ))
                    }
                }
            }
            text
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                format!("{} is required", at("content")),
                Some(&at("content")),
            ))
        }
        Some(other) => {
            return Err(wrong(
                &at("content"),
                "a string or an array of parts",
                other,
            ))
        }
    };
    let mut message = Message::new(role, content);
    if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
        let Value::Array(calls) = calls else {
            return Err(wrong(&at("tool_calls"), "an array", calls));
        };
        for (k, call) in calls.iter().enumerate() {
            let f = &call["function"];
            let Some(name) = f["name"].as_str() else {
                return Err(ApiError::invalid(
                    format!("{}[{k}].function.name must be a string", at("tool_calls")),
                    Some(&at("tool_calls")),
                ));
            };
            let arguments = match &f["arguments"] {
                Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
                other => other.clone(),
            };
            message.tool_calls.push(ToolCall {
                name: name.to_string(),
                arguments,
                id: call["id"].as_str().map(String::from),
            });
        }
    }
    if let Some(name) = m.get("name").and_then(Value::as_str) {
        message.extra.insert("name".into(), json!(name));
    }
    Ok(message)
}

/// The non-streaming answer.
pub fn completion_body(id: &str, created: u64, model: &str, done: &Completion) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": done.text},
            "logprobs": null,
            "finish_reason": done.finish.as_str(),
        }],
        "usage": usage(done),
    })
}

pub fn usage(done: &Completion) -> Value {
    json!({
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    })
}

/// One `chat.completion.chunk`: `delta` (role and / or content), a finish reason on the
/// last, usage on the optional usage-only chunk (which has no choices).
pub fn chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Map<String, Value>,
    finish: Option<Finish>,
    usage: Option<Value>,
) -> Value {
    let choices = if usage.is_some() {
        json!([])
    } else {
        json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish.map(Finish::as_str)}])
    };
    let mut c = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    });
    if let Some(u) = usage {
        c["usage"] = u;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, ApiError> {
        parse_request(body.as_bytes(), &GenerationConfig::default())
    }

    #[test]
    fn a_full_request_is_read() {
        let r = parse(
            r#"{"model": "m", "messages": [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                "max_completion_tokens": 7, "max_tokens": 99, "temperature": 0.5, "top_p": 0.9,
                "seed": 3, "stop": "END", "stream": true, "stream_options": {"include_usage": true}}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(r.messages[1].content, "Hi");
        let c = &r.config;
        assert_eq!(
            (c.max_new_tokens, c.temperature, c.top_p, c.seed),
            (7, 0.5, Some(0.9), 3)
        );
        assert_eq!(r.stop, vec!["END"]);
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn mistakes_name_the_field() {
        let cases = [
            ("{oops", None, "not valid JSON"),
            ("[1]", None, "must be a JSON object"),
            ("{}", Some("messages"), "'messages' is required"),
            (
                r#"{"messages": "hi"}"#,
                Some("messages"),
                "must be an array",
            ),
            (r#"{"messages": []}"#, Some("messages"), "at least one"),
            (
                r#"{"messages": [{"role": "wizard", "content": "x"}]}"#,
                Some("messages[0].role"),
                "unknown role",
            ),
            (
                r#"{"messages": [{"role": "user", "content": 5}]}"#,
                Some("messages[0].content"),
                "got a number",
            ),
            (
                r#"{"messages": [{"role": "user"}]}"#,
                Some("messages[0].content"),
                "is required",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
                Some("temperature"),
                "must be a number",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "temperature": -1}"#,
                Some("temperature"),
                ">= 0",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}"#,
                Some("max_tokens"),
                "non-negative integer",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "n": 2}"#,
                Some("n"),
                "n = 1",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "stop": [1]}"#,
                Some("stop"),
                "strings",
            ),
        ];
        for (body, param, text) in cases {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
            assert!(e.message.contains(text), "{body}: {}", e.message);
            assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        }
    }
}
