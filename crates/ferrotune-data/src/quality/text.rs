//! Text primitives of the quality checks: normalization, CJK-aware units, scripts and a
//! stable hash.
//!
//! Chinese and Japanese are written without spaces, so splitting on whitespace would
//! make a whole sentence one "word": here every Han or kana character is a unit of its
//! own, while runs of other letters and digits are words. Shingles, distinct-n and the
//! blocklist all work on these units, so they behave the same on English and Chinese.

use std::collections::BTreeMap;

/// Lowercases, folds full-width ASCII to ASCII, drops zero-width characters and
/// collapses whitespace, so that copies differing only in such details compare equal.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_whitespace() {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c.to_ascii_lowercase());
            continue;
        }
        let c = match c {
            '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0).unwrap_or(c),
            '\u{3000}' => ' ',
            '\u{200b}'..='\u{200d}' | '\u{feff}' => continue,
            c => c,
        };
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// Han ideographs and Japanese kana: the characters that are units on their own.
pub fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{4e00}'..='\u{9fff}'
        | '\u{3400}'..='\u{4dbf}'
        | '\u{f900}'..='\u{faff}'
        | '\u{20000}'..='\u{2a6df}'
        | '\u{3040}'..='\u{309f}'
        | '\u{30a0}'..='\u{30ff}')
}

/// The units of a (normalized) text: words of letters and digits, and single CJK
/// characters. Punctuation and spaces separate units and are not units themselves.
pub fn units(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() || (c == '\'' && start.is_some()) {
                start.get_or_insert(i);
            } else if let Some(s) = start.take() {
                out.push(&text[s..i]);
            }
        } else if is_cjk(c) {
            if let Some(s) = start.take() {
                out.push(&text[s..i]);
            }
            out.push(&text[i..i + c.len_utf8()]);
        } else if c.is_alphanumeric() {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            out.push(&text[s..i]);
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// Writing systems told apart by the language checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Script {
    Latin,
    Han,
    Kana,
    Hangul,
    Cyrillic,
    Greek,
    Arabic,
    Hebrew,
    Devanagari,
    Thai,
    Other,
}

impl Script {
    pub fn name(self) -> &'static str {
        match self {
            Script::Latin => "latin",
            Script::Han => "han",
            Script::Kana => "kana",
            Script::Hangul => "hangul",
            Script::Cyrillic => "cyrillic",
            Script::Greek => "greek",
            Script::Arabic => "arabic",
            Script::Hebrew => "hebrew",
            Script::Devanagari => "devanagari",
            Script::Thai => "thai",
            Script::Other => "other",
        }
    }
}

/// The script of a letter; `None` for digits, punctuation and symbols.
pub fn script_of(c: char) -> Option<Script> {
    if !c.is_alphabetic() {
        return None;
    }
    Some(match c as u32 {
        0x0041..=0x024f | 0x1e00..=0x1eff => Script::Latin,
        0x0370..=0x03ff => Script::Greek,
        0x0400..=0x052f => Script::Cyrillic,
        0x0590..=0x05ff => Script::Hebrew,
        0x0600..=0x06ff | 0x0750..=0x077f => Script::Arabic,
        0x0900..=0x097f => Script::Devanagari,
        0x0e00..=0x0e7f => Script::Thai,
        0x3040..=0x30ff => Script::Kana,
        0x1100..=0x11ff | 0xac00..=0xd7af => Script::Hangul,
        _ if is_cjk(c) => Script::Han,
        _ => Script::Other,
    })
}

/// How many units of a text are in each script (a unit counts for the script of its
/// first letter), so that one Chinese character weighs as much as one English word.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScriptProfile {
    pub counts: BTreeMap<Script, usize>,
}

impl ScriptProfile {
    pub fn of(text: &str) -> Self {
        let mut counts = BTreeMap::new();
        for unit in units(text) {
            if let Some(script) = unit.chars().find_map(script_of) {
                *counts.entry(script).or_insert(0) += 1;
            }
        }
        ScriptProfile { counts }
    }

    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    pub fn share(&self, script: Script) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        *self.counts.get(&script).unwrap_or(&0) as f64 / total as f64
    }

    /// The script with most units (Japanese kana pull Han characters along, since
    /// Japanese mixes both), with its share.
    pub fn dominant(&self) -> Option<(Script, f64)> {
        let mut counts = self.counts.clone();
        if let Some(kana) = counts.get(&Script::Kana).copied() {
            let han = counts.remove(&Script::Han).unwrap_or(0);
            counts.insert(Script::Kana, kana + han);
        }
        let total: usize = counts.values().sum();
        let (&script, &n) = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
        Some((script, n as f64 / total as f64))
    }

    /// The name of the dominant script, or `none` for text without letters.
    pub fn label(&self) -> &'static str {
        self.dominant().map_or("none", |(s, _)| s.name())
    }
}

/// A 64-bit hash that is the same on every platform and run (unlike std's hasher), so
/// reports and `--fix` output are reproducible.
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    mix64(h)
}

/// The SplitMix64 finalizer: spreads every input bit over the whole word.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// At most `max` characters of the text on one line, with an ellipsis when cut.
pub fn shorten(text: &str, max: usize) -> String {
    let flat: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(max + 1)
        .collect();
    if flat.chars().count() > max {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        flat
    }
}

/// A short excerpt around byte offset `at` of `text`, so an example shows the problem
/// rather than the start of a long record.
pub fn excerpt_around(text: &str, at: usize, max: usize) -> String {
    let mut start = at.saturating_sub(max / 3).min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let prefix = if start > 0 { "…" } else { "" };
    format!("{prefix}{}", shorten(&text[start..], max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_split_cjk_by_character_and_words_by_space() {
        let t = normalize("Hello,  WORLD！ 你好世界 it's");
        assert_eq!(t, "hello, world! 你好世界 it's");
        assert_eq!(
            units(&t),
            vec!["hello", "world", "你", "好", "世", "界", "it's"]
        );
    }

    #[test]
    fn dominant_script() {
        assert_eq!(ScriptProfile::of("这是一个测试 ok").label(), "han");
        assert_eq!(ScriptProfile::of("This is a test").label(), "latin");
        assert_eq!(ScriptProfile::of("これはテストです").label(), "kana");
        assert_eq!(ScriptProfile::of("123 !!").label(), "none");
    }

    #[test]
    fn shorten_cuts_on_characters() {
        assert_eq!(shorten("你好世界", 3), "你好…");
        assert_eq!(shorten("a\n b", 10), "a b");
    }
}
