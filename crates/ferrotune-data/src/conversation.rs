//! The one in-memory shape every chat format is converted to: an OpenAI-style list of
//! messages plus optional tool schemas. Templates render this; masking walks it.

use std::fmt;

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An assistant's call of a tool, in the OpenAI shape the chat templates expect.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// Usually a JSON object; a string when the data holds arguments that are not JSON.
    pub arguments: Value,
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    /// Per-message loss weight (OpenAI format `loss_weight`); 0 means not trained.
    pub loss_weight: Option<f32>,
    /// Extra fields handed to templates as they are (e.g. alpaca's `instruction` and
    /// `input`, which the built-in `alpaca` template lays out as separate sections, or a
    /// tool message's `name`).
    pub extra: Map<String, Value>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            loss_weight: None,
            extra: Map::new(),
        }
    }

    /// The weight its tokens get in the loss when this is an assistant message.
    pub fn weight(&self) -> f32 {
        self.loss_weight.unwrap_or(1.0)
    }

    /// The message as a template sees it: `{"role", "content", "tool_calls"?, ...extra}`.
    pub fn to_template_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("role".into(), Value::String(self.role.as_str().into()));
        map.insert("content".into(), Value::String(self.content.clone()));
        if !self.tool_calls.is_empty() {
            let calls = self
                .tool_calls
                .iter()
                .map(|call| {
                    let mut function = Map::new();
                    function.insert("name".into(), Value::String(call.name.clone()));
                    function.insert("arguments".into(), call.arguments.clone());
                    let mut outer = Map::new();
                    if let Some(id) = &call.id {
                        outer.insert("id".into(), Value::String(id.clone()));
                    }
                    outer.insert("type".into(), Value::String("function".into()));
                    outer.insert("function".into(), Value::Object(function));
                    Value::Object(outer)
                })
                .collect();
            map.insert("tool_calls".into(), Value::Array(calls));
        }
        for (k, v) in &self.extra {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(map)
    }
}

/// A chat sample: messages in order, and the tools offered to the model (already in the
/// `{"type": "function", "function": schema}` shape).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conversation {
    pub messages: Vec<Message>,
    pub tools: Vec<Value>,
}

/// Wraps a bare function schema as `{"type": "function", "function": schema}`, the OpenAI
/// tool shape that jinja chat templates expect; already wrapped tools pass unchanged.
pub fn wrap_tool(schema: Value) -> Value {
    let already_wrapped = schema.get("type").and_then(Value::as_str) == Some("function")
        && schema.get("function").is_some();
    if already_wrapped {
        schema
    } else {
        let mut map = Map::new();
        map.insert("type".into(), Value::String("function".into()));
        map.insert("function".into(), schema);
        Value::Object(map)
    }
}

impl Conversation {
    /// Checks the turn structure every format must obey; returns the problem otherwise.
    ///
    /// Rules: a system message only first; the first other message is a user turn; user
    /// turns never follow each other; an assistant turn follows a user or tool turn and
    /// has content or tool calls; a tool result follows an assistant turn or another tool
    /// result; the conversation ends with an assistant turn (there must be something to
    /// train on).
    pub fn validate(&self) -> Result<(), String> {
        let mut previous: Option<Role> = None;
        for (i, message) in self.messages.iter().enumerate() {
            let role = message.role;
            match (previous, role) {
                (None, Role::System) => {}
                (_, Role::System) => {
                    return Err(format!("message {i}: a system message may only come first"))
                }
                (None | Some(Role::System), Role::User) => {}
                (None | Some(Role::System), other) => {
                    return Err(format!(
                        "message {i}: the conversation must start with a user turn, not {other}"
                    ))
                }
                (Some(Role::User), Role::User) => {
                    return Err(format!(
                        "messages {} and {i}: two user turns in a row (roles out of order)",
                        i - 1
                    ))
                }
                (Some(Role::Assistant), Role::Assistant) => {
                    return Err(format!(
                        "messages {} and {i}: two assistant turns in a row (roles out of order)",
                        i - 1
                    ))
                }
                (Some(Role::User), Role::Tool) => {
                    return Err(format!(
                        "message {i}: a tool result must follow an assistant turn, not a user turn"
                    ))
                }
                _ => {}
            }
            if role == Role::Assistant
                && message.content.is_empty()
                && message.tool_calls.is_empty()
            {
                return Err(format!(
                    "message {i}: assistant turn has neither content nor tool calls"
                ));
            }
            if let Some(w) = message.loss_weight {
                if !w.is_finite() || w < 0.0 {
                    return Err(format!(
                        "message {i}: loss_weight must be a finite number >= 0, got {w}"
                    ));
                }
            }
            previous = Some(role);
        }
        match previous {
            None => Err("no messages".into()),
            Some(Role::Assistant) => Ok(()),
            Some(other) => Err(format!(
                "the conversation ends with a {other} turn; it needs a final assistant turn to train on"
            )),
        }
    }

