//! The checks that look at one record at a time, and what the group checks need from it.

use std::collections::{BTreeMap, HashSet};

use super::language::{language_mix, mixed_scripts};
use super::load::{Measure, Record};
use super::minhash::{MinHasher, Signature};
use super::text::{excerpt_around, hash64, normalize, shorten, units, ScriptProfile};
use super::{Check, CheckOptions, Severity};
use crate::conversation::{Conversation, Feedback, Message, PreferencePair, Role, Sample};
use crate::stats::percentile_of_counts;

/// Markers of the common chat templates: in the data they either break rendering or
/// teach the model to write them mid-text.
const CONTROL_TOKENS: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<s>",
    "</s>",
];

/// Reasoning markers: expected in assistant replies of reasoning data, suspicious
/// anywhere else.
const THINK_TOKENS: &[&str] = &["<think>", "</think>"];

/// One finding about one record.
#[derive(Debug, Clone)]
pub struct Hit {
    pub check: Check,
    pub severity: Severity,
    pub example: String,
    pub detail: String,
}

/// What the checks learn about a record, for the group checks and the summary.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub hits: Vec<Hit>,
    pub length: Option<usize>,
    /// Dominant script of the whole record.
    pub script: &'static str,
    /// 128-bit key of the normalized record.
    pub exact: Option<u128>,
    /// Keys of everything before the final turn and of the final turn.
    pub prompt_answer: Option<(u64, u64)>,
    pub signature: Option<Signature>,
    /// The normalized instruction (first user turn, or the document), for diversity.
    pub instruction: Option<String>,
}

/// The text a finding about the record shows: its first prompt, shortened.
pub fn headline(record: &Record) -> String {
    match &record.sample {
        Ok(Sample::Text(t)) => shorten(t, 100),
        Ok(
            Sample::Chat(c)
            | Sample::Pair(PreferencePair { chosen: c, .. })
            | Sample::Feedback(Feedback {
                conversation: c, ..
            }),
        ) => shorten(
            c.messages
                .iter()
                .find(|m| m.role == Role::User)
                .map_or("", |m| m.content.as_str()),
            100,
        ),
        Err(_) => String::new(),
    }
}

/// The per-record checks with their word lists prepared once.
pub struct Scanner {
    control: Vec<String>,
    blocked_words: HashSet<String>,
    blocked_phrases: Vec<String>,
    min_response_units: usize,
    hasher: MinHasher,
}

impl Scanner {
    pub fn new(options: &CheckOptions) -> Self {
        let mut control: Vec<String> = CONTROL_TOKENS.iter().map(|s| s.to_string()).collect();
        for t in &options.control_tokens {
            let usable = t.chars().count() >= 3 && !t.chars().all(char::is_alphanumeric);
            if usable && !control.contains(t) && !THINK_TOKENS.contains(&t.as_str()) {
                control.push(t.clone());
            }
        }
        // Longest first, so `<|im_end|>` is reported rather than a shorter prefix token.
        control.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        let mut blocked_words = HashSet::new();
        let mut blocked_phrases = Vec::new();
        for term in &options.blocklist {
            let norm = normalize(term);
            match units(&norm).as_slice() {
                [] => {}
                [one] if *one == norm => {
                    blocked_words.insert(norm.clone());
                }
                _ => blocked_phrases.push(norm),
            }
        }
        Scanner {
            control,
            blocked_words,
            blocked_phrases,
            min_response_units: options.min_response_units,
            hasher: MinHasher::default(),
        }
    }

