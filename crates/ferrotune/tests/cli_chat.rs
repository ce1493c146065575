//! `ferrotune chat` on a tiny random model: one-shot answers are greedy-deterministic,
//! equal `model generate`'s for the same rendered prompt, follow the template saved with
//! the model, and the interactive loop keeps (and resets) the conversation.

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

#[test]
fn one_shot_answers_are_greedy_and_rendered_with_the_saved_template() {
    let tmp = TempDir::new("chat");
    let model = tiny_model(tmp.path());
    let answer = chat_once(&model, "Who are you?", &[]);
    assert!(!answer.trim().is_empty(), "empty answer {answer:?}");
    assert_eq!(answer, chat_once(&model, "Who are you?", &[]));
    assert_eq!(answer, generate(&model, "Who are you?"));

    // The template saved with the model decides the prompt: another template, another
    // answer, and still the one `model generate` gives with that template.
    let other = tmp.path().join("other-template");
    std::fs::create_dir_all(&other).unwrap();
    for entry in std::fs::read_dir(&model).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), other.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        other.join("chat_template.jinja"),
        "{% for m in messages %}### {{ m.role }}:\n{{ m.content }}<|im_end|>\n{% endfor %}\
         {% if add_generation_prompt %}### assistant:\n{% endif %}",
    )
    .unwrap();
    let answer_other = chat_once(&other, "Who are you?", &[]);
    assert_ne!(answer, answer_other);
    assert_eq!(answer_other, generate(&other, "Who are you?"));
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
