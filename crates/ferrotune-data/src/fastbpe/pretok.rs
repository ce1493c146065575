//! Pre-tokenizer splits with regex-automata (the `regex` crate's engine), matching the
//! tokenizers crate's fancy-regex splits.
//!
//! The GPT-2, Qwen2/3 and Llama 3 patterns end in `\s+(?!\S)|\s+`, the only look-around
//! they use. It is replaced by `\s+`: when that last alternative is the one that matched
//! (no earlier alternative matches at that position), and the run of two or more
//! whitespace characters is followed by more text, the run's last character is given back
//! (a backtracking engine's `\s+(?!\S)` stops one character short there; at the end of the
//! text it takes the whole run). The other alternatives are plain regular expressions, and
//! leftmost-first matching picks what a backtracking engine picks. Any other look-around,
//! back-reference or syntax regex-automata rejects makes the pattern unsupported.

use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};

use super::scan::Scanner;

/// The tail that is rewritten.
const WS_TAIL: &str = r"\s+(?!\S)|\s+";

/// GPT-2's pattern (the ByteLevel pre-tokenizer with `use_regex`).
pub(crate) const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// One split step: a hand-written scanner for the common patterns, the regex otherwise.
pub(crate) enum Splitter {
    Scan(Scanner),
    Regex(SplitRegex),
}

impl Splitter {
    pub(crate) fn new(pattern: &str) -> Result<Splitter, &'static str> {
        match Scanner::for_pattern(pattern) {
            Some(scanner) => Ok(Splitter::Scan(scanner)),
            None => SplitRegex::new(pattern).map(Splitter::Regex),
        }
    }

    /// Calls `piece(start, end)` for every piece of `hay`, in order.
    #[inline]
    pub(crate) fn split(
        &self,
        hay: &str,
        piece: impl FnMut(usize, usize) -> Result<(), Fallback>,
    ) -> Result<(), Fallback> {
        match self {
            Splitter::Scan(s) => s.split(hay, piece),
            Splitter::Regex(r) => r.split(hay, piece),
        }
    }
}

pub(crate) struct SplitRegex {
    re: Regex,
    tail: Tail,
}

/// The rewritten `\s+(?!\S)|\s+` ending, if the pattern has one.
enum Tail {
    None,
    /// The whole pattern is the tail.
    Only,
    /// The alternatives before it.
    After(Regex),
}

/// Pieces longer than this (in bytes) are left to the tokenizers crate: on runs of a
/// million characters fancy-regex stops at its backtracking limit (the rest of the text
/// is then not split), which is not worth reproducing.
pub(crate) const MAX_PIECE: usize = 100_000;

/// A text the fast path cannot split as the tokenizers crate would (a pattern that
/// matched the empty string, or an enormous piece): the caller falls back to it.
#[derive(Debug)]
pub(crate) struct Fallback;

impl SplitRegex {
    pub(crate) fn new(pattern: &str) -> Result<SplitRegex, &'static str> {
        let (body, rest) = match pattern.strip_suffix(WS_TAIL) {
            Some("") => (r"\s+".to_string(), Some(None)),
            Some(rest) => match rest.strip_suffix('|') {
                Some(rest) if !rest.ends_with('\\') => {
                    (format!(r"(?:{rest})|\s+"), Some(Some(rest.to_string())))
                }
                _ => return Err("unsupported split pattern"),
            },
            None => (pattern.to_string(), None),
        };
        for fancy in ["(?=", "(?!", "(?<=", "(?<!", "(?>", "(?P>", "(?&", "(?R"] {
            if body.contains(fancy) {
                return Err("the split pattern uses look-around");
            }
        }
        let compile =
            |p: &str| Regex::new(p).map_err(|_| "regex-automata cannot compile the pattern");
        let tail = match rest {
            None => Tail::None,
            Some(None) => Tail::Only,
            Some(Some(rest)) => Tail::After(compile(&rest)?),
        };
        Ok(SplitRegex {
            re: compile(&body)?,
            tail,
        })
    }

    /// Calls `piece(start, end)` for every piece of `hay` (matches and the text between
    /// them: the `Isolated` behaviour), in order.
    pub(crate) fn split(
        &self,
        hay: &str,
        mut piece: impl FnMut(usize, usize) -> Result<(), Fallback>,
    ) -> Result<(), Fallback> {
        let mut prev = 0;
        let mut at = 0;
        while at < hay.len() {
            // A match starting right here is the leftmost one: an anchored search finds
            // it without searching backwards for its start.
            let found = self
                .re
                .search(&Input::new(hay).range(at..).anchored(Anchored::Yes))
                .or_else(|| self.re.search(&Input::new(hay).range(at..)));
            let Some(m) = found else {
                break;
            };
            let (start, mut end) = (m.start(), m.end());
            if start == end || end - start > MAX_PIECE || start - prev > MAX_PIECE {
                return Err(Fallback);
            }
            if end < hay.len() {
                end = self.give_back(hay, start, end);
            }
            if prev < start {
                piece(prev, start)?;
            }
            piece(start, end)?;
            prev = end;
            at = end;
        }
        if prev < hay.len() {
            if hay.len() - prev > MAX_PIECE {
                return Err(Fallback);
            }
            piece(prev, hay.len())?;
        }
        Ok(())
    }

    /// `\s+(?!\S)`: a whitespace run of two or more characters matched by the last
    /// alternative and followed by more text ends one character early.
    #[inline]
    fn give_back(&self, hay: &str, start: usize, end: usize) -> usize {
        if matches!(self.tail, Tail::None) {
            return end;
        }
        let Some(last) = hay[start..end].chars().next_back() else {
            return end;
        };
        let last_start = end - last.len_utf8();
        // The tail matches whitespace only (`\s`: ASCII \t \n \x0b \x0c \r and space), two
        // characters or more.
        if last_start == start || (last.is_ascii() && !last.is_ascii_whitespace() && last != '\x0b')
        {
            return end;
        }
        match &self.tail {
            Tail::After(rest) => {
                let earlier = Input::new(hay).range(start..).anchored(Anchored::Yes);
                if rest.search_half(&earlier).is_some() {
                    // An earlier alternative matched here: leftmost-first took it.
                    end
                } else {
                    last_start
                }
            }
            Tail::Only => last_start,
            Tail::None => end,
        }
    }
}