    pub fn facts(&self, record: &Record, measure: &Measure) -> Facts {
        let sample = match &record.sample {
            Ok(sample) => sample,
            Err(problem) => {
                return Facts {
                    hits: vec![unreadable(record, problem)],
                    script: "none",
                    ..Facts::default()
                }
            }
        };
        let mut hits = Vec::new();
        // A pair is checked as its prompt with the chosen answer, and for answers that
        // do not differ.
        let chosen;
        let sample = match sample {
            Sample::Pair(pair) => {
                hits.extend(identical_answers(pair));
                chosen = Sample::Chat(pair.chosen.clone());
                &chosen
            }
            Sample::Feedback(f) => {
                chosen = Sample::Chat(f.conversation.clone());
                &chosen
            }
            other => other,
        };
        // (what the text is, the text): a role, or `document` for pretraining text.
        let texts: Vec<(&str, &str)> = match sample.conversation() {
            None => match sample {
                Sample::Text(t) => vec![("document", t.as_str())],
                _ => Vec::new(),
            },
            Some(c) => c
                .messages
                .iter()
                .map(|m| (m.role.as_str(), m.content.as_str()))
                .collect(),
        };
        if let Some(key) = record.unreplaced.first() {
            let needle = format!("{{{{{key}");
            let (text, at) = texts
                .iter()
                .find_map(|(_, t)| Some((*t, t.find(&needle).or_else(|| t.find("{{"))?)))
                .unwrap_or(("", 0));
            let names: Vec<String> = record
                .unreplaced
                .iter()
                .map(|k| format!("{{{{{k}}}}}"))
                .collect();
            hits.push(Hit {
                check: Check::Placeholder,
                severity: Severity::Error,
                example: excerpt_around(text, at, 100),
                detail: format!(
                    "{} not replaced: set `placeholders:` in the config or --placeholder {}=VALUE",
                    names.join(", "),
                    record.unreplaced[0]
                ),
            });
        }
        hits.extend(self.control_tokens(&texts));
        let normalized: Vec<String> = texts.iter().map(|(_, t)| normalize(t)).collect();
        hits.extend(self.blocklist(&normalized));
        let mut joined = normalized.join(" ");
        let profile = ScriptProfile::of(&joined);
        if let Sample::Chat(c) = sample {
            // Tool calls are part of what is trained: two samples that differ only in
            // the function called are not near-duplicates.
            for call in c.messages.iter().flat_map(|m| &m.tool_calls) {
                joined.push(' ');
                joined.push_str(&normalize(&format!("{} {}", call.name, call.arguments)));
            }
        }
        let mut facts = Facts {
            length: Some(measure.length(sample)),
            script: profile.label(),
            signature: self.hasher.signature(&joined, 3),
            ..Facts::default()
        };
        match sample {
            Sample::Pair(_) | Sample::Feedback(_) => {
                unreachable!("pairs and KTO examples are checked as a conversation")
            }
            Sample::Text(t) => {
                facts.exact = Some(key128(&joined));
                facts.instruction = Some(normalized[0].clone());
                hits.extend(mixed_scripts(&[("text", &profile)], t));
            }
            Sample::Chat(c) => {
                hits.extend(self.response_checks(c, &normalized));
                hits.extend(broken_tool_calls(c));
                hits.extend(language_mix(c, &normalized));
                let (exact, prompt_answer) = conversation_keys(c, &normalized);
                facts.exact = Some(exact);
                facts.prompt_answer = prompt_answer;
                let first_user = c.messages.iter().find(|m| m.role == Role::User);
                let instruction =
                    first_user.map(
                        |m| match m.extra.get("instruction").and_then(|v| v.as_str()) {
                            Some(i) if !i.trim().is_empty() => i,
                            _ => m.content.as_str(),
                        },
                    );
                facts.instruction = instruction.map(normalize);
            }
        }
        facts.hits = hits;
        facts
    }

    fn control_tokens(&self, texts: &[(&str, &str)]) -> Vec<Hit> {
        let mut hits = Vec::new();
        for (role, text) in texts {
            if let Some((at, token)) = self.find_control(text) {
                hits.push(Hit {
                    check: Check::ControlToken,
                    severity: Severity::Error,
                    example: excerpt_around(text, at, 100),
                    detail: format!("{token} inside {role} text"),
                });
                break;
            }
        }
        let reasoning = ["assistant", "document"];
        for (role, text) in texts.iter().filter(|(r, _)| !reasoning.contains(r)) {
            if let Some((at, token)) = THINK_TOKENS.iter().find_map(|t| Some((text.find(t)?, *t))) {
                hits.push(Hit {
                    check: Check::ControlToken,
                    severity: Severity::Warning,
                    example: excerpt_around(text, at, 100),
                    detail: format!("{token} inside {role} text (reasoning markers belong in assistant replies)"),
                });
                break;
            }
        }
        hits
    }

    /// The first control token in `text`: only positions of `<` and `[` are tried for
    /// tokens starting with them, which keeps the scan linear.
    fn find_control(&self, text: &str) -> Option<(usize, String)> {
        for (at, _) in text.match_indices(['<', '[']) {
            let rest = &text[at..];
            if let Some(t) = self.control.iter().find(|t| rest.starts_with(t.as_str())) {
                return Some((at, t.clone()));
            }
        }
        self.control
            .iter()
            .filter(|t| !t.starts_with(['<', '[']))
            .find_map(|t| Some((text.find(t.as_str())?, t.clone())))
    }