    pub fn has_tool_definitions(&self) -> bool {
        !self.tools.is_empty()
    }

    pub fn has_tool_calls(&self) -> bool {
        self.messages.iter().any(|m| !m.tool_calls.is_empty())
    }

    pub fn has_tool_results(&self) -> bool {
        self.messages.iter().any(|m| m.role == Role::Tool)
    }

    /// Applies `f` to every piece of free text (contents, alpaca fields, tool-call
    /// arguments), e.g. to replace placeholders.
    pub fn map_text(&mut self, mut f: impl FnMut(&str) -> String) {
        for m in &mut self.messages {
            m.content = f(&m.content);
            for v in m.extra.values_mut() {
                map_json_strings(v, &mut f);
            }
            for call in &mut m.tool_calls {
                map_json_strings(&mut call.arguments, &mut f);
            }
        }
    }

    /// Every piece of free text, for scanning.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.messages.iter().map(|m| m.content.as_str())
    }
}

fn map_json_strings(value: &mut Value, f: &mut impl FnMut(&str) -> String) {
    match value {
        Value::String(s) => *s = f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| map_json_strings(v, f)),
        Value::Object(map) => map.values_mut().for_each(|v| map_json_strings(v, f)),
        _ => {}
    }
}

/// A sample as read from a dataset: a conversation for `sft`, a document for `pt`, a
/// preference pair for `dpo`.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    Chat(Conversation),
    Text(String),
    Pair(PreferencePair),
    Feedback(Feedback),
}

/// KTO's sample: one conversation whose last answer is labelled desirable or not, and the
/// answer its KL (mismatched) sequence puts after the same prompt: another record's,
/// filled in when the records of a batch are known (`dataset::process`).
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    pub conversation: Conversation,
    pub desirable: bool,
    pub kl_answer: Option<Message>,
}

impl Feedback {
    /// The prompt followed by the KL answer (the record's own answer when none is set).
    pub fn kl_conversation(&self) -> Conversation {
        let mut c = self.conversation.clone();
        if let (Some(answer), Some(last)) = (&self.kl_answer, c.messages.last_mut()) {
            *last = answer.clone();
        }
        c
    }
}

impl Sample {
    /// The conversation the per-record checks look at: the sample's own, or a pair's
    /// prompt with its chosen answer.
    pub fn conversation(&self) -> Option<&Conversation> {
        match self {
            Sample::Chat(c) => Some(c),
            Sample::Pair(p) => Some(&p.chosen),
            Sample::Feedback(f) => Some(&f.conversation),
            Sample::Text(_) => None,
        }
    }
}

/// Two answers to one prompt, the first preferred: held as two conversations that share
/// every message but the last (the prompt is rendered once and shared when encoded).
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub chosen: Conversation,
    pub rejected: Conversation,
}

impl PreferencePair {
    /// `prompt`'s messages followed by each answer.
    pub fn new(prompt: Conversation, chosen: Message, rejected: Message) -> Self {
        let with = |answer: Message| {
            let mut c = prompt.clone();
            c.messages.push(answer);
            c
        };
        PreferencePair {
            chosen: with(chosen),
            rejected: with(rejected),
        }
    }

    /// The prompt's messages (shared by both answers).
    pub fn prompt(&self) -> &[crate::conversation::Message] {
        let n = self.chosen.messages.len();
        &self.chosen.messages[..n.saturating_sub(1)]
    }

    /// The chosen and rejected answers.
    pub fn answers(&self) -> (&Message, &Message) {
        (
            self.chosen.messages.last().expect("a pair has answers"),
            self.rejected.messages.last().expect("a pair has answers"),
        )
    }

    /// Applies `f` to every piece of free text of both conversations.
    pub fn map_text(&mut self, mut f: impl FnMut(&str) -> String) {
        self.chosen.map_text(&mut f);
        self.rejected.map_text(&mut f);
    }

    /// The prompt's texts and both answers.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.chosen
            .texts()
            .chain(self.rejected.messages.last().map(|m| m.content.as_str()))
    }
}
