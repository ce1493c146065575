//! How varied the instructions are: a dataset of 10,000 "Generate a list of ..." teaches
//! one trick. Informational, never a finding.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::text::{hash64, is_cjk, units};

const TOP: usize = 10;

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
}

impl Diversity {
    /// Over normalized instructions.
    pub fn of<'a>(instructions: impl Iterator<Item = &'a str>) -> Self {
        let mut count = 0;
        let (mut unigrams, mut bigrams) = (0usize, 0usize);
        let mut distinct_1: HashSet<u64> = HashSet::new();
        let mut distinct_2: HashSet<u64> = HashSet::new();
        let mut first: HashMap<String, usize> = HashMap::new();
        let mut trigrams: HashMap<String, usize> = HashMap::new();
        for text in instructions {
            count += 1;
            let u = units(text);
            unigrams += u.len();
            distinct_1.extend(u.iter().map(|w| hash64(w.as_bytes(), 1)));
            for pair in u.windows(2) {
                bigrams += 1;
                distinct_2.insert(hash64(join(pair).as_bytes(), 2));
            }
            for triple in u.windows(3) {
                *trigrams.entry(join(triple)).or_insert(0) += 1;
            }
            if let Some(word) = first_word(&u) {
                *first.entry(word).or_insert(0) += 1;
            }
        }
        let ratio = |d: usize, n: usize| {
            if n == 0 {
                0.0
            } else {
                (d as f64 / n as f64 * 1000.0).round() / 1000.0
            }
        };
        Diversity {
            instructions: count,
            distinct_1: ratio(distinct_1.len(), unigrams),
            distinct_2: ratio(distinct_2.len(), bigrams),
            first_words: top(first, 1),
            top_trigrams: top(trigrams, 2),
        }
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
    }
}
