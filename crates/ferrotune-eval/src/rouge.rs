//! ROUGE two ways: the `rouge_chinese` package that LLaMA-Factory uses, and Google's
//! `rouge-score`. They differ in ways that move the numbers by several points, so each
//! is reproduced as it is rather than as the papers define ROUGE.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::pytext;

/// ROUGE-1, ROUGE-2 and ROUGE-L F-scores (0..1).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct RougeF {
    pub rouge1: f64,
    pub rouge2: f64,
    pub rouge_l: f64,
}

/// Length of the longest common subsequence, in one row of memory.
fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y { diagonal + 1 } else { up.max(row[j]) };
            diagonal = up;
        }
    }
    row[b.len()]
}

/// `rouge_chinese.Rouge().get_scores(hyp, ref)[0]` F-scores, on text whose words are
/// separated by spaces (LLaMA-Factory joins jieba's words with " ").
///
/// What the package really computes: the text is cut into sentences (`cut_sent`) and
/// each sentence's whitespace normalised, then all words are pooled. ROUGE-N counts
/// *distinct* n-grams (sets, `exclusive=True`), including n-grams that span a sentence
/// boundary; ROUGE-L is one LCS over the pooled words, not the summary-level union LCS
/// its name suggests. F = 2PR / (P + R + 1e-8).
///
/// Returns `None` where the package raises (a text without sentences); LLaMA-Factory
/// never gets there, since it scores an empty text 0 first.
pub fn rouge_chinese(hypothesis: &str, reference: &str) -> Option<RougeF> {
    let hyp = pooled_words(hypothesis)?;
    let reference = pooled_words(reference)?;
    let f = |p: f64, r: f64| 2.0 * ((p * r) / (p + r + 1e-8));
    let rouge_n = |n: usize| {
        let hyp_grams: HashSet<&[String]> = hyp.windows(n).collect();
        let ref_grams: HashSet<&[String]> = reference.windows(n).collect();
        let overlap = hyp_grams.intersection(&ref_grams).count() as f64;
        let ratio = |count: usize| {
            if count == 0 {
                0.0
            } else {
                overlap / count as f64
            }
        };
        f(ratio(hyp_grams.len()), ratio(ref_grams.len()))
    };
    let lcs = lcs_len(&reference, &hyp) as f64;
    Some(RougeF {
        rouge1: rouge_n(1),
        rouge2: rouge_n(2),
        rouge_l: f(lcs / hyp.len() as f64, lcs / reference.len() as f64),
    })
}

/// The words of every sentence of `text`, pooled, as `rouge_chinese` sees them: a
/// sentence of only whitespace becomes one empty word.
fn pooled_words(text: &str) -> Option<Vec<String>> {
    let text = cut_sentences(text);
    let sentences: Vec<&str> = text.split('\n').filter(|s| !s.is_empty()).collect();
    if sentences.is_empty() {
        return None;
    }
    let mut words = Vec::new();
    for sentence in sentences {
        let before = words.len();
        words.extend(pytext::split_whitespace(sentence).map(str::to_string));
        if words.len() == before {
            words.push(String::new());
        }
    }
    Some(words)
}

/// `Rouge.cut_sent`: a newline after sentence-final punctuation (and after `......`,
/// `……`, or a closing quote that follows it), then `rstrip()`. The four `re.sub`
/// passes run one after another, each left to right without overlapping matches.
fn cut_sentences(text: &str) -> String {
    let is_end = |c: char| matches!(c, '。' | '！' | '？' | '?');
    let is_quote = |c: char| matches!(c, '”' | '’');
    let chars: Vec<char> = text.chars().collect();
    // ([。！？\?])([^”’]) -> \1\n\2
    let chars = break_after(&chars, 1, |w| is_end(w[0]) && !is_quote(w[1]));
    // (\.{6})([^”’]) -> \1\n\2
    let chars = break_after(&chars, 6, |w| {
        w[..6].iter().all(|&c| c == '.') && !is_quote(w[6])
    });
    // (\…{2})([^”’]) -> \1\n\2
    let chars = break_after(&chars, 2, |w| w[0] == '…' && w[1] == '…' && !is_quote(w[2]));
    // ([。！？\?][”’])([^，。！？\?]) -> \1\n\2
    let chars = break_after(&chars, 2, |w| {
        is_end(w[0]) && is_quote(w[1]) && !(w[2] == '，' || is_end(w[2]))
    });
    let text: String = chars.into_iter().collect();
    pytext::rstrip(&text).to_string()
}

