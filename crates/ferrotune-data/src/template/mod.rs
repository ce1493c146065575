//! Stage 3, template: a conversation becomes the exact text the model trains on.
//!
//! Every template is a jinja chat template, rendered with minijinja as transformers'
//! `apply_chat_template` renders it: the tokenizer's own, a built-in one (named as in
//! LLaMA-Factory), or one defined in the config from slots. At load time the template is
//! probed with marker conversations to learn what it writes after an assistant reply (the
//! end-of-turn text, trained so the model learns to stop, and the stop string for
//! generation), what opens an assistant turn, and whether it keeps tools, tool calls and
//! tool results.

pub mod builtin;
pub mod jinja_env;
mod native;

use minijinja::Environment;
use serde_json::{Map, Value};

use crate::conversation::{wrap_tool, Message, Role, ToolCall};
use crate::error::{suggest, DataError, Result};
pub use builtin::{CustomTemplate, BUILTIN_NAMES};
use native::Native;

/// Special-token strings a template may use (`bos_token`, `eos_token`, ...) and the full
/// list of special tokens of the tokenizer (to recognise end-of-turn markers).
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
    pub all: Vec<String>,
}

/// Which template to use.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateChoice {
    /// The tokenizer folder's own chat template.
    Tokenizer,
    /// A built-in template, or a custom one defined in the config, by name.
    Named(String),
}

/// What the template writes around assistant turns, found by probing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnMarkers {
    /// Written right after an assistant message's content (e.g. `<|im_end|>\n`,
    /// `<|eot_id|>`); supervised with the reply. Empty when the template writes nothing.
    pub end_of_turn: String,
    /// The generation prompt that opens an assistant turn (e.g. `<|im_start|>assistant\n`).
    pub assistant_header: String,
}

/// Whether the template renders each tool-use element (probed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSupport {
    pub definitions: bool,
    pub calls: bool,
    pub results: bool,
    /// Set when the template fails on a tool-use conversation.
    pub error: Option<String>,
}

pub struct ChatTemplate {
    name: String,
    source: String,
    env: Environment<'static>,
    /// Special tokens and extra keyword arguments, passed to every render.
    globals: Map<String, Value>,
    /// A native rendering of this very template, tried before the jinja one.
    native: Option<Native>,
    pub markers: TurnMarkers,
    pub tools: ToolSupport,
    extra_stop_words: Vec<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("markers", &self.markers)
            .field("tools", &self.tools)
            .finish()
    }
}

const PROBE_USER_1: &str = "ferrotune-probe-user-one";
const PROBE_ASSISTANT_1: &str = "ferrotune-probe-assistant-one";
const PROBE_USER_2: &str = "ferrotune-probe-user-two";
const PROBE_ASSISTANT_2: &str = "ferrotune-probe-assistant-two";

impl ChatTemplate {
    /// Compiles `source` and probes it. `kwargs` are extra template variables (e.g.
    /// `enable_thinking`).
    pub fn new(
        name: &str,
        source: &str,
        specials: &SpecialTokens,
        kwargs: &Map<String, Value>,
        extra_stop_words: Vec<String>,
    ) -> Result<Self> {
        let env = jinja_env::environment(name, source).map_err(|e| DataError::Template {
            name: name.to_string(),
            problem: format!("does not compile: {}", describe(&e)),
        })?;
        let mut globals = Map::new();
        for (key, token) in [
            ("bos_token", &specials.bos),
            ("eos_token", &specials.eos),
            ("pad_token", &specials.pad),
            ("unk_token", &specials.unk),
        ] {
            if let Some(token) = token {
                globals.insert(key.into(), Value::String(token.clone()));
            }
        }
        for (k, v) in kwargs {
            globals.insert(k.clone(), v.clone());
        }
        let mut template = ChatTemplate {
            name: name.to_string(),
            source: source.to_string(),
            env,
            globals,
            native: Native::for_source(source),
            markers: TurnMarkers {
                end_of_turn: String::new(),
                assistant_header: String::new(),
            },
            tools: ToolSupport {
                definitions: true,
                calls: true,
                results: true,
                error: None,
            },
            extra_stop_words,
        };
        template.markers = template.probe_markers(&specials.all)?;
        template.tools = template.probe_tools();
        Ok(template)
    }

