//! How varied the instructions are: a dataset of 10,000 "Generate a list of ..." teaches
//! one trick. Informational, never a finding.
//!
//! Counted as the records stream by, in bounded memory: distinct n-grams exactly up to
//! a million, then by HyperLogLog; frequent words and n-grams exactly while there are at
//! most a quarter million distinct ones, then by Misra-Gries (the counts shown are then
//! lower bounds). `estimated` says when either happened.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::text::{hash64, is_cjk, mix64, units};

const TOP: usize = 10;
/// Distinct hashes counted exactly up to this many.
const EXACT_DISTINCT: usize = 1 << 20;
/// HyperLogLog registers (2^14: a standard error of 0.8%).
const HLL_BITS: u32 = 14;
/// Frequent items tracked exactly up to this many distinct ones.
const TRACKED: usize = 1 << 18;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Diversity {
    pub instructions: usize,
    /// Distinct unigrams / all unigrams of the instructions (words, or CJK characters).
    pub distinct_1: f64,
    /// Distinct bigrams / all bigrams.
    pub distinct_2: f64,
    /// The most frequent first words (first two characters of Chinese text, where verbs
    /// are mostly two characters), with counts.
    pub first_words: Vec<(String, usize)>,
    /// The most frequent 3-grams, with counts (seen at least twice).
    pub top_trigrams: Vec<(String, usize)>,
    /// The figures are estimates: too many distinct n-grams to count exactly.
    pub estimated: bool,
}

impl Diversity {
    /// Over normalized instructions.
    pub fn of<'a>(instructions: impl Iterator<Item = &'a str>) -> Self {
        let mut counter = DiversityCounter::default();
        for text in instructions {
            counter.add(text);
        }
        counter.finish()
    }
}

/// [`Diversity`] counted one instruction at a time.
#[derive(Debug, Default)]
pub struct DiversityCounter {
    count: usize,
    unigrams: usize,
    bigrams: usize,
    distinct_1: Distinct,
    distinct_2: Distinct,
    first: Frequent,
    trigrams: Frequent,
}

impl DiversityCounter {
    /// A normalized instruction.
    pub fn add(&mut self, text: &str) {
        self.count += 1;
        let u = units(text);
        self.unigrams += u.len();
        for w in &u {
            self.distinct_1.add(hash64(w.as_bytes(), 1));
        }
        for pair in u.windows(2) {
            self.bigrams += 1;
            self.distinct_2.add(hash64(join(pair).as_bytes(), 2));
        }
        for triple in u.windows(3) {
            self.trigrams.add(join(triple));
        }
        if let Some(word) = first_word(&u) {
            self.first.add(word);
        }
    }

    pub fn finish(self) -> Diversity {
        let ratio = |d: f64, n: usize| {
            if n == 0 {
                0.0
            } else {
                (d / n as f64 * 1000.0).round() / 1000.0
            }
        };
        let estimated = self.distinct_1.is_estimate()
            || self.distinct_2.is_estimate()
            || self.first.pruned > 0
            || self.trigrams.pruned > 0;
        Diversity {
            instructions: self.count,
            distinct_1: ratio(self.distinct_1.count(), self.unigrams),
            distinct_2: ratio(self.distinct_2.count(), self.bigrams),
            first_words: self.first.top(1),
            top_trigrams: self.trigrams.top(2),
            estimated,
        }
    }
}

/// How many distinct 64-bit hashes: exact in a set, then a HyperLogLog sketch.
#[derive(Debug)]
enum Distinct {
    Exact(HashSet<u64>),
    Sketch(Vec<u8>),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(HashSet::new())
    }
}

impl Distinct {
    fn add(&mut self, hash: u64) {
        match self {
            Distinct::Exact(set) => {
                set.insert(hash);
                if set.len() > EXACT_DISTINCT {
                    let mut registers = vec![0u8; 1 << HLL_BITS];
                    for &h in set.iter() {
                        observe(&mut registers, h);
                    }
                    *self = Distinct::Sketch(registers);
                }
            }
            Distinct::Sketch(registers) => observe(registers, hash),
        }
    }

    fn is_estimate(&self) -> bool {
        matches!(self, Distinct::Sketch(_))
    }

