//! Stage 2, format: a raw JSON record becomes a [`Sample`] (a conversation or a document).
//!
//! Formats, as in LLaMA-Factory: `alpaca` (instruction / input / output, optional system
//! and history), `sharegpt` (a list of `{from, value}` messages with role tags), `openai`
//! (`messages` with role / content / tool_calls / loss_weight) and plain `text` for
//! pretraining. Column and tag names come from [`Columns`] and [`Tags`], which
//! `dataset_info.json` may override. Preference records (pairs, KTO's labelled answers)
//! are read in `format/preference.rs`.

use std::str::FromStr;

use serde_json::{Map, Value};

use crate::conversation::{wrap_tool, Conversation, Feedback, Message, Role, Sample, ToolCall};
use crate::error::{DataError, RecordRef, Result};
use crate::source::RawRecord;

mod preference;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formatting {
    Alpaca,
    Sharegpt,
    Openai,
    Text,
}

pub const FORMAT_NAMES: &[&str] = &["alpaca", "sharegpt", "openai", "text"];

impl FromStr for Formatting {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "alpaca" => Ok(Formatting::Alpaca),
            "sharegpt" => Ok(Formatting::Sharegpt),
            "openai" => Ok(Formatting::Openai),
            "text" | "pt" => Ok(Formatting::Text),
            other => Err(DataError::config(format!(
                "unknown dataset format {other:?}; known formats: {}{}",
                FORMAT_NAMES.join(", "),
                crate::error::suggest(other, FORMAT_NAMES.iter().copied())
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default()
            ))),
        }
    }
}

impl Formatting {
    pub fn name(self) -> &'static str {
        match self {
            Formatting::Alpaca => "alpaca",
            Formatting::Sharegpt => "sharegpt",
            Formatting::Openai => "openai",
            Formatting::Text => "text",
        }
    }
}

/// Training stage: supervised fine-tuning on conversations, (continued) pretraining on
/// plain text, or preference tuning on pairs of answers (DPO and its variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    #[default]
    Sft,
    Pt,
    Dpo,
    Kto,
}

impl Stage {
    /// The config's spellings.
    pub const CHOICES: &'static [(&'static str, Stage)] = &[
        ("sft", Stage::Sft),
        ("pt", Stage::Pt),
        ("dpo", Stage::Dpo),
        ("kto", Stage::Kto),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Sft => "sft",
            Stage::Pt => "pt",
            Stage::Dpo => "dpo",
            Stage::Kto => "kto",
        }
    }
}

impl FromStr for Stage {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match Stage::CHOICES.iter().find(|(name, _)| *name == s) {
            Some((_, stage)) => Ok(*stage),
            None => Err(DataError::config(format!(
                "unknown stage {s:?}; ferrotune supports sft, pt, dpo and kto"
            ))),
        }
    }
}

/// Column names (LLaMA-Factory's `columns`). `None` means the column is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub prompt: Option<String>,
    pub query: Option<String>,
    pub response: Option<String>,
    pub history: Option<String>,
    pub messages: Option<String>,
    pub system: Option<String>,
    pub tools: Option<String>,
    /// A preference pair's preferred and dispreferred answers.
    pub chosen: Option<String>,
    pub rejected: Option<String>,
    /// KTO's label: whether the record's answer is desirable.
    pub kto_tag: Option<String>,
    /// True when a `dataset_info.json` entry set the columns explicitly.
    pub explicit: bool,
}

impl Columns {
    /// LLaMA-Factory's defaults for a `dataset_info.json` entry without `columns`:
    /// only instruction / input / output (alpaca) and conversations (sharegpt).
    pub fn llamafactory_default() -> Self {
        Columns {
            prompt: Some("instruction".into()),
            query: Some("input".into()),
            response: Some("output".into()),
            history: None,
            messages: None,
            system: None,
            tools: None,
            chosen: Some("chosen".into()),
            rejected: Some("rejected".into()),
            kto_tag: Some("kto_tag".into()),
            explicit: false,
        }
    }
}

/// For a file given directly (no registry entry), the usual columns are picked up when
/// present: system, history and tools as well.
impl Default for Columns {
    fn default() -> Self {
        Columns {
            prompt: Some("instruction".into()),
            query: Some("input".into()),
            response: Some("output".into()),
            history: Some("history".into()),
            messages: None,
            system: Some("system".into()),
            tools: Some("tools".into()),
            chosen: Some("chosen".into()),
            rejected: Some("rejected".into()),
            kto_tag: Some("kto_tag".into()),
            explicit: false,
        }
    }
}

