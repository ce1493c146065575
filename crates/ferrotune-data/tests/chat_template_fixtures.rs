//! The jinja templates of the real Qwen3 and Llama 3 tokenizers, rendered and tokenized by
//! ferrotune, against transformers' `apply_chat_template` (../shared/fixtures/templates).

use ferrotune_data::conversation::{Conversation, Role};
use ferrotune_data::source::RawRecord;
use ferrotune_data::template::jinja_env::PyJson;
use ferrotune_data::template::{ChatTemplate, TemplateChoice};
use ferrotune_data::{
    EncodeOptions, Encoder, Formatting, RecordFormat, RecordRef, Sample, Stage, TokenizerBundle,
};
use ferrotune_testing::{read_json, shared};
use serde_json::Value;

struct Case {
    conversation: Conversation,
    text: String,
    generation_prompt_text: String,
    input_ids: Vec<u32>,
}

/// A plain string and its reference ids.
type PlainCase = (String, Vec<u32>);

fn load(name: &str) -> (TokenizerBundle, ChatTemplate, Vec<Case>, Vec<PlainCase>) {
    let tokenizer = TokenizerBundle::load(&shared(&format!("tokenizers/{name}"))).unwrap();
    let template = ChatTemplate::choose(
        &TemplateChoice::Tokenizer,
        tokenizer.chat_template.as_deref(),
        &Default::default(),
        &tokenizer.specials,
        &Default::default(),
    )
    .unwrap();
    let fixtures = read_json(&shared("fixtures/templates/chat_templates.json"));
    let format = RecordFormat {
        formatting: Some(Formatting::Openai),
        ..RecordFormat::default()
    };
    let cases = fixtures[name]["chat_template_cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let mut record = serde_json::Map::new();
            record.insert("messages".into(), case["messages"].clone());
            if let Some(tools) = case.get("tools") {
                record.insert("tools".into(), tools.clone());
            }
            let raw = RawRecord {
                at: RecordRef::new(std::path::Path::new("chat_templates.json"), i, None),
                value: Value::Object(record),
            };
            let Sample::Chat(conversation) = format.convert(&raw, Stage::Sft).unwrap() else {
                panic!("case {i} is not a conversation")
            };
            Case {
                conversation,
                text: case["text"].as_str().unwrap().to_string(),
                generation_prompt_text: case["generation_prompt_text"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                input_ids: ids(&case["input_ids"]),
            }
        })
        .collect();
    let plain = fixtures[name]["plain_encoding_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_string(),
                ids(&c["input_ids"]),
            )
        })
        .collect();
    (tokenizer, template, cases, plain)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check_rendering_and_tokens(name: &str) {
    let (tokenizer, template, cases, plain) = load(name);
    assert!(!cases.is_empty() && !plain.is_empty());
    for (i, case) in cases.iter().enumerate() {
        let c = &case.conversation;
        let text = template.render(&c.messages, &c.tools, false).unwrap();
        assert_eq!(text, case.text, "{name} case {i}: rendered text");
        let prompt = template
            .render(&c.messages[..c.messages.len() - 1], &c.tools, true)
            .unwrap();
        assert_eq!(
            prompt, case.generation_prompt_text,
            "{name} case {i}: generation prompt"
        );
        let encoding = tokenizer
            .hf()
            .unwrap()
            .encode(case.text.as_str(), false)
            .unwrap();
        assert_eq!(
            encoding.get_ids(),
            case.input_ids.as_slice(),
            "{name} case {i}: input ids"
        );
    }
    for (i, (text, expected)) in plain.iter().enumerate() {
        let encoding = tokenizer
            .hf()
            .unwrap()
            .encode(text.as_str(), false)
            .unwrap();
        assert_eq!(
            encoding.get_ids(),
            expected.as_slice(),
            "{name} plain case {i}"
        );
    }
}

#[test]
fn qwen3_template_text_ids_and_generation_prompt_match_transformers() {
    check_rendering_and_tokens("qwen3");
}

#[test]
fn llama3_template_text_ids_and_generation_prompt_match_transformers() {
    check_rendering_and_tokens("llama3");
}

/// What each assistant turn should contribute to the loss, written out from the template's
/// own rules (not from ferrotune's span finder).
fn expected_supervised(name: &str, c: &Conversation) -> Vec<String> {
    let last = c.messages.len() - 1;
    c.messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == Role::Assistant)
        .map(|(i, m)| match name {
            "qwen3" => {
                let calls: Vec<String> = m
                    .tool_calls
                    .iter()
                    .map(|call| {
                        format!(
                            "<tool_call>\n{{\"name\": \"{}\", \"arguments\": {}}}\n</tool_call>",
                            call.name,
                            PyJson::compact().dumps(&call.arguments)
                        )
                    })
                    .collect();
                let mut body = m.content.clone();
                if !body.is_empty() && !calls.is_empty() {
                    body.push('\n');
                }
                body.push_str(&calls.join("\n"));
                // Qwen3 writes an (empty) think block into the final turn only.
                let think = if i == last {
                    "<think>\n\n</think>\n\n"
                } else {
                    ""
                };
                format!("{think}{body}<|im_end|>\n")
            }
            // The original Llama 3 template trims content and drops tool calls.
            "llama3" => format!("{}<|eot_id|>", m.content.trim()),
            _ => unreachable!(),
        })
        .collect()
}

fn check_supervision(name: &str) {
    let (tokenizer, template, cases, _) = load(name);
    let encoder = Encoder {
        tokenizer: &tokenizer,
        template: Some(&template),
        options: EncodeOptions {
            cutoff_len: 100_000,
            ..EncodeOptions::default()
        },
    };
    for (i, case) in cases.iter().enumerate() {
        let encoded = encoder.encode_chat(&case.conversation).unwrap();
        assert_eq!(
            encoded.input_ids, case.input_ids,
            "{name} case {i}: ids are the tokenization of the text"
        );
        let supervised: Vec<String> = encoded
            .runs()
            .into_iter()
            .filter(|(supervised, _)| *supervised)
            .map(|(_, range)| {
                tokenizer
                    .hf()
                    .unwrap()
                    .decode(&encoded.input_ids[range], false)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            supervised,
            expected_supervised(name, &case.conversation),
            "{name} case {i}"
        );
        // Labels are the ids themselves where supervised.
        for (id, label) in encoded.input_ids.iter().zip(&encoded.labels) {
            assert!(*label == -100 || *label == i64::from(*id));
        }
    }
}

#[test]
fn qwen3_supervises_each_reply_with_its_end_of_turn_and_no_prompt() {
    check_supervision("qwen3");
}

#[test]
fn llama3_supervises_each_reply_with_its_end_of_turn_and_no_prompt() {
    check_supervision("llama3");
}

#[test]
fn probed_markers_and_stop_strings() {
    let (_, qwen3, _, _) = load("qwen3");
    assert_eq!(qwen3.markers.end_of_turn, "<|im_end|>\n");
    assert_eq!(qwen3.markers.assistant_header, "<|im_start|>assistant\n");
    assert_eq!(qwen3.stop_strings(), vec!["<|im_end|>".to_string()]);
    assert_eq!(qwen3.tool_loss(true, true, true), None);
    let (_, llama3, _, _) = load("llama3");
    assert_eq!(llama3.markers.end_of_turn, "<|eot_id|>");
    assert_eq!(
        llama3.markers.assistant_header,
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(llama3.stop_strings(), vec!["<|eot_id|>".to_string()]);
    let warning = llama3.tool_loss(true, true, true).unwrap();
    assert!(
        warning.contains("tool definitions") && warning.contains("assistant tool calls"),
        "{warning}"
    );
}