    fn count(&self) -> f64 {
        match self {
            Distinct::Exact(set) => set.len() as f64,
            Distinct::Sketch(registers) => {
                let m = registers.len() as f64;
                let sum: f64 = registers.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
                let raw = 0.7213 / (1.0 + 1.079 / m) * m * m / sum;
                let zeros = registers.iter().filter(|&&r| r == 0).count();
                if raw <= 2.5 * m && zeros > 0 {
                    m * (m / zeros as f64).ln()
                } else {
                    raw
                }
            }
        }
    }
}

/// One hash into HyperLogLog registers: the register from its top bits, the rank of the
/// first set bit of the rest. The hash is mixed again, since the set's hashes may share
/// structure.
fn observe(registers: &mut [u8], hash: u64) {
    let h = mix64(hash);
    let index = (h >> (64 - HLL_BITS)) as usize;
    let rank = ((h << HLL_BITS) | (1 << (HLL_BITS - 1))).leading_zeros() as u8 + 1;
    registers[index] = registers[index].max(rank);
}

/// Counts of items, exact while at most [`TRACKED`] are distinct; past that the rarest
/// are pruned Misra-Gries style (every count lowered by the pruned threshold), so a
/// count is a lower bound missing at most `pruned`.
#[derive(Debug, Default)]
struct Frequent {
    counts: HashMap<String, usize>,
    pruned: usize,
}

impl Frequent {
    fn add(&mut self, item: String) {
        *self.counts.entry(item).or_insert(0) += 1;
        if self.counts.len() >= 2 * TRACKED {
            let mut values: Vec<usize> = self.counts.values().copied().collect();
            let (_, &mut threshold, _) = values.select_nth_unstable(self.counts.len() - TRACKED);
            self.counts.retain(|_, n| *n > threshold);
            for n in self.counts.values_mut() {
                *n -= threshold;
            }
            self.pruned += threshold;
        }
    }

    fn top(self, min: usize) -> Vec<(String, usize)> {
        top(self.counts, min)
    }
}

/// Units back to text: CJK characters are written together, words with spaces.
fn join(units: &[&str]) -> String {
    let mut out = String::new();
    for (i, u) in units.iter().enumerate() {
        let cjk = |s: &str| s.chars().next().is_some_and(is_cjk);
        if i > 0 && !(cjk(u) && cjk(units[i - 1])) {
            out.push(' ');
        }
        out.push_str(u);
    }
    out
}

fn first_word(units: &[&str]) -> Option<String> {
    let first = units.first()?;
    let cjk = |s: &str| s.chars().next().is_some_and(is_cjk);
    match units.get(1) {
        Some(second) if cjk(first) && cjk(second) => Some(format!("{first}{second}")),
        _ => Some(first.to_string()),
    }
}

fn top(counts: HashMap<String, usize>, min: usize) -> Vec<(String, usize)> {
    let mut list: Vec<(String, usize)> = counts.into_iter().filter(|(_, n)| *n >= min).collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list.truncate(TOP);
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_and_chinese_characters() {
        let d = Diversity::of(["give me a list", "give me a poem", "生成一个列表"].into_iter());
        assert_eq!(d.instructions, 3);
        assert_eq!(d.first_words[0], ("give".to_string(), 2));
        assert!(d.first_words.contains(&("生成".to_string(), 1)));
        assert_eq!(d.top_trigrams[0], ("give me a".to_string(), 2));
        // 14 unigrams, 11 distinct.
        assert_eq!(d.distinct_1, 0.786);
        assert!(!d.estimated);
    }

    /// Past the exact limits the figures are estimates, within a few percent.
    #[test]
    fn many_distinct_ngrams_are_estimated_closely() {
        let mut distinct = Distinct::default();
        let n = EXACT_DISTINCT * 3;
        for i in 0..n as u64 {
            distinct.add(hash64(&i.to_le_bytes(), 7));
        }
        assert!(distinct.is_estimate());
        let error = (distinct.count() - n as f64).abs() / n as f64;
        assert!(error < 0.03, "relative error {error}");

        let mut frequent = Frequent::default();
        for i in 0..3 * TRACKED {
            frequent.add(format!("rare {i}"));
            if i % 4 == 0 {
                frequent.add("common".into());
            }
        }
        assert!(frequent.pruned > 0);
        let top = frequent.top(1);
        assert_eq!(top[0].0, "common");
        assert!(top[0].1 <= 3 * TRACKED / 4 && top[0].1 > 3 * TRACKED / 4 - 10);
    }
}
