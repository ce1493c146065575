//! `{{name}}`-style placeholders in identity data, replaced from the config
//! (`placeholders: {name: Ferro}`) or `--placeholder name=Ferro`.

use std::collections::BTreeMap;

use crate::conversation::Sample;

/// Replaces every `{{key}}` (spaces inside the braces allowed) whose key is in `values`.
pub fn replace(text: &str, values: &BTreeMap<String, String>) -> String {
    if values.is_empty() || open_at(text).is_none() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = open_at(rest) {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let key = after[..end].trim();
                match values.get(key) {
                    Some(value) if is_identifier(key) => out.push_str(value),
                    _ => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Where the first `{{` is: every text of every record is searched, and a SIMD scan for
/// two bytes beats `str::find`'s two-way searcher there.
fn open_at(text: &str) -> Option<usize> {
    memchr::memmem::find(text.as_bytes(), b"{{")
}

/// The placeholder names (`{{name}}`) still present in `text`.
pub fn unreplaced(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = open_at(rest) {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let key = after[..end].trim();
        if is_identifier(key) && !found.iter().any(|k| k == key) {
            found.push(key.to_string());
        }
        rest = &after[end + 2..];
    }
    found
}

fn is_identifier(key: &str) -> bool {
    !key.is_empty() && key.len() <= 64 && key.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Replaces placeholders in every text of the sample; returns the names left unreplaced.
pub fn replace_in_sample(sample: &mut Sample, values: &BTreeMap<String, String>) -> Vec<String> {
    let mut left = Vec::new();
    let mut scan = |text: &str| {
        for key in unreplaced(text) {
            if !left.contains(&key) {
                left.push(key);
            }
        }
    };
    match sample {
        Sample::Chat(c) => {
            if !values.is_empty() {
                c.map_text(|t| replace(t, values));
            }
            c.texts().for_each(&mut scan);
        }
        Sample::Text(t) => {
            if !values.is_empty() {
                *t = replace(t, values);
            }
            scan(t);
        }
        Sample::Pair(p) => {
            if !values.is_empty() {
                p.map_text(|t| replace(t, values));
            }
            p.texts().for_each(&mut scan);
        }
        Sample::Feedback(f) => {
            if !values.is_empty() {
                f.conversation.map_text(|t| replace(t, values));
            }
            f.conversation.texts().for_each(&mut scan);
        }
    }
    left
}

/// Parses `key=value` command-line pairs.
pub fn parse_pair(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((k, v)) if is_identifier(k.trim()) => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {pair:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_known_keys_and_reports_the_rest() {
        let values = BTreeMap::from([("name".to_string(), "Ferro".to_string())]);
        let out = replace("I am {{name}}, made by {{author}}. {{ name }}!", &values);
        assert_eq!(out, "I am Ferro, made by {{author}}. Ferro!");
        assert_eq!(unreplaced(&out), vec!["author".to_string()]);
        assert_eq!(
            unreplaced("json {{\"a\": 1}} and {{}}"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn unterminated_braces_are_left_alone() {
        let values = BTreeMap::from([("name".to_string(), "Ferro".to_string())]);
        assert_eq!(replace("a {{name", &values), "a {{name");
    }
}
