//! The BPE model on raw bytes: the vocabulary and merges of a byte-level tokenizer.json,
//! decoded through GPT-2's byte-to-unicode table, and the merge loop.
//!
//! Merging is exactly the tokenizers crate's (`models/bpe/word.rs`): repeatedly apply the
//! merge of lowest rank, leftmost first. Short pieces use a flat array scan; long ones a
//! heap over a linked list (what the tokenizers crate does for every piece), so long runs
//! of spaces or symbols stay O(n log n).

use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash (rustc's hash): fast for the short keys used here (byte strings, id pairs).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// GPT-2's byte-to-unicode table (`bytes_to_unicode`, the tokenizers crate's
/// `bytes_char`): printable bytes stand for themselves, the others for 256 + n.
pub(crate) fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut n = 0u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid char")
        };
    }
    table
}

/// Pieces up to this many bytes merge with the flat array scan.
const FLAT_MAX: usize = 64;

pub(crate) struct Bpe {
    /// The id of each single byte.
    byte_ids: [u32; 256],
    /// (left id << 32 | right id) -> (rank, merged id).
    merges: FxMap<u64, (u32, u32)>,
    /// Every vocabulary entry as raw bytes (for `ignore_merges`).
    vocab: FxMap<Box<[u8]>, u32>,
    /// Raw byte length of each id (0 for ids the model does not know).
    token_len: Vec<u32>,
    /// Leading and trailing space bytes of each id (for trimmed offsets).
    pub(crate) spaces: Vec<(u32, u32)>,
    ignore_merges: bool,
}

/// Why a vocabulary cannot be handled as raw bytes.
pub(crate) type Unsupported = &'static str;

impl Bpe {
    /// `vocab` and `merges` as tokenizer.json writes them (byte-level strings).
    pub(crate) fn new(
        vocab: &[(&str, u32)],
        merges: &[(&str, &str)],
        ignore_merges: bool,
    ) -> Result<Bpe, Unsupported> {
        let table = bytes_to_unicode();
        let mut char_byte: FxMap<char, u8> = FxMap::default();
        for (b, &c) in table.iter().enumerate() {
            char_byte.insert(c, b as u8);
        }
        let max_id = vocab.iter().map(|(_, id)| *id).max().unwrap_or(0) as usize;
        if max_id > 4 * vocab.len() + 4096 {
            return Err("the vocabulary ids are too sparse");
        }
        let mut token_len = vec![0u32; max_id + 1];
        let mut seen = vec![false; max_id + 1];
        let mut by_str: FxMap<&str, u32> = FxMap::default();
        by_str.reserve(vocab.len());
        let mut raw: FxMap<Box<[u8]>, u32> = FxMap::default();
        raw.reserve(vocab.len());
        let mut bytes = Vec::new();
        for (token, id) in vocab {
            if std::mem::replace(&mut seen[*id as usize], true)
                || by_str.insert(token, *id).is_some()
            {
                return Err("a vocabulary entry or id is listed twice");
            }
            bytes.clear();
            // Entries outside the byte alphabet can never be formed from bytes.
            if token.chars().all(|c| match char_byte.get(&c) {
                Some(&b) => {
                    bytes.push(b);
                    true
                }
                None => false,
            }) {
                token_len[*id as usize] = bytes.len() as u32;
                raw.insert(bytes.as_slice().into(), *id);
            }
        }
        let mut byte_ids = [0u32; 256];
        for (b, id) in byte_ids.iter_mut().enumerate() {
            *id = *raw
                .get(&[b as u8][..])
                .ok_or("the vocabulary lacks a single-byte token")?;
        }
        let mut merge_map: FxMap<u64, (u32, u32)> = FxMap::default();
        merge_map.reserve(merges.len());
        let mut joined = String::new();
        for (rank, (a, b)) in merges.iter().enumerate() {
            let (Some(&a_id), Some(&b_id)) = (by_str.get(a), by_str.get(b)) else {
                return Err("a merge names a token outside the vocabulary");
            };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let Some(&new_id) = by_str.get(joined.as_str()) else {
                return Err("a merge result is outside the vocabulary");
            };
            // As in the tokenizers crate, a pair listed twice keeps its last rank.
            merge_map.insert(pair_key(a_id, b_id), (rank as u32, new_id));
        }
        let spaces = space_counts(&raw, max_id + 1);
        Ok(Bpe {
            byte_ids,
            merges: merge_map,
            vocab: raw,
            token_len,
            spaces,
            ignore_merges,
        })
    }

    /// The raw byte length of a model token.
    #[inline]
    pub(crate) fn token_len(&self, id: u32) -> usize {
        self.token_len.get(id as usize).copied().unwrap_or(0) as usize
    }

    /// The id of a piece that is itself a token, when `ignore_merges` takes it whole.
    #[inline]
    pub(crate) fn whole(&self, piece: &[u8]) -> Option<u32> {
        if piece.len() == 1 {
            return Some(self.byte_ids[piece[0] as usize]);
        }
        if self.ignore_merges {
            self.vocab.get(piece).copied()
        } else {
            None
        }
    }

