//! The chat turn on a tiny random model: answers are greedy-deterministic, equal plain
//! generation from the prompt the saved template renders, follow that template, and see
//! the whole conversation (earlier turns, the system message).

mod common;

use std::path::Path;

use ferrotune_data::conversation::{Message, Role};
use ferrotune_model::generate::{generate, Flow};
use ferrotune_serve::turn::{Turn, TurnEvent};
use ferrotune_serve::ChatModel;
use ferrotune_testing::TempDir;

fn user(text: &str) -> Message {
    Message::new(Role::User, text)
}

fn answer(dir: &Path, chat: &ChatModel, messages: &[Message]) -> String {
    let config = common::greedy(dir, chat, 8);
    chat.reply(messages, &config).unwrap().text
}

/// The answer by hand: the template's rendering, plain greedy generation, special
/// tokens removed from the decoded text.
fn generated(dir: &Path, chat: &ChatModel, messages: &[Message]) -> String {
    let text = chat.template().render(messages, &[], true).unwrap();
    let tok = chat.tokenizer();
    let ids = tok.hf().unwrap().encode(text.as_str(), false).unwrap();
    let config = common::greedy(dir, chat, 8);
    let new = generate(chat.model(), ids.get_ids(), &config, |_| Flow::Continue).unwrap();
    let mut text = tok.hf().unwrap().decode(&new, false).unwrap();
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        text = text.replace(special, "");
    }
    text
}

#[test]
fn answers_are_greedy_and_rendered_with_the_saved_template() {
    let tmp = TempDir::new("serve-turn");
    let dir = common::tiny_model(tmp.path());
    let chat = common::chat_model(&dir);
    let question = [user("Who are you?")];
    let first = answer(&dir, &chat, &question);
    assert!(!first.trim().is_empty(), "empty answer {first:?}");
    assert_eq!(first, answer(&dir, &chat, &question));
    assert_eq!(first, generated(&dir, &chat, &question));

    // The template saved with the model decides the prompt: another template, another
    // answer, and still the one plain generation gives with that template.
    let other = tmp.path().join("other-template");
    std::fs::create_dir_all(&other).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), other.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        other.join("chat_template.jinja"),
        "{% for m in messages %}### {{ m.role }}:\n{{ m.content }}<|im_end|>\n{% endfor %}\
         {% if add_generation_prompt %}### assistant:\n{% endif %}",
    )
    .unwrap();
    let other_chat = common::chat_model(&other);
    let answer_other = answer(&other, &other_chat, &question);
    assert_ne!(first, answer_other);
    assert_eq!(answer_other, generated(&other, &other_chat, &question));
}

#[test]
fn the_answer_sees_the_whole_conversation() {
    let tmp = TempDir::new("serve-turn-history");
    let dir = common::tiny_model(tmp.path());
    let chat = common::chat_model(&dir);
    let first = answer(&dir, &chat, &[user("Who are you?")]);
    // A second turn sees the first; the same question alone gets the first answer again.
    let second = answer(
        &dir,
        &chat,
        &[
            user("Who are you?"),
            Message::new(Role::Assistant, first.as_str()),
            user("Who are you?"),
        ],
    );
    assert_ne!(second, first);
    assert_eq!(answer(&dir, &chat, &[user("Who are you?")]), first);
    // A system message changes the prompt, so the answer.
    let system = answer(
        &dir,
        &chat,
        &[
            Message::new(Role::System, "You are Ferro."),
            user("Who are you?"),
        ],
    );
    assert_ne!(system, first);
}

#[test]
fn streamed_pieces_add_up_to_the_answer_after_one_start() {
    let tmp = TempDir::new("serve-turn-stream");
    let dir = common::tiny_model(tmp.path());
    let chat = common::chat_model(&dir);
    let messages = [user("Who are you?")];
    let config = common::greedy(&dir, &chat, 8);
    let turn = Turn {
        messages: &messages,
        tools: &[],
        config: &config,
        extra_stops: &[],
    };
    let mut starts = 0;
    let mut pieces = Vec::new();
    let done = chat
        .answer(&turn, |event| {
            match event {
                TurnEvent::Started => {
                    assert!(pieces.is_empty(), "text before the start");
                    starts += 1;
                }
                TurnEvent::Text(piece) => pieces.push(piece.to_string()),
            }
            Flow::Continue
        })
        .unwrap();
    assert_eq!(starts, 1);
    assert!(!pieces.is_empty());
    assert_eq!(pieces.concat(), done.text);
    assert_eq!(done.text, answer(&dir, &chat, &messages));
    assert!((1..=8).contains(&done.completion_tokens), "{done:?}");
    assert_eq!(
        done.prompt_tokens,
        chat.prompt(&messages, &[]).unwrap().ids.len()
    );

    // Stopping at the start generates nothing.
    let cancelled = chat.answer(&turn, |_| Flow::Stop);
    assert!(
        matches!(cancelled, Err(ferrotune_serve::TurnError::Cancelled)),
        "{cancelled:?}"
    );
}
