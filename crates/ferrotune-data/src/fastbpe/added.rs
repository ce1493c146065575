//! Added tokens (special or not) split out of the text before anything else, exactly as
//! the tokenizers crate's `AddedVocabulary::find_matches` does: leftmost-longest matching
//! with aho-corasick, then `single_word`, `lstrip` and `rstrip` applied to each match.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

/// The same definitions of a word character and a space as the tokenizers crate.
static STARTS_WITH_WORD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\w").unwrap());
static ENDS_WITH_WORD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\w$").unwrap());
static SPACES_AT_START: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\s*").unwrap());
static SPACES_AT_END: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\s*$").unwrap());

#[derive(Debug, Clone)]
pub(crate) struct AddedToken {
    pub id: u32,
    pub content: String,
    pub single_word: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    /// Leading and trailing whitespace characters (`Ġ` counts), for trimmed offsets.
    pub spaces: (u32, u32),
}

impl AddedToken {
    pub(crate) fn new(
        id: u32,
        content: &str,
        single_word: bool,
        lstrip: bool,
        rstrip: bool,
    ) -> Self {
        let space = |c: &char| *c == '\u{120}' || c.is_whitespace();
        let lead = content.chars().take_while(space).count() as u32;
        let trail = content.chars().rev().take_while(space).count() as u32;
        AddedToken {
            id,
            content: content.to_string(),
            single_word,
            lstrip,
            rstrip,
            spaces: (lead, trail),
        }
    }
}

/// One aho-corasick automaton over a set of added tokens.
pub(crate) struct Matcher {
    automaton: AhoCorasick,
    tokens: Vec<AddedToken>,
}

impl Matcher {
    /// `None` for an empty set.
    pub(crate) fn new(tokens: Vec<AddedToken>) -> Option<Matcher> {
        if tokens.is_empty() {
            return None;
        }
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|t| t.content.as_str()))
            .ok()?;
        Some(Matcher { automaton, tokens })
    }

    /// Calls `segment(Some(token), start, end)` for each added token in `sentence` and
    /// `segment(None, start, end)` for the text between them; together they cover it.
    pub(crate) fn split<E>(
        &self,
        sentence: &str,
        mut segment: impl FnMut(Option<&AddedToken>, usize, usize) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut start_offset = 0;
        for mat in self.automaton.find_iter(sentence) {
            let (mut start, mut stop) = (mat.start(), mat.end());
            let token = &self.tokens[mat.pattern().as_usize()];
            if token.single_word {
                let start_space = start == 0 || !ENDS_WITH_WORD.is_match(&sentence[..start]);
                let stop_space =
                    stop == sentence.len() || !STARTS_WITH_WORD.is_match(&sentence[stop..]);
                if !stop_space || !start_space {
                    continue;
                }
            }
            if token.lstrip {
                let new_start = SPACES_AT_END
                    .find(&sentence[..start])
                    .map_or(start, |m| m.start());
                start = new_start.max(start_offset);
            }
            if token.rstrip {
                stop += SPACES_AT_START
                    .find(&sentence[stop..])
                    .map_or(0, |m| m.end());
            }
            if start_offset < start {
                segment(None, start_offset, start)?;
            }
            segment(Some(token), start, stop)?;
            start_offset = stop;
        }
        if start_offset < sentence.len() {
            segment(None, start_offset, sentence.len())?;
        }
        Ok(())
    }
}
