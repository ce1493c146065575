//! `ferrotune chat` on a tiny random model: one-shot answers are the library's chat turn
//! for the flags given (and `model generate`'s for the same prompt), and the interactive
//! loop keeps (and resets) the conversation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferrotune_testing::cli::{self, stdout};
use ferrotune_testing::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn ferrotune() -> Command {
    cli::command(BIN)
}

fn run(args: &[&str]) -> Output {
    cli::run_ok(BIN, args)
}

fn tiny_model(dir: &Path) -> PathBuf {
    cli::tiny_model(BIN, dir, false)
}

const GREEDY: [&str; 4] = ["--max-new-tokens", "8", "--temperature", "0"];

fn chat_once(model: &Path, prompt: &str, extra: &[&str]) -> String {
    let mut args = vec!["chat", model.to_str().unwrap(), "--prompt", prompt];
    args.extend(GREEDY);
    args.extend(extra);
    let answer = stdout(&run(&args));
    answer
        .strip_suffix('\n')
        .expect("the answer ends with a newline")
        .to_string()
}

/// The library's chat turn on the same model, greedy: what the command must print.
fn library_answer(model: &Path, system: Option<&str>, prompt: &str) -> String {
    use ferrotune_data::conversation::{Message, Role};
    use ferrotune_serve::loading::{self, ModelSource};
    use ferrotune_serve::{ChatModel, SamplingOptions};

    let source = ModelSource::locate(Some(model.to_str().unwrap()), None).unwrap();
    let (tok, template) = loading::tokenizer_and_template(&source, None).unwrap();
    let chat = ChatModel::load(&source, tok, template.unwrap(), Default::default()).unwrap();
    let sampling = SamplingOptions {
        max_new_tokens: 8,
        temperature: Some(0.0),
        top_p: None,
        top_k: None,
        repetition_penalty: None,
        seed: 0,
    };
    let config = sampling.config(model, chat.stop_ids().to_vec()).unwrap();
    let mut messages: Vec<Message> = system
        .map(|s| Message::new(Role::System, s))
        .into_iter()
        .collect();
    messages.push(Message::new(Role::User, prompt));
    chat.reply(&messages, &config).unwrap().text
}

/// `model generate` keeps special tokens in its output; chat shows only text.
fn generate(model: &Path, prompt: &str) -> String {
    let o = run(&[
        "model",
        "generate",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "8",
    ]);
    let mut text = stdout(&o).strip_suffix('\n').unwrap().to_string();
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        text = text.replace(special, "");
    }
    text
}

/// The flags reach the chat turn (the turn's own checks are ferrotune-serve's tests).
#[test]
fn one_shot_answers_are_the_chat_turns() {
    let tmp = TempDir::new("chat");
    let model = tiny_model(tmp.path());
    let answer = chat_once(&model, "Who are you?", &[]);
    assert!(!answer.trim().is_empty(), "empty answer {answer:?}");
    assert_eq!(answer, library_answer(&model, None, "Who are you?"));
    assert_eq!(answer, generate(&model, "Who are you?"));
    let system = chat_once(&model, "Who are you?", &["--system", "You are Ferro."]);
    assert_eq!(
        system,
        library_answer(&model, Some("You are Ferro."), "Who are you?")
    );
    assert_ne!(system, answer);
}

#[test]
fn the_conversation_is_kept_until_reset() {
    let tmp = TempDir::new("chat-loop");
    let model = tiny_model(tmp.path());
    let first = chat_once(&model, "Who are you?", &[]);
    let mut args = vec!["chat", model.to_str().unwrap()];
    args.extend(GREEDY);
    let mut child = ferrotune()
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Who are you?\nWho are you?\n/reset\nWho are you?\n/exit\nnever read\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    let answers: Vec<&str> = out.split_terminator('\n').collect();
    assert_eq!(answers.len(), 3, "{out:?}");
    // The second answer sees the first turn; after /reset the conversation starts over.
    assert_eq!(answers[0], first);
    assert_ne!(answers[1], first);
    assert_eq!(answers[2], first);
    assert!(String::from_utf8_lossy(&o.stderr).contains("conversation reset"));

    // A system message changes the prompt, so the answer.
    let system = chat_once(&model, "Who are you?", &["--system", "You are Ferro."]);
    assert_ne!(system, first);
}