/// Role and content tags of sharegpt messages (LLaMA-Factory's `tags`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    pub role: String,
    pub content: String,
    pub user: Option<String>,
    pub assistant: Option<String>,
    pub observation: Option<String>,
    pub function: Option<String>,
    pub system: Option<String>,
}

impl Default for Tags {
    fn default() -> Self {
        Tags {
            role: "from".into(),
            content: "value".into(),
            user: Some("human".into()),
            assistant: Some("gpt".into()),
            observation: Some("observation".into()),
            function: Some("function_call".into()),
            system: Some("system".into()),
        }
    }
}

/// How to read the records of one dataset.
#[derive(Debug, Clone, Default)]
pub struct RecordFormat {
    /// `None`: detect from the first record of each file.
    pub formatting: Option<Formatting>,
    pub columns: Columns,
    pub tags: Tags,
    /// Registered with `ranking: true`: records are preference pairs.
    pub ranking: bool,
}

impl RecordFormat {
    /// Converts one raw record for the given stage.
    pub fn convert(&self, raw: &RawRecord, stage: Stage) -> Result<Sample> {
        let at = &raw.at;
        let record = raw.value.as_object().ok_or_else(|| {
            DataError::record(
                at,
                format!("expected a JSON object, found {}", kind(&raw.value)),
            )
        })?;
        let formatting = match self.formatting {
            Some(f) => f,
            None => detect(record, stage).map_err(|p| DataError::record(at, p))?,
        };
        if stage == Stage::Pt {
            return self.to_text(record, formatting, at).map(Sample::Text);
        }
        let is_pair = self.ranking || self.has_pair_columns(record);
        if stage == Stage::Kto {
            if is_pair {
                return Err(DataError::record(
                    at,
                    "this record is a preference pair (chosen and rejected); stage kto needs single answers with a boolean kto_tag column: train pairs with stage: dpo",
                ));
            }
            let desirable = self.kto_tag(record, at)?;
            let conversation = self.conversation(record, formatting, at)?;
            return Ok(Sample::Feedback(Feedback {
                conversation,
                desirable,
                kl_answer: None,
            }));
        }
        match (stage, is_pair) {
            (Stage::Dpo, true) => return self.pair(record, formatting, at).map(Sample::Pair),
            (Stage::Dpo, false) => {
                return Err(DataError::record(
                    at,
                    "stage dpo needs preference pairs, and this record has no \"chosen\" and \"rejected\" columns; register the dataset with \"ranking\": true and its columns in dataset_info.json, or train it with stage: sft",
                ))
            }
            (_, true) => {
                return Err(DataError::record(
                    at,
                    format!(
                        "this record is a preference pair ({}); use stage: dpo (--stage dpo for the data commands), not {}",
                        if self.ranking {
                            "the dataset is registered with \"ranking\": true"
                        } else {
                            "it has \"chosen\" and \"rejected\" columns"
                        },
                        stage.name()
                    ),
                ))
            }
            _ => {}
        }
        self.conversation(record, formatting, at).map(Sample::Chat)
    }

    /// A conversation ending with the answer to train on.
    fn conversation(
        &self,
        record: &Map<String, Value>,
        formatting: Formatting,
        at: &RecordRef,
    ) -> Result<Conversation> {
        let conversation = match formatting {
            Formatting::Alpaca => self.alpaca(record, at)?,
            Formatting::Sharegpt => self.sharegpt(record, at)?,
            Formatting::Openai => self.openai(record, at)?,
            Formatting::Text => return Err(DataError::record(
                at,
                "plain-text records have no conversation to train on in this stage; use stage pt",
            )),
        };
        conversation
            .validate()
            .map_err(|p| DataError::record(at, p))?;
        Ok(conversation)
    }

