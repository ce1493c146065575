//! `ferrotune chat MODEL [--adapter DIR]`: a multi-turn conversation in the terminal,
//! rendered with the chat template saved with the model (the one it was trained with),
//! the answer printed as it is generated.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use ferrotune_data::conversation::{Message, Role};
use ferrotune_model::generate::{Flow, GenerationConfig};
use ferrotune_model::infer::WeightType;
use ferrotune_serve::loading::{self, ModelSource};
use ferrotune_serve::turn::{ChatModel, PromptError, Turn, TurnError, TurnEvent};
use ferrotune_serve::{Completion, SamplingOptions};

use super::sampling::SamplingArgs;

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Model folder or Hub id; a LoRA run's output folder works too (its base is read
    /// from adapter_config.json).
    model: String,
    /// A PEFT LoRA adapter to apply on MODEL (merged in memory).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// System message of the conversation (`/system TEXT` changes it).
    #[arg(long)]
    system: Option<String>,
    /// Answer this one message and exit: only the answer is printed on stdout.
    #[arg(long)]
    prompt: Option<String>,
    /// Inference weights: f32 (as trained), bf16 (half the bytes to read per token) or
    /// q8_0 (8.5 bits a weight) or q4_1 (5 bits), converted when the model loads (an
    /// adapter merged in first); decoding speed follows
    /// the bytes (docs/perf-log/2026-11-26-speed-rounds.md). Default: as the base is
    /// held: f32, bf16 for a 16-bit base, q8_0 for a quantized one (a GGUF file, a 4-bit
    /// run).
    #[arg(long, value_name = "f32|bf16|q8_0|q4_1")]
    weights: Option<WeightType>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

const HELP: &str = "commands: /reset (forget the conversation), /system TEXT (set the system \
                    message and reset), /exit (or end of input); end a line with \\ to continue it";

/// What the conversation needs between turns.
struct Session {
    chat: ChatModel,
    config: GenerationConfig,
    system: Option<String>,
    history: Vec<Message>,
}

impl Session {
    fn messages(&self, user: &str) -> Vec<Message> {
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(Message::new(Role::System, system.as_str()));
        }
        messages.extend(self.history.iter().cloned());
        messages.push(Message::new(Role::User, user));
        messages
    }

    /// Answers `user`, streaming the answer to `out`, and remembers the turn.
    fn answer(&mut self, user: &str, out: &mut impl Write) -> Result<Completion> {
        let messages = self.messages(user);
        let turn = Turn {
            messages: &messages,
            tools: &[],
            config: &self.config,
            extra_stops: &[],
        };
        let done = self
            .chat
            .answer(&turn, |event| match event {
                TurnEvent::Started => Flow::Continue,
                // A closed stdout (`| head`) stops generating.
                TurnEvent::Text(piece) => {
                    if write!(out, "{piece}").and_then(|_| out.flush()).is_err() {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                }
            })
            .map_err(|e| match e {
                TurnError::Prompt(PromptError::Template(e)) => {
                    anyhow!("chat template {}: {e}", self.chat.template().name())
                }
                TurnError::TooLong { tokens, context } => anyhow!(
                    "the conversation is {tokens} tokens, the model's context is {context}: \
                     /reset to start over"
                ),
                TurnError::Generation(e) => e,
                other => anyhow!(other),
            })?;
        self.history.push(Message::new(Role::User, user));
        self.history
            .push(Message::new(Role::Assistant, done.text.as_str()));
        Ok(done)
    }
}

pub fn run(a: ChatArgs) -> Result<()> {
    let source = ModelSource::locate(Some(&a.model), a.adapter.as_deref())?;
    let (tok, template) = loading::tokenizer_and_template(&source, None)?;
    let Some(template) = template else {
        bail!(
            "{} has no chat template (chat_template.jinja or tokenizer_config.json); \
             use `ferrotune model generate --raw` for a base model",
            source.tokenizer_dir().display()
        );
    };
    let chat = ChatModel::load(&source, tok, template, a.weights)?;
    let config =
        SamplingOptions::from(&a.sampling).config(&source.base, chat.stop_ids().to_vec())?;
    let mut session = Session {
        chat,
        config,
        system: a.system.clone(),
        history: Vec::new(),
    };
    let mut stdout = std::io::stdout();
    if let Some(prompt) = &a.prompt {
        session.answer(prompt, &mut stdout)?;
        writeln!(stdout)?;
        return Ok(());
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("chatting with {} ({HELP})", source.name());
    }
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            eprint!("\n> ");
        }
        let Some(line) = read_message(&mut lines, interactive)? else {
            break;
        };
        let line = line.trim();
        match command(line) {
            Some(Command::Exit) => break,
            Some(Command::Reset) => {
                session.history.clear();
                eprintln!("(conversation reset)");
            }
            Some(Command::System(text)) => {
                session.system = (!text.is_empty()).then(|| text.to_string());
                session.history.clear();
                eprintln!("(system message set, conversation reset)");
            }
            Some(Command::Unknown) => eprintln!("unknown command; {HELP}"),
            None if line.is_empty() => {}
            None => {
                if let Err(e) = session.answer(line, &mut stdout) {
                    eprintln!("error: {e:#}");
                }
                writeln!(stdout)?;
            }
        }
    }
    Ok(())
}

/// One message: a line, or several when lines end with a backslash. `None` at the end of
/// input.
fn read_message(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    interactive: bool,
) -> Result<Option<String>> {
    let mut message = String::new();
    loop {
        let Some(line) = lines.next() else {
            return Ok((!message.is_empty()).then_some(message));
        };
        let line = line.context("cannot read standard input")?;
        match line.strip_suffix('\\') {
            Some(part) => {
                message.push_str(part);
                message.push('\n');
                if interactive {
                    eprint!(". ");
                }
            }
            None => {
                message.push_str(&line);
                return Ok(Some(message));
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Command<'a> {
    Exit,
    Reset,
    System(&'a str),
    Unknown,
}

fn command(line: &str) -> Option<Command<'_>> {
    let rest = line.strip_prefix('/')?;
    let (name, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    Some(match name {
        "exit" | "quit" => Command::Exit,
        "reset" | "clear" => Command::Reset,
        "system" => Command::System(arg.trim()),
        _ => Command::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(command("/exit"), Some(Command::Exit));
        assert_eq!(command("/reset"), Some(Command::Reset));
        assert_eq!(
            command("/system  Be brief. "),
            Some(Command::System("Be brief."))
        );
        assert_eq!(command("/system"), Some(Command::System("")));
        assert_eq!(command("/nope"), Some(Command::Unknown));
        assert_eq!(command("hello /exit"), None);
    }

    #[test]
    fn backslash_continues_a_message() {
        let mut lines = ["first \\", "second", "third"]
            .into_iter()
            .map(|s| Ok(s.to_string()));
        assert_eq!(
            read_message(&mut lines, false).unwrap().as_deref(),
            Some("first \nsecond")
        );
        assert_eq!(
            read_message(&mut lines, false).unwrap().as_deref(),
            Some("third")
        );
        assert_eq!(read_message(&mut lines, false).unwrap(), None);
    }
}
