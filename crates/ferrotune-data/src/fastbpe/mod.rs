//! A lean encoder for byte-level BPE vocabularies (GPT-2, Qwen2/Qwen3, Llama 3 style) that
//! gives the same ids and offsets as the tokenizers crate's `Tokenizer::encode(text,
//! false)`, several times faster: no `Encoding` with token strings, type ids and masks, no
//! fancy-regex, a per-thread cache of piece -> ids.
//!
//! Whether a tokenizer.json can use it is decided once, at load ([`FastBpe::from_json`]
//! says why not otherwise, and the caller keeps the tokenizers crate):
//!
//! * model: `BPE` without dropout, `continuing_subword_prefix` / `end_of_word_suffix`
//!   (empty is fine) or `byte_fallback`, whose vocabulary holds all 256 single bytes;
//!   `ignore_merges` (Llama 3) is honoured;
//! * normalizer: none or NFC;
//! * pre-tokenizer: `ByteLevel` (`add_prefix_space: false`, GPT-2's pattern when
//!   `use_regex`), or a `Sequence` of `Split`s (`Isolated`, not inverted) ending in such a
//!   `ByteLevel`, with patterns regex-automata (the `regex` crate's engine) can run once
//!   the `\s+(?!\S)` look-ahead of the GPT-2 / Qwen / Llama 3 patterns is rewritten (see
//!   `pretok`);
//! * post-processor: none, `ByteLevel` (trimmed offsets are reproduced),
//!   `TemplateProcessing` (it adds nothing without special tokens) or a sequence of them;
//!   no truncation or padding in the file.
//!
//! Added tokens are split out first as the tokenizers crate does (`added`). A text whose
//! parts between added tokens are not already NFC, under an NFC normalizer, is left to the
//! tokenizers crate (normalization would move offsets): [`FastBpe::encode`] returns
//! `None` for it. So does a text on which a split pattern matches the empty string, or
//! that has a piece over 100 kB (a million spaces in a row, say: fancy-regex gives up
//! splitting there, and the tokenizers crate's result is kept as it is).
//!
//! [`crate::TokenizerBundle::encode_with_offsets`] uses this encoder when the tokenizer
//! allows it. Setting the environment variable `FERROTUNE_HF_TOKENIZER=1` when the
//! tokenizer is loaded forces the tokenizers crate everywhere (for comparisons and
//! benchmarks).

mod added;
mod bpe;
mod file;
mod pretok;
mod scan;

use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use added::{AddedToken, Matcher};
use bpe::{Bpe, FxMap, Scratch};
use pretok::{Fallback, Splitter};

/// Pieces up to this many bytes are cached (per thread and encoder).
const CACHE_MAX_PIECE: usize = 255;
/// A thread's cache is emptied when it holds this many pieces.
const CACHE_MAX_ENTRIES: usize = 1 << 16;

/// The fast encoder of one tokenizer. Cheap to share between threads.
pub struct FastBpe {
    /// Added token content -> id, numbered as the tokenizers crate numbers them.
    added_ids: std::collections::HashMap<String, u32>,
    /// The contents of the added tokens marked special.
    specials: Vec<String>,
    /// Distinguishes encoders in the per-thread caches.
    key: usize,
    nfc: bool,
    /// Added tokens matched against the raw text (`normalized: false`).
    raw_tokens: Option<Matcher>,
    /// Added tokens matched against the normalized text (`normalized: true`).
    normalized_tokens: Option<Matcher>,
    /// Split patterns, applied one after the other.
    splits: Vec<Splitter>,
    bpe: Bpe,
    /// ByteLevel post-processors that trim offsets, in order: their `add_prefix_space`.
    trims: Vec<bool>,
}

impl std::fmt::Debug for FastBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastBpe")
            .field("nfc", &self.nfc)
            .field("splits", &self.splits.len())
            .finish()
    }
}

/// Ids and byte offsets `(start, end)` into the text, one per token.
pub type IdsAndOffsets = (Vec<u32>, Vec<(usize, usize)>);