    fn to_text(
        &self,
        record: &Map<String, Value>,
        formatting: Formatting,
        at: &RecordRef,
    ) -> Result<String> {
        // LLaMA-Factory maps pretraining text through the `prompt` column (c4_demo:
        // `"columns": {"prompt": "text"}`); without explicit columns it is `text`.
        let column = match (&self.columns.prompt, self.columns.explicit, formatting) {
            (Some(c), true, _) => c.clone(),
            (_, _, Formatting::Alpaca) if !record.contains_key("text") => "instruction".into(),
            _ => "text".into(),
        };
        let text = required_str(record, &column, at)?;
        if text.trim().is_empty() {
            return Err(DataError::record(at, format!("column {column:?} is empty")));
        }
        Ok(text.to_string())
    }

    fn alpaca(&self, record: &Map<String, Value>, at: &RecordRef) -> Result<Conversation> {
        let response_col = self.columns.response.as_deref().ok_or_else(|| {
            DataError::record(
                at,
                "dataset_info.json maps no `response` column for this alpaca dataset",
            )
        })?;
        let mut conversation = self.alpaca_prompt(record, at)?;
        let output = required_str(record, response_col, at)?;
        conversation
            .messages
            .push(Message::new(Role::Assistant, output));
        Ok(conversation)
    }

    /// An alpaca record's system, history and instruction turns, without its answer.
    fn alpaca_prompt(&self, record: &Map<String, Value>, at: &RecordRef) -> Result<Conversation> {
        let c = &self.columns;
        let prompt_col = c.prompt.as_deref().ok_or_else(|| {
            DataError::record(
                at,
                "dataset_info.json maps no `prompt` column for this alpaca dataset",
            )
        })?;
        let instruction = required_str(record, prompt_col, at)?;
        let input = match c.query.as_deref() {
            Some(col) => optional_str(record, col, at)?.unwrap_or(""),
            None => "",
        };

        let mut messages = Vec::new();
        messages.extend(self.system_message(record, at)?);
        if let Some(col) = c.history.as_deref() {
            if let Some(history) = record.get(col).filter(|v| !v.is_null()) {
                let pairs = history.as_array().ok_or_else(|| {
                    DataError::record(
                        at,
                        format!("column {col:?} must be a list of [query, response] pairs"),
                    )
                })?;
                for (i, pair) in pairs.iter().enumerate() {
                    let pair = pair.as_array().filter(|p| p.len() == 2);
                    let strings = pair.and_then(|p| Some((p[0].as_str()?, p[1].as_str()?)));
                    let (q, r) = strings.ok_or_else(|| {
                        DataError::record(at, format!("column {col:?} entry {i} is not a [query, response] pair of strings"))
                    })?;
                    messages.push(Message::new(Role::User, q));
                    messages.push(Message::new(Role::Assistant, r));
                }
            }
        }
        let content = if input.is_empty() {
            instruction.to_string()
        } else {
            format!("{instruction}\n{input}")
        };
        let mut user = Message::new(Role::User, content);
        user.extra
            .insert("instruction".into(), Value::String(instruction.into()));
        user.extra
            .insert("input".into(), Value::String(input.into()));
        messages.push(user);
        Ok(Conversation {
            messages,
            tools: self.tools(record, at)?,
        })
    }

    fn sharegpt(&self, record: &Map<String, Value>, at: &RecordRef) -> Result<Conversation> {
        let t = &self.tags;
        let col = self.columns.messages.as_deref().unwrap_or("conversations");
        let list = message_list(record, col, at)?;
        let mut messages = Vec::new();
        messages.extend(self.system_message(record, at)?);
        let known_roles: Vec<&str> = [
            &t.user,
            &t.assistant,
            &t.observation,
            &t.function,
            &t.system,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
        for (i, m) in list.iter().enumerate() {
            let obj = m
                .as_object()
                .ok_or_else(|| DataError::record(at, format!("message {i} is not an object")))?;
            let role = obj.get(&t.role).and_then(Value::as_str).ok_or_else(|| {
                DataError::record(
                    at,
                    format!("message {i} has no string {:?} (role tag)", t.role),
                )
            })?;
            let content = obj.get(&t.content).and_then(Value::as_str).ok_or_else(|| {
                DataError::record(
                    at,
                    format!("message {i} has no string {:?} (content tag)", t.content),
                )
            })?;
            let is = |tag: &Option<String>| tag.as_deref() == Some(role);
            let message = if is(&t.user) {
                Message::new(Role::User, content)
            } else if is(&t.assistant) {
                Message::new(Role::Assistant, content)
            } else if is(&t.observation) {
                Message::new(Role::Tool, content)
            } else if is(&t.function) {
                let mut call = Message::new(Role::Assistant, "");
                call.tool_calls = parse_function_call(content)
                    .map_err(|p| DataError::record(at, format!("message {i} ({role}): {p}")))?;
                call
            } else if is(&t.system) && messages.is_empty() && i == 0 {
                Message::new(Role::System, content)
            } else {
                return Err(DataError::record(
                    at,
                    format!(
                        "message {i} has role {role:?}; expected one of {}",
                        known_roles.join(", ")
                    ),
                ));
            };
            messages.push(message);
        }
        Ok(Conversation {
            messages,
            tools: self.tools(record, at)?,
        })
    }

    fn openai(&self, record: &Map<String, Value>, at: &RecordRef) -> Result<Conversation> {
        let col = self.columns.messages.as_deref().unwrap_or("messages");
        let list = message_list(record, col, at)?;
        let mut messages = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let message = openai_message(m)
                .map_err(|p| DataError::record(at, format!("message {i}: {p}")))?;
            messages.push(message);
        }
        Ok(Conversation {
            messages,
            tools: self.tools(record, at)?,
        })
    }

