//! Which writing system a sample is in: a model trained on Chinese questions answered
//! in English learns to switch language. Scripts stand in for languages here: that needs
//! no language model and reliably tells the common mix-ups (Chinese vs English) apart,
//! though not two languages of one script (English vs French).

use super::checks::{final_exchange, Hit};
use super::text::{shorten, Script, ScriptProfile};
use super::{Check, Severity};
use crate::conversation::Conversation;

/// Language names in a prompt, with their script: a prompt that names the language of
/// the response ("translate into English", "用英文回答") makes a switch of script right.
const LANGUAGE_NAMES: &[(&str, Script)] = &[
    ("english", Script::Latin),
    ("french", Script::Latin),
    ("german", Script::Latin),
    ("spanish", Script::Latin),
    ("英文", Script::Latin),
    ("英语", Script::Latin),
    ("法语", Script::Latin),
    ("德语", Script::Latin),
    ("西班牙语", Script::Latin),
    ("chinese", Script::Han),
    ("中文", Script::Han),
    ("汉语", Script::Han),
    ("japanese", Script::Kana),
    ("日语", Script::Kana),
    ("日文", Script::Kana),
    ("korean", Script::Hangul),
    ("韩语", Script::Hangul),
    ("russian", Script::Cyrillic),
    ("俄语", Script::Cyrillic),
];

/// Translation without a named target language: any script may be right.
const TRANSLATION: &[&str] = &["translat", "翻译", "译成", "译为"];

/// A response in another script than its prompt (a Chinese question answered in
/// English), and texts without a clear main script. Code blocks are left out: code is
/// Latin whatever the language of the conversation.
pub fn language_mix(c: &Conversation, normalized: &[String]) -> Vec<Hit> {
    let Some((pi, ai)) = final_exchange(c) else {
        return Vec::new();
    };
    let answer = &c.messages[ai];
    let p = ScriptProfile::of(&prose(&normalized[pi]));
    let a = ScriptProfile::of(&prose(&normalized[ai]));
    let prompt = &normalized[pi];
    let named: Vec<Script> = LANGUAGE_NAMES
        .iter()
        .filter(|(name, _)| prompt.contains(name))
        .map(|(_, script)| *script)
        .collect();
    let asked_for = |script: Script| {
        if named.is_empty() {
            TRANSLATION.iter().any(|t| prompt.contains(t))
        } else {
            named.contains(&script)
        }
    };
    let mut hits = Vec::new();
    if let (Some((ps, pshare)), Some((ascript, ashare))) = (p.dominant(), a.dominant()) {
        let clear = p.total() >= 3 && a.total() >= 5 && pshare >= 0.6 && ashare >= 0.6;
        if clear && ps != ascript && a.share(ps) < 0.1 && !asked_for(ascript) {
            hits.push(Hit {
                check: Check::LanguageMix,
                severity: Severity::Warning,
                example: shorten(&answer.content, 100),
                detail: format!(
                    "the prompt is in {} script, the response in {}",
                    ps.name(),
                    ascript.name()
                ),
            });
        }
    }
    hits.extend(mixed_scripts(
        &[("prompt", &p), ("response", &a)],
        &answer.content,
    ));
    hits
}

/// Texts of 20+ units where no script has 70%: informational, since technical text
/// legitimately mixes (Chinese prose with English terms).
pub fn mixed_scripts(profiles: &[(&str, &ScriptProfile)], example: &str) -> Option<Hit> {
    profiles.iter().find_map(|(what, p)| {
        let (_, share) = p.dominant()?;
        if p.total() < 20 || share >= 0.7 {
            return None;
        }
        let mix: Vec<String> = p
            .counts
            .iter()
            .map(|(s, n)| format!("{} {:.0}%", s.name(), 100.0 * *n as f64 / p.total() as f64))
            .collect();
        Some(Hit {
            check: Check::LanguageMix,
            severity: Severity::Info,
            example: shorten(example, 100),
            detail: format!("the {what} mixes scripts: {}", mix.join(", ")),
        })
    })
}

/// The text without its fenced code blocks (an unclosed fence runs to the end).
fn prose(text: &str) -> String {
    text.split("```").step_by(2).collect::<Vec<_>>().join(" ")
}