impl FastBpe {
    /// Reads `tokenizer.json`; `Err` says why the fast path does not apply.
    pub fn from_file(path: &Path) -> Result<FastBpe, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        FastBpe::from_json(&text)
    }

    /// The encoder for a tokenizer.json text, or `None` when it is not a byte-level BPE
    /// tokenizer this encoder reproduces exactly.
    pub fn new(json: &str) -> Option<FastBpe> {
        FastBpe::from_json(json).ok()
    }

    /// The encoder for a tokenizer.json text; `Err` says why the fast path does not apply.
    /// The added tokens are split out before anything else, as the tokenizers crate does
    /// with `encode_special_tokens` off, its default.
    pub fn from_json(json: &str) -> Result<FastBpe, String> {
        let file::Read {
            nfc,
            patterns,
            trims,
            bpe,
            mut added,
        } = file::read(json)?;
        let splits = patterns
            .iter()
            .map(|p| Splitter::new(p).map_err(String::from))
            .collect::<Result<Vec<_>, _>>()?;
        let mut raw = Vec::new();
        let mut normalized = Vec::new();
        added.sort_by_key(|t| t.id);
        let added_ids = added.iter().map(|t| (t.content.clone(), t.id)).collect();
        let specials = added
            .iter()
            .filter(|t| t.special)
            .map(|t| t.content.clone())
            .collect();
        for t in added {
            if t.content.is_empty() {
                continue;
            }
            let token = AddedToken::new(t.id, &t.content, t.single_word, t.lstrip, t.rstrip);
            if t.normalized {
                if nfc && !unicode_normalization_alignments::is_nfc(&t.content) {
                    return Err("a normalized added token is not NFC".into());
                }
                normalized.push(token);
            } else {
                raw.push(token);
            }
        }
        static KEYS: AtomicUsize = AtomicUsize::new(0);
        Ok(FastBpe {
            added_ids,
            specials,
            key: KEYS.fetch_add(1, Ordering::Relaxed),
            nfc,
            raw_tokens: Matcher::new(raw),
            normalized_tokens: Matcher::new(normalized),
            splits,
            bpe,
            trims,
        })
    }

    /// The id of an added token, by its content.
    pub fn added_token_id(&self, content: &str) -> Option<u32> {
        self.added_ids.get(content).copied()
    }

    /// The added tokens marked special, in id order.
    pub fn special_tokens(&self) -> &[String] {
        &self.specials
    }

    /// Ids and byte offsets of `text`, as the tokenizers crate's `encode(text, false)`
    /// gives them; `None` for a text it must encode itself (see the module doc).
    pub fn encode(&self, text: &str) -> Option<IdsAndOffsets> {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let Local { scratch, caches } = &mut *local;
            let cache = cache_for(caches, self.key);
            if cache.len() >= CACHE_MAX_ENTRIES {
                cache.clear();
            }
            let mut out = Out {
                ids: Vec::with_capacity(text.len() / 3 + 4),
                offsets: Vec::with_capacity(text.len() / 3 + 4),
                spaces: (!self.trims.is_empty()).then(Vec::new),
            };
            let mut work = Work {
                enc: self,
                text,
                scratch,
                cache,
                out: &mut out,
            };
            let done = match &self.raw_tokens {
                Some(m) => m.split(text, |token, s, e| match token {
                    Some(t) => {
                        work.out.push_added(t, s, e);
                        Ok(())
                    }
                    None => work.segment(s, e),
                }),
                None => work.segment(0, text.len()),
            };
            done.ok()?;
            self.trim(&mut out);
            Some((out.ids, out.offsets))
        })
    }

    /// The ByteLevel post-processor's `trim_offsets` (the tokenizers crate's
    /// `process_offsets`).
    fn trim(&self, out: &mut Out) {
        let Some(spaces) = &out.spaces else { return };
        for &add_prefix_space in &self.trims {
            for (i, (offsets, &(lead, trail))) in out.offsets.iter_mut().zip(spaces).enumerate() {
                let (mut lead, trail) = (lead as usize, trail as usize);
                if lead > 0 {
                    let is_first = i == 0 || offsets.0 == 0;
                    if is_first && add_prefix_space && lead == 1 {
                        lead = 0;
                    }
                    offsets.0 = (offsets.0 + lead).min(offsets.1);
                }
                if trail > 0 && offsets.1 >= trail {
                    offsets.1 = (offsets.1 - trail).max(offsets.0);
                }
            }
        }
    }
}

/// Per-thread state: merge buffers and, per encoder, a cache of piece -> ids.
#[derive(Default)]
struct Local {
    scratch: Scratch,
    caches: Vec<(usize, PieceCache)>,
}

type PieceCache = FxMap<Box<[u8]>, Box<[u32]>>;

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::default();
}

/// The calling thread's cache for encoder `key` (a few encoders are kept).
fn cache_for(caches: &mut Vec<(usize, PieceCache)>, key: usize) -> &mut PieceCache {
    let at = match caches.iter().position(|(k, _)| *k == key) {
        Some(at) => at,
        None => {
            if caches.len() >= 4 {
                caches.remove(0);
            }
            caches.push((key, PieceCache::default()));
            caches.len() - 1
        }
    };
    &mut caches[at].1
}

struct Out {
    ids: Vec<u32>,
    offsets: Vec<(usize, usize)>,
    /// Leading / trailing spaces per token, when offsets are trimmed.
    spaces: Option<Vec<(u32, u32)>>,
}

impl Out {
    fn push_added(&mut self, token: &AddedToken, start: usize, end: usize) {
        self.ids.push(token.id);
        self.offsets.push((start, end));
        if let Some(s) = &mut self.spaces {
            s.push(token.spaces);
        }
    }
}

/// One `encode` call in progress.
struct Work<'a> {
    enc: &'a FastBpe,
    text: &'a str,
    scratch: &'a mut Scratch,
    cache: &'a mut PieceCache,
    out: &'a mut Out,
}