    /// Resolves a [`TemplateChoice`] against the tokenizer's template, the built-ins and the
    /// config's custom templates.
    pub fn choose(
        choice: &TemplateChoice,
        tokenizer_template: Option<&str>,
        custom: &std::collections::BTreeMap<String, CustomTemplate>,
        specials: &SpecialTokens,
        kwargs: &Map<String, Value>,
    ) -> Result<Self> {
        match choice {
            TemplateChoice::Tokenizer => {
                let source = tokenizer_template.ok_or_else(|| {
                    DataError::config(format!(
                        "the tokenizer has no chat template (tokenizer_config.json `chat_template` or chat_template.jinja); \
                         choose one with `template:` / --template ({})",
                        BUILTIN_NAMES.join(", ")
                    ))
                })?;
                ChatTemplate::new("tokenizer", source, specials, kwargs, Vec::new())
            }
            TemplateChoice::Named(name) => {
                if let Some(custom) = custom.get(name) {
                    let source = custom.to_jinja().map_err(|p| DataError::Template {
                        name: name.clone(),
                        problem: p,
                    })?;
                    return ChatTemplate::new(
                        name,
                        &source,
                        specials,
                        kwargs,
                        custom.stop_words.clone(),
                    );
                }
                if let Some(source) = builtin::source(name) {
                    return ChatTemplate::new(name, &source, specials, kwargs, Vec::new());
                }
                let known: Vec<&str> = BUILTIN_NAMES
                    .iter()
                    .copied()
                    .chain(custom.keys().map(String::as_str))
                    .collect();
                let hint = suggest(name, known.iter().copied())
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
                Err(DataError::config(format!(
                    "unknown template {name:?}{hint}; known templates: {}, or leave it out to use the tokenizer's own",
                    known.join(", ")
                )))
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The jinja source, saved with every output so inference uses the same template.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders messages (and tools) to text, as `apply_chat_template(tokenize=False)`.
    pub fn render(
        &self,
        messages: &[Message],
        tools: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        if let Some(native) = self.native {
            if let Some(text) = native.render(messages, tools, add_generation_prompt, &self.globals)
            {
                return Ok(text);
            }
        }
        self.render_jinja(messages, tools, add_generation_prompt)
    }

    /// The same template rendered by jinja alone (the reference the native renderings are
    /// tested against).
    pub fn without_native(mut self) -> Self {
        self.native = None;
        self
    }

    /// Whether a native rendering stands in for the jinja template where it can.
    pub fn has_native(&self) -> bool {
        self.native.is_some()
    }

    /// [`ChatTemplate::render`] through the jinja template alone.
    pub fn render_jinja(
        &self,
        messages: &[Message],
        tools: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let mut ctx = self.globals.clone();
        ctx.insert(
            "messages".into(),
            Value::Array(messages.iter().map(Message::to_template_value).collect()),
        );
        ctx.insert(
            "tools".into(),
            if tools.is_empty() {
                Value::Null
            } else {
                Value::Array(tools.to_vec())
            },
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(add_generation_prompt),
        );
        let template = self
            .env
            .get_template(&self.name)
            .map_err(|e| describe(&e))?;
        template
            .render(minijinja::Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| describe(&e))
    }

    /// Strings that end generation: the end-of-turn marker without trailing whitespace,
    /// then any stop words the template defines.
    pub fn stop_strings(&self) -> Vec<String> {
        let mut stops = Vec::new();
        let eot = self.markers.end_of_turn.trim_end();
        if !eot.trim().is_empty() {
            stops.push(eot.trim_start().to_string());
        }
        for word in &self.extra_stop_words {
            if !stops.contains(word) {
                stops.push(word.clone());
            }
        }
        stops
    }

    /// A warning naming the tool-use elements of `conversation` this template drops.
    pub fn tool_loss(
        &self,
        has_definitions: bool,
        has_calls: bool,
        has_results: bool,
    ) -> Option<String> {
        if let Some(error) = &self.tools.error {
            if has_definitions || has_calls || has_results {
                return Some(format!("cannot render tool use: {error}"));
            }
        }
        let mut lost = Vec::new();
        if has_definitions && !self.tools.definitions {
            lost.push("tool definitions");
        }
        if has_calls && !self.tools.calls {
            lost.push("assistant tool calls");
        }
        if has_results && !self.tools.results {
            lost.push("tool results");
        }
        (!lost.is_empty()).then(|| {
            format!(
                "template {} drops {} from the rendered text: the model will not learn them",
                self.name,
                lost.join(", ")
            )
        })
    }

    fn probe_markers(&self, specials: &[String]) -> Result<TurnMarkers> {
        let fail = |problem: String| DataError::Template {
            name: self.name.clone(),
            problem,
        };
        let messages = [
            Message::new(Role::User, PROBE_USER_1),
            Message::new(Role::Assistant, PROBE_ASSISTANT_1),
            Message::new(Role::User, PROBE_USER_2),
            Message::new(Role::Assistant, PROBE_ASSISTANT_2),
        ];
        let full = self
            .render(&messages, &[], false)
            .map_err(|e| fail(format!("fails on a plain two-turn conversation: {e}")))?;
        let find = |needle: &str| {
            full.find(needle).ok_or_else(|| {
                fail(format!(
                    "does not write message content verbatim (probe {needle:?} not found in {full:?})"
                ))
            })
        };
        let a1_end = find(PROBE_ASSISTANT_1)? + PROBE_ASSISTANT_1.len();
        let u2_start = find(PROBE_USER_2)?;
        let a2_end = find(PROBE_ASSISTANT_2)? + PROBE_ASSISTANT_2.len();
        if u2_start < a1_end {
            return Err(fail("renders messages out of order".into()));
        }
        let between_turns = &full[a1_end..u2_start];
        let after_last = &full[a2_end..];
        let common = common_prefix(between_turns, after_last);
        let end_of_turn = match split_after_special(common, specials) {
            Some(cut) => common[..cut].to_string(),
            None => common.to_string(),
        };

        let assistant_header = match self.render(&messages[..1], &[], true) {
            Ok(prompt) => {
                let after_user = prompt
                    .find(PROBE_USER_1)
                    .map(|p| &prompt[p + PROBE_USER_1.len()..])
                    .unwrap_or("");
                match split_after_special(after_user, specials) {
                    Some(cut) if cut < after_user.len() => after_user[cut..].to_string(),
                    _ => after_user.to_string(),
                }
            }
            Err(_) => String::new(),
        };
        Ok(TurnMarkers {
            end_of_turn,
            assistant_header,
        })
    }

    fn probe_tools(&self) -> ToolSupport {
        let tool = wrap_tool(serde_json::json!({
            "name": "ferrotune_probe_tool",
            "description": "probe",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
        }));
        let mut call = Message::new(Role::Assistant, "");
        call.tool_calls.push(ToolCall {
            name: "ferrotune_probe_call".into(),
            arguments: serde_json::json!({"x": "ferrotune_probe_argument"}),
            id: None,
        });
        let messages = [
            Message::new(Role::User, PROBE_USER_1),
            call,
            Message::new(Role::Tool, "ferrotune_probe_result"),
            Message::new(Role::Assistant, PROBE_ASSISTANT_1),
        ];
        match self.render(&messages, &[tool], false) {
            Ok(text) => ToolSupport {
                definitions: text.contains("ferrotune_probe_tool"),
                calls: text.contains("ferrotune_probe_call")
                    && text.contains("ferrotune_probe_argument"),
                results: text.contains("ferrotune_probe_result"),
                error: None,
            },
            Err(e) => ToolSupport {
                definitions: false,
                calls: false,
                results: false,
                error: Some(e),
            },
        }
    }
}

fn common_prefix<'a>(a: &'a str, b: &str) -> &'a str {
    let len = a
        .char_indices()
        .zip(b.chars())
        .take_while(|((_, ca), cb)| ca == cb)
        .last()
        .map(|((i, c), _)| i + c.len_utf8())
        .unwrap_or(0);
    &a[..len]
}

/// The byte position just after the first special token in `text` and the whitespace
/// that follows it, or `None` when `text` holds no special token.
fn split_after_special(text: &str, specials: &[String]) -> Option<usize> {
    let (pos, len) = specials
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|p| (p, s.len())))
        .min_by_key(|&(p, len)| (p, usize::MAX - len))?;
    let end = pos + len;
    let ws = text[end..]
        .char_indices()
        .find(|(_, c)| !c.is_whitespace())
        .map(|(i, _)| i)
        .unwrap_or(text.len() - end);
    Some(end + ws)
}