/// Inserts a newline after the first `head` characters of every window of `head + 1`
/// characters that `matches`, scanning like `re.sub` (a match consumes its window).
fn break_after(chars: &[char], head: usize, matches: impl Fn(&[char]) -> bool) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        if i + head < chars.len() && matches(&chars[i..=i + head]) {
            out.extend_from_slice(&chars[i..i + head]);
            out.push('\n');
            out.push(chars[i + head]);
            i += head + 1;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Google `rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
/// .score(reference, hypothesis)` F-measures, no stemmer: tokens are the lowercased
/// runs of `[a-z0-9]` (anything else, Chinese included, is dropped), n-grams are
/// counted with multiplicity, ROUGE-L is the LCS of the whole texts, F = 2PR / (P + R).
pub fn rouge_score(hypothesis: &str, reference: &str) -> RougeF {
    let hyp = rouge_score_tokens(hypothesis);
    let reference = rouge_score_tokens(reference);
    let f = |p: f64, r: f64| {
        if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        }
    };
    let rouge_n = |n: usize| {
        let (hyp_counts, ref_counts) = (ngram_counts(&hyp, n), ngram_counts(&reference, n));
        let overlap: usize = ref_counts
            .iter()
            .map(|(gram, &c)| c.min(hyp_counts.get(gram).copied().unwrap_or(0)))
            .sum();
        let hyp_total: usize = hyp_counts.values().sum();
        let ref_total: usize = ref_counts.values().sum();
        f(
            overlap as f64 / hyp_total.max(1) as f64,
            overlap as f64 / ref_total.max(1) as f64,
        )
    };
    let rouge_l = if hyp.is_empty() || reference.is_empty() {
        0.0
    } else {
        let lcs = lcs_len(&reference, &hyp) as f64;
        f(lcs / hyp.len() as f64, lcs / reference.len() as f64)
    };
    RougeF {
        rouge1: rouge_n(1),
        rouge2: rouge_n(2),
        rouge_l,
    }
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// rouge-score's default tokenizer without stemming.
fn rouge_score_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_cut_like_cut_sent() {
        assert_eq!(cut_sentences("好。 吗？？a"), "好。\n 吗？\n？a");
        assert_eq!(cut_sentences("他说：“好。”然后"), "他说：“好。”\n然后");
        assert_eq!(cut_sentences("a.......b"), "a......\n.b");
        assert_eq!(cut_sentences("x  \n"), "x");
    }

    #[test]
    fn ngrams_are_distinct_and_cross_sentences() {
        // "a a a" has one distinct unigram; the hypothesis has 2 distinct bigrams.
        let s = rouge_chinese("a a 。 b", "a b").unwrap();
        let f = |p: f64, r: f64| 2.0 * ((p * r) / (p + r + 1e-8));
        assert_eq!(s.rouge1, f(2.0 / 3.0, 1.0));
        assert!(rouge_chinese(" ", "a").is_none());
    }

    #[test]
    fn rouge_score_tokenizes_ascii_only() {
        assert_eq!(
            rouge_score_tokens("It's 3.5 Über-cool, 中文!"),
            ["it", "s", "3", "5", "ber", "cool"]
        );
        let s = rouge_score("the cat the", "the cat");
        assert_eq!(s.rouge1, 2.0 * (2.0 / 3.0) * 1.0 / (2.0 / 3.0 + 1.0));
    }
}