impl Work<'_> {
    /// Text between raw added tokens: normalized (here: checked to be NFC already), then
    /// split on the normalized added tokens.
    fn segment(&mut self, start: usize, end: usize) -> Result<(), Fallback> {
        let seg = &self.text[start..end];
        if self.enc.nfc && !seg.is_ascii() && !unicode_normalization_alignments::is_nfc(seg) {
            return Err(Fallback);
        }
        let enc = self.enc;
        match &enc.normalized_tokens {
            Some(m) => m.split(seg, |token, s, e| match token {
                Some(t) => {
                    self.out.push_added(t, start + s, start + e);
                    Ok(())
                }
                None => self.pre_tokenize(0, start + s, start + e),
            }),
            None => self.pre_tokenize(0, start, end),
        }
    }

    /// Applies split pattern `level` and those after it, then BPE on each piece.
    fn pre_tokenize(&mut self, level: usize, start: usize, end: usize) -> Result<(), Fallback> {
        let enc = self.enc;
        let Some(split) = enc.splits.get(level) else {
            self.piece(start, end);
            return Ok(());
        };
        let text = self.text;
        split.split(&text[start..end], |s, e| {
            self.pre_tokenize(level + 1, start + s, start + e)
        })
    }

    /// BPE on one piece, with ids and offsets pushed.
    fn piece(&mut self, start: usize, end: usize) {
        let bytes = &self.text.as_bytes()[start..end];
        let bpe = &self.enc.bpe;
        let first = self.out.ids.len();
        if let Some(id) = bpe.whole(bytes) {
            self.out.ids.push(id);
        } else if bytes.len() <= CACHE_MAX_PIECE {
            if let Some(ids) = self.cache.get(bytes) {
                self.out.ids.extend_from_slice(ids);
            } else {
                bpe.merge(bytes, self.scratch, &mut self.out.ids);
                self.cache
                    .insert(bytes.into(), self.out.ids[first..].into());
            }
        } else {
            bpe.merge(bytes, self.scratch, &mut self.out.ids);
        }
        // A token that covers part of a character spans the whole character, as the
        // tokenizers crate's byte-level alignments make it.
        let text = self.text;
        let mut pos = start;
        for &id in &self.out.ids[first..] {
            let next = pos + bpe.token_len(id);
            self.out
                .offsets
                .push((floor_char(text, pos), ceil_char(text, next)));
            if let Some(s) = &mut self.out.spaces {
                s.push(bpe.spaces[id as usize]);
            }
            pos = next;
        }
    }
}

#[inline]
fn floor_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[inline]
fn ceil_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = bpe::bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0xAD], 'Ń');
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn flat_and_heap_merges_agree() {
        // A tiny vocabulary with overlapping merges of equal and different ranks.
        let table = bpe::bytes_to_unicode();
        let mut vocab: HashMap<String, u32> = (0..=255u8)
            .map(|b| (table[b as usize].to_string(), u32::from(b)))
            .collect();
        let merges: Vec<(String, String)> = [
            ("a", "a"),
            ("b", "a"),
            ("aa", "a"),
            ("Ġ", "Ġ"),
            ("ĠĠ", "ĠĠ"),
            ("ba", "aa"),
            ("a", "b"),
            ("ab", "aa"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        for (a, b) in &merges {
            let next = vocab.len() as u32;
            vocab.entry(format!("{a}{b}")).or_insert(next);
        }
        let vocab: Vec<(&str, u32)> = vocab.iter().map(|(t, id)| (t.as_str(), *id)).collect();
        let merges: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let bpe = Bpe::new(&vocab, &merges, false).unwrap();
        let mut scratch = Scratch::default();
        let mut seed = 7u64;
        for len in 2..200 {
            let piece: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    [b'a', b'b', b' '][(seed >> 33) as usize % 3]
                })
                .collect();
            let (mut flat, mut heap) = (Vec::new(), Vec::new());
            bpe.merge_flat(&piece, &mut scratch, &mut flat);
            bpe.merge_heap(&piece, &mut scratch, &mut heap);
            assert_eq!(flat, heap, "{}", String::from_utf8_lossy(&piece));
            let total: usize = flat.iter().map(|&id| bpe.token_len(id)).sum();
            assert_eq!(total, piece.len());
        }
    }

    #[test]
    fn whitespace_tail_gives_back_one_character() {
        let re = pretok::SplitRegex::new(pretok::GPT2_PATTERN).unwrap();
        let split = |text: &str| {
            let mut pieces = Vec::new();
            re.split(text, |s, e| {
                pieces.push(text[s..e].to_string());
                Ok(())
            })
            .unwrap();
            pieces
        };
        assert_eq!(split("a   b"), ["a", "  ", " b"]);
        assert_eq!(split("a   "), ["a", "   "]);
        assert_eq!(split("a \u{3000} b"), ["a", " \u{3000}", " b"]);
        assert_eq!(split("a\n\nb"), ["a", "\n", "\n", "b"]);
        assert!(pretok::SplitRegex::new(r"(?=a)|\s+").is_err());
    }
}
