//! BLEU two ways: nltk's smoothed sentence BLEU (what LLaMA-Factory reports per sample)
//! and sacrebleu's corpus BLEU (what papers report).

use std::collections::HashMap;
use std::hash::Hash;

use serde::Serialize;

use crate::pytext;

/// How often each n-gram (n = 1..=max_n) occurs in `tokens`.
fn ngram_counts<T: Eq + Hash>(tokens: &[T], max_n: usize) -> HashMap<&[T], usize> {
    let mut counts = HashMap::new();
    for n in 1..=max_n {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// Matched and total n-grams of each order, clipped by the reference counts.
fn clipped_matches<T: Eq + Hash>(hyp: &[T], reference: &[T]) -> ([usize; 4], [usize; 4]) {
    let ref_counts = ngram_counts(reference, 4);
    let mut correct = [0; 4];
    let mut total = [0; 4];
    for (gram, count) in ngram_counts(hyp, 4) {
        let n = gram.len() - 1;
        total[n] += count;
        correct[n] += count.min(ref_counts.get(gram).copied().unwrap_or(0));
    }
    (correct, total)
}

/// nltk `sentence_bleu([reference], hypothesis, smoothing_function=method3)` with the
/// default uniform 4-gram weights; LLaMA-Factory passes lists of characters.
///
/// Method 3 (NIST geometric smoothing) gives the k-th order without a match the
/// precision 1 / (2^k * total). nltk returns 0 when no unigram matches, before any
/// smoothing, and its brevity penalty is exp(1 - r/c) for a hypothesis no longer than
/// the reference.
pub fn nltk_sentence_bleu<T: Eq + Hash>(reference: &[T], hypothesis: &[T]) -> f64 {
    let (correct, total) = clipped_matches(hypothesis, reference);
    if correct[0] == 0 {
        return 0.0;
    }
    let (r, c) = (reference.len(), hypothesis.len());
    let bp = if c > r {
        1.0
    } else {
        (1.0 - r as f64 / c as f64).exp()
    };
    let mut unmatched_orders = 0;
    let logs = (0..4).map(|n| {
        // nltk's denominator is max(1, count) even for orders longer than the text.
        let denominator = total[n].max(1);
        let p = if correct[n] == 0 {
            unmatched_orders += 1;
            1.0 / ((1u64 << unmatched_orders) * denominator as u64) as f64
        } else {
            correct[n] as f64 / denominator as f64
        };
        0.25 * p.ln()
    });
    bp * pytext::fsum(logs.collect::<Vec<_>>()).exp()
}

/// sacrebleu's corpus BLEU with its defaults (13a tokenizer, case-sensitive, `exp`
/// smoothing, no effective order), with what its signature line shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorpusBleu {
    /// BLEU x100.
    pub score: f64,
    /// Modified n-gram precisions x100, orders 1 to 4.
    pub precisions: [f64; 4],
    pub bp: f64,
    /// hyp_len / ref_len.
    pub ratio: f64,
    pub hyp_len: usize,
    pub ref_len: usize,
    pub counts: [usize; 4],
    pub totals: [usize; 4],
}

impl CorpusBleu {
    /// The verbose part of sacrebleu's `format()`, e.g.
    /// `63.42 91.3/87.1/86.8/86.6 (BP = 0.721 ratio = 0.754 hyp_len = 462 ref_len = 613)`.
    pub fn verbose(&self) -> String {
        let p = &self.precisions;
        format!(
            "{:.2} {:.1}/{:.1}/{:.1}/{:.1} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.score, p[0], p[1], p[2], p[3], self.bp, self.ratio, self.hyp_len, self.ref_len
        )
    }
}

/// The settings sacrebleu prints in its signature (`version` left out: this is not it).
pub const SACREBLEU_SETTINGS: &str = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp";

/// `sacrebleu.corpus_bleu(hypotheses, [references])`.
pub fn corpus_bleu<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> CorpusBleu {
    let (mut hyp_len, mut ref_len) = (0, 0);
    let mut counts = [0; 4];
    let mut totals = [0; 4];
    for (hyp, reference) in pairs {
        let hyp = tokenize_13a(pytext::rstrip(hyp));
        let reference = tokenize_13a(pytext::rstrip(reference));
        let hyp: Vec<&str> = hyp.split(' ').filter(|s| !s.is_empty()).collect();
        let reference: Vec<&str> = reference.split(' ').filter(|s| !s.is_empty()).collect();
        let (correct, total) = clipped_matches(&hyp, &reference);
        for n in 0..4 {
            counts[n] += correct[n];
            totals[n] += total[n];
        }
        hyp_len += hyp.len();
        ref_len += reference.len();
    }
    compute_corpus_bleu(counts, totals, hyp_len, ref_len)
}

/// sacrebleu `BLEU.compute_bleu` with `smooth_method='exp'`.
fn compute_corpus_bleu(
    counts: [usize; 4],
    totals: [usize; 4],
    hyp_len: usize,
    ref_len: usize,
) -> CorpusBleu {
    let bp = if hyp_len >= ref_len {
        1.0
    } else if hyp_len > 0 {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    } else {
        0.0
    };
    let ratio = if ref_len > 0 {
        hyp_len as f64 / ref_len as f64
    } else {
        0.0
    };
    let mut precisions = [0.0; 4];
    let mut score = 0.0;
    if counts.iter().any(|&c| c > 0) {
        let mut smooth = 1.0;
        for n in 0..4 {
            if totals[n] == 0 {
                break;
            }
            precisions[n] = if counts[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * totals[n] as f64)
            } else {
                100.0 * counts[n] as f64 / totals[n] as f64
            };
        }
        // sacrebleu's my_log floors log(0) at -9999999999, which makes the score 0.
        let log_sum: f64 = precisions
            .iter()
            .map(|&p| if p == 0.0 { -9999999999.0 } else { p.ln() })
            .sum();
        score = bp * (log_sum / 4.0).exp();
    }
    CorpusBleu {
        score,
        precisions,
        bp,
        ratio,
        hyp_len,
        ref_len,
        counts,
        totals,
    }
}