    fn blocklist(&self, normalized: &[String]) -> Option<Hit> {
        if self.blocked_words.is_empty() && self.blocked_phrases.is_empty() {
            return None;
        }
        for text in normalized {
            for unit in units(text) {
                if self.blocked_words.contains(unit) {
                    let at = unit.as_ptr() as usize - text.as_ptr() as usize;
                    return Some(blocked(text, at, unit));
                }
            }
            for phrase in &self.blocked_phrases {
                if let Some(at) = find_phrase(text, phrase) {
                    return Some(blocked(text, at, phrase));
                }
            }
        }
        None
    }

    /// `normalized` holds the normalized content of every message.
    fn response_checks(&self, c: &Conversation, normalized: &[String]) -> Vec<Hit> {
        let mut hits = Vec::new();
        for (i, m) in c.messages.iter().enumerate() {
            if m.role == Role::Assistant && m.tool_calls.is_empty() && m.content.trim().is_empty() {
                hits.push(Hit {
                    check: Check::EmptyResponse,
                    severity: Severity::Error,
                    example: format!("{:?}", m.content),
                    detail: format!("assistant message {i} is blank"),
                });
                return hits;
            }
        }
        let Some((p, a)) = final_exchange(c) else {
            return hits;
        };
        let answer = &c.messages[a];
        let (prompt_norm, answer_norm) = (&normalized[p], &normalized[a]);
        let answer_units = units(answer_norm).len();
        if answer_units < self.min_response_units {
            hits.push(Hit {
                check: Check::ShortResponse,
                severity: Severity::Warning,
                example: shorten(&answer.content, 100),
                detail: format!(
                    "the final response has {answer_units} word(s) (fewer than {})",
                    self.min_response_units
                ),
            });
        }
        // The whole prompt, most of it, one whole line of it, or its first lines (the
        // instruction, when an input follows), with at most a couple of words added.
        let copies = |part: &str| {
            answer_norm == part
                || (answer_norm.starts_with(part) && units(&answer_norm[part.len()..]).len() < 3)
        };
        let echoes = !answer_norm.is_empty()
            && (copies(prompt_norm)
                || (answer_units >= 5
                    && prompt_norm.contains(answer_norm.as_str())
                    && answer_norm.len() * 10 >= prompt_norm.len() * 8)
                || prompt_parts(&c.messages[p].content)
                    .any(|part| units(&part).len() >= 3 && copies(&part)));
        if echoes {
            hits.push(Hit {
                check: Check::RepeatsPrompt,
                severity: Severity::Warning,
                example: shorten(&answer.content, 100),
                detail: "the response repeats the prompt".into(),
            });
        }
        hits
    }
}

/// Each line of a prompt, and each run of its first lines, normalized.
fn prompt_parts(prompt: &str) -> impl Iterator<Item = String> + '_ {
    let lines: Vec<&str> = prompt.lines().filter(|l| !l.trim().is_empty()).collect();
    let heads = (2..lines.len()).map({
        let lines = lines.clone();
        move |n| normalize(&lines[..n].join("\n"))
    });
    lines.into_iter().map(normalize).chain(heads)
}

/// A record the format rejected. Empty replies and tool calls that are not JSON are
/// rejected by [`crate::format`] before any sample exists, so its messages are mapped
/// back to those checks (the tests pin the wording).
fn unreadable(record: &Record, problem: &str) -> Hit {
    let check = if problem.contains("neither content nor tool calls") {
        Check::EmptyResponse
    } else if problem.contains("tool call is not valid JSON")
        || problem.contains("tool call list is empty")
        || (problem.contains("column") && problem.contains("is not valid JSON"))
    {
        Check::BrokenToolCall
    } else {
        Check::InvalidRecord
    };
    let example = match &record.raw {
        Some(raw) => shorten(&raw.to_string(), 100),
        None => format!("{}", record.at),
    };
    Hit {
        check,
        severity: Severity::Error,
        example,
        detail: format!("{}: {problem}", record.at),
    }
}

/// A preference pair whose answers are the same after normalization: it teaches nothing
/// (the DPO loss of such a pair is constant) and usually means a column was mapped twice.
fn identical_answers(pair: &PreferencePair) -> Option<Hit> {
    let (chosen, rejected) = pair.answers();
    let same = normalize(&chosen.content) == normalize(&rejected.content)
        && chosen.tool_calls == rejected.tool_calls;
    same.then(|| Hit {
        check: Check::IdenticalAnswers,
        severity: Severity::Error,
        example: shorten(&chosen.content, 100),
        detail: "the chosen and the rejected answer are the same".into(),
    })
}

fn blocked(text: &str, at: usize, term: &str) -> Hit {
    Hit {
        check: Check::Blocklist,
        severity: Severity::Error,
        example: excerpt_around(text, at, 100),
        detail: format!("contains blocklisted {term:?}"),
    }
}