    #[inline]
    fn merge_of(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.merges.get(&pair_key(a, b)).copied()
    }

    /// Merges `piece` (at least one byte) into `out`.
    pub(crate) fn merge(&self, piece: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        if piece.len() <= FLAT_MAX {
            self.merge_flat(piece, scratch, out)
        } else {
            self.merge_heap(piece, scratch, out)
        }
    }

    /// Lowest rank first, leftmost among equal ranks, over a flat array.
    pub(crate) fn merge_flat(&self, piece: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        let syms = &mut scratch.syms;
        let pairs = &mut scratch.pairs;
        syms.clear();
        pairs.clear();
        syms.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
        const NONE: (u32, u32) = (u32::MAX, 0);
        pairs.extend(
            syms.windows(2)
                .map(|w| self.merge_of(w[0], w[1]).unwrap_or(NONE)),
        );
        loop {
            let mut best = u32::MAX;
            let mut at = usize::MAX;
            for (i, &(rank, _)) in pairs.iter().enumerate() {
                if rank < best {
                    best = rank;
                    at = i;
                }
            }
            if at == usize::MAX {
                break;
            }
            syms[at] = pairs[at].1;
            syms.remove(at + 1);
            pairs.remove(at);
            if at > 0 {
                pairs[at - 1] = self.merge_of(syms[at - 1], syms[at]).unwrap_or(NONE);
            }
            if at + 1 < syms.len() {
                pairs[at] = self.merge_of(syms[at], syms[at + 1]).unwrap_or(NONE);
            }
        }
        out.extend_from_slice(syms);
    }

    /// The tokenizers crate's algorithm: a min-heap of (rank, position) over a linked list
    /// of symbols, stale entries skipped.
    pub(crate) fn merge_heap(&self, piece: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        let n = piece.len();
        let syms = &mut scratch.syms;
        let prev = &mut scratch.prev;
        let next = &mut scratch.next;
        syms.clear();
        prev.clear();
        next.clear();
        syms.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
        // prev[i] = i - 1 (u32::MAX: none), next[i] = i + 1 (n: none).
        prev.extend((0..n).map(|i| (i as u32).wrapping_sub(1)));
        next.extend((1..=n).map(|i| i as u32));
        let alive = &mut scratch.alive;
        alive.clear();
        alive.resize(n, true);
        let mut heap: BinaryHeap<std::cmp::Reverse<(u32, u32, u32)>> = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            if let Some((rank, new_id)) = self.merge_of(syms[i], syms[i + 1]) {
                heap.push(std::cmp::Reverse((rank, i as u32, new_id)));
            }
        }
        while let Some(std::cmp::Reverse((_, pos, new_id))) = heap.pop() {
            let pos = pos as usize;
            if !alive[pos] {
                continue;
            }
            let right = next[pos] as usize;
            if right >= n {
                continue;
            }
            // Skip entries made stale by an earlier merge.
            match self.merge_of(syms[pos], syms[right]) {
                Some((_, id)) if id == new_id => {}
                _ => continue,
            }
            syms[pos] = new_id;
            alive[right] = false;
            let after = next[right];
            next[pos] = after;
            if (after as usize) < n {
                prev[after as usize] = pos as u32;
            }
            let before = prev[pos];
            if before != u32::MAX {
                if let Some((rank, id)) = self.merge_of(syms[before as usize], new_id) {
                    heap.push(std::cmp::Reverse((rank, before, id)));
                }
            }
            if (after as usize) < n {
                if let Some((rank, id)) = self.merge_of(new_id, syms[after as usize]) {
                    heap.push(std::cmp::Reverse((rank, pos as u32, id)));
                }
            }
        }
        out.extend(
            syms.iter()
                .zip(alive.iter())
                .filter(|(_, &a)| a)
                .map(|(&s, _)| s),
        );
    }
}

#[inline]
fn pair_key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

/// Leading and trailing space bytes per id (the tokenizers crate trims `Ġ`, i.e. byte
/// 0x20, the only whitespace-like character of the byte alphabet).
fn space_counts(raw: &FxMap<Box<[u8]>, u32>, ids: usize) -> Vec<(u32, u32)> {
    let mut spaces = vec![(0, 0); ids];
    for (bytes, &id) in raw {
        let lead = bytes.iter().take_while(|&&b| b == b' ').count() as u32;
        let trail = bytes.iter().rev().take_while(|&&b| b == b' ').count() as u32;
        spaces[id as usize] = (lead, trail);
    }
    spaces
}

/// Reused buffers of the merge loops.
#[derive(Default)]
pub(crate) struct Scratch {
    syms: Vec<u32>,
    pairs: Vec<(u32, u32)>,
    prev: Vec<u32>,
    next: Vec<u32>,
    alive: Vec<bool>,
}