    /// The record's system column, as a leading system message when it is not empty.
    fn system_message(
        &self,
        record: &Map<String, Value>,
        at: &RecordRef,
    ) -> Result<Option<Message>> {
        let system = optional_column_str(record, self.columns.system.as_deref(), at)?;
        Ok(system
            .filter(|s| !s.is_empty())
            .map(|s| Message::new(Role::System, s)))
    }

    fn tools(&self, record: &Map<String, Value>, at: &RecordRef) -> Result<Vec<Value>> {
        let Some(col) = self.columns.tools.as_deref() else {
            return Ok(Vec::new());
        };
        let value = match record.get(col) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::String(s)) if s.trim().is_empty() => return Ok(Vec::new()),
            Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
                DataError::record(at, format!("column {col:?} is not valid JSON: {e}"))
            })?,
            Some(other) => other.clone(),
        };
        let list = match value {
            Value::Array(list) => list,
            obj @ Value::Object(_) => vec![obj],
            other => {
                return Err(DataError::record(
                    at,
                    format!(
                        "column {col:?} must be a list of function schemas, found {}",
                        kind(&other)
                    ),
                ))
            }
        };
        list.into_iter()
            .enumerate()
            .map(|(i, tool)| {
                if tool.is_object() {
                    Ok(wrap_tool(tool))
                } else {
                    Err(DataError::record(
                        at,
                        format!("tool {i} in column {col:?} is not an object"),
                    ))
                }
            })
            .collect()
    }
}

/// Picks the format from a record's keys, when that is unambiguous.
pub fn detect(record: &Map<String, Value>, stage: Stage) -> Result<Formatting, String> {
    if record.contains_key("conversations") {
        return Ok(Formatting::Sharegpt);
    }
    if let Some(messages) = record.get("messages").and_then(Value::as_array) {
        let first = messages.first().and_then(Value::as_object);
        return Ok(match first {
            Some(m) if m.contains_key("from") => Formatting::Sharegpt,
            _ => Formatting::Openai,
        });
    }
    if record.contains_key("instruction") {
        return Ok(Formatting::Alpaca);
    }
    if record.contains_key("text") && (stage == Stage::Pt || record.len() == 1) {
        return Ok(Formatting::Text);
    }
    let keys: Vec<&str> = record.keys().map(String::as_str).collect();
    Err(format!(
        "cannot tell the dataset format from the record's keys ({}); give it with --format ({}) or in dataset_info.json",
        keys.join(", "),
        FORMAT_NAMES.join(", ")
    ))
}

