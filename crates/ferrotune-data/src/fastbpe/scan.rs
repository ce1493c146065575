//! Hand-written scanners for the split patterns nearly every byte-level BPE tokenizer
//! uses, giving the pieces the regex gives (the `pretok` path stays for other patterns and
//! is what the tests compare against):
//!
//! * GPT-2's: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;
//! * the cl100k family's, Qwen2/Qwen3 (`\p{N}`) and Llama 3 (`\p{N}{1,3}`):
//!   `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}|
//!   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
//!
//! Every character is matched by some alternative of these patterns, so a piece always
//! starts where the previous one ended, and the scanner tries the alternatives in order
//! at that position, as leftmost-first (backtracking) matching does. Whether a character
//! is a letter, a number or white space is asked of the regex engine itself (once per
//! block of 128 code points, on first sight), so the Unicode tables are the ones the
//! regex path uses.

use std::sync::OnceLock;

use regex_automata::meta::Regex;

use super::pretok::{Fallback, MAX_PIECE};

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 4;
/// Code points classified together on first sight.
const BLOCK: usize = 128;
const BLOCKS: usize = (char::MAX as usize + 1) / BLOCK;

/// The cl100k-family pattern with `{digits}` standing for `\p{N}`'s repetition.
fn cl100k_pattern(digits: &str) -> String {
    format!(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{digits}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Family {
    Gpt2,
    /// At most this many numbers in one piece.
    Cl100k {
        max_digits: usize,
    },
}

pub(crate) struct Scanner {
    family: Family,
    classes: Classes,
}

impl Scanner {
    /// The scanner for `pattern`, if it is one of the patterns above, written exactly.
    pub(crate) fn for_pattern(pattern: &str) -> Option<Scanner> {
        let family = if pattern == super::pretok::GPT2_PATTERN {
            Family::Gpt2
        } else if pattern == cl100k_pattern("") {
            Family::Cl100k { max_digits: 1 }
        } else if pattern == cl100k_pattern("{1,3}") {
            Family::Cl100k { max_digits: 3 }
        } else {
            return None;
        };
        Some(Scanner {
            family,
            classes: Classes::new()?,
        })
    }

    /// Calls `piece(start, end)` for every piece of `hay`, in order.
    pub(crate) fn split(
        &self,
        hay: &str,
        mut piece: impl FnMut(usize, usize) -> Result<(), Fallback>,
    ) -> Result<(), Fallback> {
        let mut at = 0;
        while at < hay.len() {
            let end = match self.family {
                Family::Gpt2 => self.gpt2_at(hay, at),
                Family::Cl100k { max_digits } => self.cl100k_at(hay, at, max_digits),
            };
            debug_assert!(end > at);
            if end - at > MAX_PIECE {
                return Err(Fallback);
            }
            piece(at, end)?;
            at = end;
        }
        Ok(())
    }

    /// The end of the cl100k-family piece starting at `at`.
    fn cl100k_at(&self, hay: &str, at: usize, max_digits: usize) -> usize {
        let (c, next) = self.char_at(hay, at);
        let class = self.classes.of(c);
        if c == '\'' {
            if let Some(end) = contraction(hay, next, true) {
                return end;
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if class == LETTER {
            return self.run(hay, next, LETTER);
        }
        if class & NUMBER == 0 && c != '\r' && c != '\n' && next < hay.len() {
            let (d, after) = self.char_at(hay, next);
            if self.classes.of(d) == LETTER {
                return self.run(hay, after, LETTER);
            }
        }
        // \p{N}{1,max_digits}
        if class == NUMBER {
            let mut end = next;
            for _ in 1..max_digits {
                match self.peek(hay, end) {
                    Some((NUMBER, after)) => end = after,
                    _ => break,
                }
            }
            return end;
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n]*
        let other_from = if c == ' ' {
            match self.peek(hay, next) {
                Some((0, after)) => Some(after),
                _ => None,
            }
        } else if class == 0 {
            Some(next)
        } else {
            None
        };
        if let Some(from) = other_from {
            let end = self.run(hay, from, 0);
            let bytes = hay.as_bytes();
            let mut end = end;
            while end < bytes.len() && (bytes[end] == b'\r' || bytes[end] == b'\n') {
                end += 1;
            }
            return end;
        }
        // What is left is white space. \s*[\r\n]+ ends after the run's last line break.
        let run_end = self.run(hay, next, SPACE);
        if let Some(p) = hay.as_bytes()[at..run_end]
            .iter()
            .rposition(|&b| b == b'\r' || b == b'\n')
        {
            return at + p + 1;
        }
        whitespace_tail(hay, next, run_end)
    }

    /// The end of the GPT-2 piece starting at `at`.
    fn gpt2_at(&self, hay: &str, at: usize) -> usize {
        let (c, next) = self.char_at(hay, at);
        let class = self.classes.of(c);
        if c == '\'' {
            if let Some(end) = contraction(hay, next, false) {
                return end;
            }
        }
        //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+, each with an optional leading space.
        let (class, from) = if c == ' ' {
            match self.peek(hay, next) {
                Some((k, after)) if k != SPACE => (k, after),
                _ => (SPACE, next),
            }
        } else {
            (class, next)
        };
        if class != SPACE {
            return self.run(hay, from, class);
        }
        let run_end = self.run(hay, next, SPACE);
        whitespace_tail(hay, next, run_end)
    }

    #[inline]
    fn char_at(&self, hay: &str, at: usize) -> (char, usize) {
        let c = hay[at..].chars().next().expect("at < hay.len()");
        (c, at + c.len_utf8())
    }

    /// The class of the character at `at` and where it ends.
    #[inline]
    fn peek(&self, hay: &str, at: usize) -> Option<(u8, usize)> {
        let c = hay.get(at..)?.chars().next()?;
        Some((self.classes.of(c), at + c.len_utf8()))
    }

    /// The end of the run of characters of `class` starting at `from`.
    #[inline]
    fn run(&self, hay: &str, mut from: usize, class: u8) -> usize {
        let bytes = hay.as_bytes();
        while from < bytes.len() {
            let b = bytes[from];
            if b < 0x80 {
                if ASCII[b as usize] != class {
                    break;
                }
                from += 1;
            } else {
                match self.peek(hay, from) {
                    Some((k, after)) if k == class => from = after,
                    _ => break,
                }
            }
        }
        from
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d` after an apostrophe ending at `next`: where the match ends.
/// Case-insensitively (`(?i:...)`), `s` also matches the long s, as in the regex crate's
/// simple case folding.
fn contraction(hay: &str, next: usize, ignore_case: bool) -> Option<usize> {
    let mut chars = hay[next..].chars();
    let first = chars.next()?;
    let fold = |c: char| -> char {
        if !ignore_case {
            c
        } else if c == '\u{17F}' {
            's'
        } else {
            c.to_ascii_lowercase()
        }
    };
    let after_first = next + first.len_utf8();
    match fold(first) {
        's' | 't' | 'm' | 'd' => Some(after_first),
        f @ ('r' | 'v' | 'l') => {
            let second = chars.next()?;
            let want = if f == 'l' { 'l' } else { 'e' };
            (fold(second) == want).then_some(after_first + second.len_utf8())
        }
        _ => None,
    }
}

/// `\s+(?!\S)|\s+` on the white space run `at..run_end` whose first character ends at
/// `next`: followed by more text, a run of two or more characters gives its last one back
/// (it goes with the word after it); at the end of the text it is taken whole.
fn whitespace_tail(hay: &str, next: usize, run_end: usize) -> usize {
    if run_end == hay.len() || next == run_end {
        return run_end;
    }
    let last = hay[..run_end].chars().next_back().expect("a non-empty run");
    run_end - last.len_utf8()
}

/// The classes of ASCII characters, as `\p{L}`, `\p{N}` and `\s` define them.
const ASCII: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = if b.is_ascii_alphabetic() {
            LETTER
        } else if b.is_ascii_digit() {
            NUMBER
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r') {
            SPACE
        } else {
            0
        };
        i += 1;
    }
    t
};

/// Letter / number / white space for every character, asked of the regex engine a block
/// at a time.
struct Classes {
    letter: Regex,
    number: Regex,
    space: Regex,
    blocks: Box<[OnceLock<[u8; BLOCK]>]>,
}

impl Classes {
    fn new() -> Option<Classes> {
        let compile = |p: &str| Regex::new(p).ok();
        Some(Classes {
            letter: compile(r"\A\p{L}\z")?,
            number: compile(r"\A\p{N}\z")?,
            space: compile(r"\A\s\z")?,
            blocks: (0..BLOCKS).map(|_| OnceLock::new()).collect(),
        })
    }

    #[inline]
    fn of(&self, c: char) -> u8 {
        let code = c as usize;
        if code < 128 {
            return ASCII[code];
        }
        self.blocks[code / BLOCK].get_or_init(|| self.classify_block(code / BLOCK))[code % BLOCK]
    }

    #[cold]
    fn classify_block(&self, block: usize) -> [u8; BLOCK] {
        let mut out = [0u8; BLOCK];
        let mut buf = [0u8; 4];
        for (i, slot) in out.iter_mut().enumerate() {
            let Some(c) = char::from_u32((block * BLOCK + i) as u32) else {
                continue;
            };
            let s: &str = c.encode_utf8(&mut buf);
            *slot = if self.letter.is_match(s) {
                LETTER
            } else if self.number.is_match(s) {
                NUMBER
            } else if self.space.is_match(s) {
                SPACE
            } else {
                0
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::pretok::SplitRegex;
    use super::*;

    fn pieces_scanned(s: &Scanner, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        s.split(text, |a, b| {
            out.push((a, b));
            Ok(())
        })
        .unwrap();
        out
    }

    fn pieces_regex(r: &SplitRegex, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        r.split(text, |a, b| {
            out.push((a, b));
            Ok(())
        })
        .unwrap();
        out
    }

    fn patterns() -> Vec<String> {
        vec![
            super::super::pretok::GPT2_PATTERN.to_string(),
            cl100k_pattern(""),
            cl100k_pattern("{1,3}"),
        ]
    }

    /// Characters where the alternatives meet: apostrophes and contraction letters (the
    /// long s and the Kelvin sign fold to s and k), line breaks and other white space,
    /// digits of several scripts, letters with and without case, marks, symbols.
    const ALPHABET: &[char] = &[
        '\'',
        's',
        'S',
        '\u{17F}',
        't',
        'T',
        'r',
        'e',
        'E',
        'v',
        'm',
        'l',
        'L',
        'd',
        'k',
        '\u{212A}',
        'a',
        'Z',
        ' ',
        ' ',
        ' ',
        '\t',
        '\n',
        '\r',
        '\x0b',
        '\x0c',
        '\u{85}',
        '\u{a0}',
        '\u{3000}',
        '\u{2028}',
        '0',
        '7',
        '\u{663}',
        '\u{2167}',
        '\u{b2}',
        '.',
        ',',
        '!',
        '-',
        '"',
        '(',
        '$',
        '\u{4e2d}',
        '\u{6587}',
        '\u{3002}',
        '\u{e9}',
        '\u{301}',
        '\u{1F600}',
        '\u{200d}',
        '\u{fe0f}',
        '\u{5d0}',
        '\u{394}',
        '\u{2014}',
        '\u{ff01}',
    ];

    #[test]
    fn scanners_split_as_the_regexes_do_on_random_text() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for pattern in patterns() {
            let scanner = Scanner::for_pattern(&pattern).expect("a known pattern");
            let regex = SplitRegex::new(&pattern).unwrap();
            for _ in 0..20_000 {
                let len = (next() % 24) as usize + 1;
                let text: String = (0..len)
                    .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                    .collect();
                assert_eq!(
                    pieces_scanned(&scanner, &text),
                    pieces_regex(&regex, &text),
                    "{pattern} on {text:?}"
                );
            }
        }
    }

    #[test]
    fn scanners_split_as_the_regexes_do_around_every_character() {
        for pattern in patterns() {
            let scanner = Scanner::for_pattern(&pattern).expect("a known pattern");
            let regex = SplitRegex::new(&pattern).unwrap();
            // Every code point 97 apart, between letters, spaces and digits.
            for code in (0x80..=char::MAX as u32).step_by(97) {
                let Some(c) = char::from_u32(code) else {
                    continue;
                };
                let text = format!("a{c}b {c} {c}{c}7{c}\n{c}'{c}");
                assert_eq!(
                    pieces_scanned(&scanner, &text),
                    pieces_regex(&regex, &text),
                    "{pattern} on {text:?}"
                );
            }
        }
    }

    #[test]
    fn only_the_long_s_folds_to_a_contraction_letter() {
        let folds = Regex::new(r"\A(?i:[strevmld])\z").unwrap();
        let mut buf = [0u8; 4];
        let beyond_ascii: Vec<char> = (0x80..=char::MAX as u32)
            .filter_map(char::from_u32)
            .filter(|c| folds.is_match(c.encode_utf8(&mut buf) as &str))
            .collect();
        assert_eq!(beyond_ascii, ['\u{17F}']);
    }

    #[test]
    fn other_patterns_have_no_scanner() {
        assert!(Scanner::for_pattern(r"\p{L}+|\s+").is_none());
        assert!(Scanner::for_pattern(&cl100k_pattern("{1,2}")).is_none());
    }
}
