//! Native renderings of chat templates that are used everywhere, chosen when a template's
//! source is one of them, character for character: rendering is the largest cost of
//! preparing a chat dataset, and the jinja VM walks the whole template (Qwen3's looks back
//! over every message) twice per assistant turn.
//!
//! A native rendering covers the conversations it was written for and returns `None` for
//! anything else (tools offered, tool calls, a `reasoning_content` field, an empty
//! conversation), which the jinja template then renders. The tests render conversations
//! of every shape both ways and require the same text.

use serde_json::{Map, Value};

use super::builtin;
use crate::conversation::{Message, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Native {
    /// Qwen3's own chat template (the tokenizer's, and the built-in `qwen3`).
    Qwen3,
}

impl Native {
    /// The native rendering of `source`, if there is one.
    pub(crate) fn for_source(source: &str) -> Option<Native> {
        (source == builtin::QWEN3).then_some(Native::Qwen3)
    }

    /// `source` rendered as jinja would render it with these messages, tools and globals,
    /// or `None` when the conversation needs what only the jinja template does.
    pub(crate) fn render(
        self,
        messages: &[Message],
        tools: &[Value],
        add_generation_prompt: bool,
        globals: &Map<String, Value>,
    ) -> Option<String> {
        match self {
            Native::Qwen3 => qwen3(messages, tools, add_generation_prompt, globals),
        }
    }
}

fn qwen3(
    messages: &[Message],
    tools: &[Value],
    add_generation_prompt: bool,
    globals: &Map<String, Value>,
) -> Option<String> {
    let first = messages.first()?;
    if !tools.is_empty()
        || messages
            .iter()
            .any(|m| !m.tool_calls.is_empty() || m.extra.contains_key("reasoning_content"))
    {
        return None;
    }
    let size: usize = messages.iter().map(|m| m.content.len() + 40).sum();
    let mut out = String::with_capacity(size + 64);
    if first.role == Role::System {
        push_all(
            &mut out,
            &["<|im_start|>system\n", &first.content, "<|im_end|>\n"],
        );
    }
    // The last user message that is not a wrapped tool response ("the query"); thinking is
    // shown only in the assistant turns after it.
    let last_query = messages
        .iter()
        .rposition(|m| {
            m.role == Role::User
                && !(m.content.starts_with("<tool_response>")
                    && m.content.ends_with("</tool_response>"))
        })
        .unwrap_or(messages.len() - 1);
    let last = messages.len() - 1;
    for (i, message) in messages.iter().enumerate() {
        let content = message.content.as_str();
        match message.role {
            Role::User => push_all(&mut out, &["<|im_start|>user\n", content, "<|im_end|>\n"]),
            Role::System if i > 0 => {
                push_all(&mut out, &["<|im_start|>system\n", content, "<|im_end|>\n"])
            }
            Role::System => {}
            Role::Assistant => {
                let (content, reasoning) =
                    match memchr::memmem::find(content.as_bytes(), b"</think>") {
                        Some(_) => {
                            let after = content.rsplit("</think>").next().unwrap_or("");
                            let before = content.split("</think>").next().unwrap_or("");
                            let before = before.trim_end_matches('\n');
                            let reasoning = before.rsplit("<think>").next().unwrap_or("");
                            (
                                after.trim_start_matches('\n'),
                                reasoning.trim_start_matches('\n'),
                            )
                        }
                        None => (content, ""),
                    };
                if i > last_query && (i == last || !reasoning.is_empty()) {
                    push_all(
                        &mut out,
                        &[
                            "<|im_start|>assistant\n<think>\n",
                            reasoning.trim_matches('\n'),
                            "\n</think>\n\n",
                            content.trim_start_matches('\n'),
                        ],
                    );
                } else {
                    push_all(&mut out, &["<|im_start|>assistant\n", content]);
                }
                out.push_str("<|im_end|>\n");
            }
            Role::Tool => {
                if i == 0 || messages[i - 1].role != Role::Tool {
                    out.push_str("<|im_start|>user");
                }
                push_all(
                    &mut out,
                    &["\n<tool_response>\n", content, "\n</tool_response>"],
                );
                if i == last || messages[i + 1].role != Role::Tool {
                    out.push_str("<|im_end|>\n");
                }
            }
        }
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
        if globals.get("enable_thinking") == Some(&Value::Bool(false)) {
            out.push_str("<think>\n\n</think>\n\n");
        }
    }
    Some(out)
}

fn push_all(out: &mut String, parts: &[&str]) {
    for p in parts {
        out.push_str(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{ChatTemplate, SpecialTokens};

    fn template(kwargs: &Map<String, Value>) -> ChatTemplate {
        let specials = SpecialTokens {
            eos: Some("<|im_end|>".into()),
            pad: Some("<|endoftext|>".into()),
            all: vec!["<|im_start|>".into(), "<|im_end|>".into()],
            ..SpecialTokens::default()
        };
        ChatTemplate::new(
            "qwen3",
            &builtin::source("qwen3").unwrap(),
            &specials,
            kwargs,
            Vec::new(),
        )
        .unwrap()
    }

    /// Contents where the template's string handling matters.
    const CONTENTS: &[&str] = &[
        "Hello.",
        "",
        "\n\nleading and trailing newlines\n\n",
        "<think>\nreasoning\n</think>\n\nanswer",
        "<think>\n\n</think>\n\nanswer",
        "a</think>b</think>\n\nc",
        "no open tag\n</think>\nanswer",
        "<think>one<think>two</think>after",
        "<tool_response>\n42\n</tool_response>",
        "<tool_response> open only",
        "  spaces  ",
        "中文内容。",
    ];

    fn conversations() -> Vec<Vec<Message>> {
        let roles = [Role::System, Role::User, Role::Assistant, Role::Tool];
        let mut out = Vec::new();
        let mut seed = 12345u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for _ in 0..3000 {
            let len = 1 + next(7);
            let messages = (0..len)
                .map(|_| Message::new(roles[next(roles.len())], CONTENTS[next(CONTENTS.len())]))
                .collect();
            out.push(messages);
        }
        // The shapes of real datasets.
        for c in CONTENTS {
            out.push(vec![
                Message::new(Role::User, "Question?"),
                Message::new(Role::Assistant, *c),
            ]);
            out.push(vec![
                Message::new(Role::System, "Be brief."),
                Message::new(Role::User, *c),
                Message::new(Role::Assistant, "Answer."),
                Message::new(Role::User, "And?"),
                Message::new(Role::Assistant, *c),
            ]);
        }
        out
    }

    #[test]
    fn qwen3_renders_as_its_jinja_template() {
        let mut thinking_off = Map::new();
        thinking_off.insert("enable_thinking".into(), Value::Bool(false));
        let mut thinking_on = Map::new();
        thinking_on.insert("enable_thinking".into(), Value::Bool(true));
        for kwargs in [Map::new(), thinking_off, thinking_on] {
            let t = template(&kwargs);
            for messages in conversations() {
                for generation_prompt in [false, true] {
                    let native = Native::Qwen3
                        .render(&messages, &[], generation_prompt, &kwargs)
                        .expect("plain conversations render natively");
                    let jinja = t.render_jinja(&messages, &[], generation_prompt).unwrap();
                    assert_eq!(native, jinja, "{messages:?} {generation_prompt} {kwargs:?}");
                }
            }
        }
    }

    #[test]
    fn what_qwen3_does_not_render_natively_goes_to_jinja() {
        let plain = vec![Message::new(Role::User, "Hi")];
        let tool = serde_json::json!({"type": "function", "function": {"name": "f"}});
        assert!(Native::Qwen3
            .render(&plain, &[tool], false, &Map::new())
            .is_none());
        let mut reasoning = Message::new(Role::Assistant, "x");
        reasoning
            .extra
            .insert("reasoning_content".into(), Value::String("why".into()));
        assert!(Native::Qwen3
            .render(&[reasoning], &[], false, &Map::new())
            .is_none());
        assert!(Native::Qwen3.render(&[], &[], true, &Map::new()).is_none());
        assert_eq!(
            Native::for_source(&builtin::source("qwen3").unwrap()),
            Some(Native::Qwen3)
        );
        assert_eq!(Native::for_source(&builtin::source("qwen").unwrap()), None);
    }
}