fn openai_message(m: &Value) -> Result<Message, String> {
    let obj = m.as_object().ok_or("not an object")?;
    let role = obj
        .get("role")
        .and_then(Value::as_str)
        .ok_or("no string \"role\"")?;
    let role = match role {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" | "function" | "ipython" => Role::Tool,
        other => {
            return Err(format!(
                "role {other:?} is not one of system, user, assistant, tool"
            ))
        }
    };
    let content = match obj.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => text_parts(parts)?,
        Some(other) => {
            return Err(format!(
                "content must be a string or a list of parts, found {}",
                kind(other)
            ))
        }
    };
    let mut message = Message::new(role, content);
    if let Some(calls) = obj.get("tool_calls").filter(|v| !v.is_null()) {
        if role != Role::Assistant {
            return Err("only assistant messages may have tool_calls".into());
        }
        let calls = calls.as_array().ok_or("tool_calls must be a list")?;
        for (i, call) in calls.iter().enumerate() {
            message
                .tool_calls
                .push(openai_tool_call(call).map_err(|p| format!("tool call {i}: {p}"))?);
        }
    }
    if let Some(w) = obj.get("loss_weight").filter(|v| !v.is_null()) {
        let w = w.as_f64().ok_or("loss_weight must be a number")?;
        message.loss_weight = Some(w as f32);
    }
    for key in ["name", "tool_call_id", "reasoning_content"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            message.extra.insert(key.into(), v.clone());
        }
    }
    Ok(message)
}

fn text_parts(parts: &[Value]) -> Result<String, String> {
    let mut text = String::new();
    for (i, part) in parts.iter().enumerate() {
        let obj = part
            .as_object()
            .ok_or_else(|| format!("content part {i} is not an object"))?;
        let ty = obj.get("type").and_then(Value::as_str).unwrap_or("text");
        if ty != "text" {
            return Err(format!(
                "content part {i} has type {ty:?}; only text parts are supported"
            ));
        }
        let value = obj
            .get("text")
            .or_else(|| obj.get("value"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("content part {i} has no string \"text\" or \"value\""))?;
        text.push_str(value);
    }
    Ok(text)
}

fn openai_tool_call(call: &Value) -> Result<ToolCall, String> {
    let obj = call.as_object().ok_or("not an object")?;
    let function = obj
        .get("function")
        .and_then(Value::as_object)
        .unwrap_or(obj);
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or("no function name")?;
    let arguments = function
        .get("arguments")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    Ok(ToolCall {
        name: name.to_string(),
        arguments: decode_arguments(arguments),
        id: obj.get("id").and_then(Value::as_str).map(String::from),
    })
}

/// Arguments often arrive JSON-encoded in a string; templates want the object.
fn decode_arguments(arguments: Value) -> Value {
    match arguments {
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(v @ Value::Object(_)) => v,
            _ => Value::String(s),
        },
        other => other,
    }
}

/// A sharegpt `function_call` message: `{"name": ..., "arguments": ...}` or a list of them.
fn parse_function_call(content: &str) -> Result<Vec<ToolCall>, String> {
    let value: Value =
        serde_json::from_str(content).map_err(|e| format!("tool call is not valid JSON: {e}"))?;
    let items = match value {
        Value::Array(items) => items,
        other => vec![other],
    };
    if items.is_empty() {
        return Err("tool call list is empty".into());
    }
    items.iter().map(openai_tool_call).collect()
}

fn message_list<'a>(
    record: &'a Map<String, Value>,
    col: &str,
    at: &RecordRef,
) -> Result<&'a Vec<Value>> {
    record
        .get(col)
        .ok_or_else(|| missing_column(record, col, at))?
        .as_array()
        .ok_or_else(|| DataError::record(at, format!("column {col:?} must be a list of messages")))
}

fn required_str<'a>(record: &'a Map<String, Value>, col: &str, at: &RecordRef) -> Result<&'a str> {
    match record.get(col) {
        None => Err(missing_column(record, col, at)),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(DataError::record(
            at,
            format!("column {col:?} must be a string, found {}", kind(other)),
        )),
    }
}

fn optional_str<'a>(
    record: &'a Map<String, Value>,
    col: &str,
    at: &RecordRef,
) -> Result<Option<&'a str>> {
    match record.get(col) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(DataError::record(
            at,
            format!("column {col:?} must be a string, found {}", kind(other)),
        )),
    }
}

fn optional_column_str<'a>(
    record: &'a Map<String, Value>,
    col: Option<&str>,
    at: &RecordRef,
) -> Result<Option<&'a str>> {
    match col {
        Some(col) => optional_str(record, col, at),
        None => Ok(None),
    }
}

fn missing_column(record: &Map<String, Value>, col: &str, at: &RecordRef) -> DataError {
    let keys: Vec<&str> = record.keys().map(String::as_str).collect();
    DataError::record(
        at,
        format!(
            "record has no column {col:?} (its columns: {}); map columns in dataset_info.json if they are named differently",
            if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
        ),
    )
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