/// `phrase` in `text` on word boundaries (CJK phrases need none).
fn find_phrase(text: &str, phrase: &str) -> Option<usize> {
    let word_edge = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
    text.match_indices(phrase).map(|(at, _)| at).find(|&at| {
        let before = text[..at].chars().next_back();
        let after = text[at + phrase.len()..].chars().next();
        let first = phrase.chars().next();
        let last = phrase.chars().next_back();
        let cjk = |c: Option<char>| c.is_some_and(super::text::is_cjk);
        (cjk(first) || !word_edge(before)) && (cjk(last) || !word_edge(after))
    })
}

/// Indices of the last user turn and of the final assistant reply (when it is text,
/// not a tool call).
pub(super) fn final_exchange(c: &Conversation) -> Option<(usize, usize)> {
    let a = c.messages.len().checked_sub(1)?;
    let answer = &c.messages[a];
    if answer.role != Role::Assistant || !answer.tool_calls.is_empty() {
        return None;
    }
    let p = c.messages.iter().rposition(|m| m.role == Role::User)?;
    Some((p, a))
}

fn broken_tool_calls(c: &Conversation) -> Option<Hit> {
    for (i, m) in c.messages.iter().enumerate() {
        for call in &m.tool_calls {
            if let serde_json::Value::String(s) = &call.arguments {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(s) {
                    return Some(Hit {
                        check: Check::BrokenToolCall,
                        severity: Severity::Error,
                        example: shorten(s, 100),
                        detail: format!(
                            "message {i}: arguments of the call of {} are not valid JSON: {e}",
                            call.name
                        ),
                    });
                }
            }
        }
    }
    None
}

/// The exact key of a conversation (roles, normalized texts, tool calls and tools), and
/// the keys of its prompt (everything before the final turn) and of its final turn.
fn conversation_keys(c: &Conversation, normalized: &[String]) -> (u128, Option<(u64, u64)>) {
    let turn = |(m, text): (&Message, &String)| {
        let mut s = format!("{}\u{1}{text}", m.role);
        for call in &m.tool_calls {
            s.push_str(&format!("\u{1}{}\u{1}{}", call.name, call.arguments));
        }
        s.push('\u{2}');
        s
    };
    let turns: Vec<String> = c.messages.iter().zip(normalized).map(turn).collect();
    let tools = serde_json::Value::Array(c.tools.clone()).to_string();
    let all = format!("{}\u{3}{tools}", turns.concat());
    let prompt_answer = match turns.split_last() {
        Some((last, before)) if c.messages.last().map(|m| m.role) == Some(Role::Assistant) => {
            let prompt = format!("{}\u{3}{tools}", before.concat());
            Some((hash64(prompt.as_bytes(), 11), hash64(last.as_bytes(), 12)))
        }
        _ => None,
    };
    (key128(&all), prompt_answer)
}

fn key128(text: &str) -> u128 {
    (u128::from(hash64(text.as_bytes(), 1)) << 64) | u128::from(hash64(text.as_bytes(), 2))
}

/// Samples far longer than the rest (beyond p99 and over 3x the median, in datasets of
/// 10+ records, where a percentile means something) or over `cutoff_len` tokens.
pub struct LengthRule {
    median: usize,
    p99: usize,
    enough: bool,
    cutoff: Option<usize>,
    unit: &'static str,
}

impl LengthRule {
    /// From a dataset's length histogram (length -> records).
    pub fn new(
        histogram: &BTreeMap<usize, usize>,
        measure: &Measure,
        cutoff_len: Option<usize>,
    ) -> Self {
        let total: usize = histogram.values().sum();
        LengthRule {
            median: percentile_of_counts(histogram, 50.0),
            p99: percentile_of_counts(histogram, 99.0),
            enough: total >= 10,
            cutoff: cutoff_len.filter(|_| matches!(measure, Measure::Tokens { .. })),
            unit: measure.unit(),
        }
    }

    /// Why a sample of `len` is an outlier, if it is.
    pub fn outlier(&self, len: usize) -> Option<String> {
        let (unit, median, p99) = (self.unit, self.median, self.p99);
        if let Some(cutoff) = self.cutoff.filter(|&c| len > c) {
            Some(format!(
                "{len} {unit}, over cutoff_len {cutoff} (truncated or dropped in training)"
            ))
        } else if self.enough && len >= p99 && len > 3 * median {
            Some(format!(
                "{len} {unit}: in the top 1% (p99 {p99}) and over 3x the median ({median})"
            ))
        } else {
            None
        }
    }
}
