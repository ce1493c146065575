//! What every check looks for, how it decides and what `--fix` does with it: the text of
//! `ferrotune data check --explain`, kept beside the checks so that a change to a rule
//! changes its explanation in the same commit.

use super::{Check, CheckOptions};

/// One check, explained.
pub struct Explanation {
    pub check: Check,
    /// `error`, `warning` or `info` (as in the report).
    pub severity: &'static str,
    /// What it finds and why that hurts training.
    pub finds: String,
    /// The rule, with the thresholds `options` set.
    pub rule: String,
    /// What `--fix` does with the records it names.
    pub fix: &'static str,
}

const DROPPED: &str = "dropped by --fix";
const KEPT: &str = "kept by --fix (worth a look)";
const FIRST_KEPT: &str = "--fix keeps the first copy without an error and drops the others";

/// Every check, in the report's order.
pub fn explain(options: &CheckOptions) -> Vec<Explanation> {
    Check::ALL
        .iter()
        .map(|&c| explain_one(c, options))
        .collect()
}

fn explain_one(check: Check, o: &CheckOptions) -> Explanation {
    let (severity, finds, rule, fix): (&str, &str, String, &str) = match check {
        Check::ExactDuplicate => (
            "warning",
            "the same conversation more than once: the model sees it as many times as it is copied, which overweights it",
            "records equal after lower-casing ASCII, folding full-width forms and collapsing white space, compared by a 128-bit hash of roles, texts, tool calls and tools, across all datasets of the mixture".into(),
            FIRST_KEPT,
        ),
        Check::NearDuplicate => (
            "warning",
            "conversations that differ by a word or a few: the same overweighting, harder to see",
            format!(
                "MinHash over 3-word shingles (3-character for Chinese and Japanese), 128 hashes in 32 bands of 4 (LSH); records sharing a band are compared with the band's first and with their predecessor, and pairs whose estimated Jaccard similarity is >= {} (--near-threshold) are grouped, transitively. Exact copies are compared once; texts under 3 shingles are not compared",
                o.near_threshold
            ),
            FIRST_KEPT,
        ),
        Check::ConflictingAnswer => (
            "warning",
            "one prompt answered in different ways: the model learns to hedge between them, or learns the wrong one",
            format!(
                "records whose prompt (everything before the final assistant turn, normalized as for exact duplicates) is the same and whose final answers differ; answers that are near-duplicates of each other (similarity >= {}) count as one answer; counted up to 8 (\"at least 8 different answers\")",
                o.near_threshold
            ),
            KEPT,
        ),
        Check::EmptyResponse => (
            "error",
            "an assistant turn with no text and no tool call: the model learns to stop at once",
            "an assistant message whose content is empty or white space, without tool calls (also a record the format rejects for having neither)".into(),
            DROPPED,
        ),
        Check::ShortResponse => (
            "warning",
            "a final answer of a word or so: fine for classification data, a sign of truncated or placeholder answers elsewhere",
            format!(
                "the final assistant answer has fewer than {} words (Chinese and Japanese: characters) (--min-response-words)",
                o.min_response_units
            ),
            KEPT,
        ),
        Check::RepeatsPrompt => (
            "warning",
            "an answer that copies its prompt: the model learns to echo",
            "after normalizing: the answer is the prompt, or the prompt plus at most two words; or it is 5+ words contained in the prompt and at least 80% of its length; or it is one whole line of the prompt, or its first lines (the instruction when an input follows), of 3+ words, plus at most two words".into(),
            KEPT,
        ),
        Check::Placeholder => (
            "error",
            "`{{name}}`-style placeholders left in the text (identity data): the model learns to say `{{name}}`",
            "a `{{identifier}}` in any message that the config's `placeholders:` (or --placeholder NAME=VALUE) does not replace".into(),
            DROPPED,
        ),
        Check::ControlToken => (
            "error",
            "chat-template tokens inside the text (<|im_end|>, </s>, [INST], ...): they break the template or teach the model to write them mid-answer",
            "the built-in list of common template tokens plus the tokenizer's special tokens (3+ characters, not all letters), anywhere in any message: an error. <think> / </think> outside assistant replies: a warning".into(),
            DROPPED,
        ),
        Check::BrokenToolCall => (
            "error",
            "tool-call arguments that are not JSON: the model learns to write broken calls",
            "a tool call whose arguments are a string that does not parse as JSON, an empty tool-call list, or a tool column the format cannot parse".into(),
            DROPPED,
        ),
        Check::LengthOutlier => (
            "warning",
            "samples far longer than the rest, or over cutoff_len: they are truncated (or dropped) in training, and cost the most memory",
            "with a tokenizer, longer than cutoff_len tokens; in datasets of 10+ records, at or beyond the 99th percentile and over 3x the median length (tokens, else characters)".into(),
            KEPT,
        ),
        Check::LanguageMix => (
            "warning",
            "an answer in another writing system than its prompt (a Chinese question answered in English): the model learns to switch language. Info: a text without a main script",
            "warning: prompt (3+ words) and answer (5+) each at least 60% one script, the scripts differ, the answer has under 10% of the prompt's script, and the prompt neither names the answer's language nor asks for a translation. Info: a text of 20+ words where no script reaches 70%. Code blocks are left out".into(),
            KEPT,
        ),
        Check::IdenticalAnswers => (
            "error",
            "a preference pair whose chosen and rejected answers are the same: the pair teaches nothing (its DPO loss is a constant), and usually a column is mapped twice",
            "the two answers equal after the normalization of exact duplicates (and the same tool calls)".into(),
            DROPPED,
        ),
        Check::Blocklist => (
            "error",
            "words or phrases of your --blocklist file (a safety screen)",
            "each entry matched case-insensitively on word boundaries (Chinese and Japanese phrases anywhere) in any message".into(),
            DROPPED,
        ),
        Check::InvalidRecord => (
            "error",
            "a record the format cannot read (a malformed JSON line, a missing column): it cannot be trained",
            "the format's complaint about the record, with its file and line".into(),
            "not copied by --fix (it is not a record)",
        ),
    };
    Explanation {
        check,
        severity,
        finds: finds.to_string(),
        rule,
        fix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_is_explained_with_its_thresholds() {
        let options = CheckOptions {
            near_threshold: 0.77,
            min_response_units: 4,
            ..CheckOptions::default()
        };
        let all = explain(&options);
        assert_eq!(all.len(), Check::ALL.len());
        for (e, c) in all.iter().zip(Check::ALL) {
            assert_eq!(e.check, c);
            assert!(!e.finds.is_empty() && !e.rule.is_empty());
        }
        let text = |c: Check| all.iter().find(|e| e.check == c).unwrap().rule.clone();
        assert!(text(Check::NearDuplicate).contains("0.77"));
        assert!(text(Check::ShortResponse).contains("fewer than 4"));
    }
}