/// sacrebleu's `13a` tokenizer (mteval-v13a): unescape a few entities, then put spaces
/// around punctuation, around `.` and `,` unless between digits, and after a dash that
/// follows a digit. Each rule is one left-to-right pass, as `re.sub` makes it.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let chars: Vec<char> = format!(" {line} ").chars().collect();
    // ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> ' \1 '
    let mut out = Vec::with_capacity(chars.len() * 2);
    for &c in &chars {
        if matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/') {
            out.extend([' ', c, ' ']);
        } else {
            out.push(c);
        }
    }
    let not_digit = |c: char| !c.is_ascii_digit();
    let period_comma = |c: char| c == '.' || c == ',';
    // ([^0-9])([\.,]) -> '\1 \2 '
    let out = sub_pairs(&out, not_digit, period_comma, |a, b| vec![a, ' ', b, ' ']);
    // ([\.,])([^0-9]) -> ' \1 \2'
    let out = sub_pairs(&out, period_comma, not_digit, |a, b| vec![' ', a, ' ', b]);
    // ([0-9])(-) -> '\1 \2 '
    let out = sub_pairs(
        &out,
        |c| c.is_ascii_digit(),
        |c| c == '-',
        |a, b| vec![a, ' ', b, ' '],
    );
    let text: String = out.into_iter().collect();
    pytext::split_whitespace(&text)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `re.sub` of a two-character pattern `(first)(second)`: leftmost matches, not
/// overlapping, scanning on after each replacement.
fn sub_pairs(
    chars: &[char],
    first: impl Fn(char) -> bool,
    second: impl Fn(char) -> bool,
    replace: impl Fn(char, char) -> Vec<char>,
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + chars.len() / 4);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
            out.extend(replace(chars[i], chars[i + 1]));
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_13a_follows_mteval() {
        assert_eq!(
            tokenize_13a("Hello, world! It's 3.14 and 1,000 - 5-6 e-mail."),
            "Hello , world ! It's 3.14 and 1,000 - 5 - 6 e-mail ."
        );
        assert_eq!(tokenize_13a("a &amp; b"), "a & b");
    }

    #[test]
    fn nltk_edge_cases() {
        let r: Vec<char> = "identical text".chars().collect();
        assert_eq!(nltk_sentence_bleu(&r, &r), 1.0);
        assert_eq!(nltk_sentence_bleu(&r, &[]), 0.0);
    }
}