/// A minijinja error with its cause chain and, where known, the template line.
fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        msg.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specials() -> SpecialTokens {
        SpecialTokens {
            bos: Some("<s>".into()),
            eos: Some("</s>".into()),
            pad: None,
            unk: None,
            all: vec![
                "<s>".into(),
                "</s>".into(),
                "<|im_start|>".into(),
                "<|im_end|>".into(),
            ],
        }
    }

    fn builtin(name: &str) -> ChatTemplate {
        let source = builtin::source(name).unwrap();
        ChatTemplate::new(name, &source, &specials(), &Map::new(), Vec::new())
            .unwrap_or_else(|e| panic!("{name}: {e}\n{source}"))
    }

    fn conversation() -> Vec<Message> {
        let mut user = Message::new(Role::User, "Add 2 and 3.\nQuickly.");
        user.extra
            .insert("instruction".into(), "Add 2 and 3.".into());
        user.extra.insert("input".into(), "Quickly.".into());
        vec![
            Message::new(Role::System, "Be brief."),
            user,
            Message::new(Role::Assistant, "5"),
        ]
    }

    #[test]
    fn every_builtin_compiles_probes_and_renders() {
        for name in BUILTIN_NAMES {
            let t = builtin(name);
            let text = t.render(&conversation(), &[], false).unwrap();
            assert!(text.contains('5'), "{name}: {text}");
        }
    }

    #[test]
    fn alpaca_lays_out_instruction_input_and_response() {
        let t = builtin("alpaca");
        let mut messages = conversation();
        messages.remove(0);
        assert_eq!(
            t.render(&messages, &[], false).unwrap(),
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n\
             ### Instruction:\nAdd 2 and 3.\n\n### Input:\nQuickly.\n\n### Response:\n5</s>\n\n"
        );
        assert_eq!(t.markers.end_of_turn, "</s>\n\n");
        assert_eq!(t.markers.assistant_header, "\n\n### Response:\n");
        assert_eq!(t.stop_strings(), vec!["</s>".to_string()]);
    }

    #[test]
    fn chinese_alpaca_sections() {
        let t = builtin("alpaca_zh");
        let text = t.render(&conversation(), &[], false).unwrap();
        assert_eq!(
            text,
            "Be brief.\n\n### 指令:\nAdd 2 and 3.\n\n### 输入:\nQuickly.\n\n### 回答:\n5</s>\n\n"
        );
    }

    #[test]
    fn llama2_folds_the_system_prompt_into_the_first_turn() {
        let t = builtin("llama2");
        assert_eq!(
            t.render(&conversation(), &[], false).unwrap(),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nAdd 2 and 3.\nQuickly. [/INST] 5 </s>"
        );
        assert_eq!(t.markers.end_of_turn, " </s>");
    }

    #[test]
    fn chatml_markers_and_generation_prompt() {
        let t = builtin("chatml");
        assert_eq!(t.markers.end_of_turn, "<|im_end|>\n");
        assert_eq!(t.markers.assistant_header, "<|im_start|>assistant\n");
        let prompt = t.render(&conversation()[..2], &[], true).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAdd 2 and 3.\nQuickly.<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn qwen_has_its_default_system_prompt() {
        let t = builtin("qwen");
        let text = t.render(&conversation()[1..], &[], false).unwrap();
        assert!(
            text.starts_with("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud."),
            "{text}"
        );
    }

    #[test]
    fn empty_template_has_no_end_of_turn() {
        let t = builtin("empty");
        assert_eq!(t.markers.end_of_turn, "");
        assert!(t.stop_strings().is_empty());
    }

    #[test]
    fn builtins_keep_tool_use_and_custom_slots_work() {
        for name in BUILTIN_NAMES.iter().filter(|n| **n != "empty") {
            let t = builtin(name);
            assert_eq!(t.tool_loss(true, true, true), None, "{name}: {:?}", t.tools);
        }
        let custom = CustomTemplate {
            prefix: "{{bos_token}}".into(),
            system: "<|system|>\n{{content}}\n".into(),
            user: "<|user|>\n{{content}}\n".into(),
            assistant: "<|assistant|>\n{{content}}{{eos_token}}\n".into(),
            tool: None,
            generation_prompt: "<|assistant|>\n".into(),
            default_system: "You help.".into(),
            stop_words: vec!["<|user|>".into()],
        };
        let source = custom.to_jinja().unwrap();
        let t = ChatTemplate::new(
            "mine",
            &source,
            &specials(),
            &Map::new(),
            custom.stop_words.clone(),
        )
        .unwrap();
        assert_eq!(
            t.render(&conversation()[1..], &[], false).unwrap(),
            "<s><|system|>\nYou help.\n<|user|>\nAdd 2 and 3.\nQuickly.\n<|assistant|>\n5</s>\n"
        );
        assert_eq!(t.markers.end_of_turn, "</s>\n");
        // The user slot ends in a plain newline, which is not a special token.
        assert_eq!(t.markers.assistant_header, "\n<|assistant|>\n");
        assert_eq!(
            t.stop_strings(),
            vec!["</s>".to_string(), "<|user|>".to_string()]
        );
        let bad = CustomTemplate {
            user: "{{ message }}".into(),
            ..custom
        };
        assert!(bad.to_jinja().unwrap_err().contains("unknown placeholder"));
    }

    #[test]
    fn a_template_that_ignores_tools_is_reported() {
        let source = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}";
        let t = ChatTemplate::new("plain", source, &specials(), &Map::new(), Vec::new()).unwrap();
        let warning = t.tool_loss(true, true, true).unwrap();
        assert!(
            warning.contains("tool definitions") && warning.contains("assistant tool calls"),
            "{warning}"
        );
        assert!(!warning.contains("tool results"), "{warning}");
    }
}
