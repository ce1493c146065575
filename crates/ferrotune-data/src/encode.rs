//! Stages 4 and 5, tokenize and mask: rendered text becomes input ids and labels.
//!
//! The whole rendered conversation is tokenized once, so the ids are exactly the
//! tokenization of the text the template produced (no drift from tokenizing turns
//! separately). Assistant turns are located in that text as character spans and mapped to
//! tokens through the tokenizer's offsets:
//!
//! * a turn starts where the template's generation prompt for the messages before it ends
//!   (`render(messages[..i], add_generation_prompt=true)` must be a prefix of the full text);
//!   for templates that are not prefix-stable there, at the next assistant header;
//! * it ends after its end-of-turn marker (found by probing the template), searched from
//!   the end of the message content, so text the template inserts inside the turn (Qwen3's
//!   empty `<think>` block, tool calls) is supervised with the reply.
//!
//! Labels are -100 on everything else unless `train_on_prompt`.

use std::ops::Range;

use crate::conversation::{Conversation, Feedback, PreferencePair, Role, Sample};
use crate::template::ChatTemplate;
use crate::tokenizer::TokenizerBundle;

pub const IGNORE_INDEX: i64 = -100;

/// What to do with samples longer than `cutoff_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlong {
    /// Keep whole turns from the start, then shorten prompt and response in proportion
    /// (LLaMA-Factory's rule), never cutting a reply's end-of-turn tokens.
    #[default]
    Truncate,
    /// Drop the sample.
    Drop,
}

impl Overlong {
    /// The config's spellings.
    pub const CHOICES: &'static [(&'static str, Overlong)] =
        &[("truncate", Overlong::Truncate), ("drop", Overlong::Drop)];
}

#[derive(Debug, Clone)]
pub struct EncodeOptions {
    pub cutoff_len: usize,
    pub train_on_prompt: bool,
    /// Train only the last assistant turn.
    pub mask_history: bool,
    pub overlong: Overlong,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            cutoff_len: 2048,
            train_on_prompt: false,
            mask_history: false,
            overlong: Overlong::Truncate,
        }
    }
}

/// A sample ready for batching.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub input_ids: Vec<u32>,
    /// The target id at each position (not yet shifted), or [`IGNORE_INDEX`].
    pub labels: Vec<i64>,
    /// Per-token loss weights, present only when some supervised token's weight is not 1.
    pub weights: Option<Vec<f32>>,
    pub truncated: bool,
    /// Two sequences laid end to end, the second from `input_ids[k..]`: a preference
    /// pair's chosen then rejected (each the shared prompt followed by its answer), or a
    /// KTO example then its KL sequence (the same prompt with another record's answer).
    pub second_start: Option<usize>,
    /// KTO: whether the example's answer is desirable.
    pub desirable: Option<bool>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    pub fn supervised_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// The sequences this example holds, as ranges of its tokens: one, or a preference
    /// pair's chosen and rejected.
    pub fn sequences(&self) -> Vec<Range<usize>> {
        match self.second_start {
            Some(k) => vec![0..k, k..self.len()],
            None => std::iter::once(0..self.len()).collect(),
        }
    }

    /// Maximal runs of tokens that are all supervised or all not, as (supervised, range).
    pub fn runs(&self) -> Vec<(bool, Range<usize>)> {
        let mut runs: Vec<(bool, Range<usize>)> = Vec::new();
        for (i, &label) in self.labels.iter().enumerate() {
            let supervised = label != IGNORE_INDEX;
            match runs.last_mut() {
                Some((s, range)) if *s == supervised => range.end = i + 1,
                _ => runs.push((supervised, i..i + 1)),
            }
        }
        runs
    }
}

/// Why a sample produced no training example.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// Longer than cutoff_len with `Overlong::Drop`.
    TooLong { tokens: usize },
    /// Nothing left to train on (all loss weights 0, or truncation removed every reply).
    NoSupervisedTokens,
    /// The template failed on this conversation.
    RenderFailed(String),
    /// An assistant turn could not be located in the rendered text.
    TurnNotFound(String),
    /// The tokenizer failed.
    Tokenizer(String),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::TooLong { tokens } => {
                write!(f, "{tokens} tokens, longer than cutoff_len (dropped)")
            }
            Skip::NoSupervisedTokens => write!(f, "no supervised token left"),
            Skip::RenderFailed(e) => write!(f, "the chat template failed: {e}"),
            Skip::TurnNotFound(e) => write!(f, "{e}"),
            Skip::Tokenizer(e) => write!(f, "tokenizer error: {e}"),
        }
    }
}

/// A located assistant turn, in bytes of the rendered text.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnSpan {
    pub start: usize,
    /// Where the end-of-turn marker begins (== `end` when the template writes none).
    pub end_of_turn: usize,
    pub end: usize,
    pub weight: f32,
}

/// Finds every assistant turn of `conversation` in `text` (its full rendering).
pub fn locate_turns(
    template: &ChatTemplate,
    conversation: &Conversation,
    text: &str,
) -> Result<Vec<TurnSpan>, String> {
    let header = &template.markers.assistant_header;
    let eot = &template.markers.end_of_turn;
    let messages = &conversation.messages;
    let mut spans = Vec::new();
    let mut cursor = 0;
    for (i, message) in messages.iter().enumerate() {
        if message.role != Role::Assistant {
            continue;
        }
        let prompt = template.render(&messages[..i], &conversation.tools, true);
        let start = match prompt {
            Ok(prompt) if prompt.len() >= cursor && text.starts_with(&prompt) => prompt.len(),
            // Not prefix-stable: the template renders earlier turns differently once more
            // messages follow. Fall back to the next assistant header after the last turn.
            _ if !header.is_empty() => text[cursor..]
                .find(header.as_str())
                .map(|p| cursor + p + header.len())
                .ok_or_else(|| format!("assistant turn {i} not found in the rendered text"))?,
            _ => return Err(format!("assistant turn {i} not found in the rendered text")),
        };
        let content = message.content.trim();
        let mut after_content = start;
        if !content.is_empty() {
            if let Some(p) = find(&text[start..], content) {
                after_content = start + p + content.len();
            }
        }
        let (end_of_turn, end) = if eot.is_empty() {
            (
                after_content,
                after_content.max(if i + 1 == messages.len() {
                    text.len()
                } else {
                    after_content
                }),
            )
        } else {
            let trimmed = eot.trim_end();
            match find(&text[after_content..], eot) {
                Some(p) => (after_content + p, after_content + p + eot.len()),
                None => match find(&text[after_content..], trimmed) {
                    Some(p) if !trimmed.is_empty() => {
                        (after_content + p, after_content + p + trimmed.len())
                    }
                    _ => {
                        return Err(format!(
                            "end of assistant turn {i} ({eot:?}) not found in the rendered text"
                        ))
                    }
                },
            }
        };
        spans.push(TurnSpan {
            start,
            end_of_turn,
            end,
            weight: message.weight(),
        });
        cursor = end;
    }
    Ok(spans)
}

/// The first occurrence of `needle` in `hay`, in bytes (a match of valid UTF-8 starts on a
/// character boundary). The needle is a whole reply, usually found at or near the start:
/// a searcher built for all of it (`str::find`'s or memchr's) costs more than the search,
/// so candidates are found by its first bytes and checked whole.
fn find(hay: &str, needle: &str) -> Option<usize> {
    const PREFIX: usize = 16;
    let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
    if needle.len() <= PREFIX {
        return memchr::memmem::find(hay, needle);
    }
    memchr::memmem::find_iter(hay, &needle[..PREFIX]).find(|&p| hay[p..].starts_with(needle))
}

/// Two (ids, labels) sequences end to end as one example.
fn two_sequences(
    [(mut input_ids, mut labels), (ids, l)]: [(Vec<u32>, Vec<i64>); 2],
    truncated: bool,
    desirable: Option<bool>,
) -> Encoded {
    let second_start = input_ids.len();
    input_ids.extend(ids);
    labels.extend(l);
    Encoded {
        input_ids,
        labels,
        weights: None,
        truncated,
        second_start: Some(second_start),
        desirable,
    }
}

/// A rendered conversation's ids, its assistant turns and the tokens after the last.
type Turns = (Vec<u32>, Vec<Pair>, Range<usize>);

/// A rendered conversation of which only the last answer trains.
struct LastTurn {
    ids: Vec<u32>,
    last: Pair,
    /// Tokens after the last turn (kept with its end of turn).
    tail: usize,
}

impl LastTurn {
    fn prompt_len(&self) -> usize {
        self.last.target.start
    }

    /// The answer with the tokens after it.
    fn answer_len(&self) -> usize {
        self.ids.len() - self.prompt_len()
    }

    /// The first `source_len` tokens of the prompt (keeping the assistant header at its
    /// end) and `target_len` of the answer (keeping its end of turn), with labels on the
    /// answer's own tokens.
    fn cut(&self, source_len: usize, target_len: usize) -> Result<(Vec<u32>, Vec<i64>), Skip> {
        let prompt =
            keep_head_and_tail(&(0..self.prompt_len()), source_len, self.last.header_tokens);
        let answer = self.prompt_len()..self.ids.len();
        let keep = target_len.min(answer.len());
        let answer = keep_head_and_tail(&answer, keep, self.last.eot_tokens + self.tail);
        let mut ids = Vec::with_capacity(prompt.len() + answer.len());
        let mut labels = Vec::with_capacity(prompt.len() + answer.len());
        for &k in &prompt {
            ids.push(self.ids[k]);
            labels.push(IGNORE_INDEX);
        }
        for &k in &answer {
            ids.push(self.ids[k]);
            labels.push(if self.last.target.contains(&k) {
                i64::from(self.ids[k])
            } else {
                IGNORE_INDEX
            });
        }
        if labels.iter().all(|&l| l == IGNORE_INDEX) {
            return Err(Skip::NoSupervisedTokens);
        }
        Ok((ids, labels))
    }
}

/// One prompt/response pair in token positions.
struct Pair {
    source: Range<usize>,
    target: Range<usize>,
    /// Tokens at the end of `source` that make up the assistant header.
    header_tokens: usize,
    /// Tokens at the end of `target` that make up the end-of-turn marker.
    eot_tokens: usize,
    weight: f32,
}

/// LLaMA-Factory's `infer_seqlen`: how much of a (source, target) pair fits in `cutoff`.
pub fn infer_seqlen(source_len: usize, target_len: usize, cutoff_len: usize) -> (usize, usize) {
    let max_target_len = if target_len * 2 < cutoff_len {
        cutoff_len
    } else if source_len * 2 < cutoff_len {
        cutoff_len - source_len
    } else {
        (cutoff_len as f64 * (target_len as f64 / (source_len + target_len) as f64)) as usize
    };
    let new_target_len = max_target_len.min(target_len);
    let max_source_len = cutoff_len.saturating_sub(new_target_len);
    let new_source_len = max_source_len.min(source_len);
    (new_source_len, new_target_len)
}

pub struct Encoder<'a> {
    pub tokenizer: &'a TokenizerBundle,
    pub template: Option<&'a ChatTemplate>,
    pub options: EncodeOptions,
}

impl Encoder<'_> {
    pub fn encode(&self, sample: &Sample) -> Result<Encoded, Skip> {
        match sample {
            Sample::Chat(conversation) => self.encode_chat(conversation),
            Sample::Text(text) => self.encode_text(text),
            Sample::Pair(pair) => self.encode_pair(pair),
            Sample::Feedback(f) => self.encode_feedback(f),
        }
    }

    /// A pretraining document: `[BOS] text EOD`, all tokens supervised.
    pub fn encode_text(&self, text: &str) -> Result<Encoded, Skip> {
        let (encoded, _) = self
            .tokenizer
            .encode_with_offsets(text)
            .map_err(Skip::Tokenizer)?;
        let mut ids: Vec<u32> = Vec::with_capacity(encoded.len() + 2);
        ids.extend(self.tokenizer.document_start());
        ids.extend_from_slice(&encoded);
        ids.extend(self.tokenizer.document_end().map(|(id, _)| id));
        let truncated = ids.len() > self.options.cutoff_len;
        if truncated {
            if self.options.overlong == Overlong::Drop {
                return Err(Skip::TooLong { tokens: ids.len() });
            }
            ids.truncate(self.options.cutoff_len);
        }
        let labels = ids.iter().map(|&id| i64::from(id)).collect();
        Ok(Encoded {
            input_ids: ids,
            labels,
            weights: None,
            truncated,
            second_start: None,
            desirable: None,
        })
    }

    /// Renders, tokenizes and masks one conversation.
    pub fn encode_chat(&self, conversation: &Conversation) -> Result<Encoded, Skip> {
        let (ids, pairs, tail) = self.turns(conversation)?;
        self.assemble(&ids, &pairs, tail)
    }

    /// A preference pair: both conversations rendered and tokenized whole, the prompt
    /// (every token before the last answer) checked to be the same in both, then
    /// LLaMA-Factory's rule for pairs: `infer_seqlen(prompt, longer answer, cutoff_len)`
    /// gives one prompt length and one answer length for both, so the two sequences stay
    /// comparable. As for SFT, a cut keeps the assistant header at the prompt's end and
    /// each answer's end-of-turn tokens. Labels: the answer's tokens (the prompt, earlier
    /// turns included, is masked; `train_on_prompt` does not apply to pairs, as in
    /// LLaMA-Factory).
    pub fn encode_pair(&self, pair: &PreferencePair) -> Result<Encoded, Skip> {
        let chosen = self.last_turn(&pair.chosen)?;
        let rejected = self.last_turn(&pair.rejected)?;
        let prompt_len = chosen.prompt_len();
        if rejected.prompt_len() != prompt_len
            || chosen.ids[..prompt_len] != rejected.ids[..prompt_len]
        {
            return Err(Skip::RenderFailed(
                "the template renders the prompt differently before the chosen and the rejected answer".into(),
            ));
        }
        let longest = chosen.answer_len().max(rejected.answer_len());
        let (source_len, target_len, truncated) = self.fit(prompt_len, longest)?;
        let parts = [
            chosen.cut(source_len, target_len)?,
            rejected.cut(source_len, target_len)?,
        ];
        Ok(two_sequences(parts, truncated, None))
    }

    /// A KTO example: its conversation (the last answer trained), then its KL sequence
    /// (the prompt with the KL answer), each cut on its own by LLaMA-Factory's rule, as
    /// its feedback processor does.
    pub fn encode_feedback(&self, f: &Feedback) -> Result<Encoded, Skip> {
        let mut truncated = false;
        let mut cut_alone = |conversation: &Conversation| {
            let turn = self.last_turn(conversation)?;
            let (source_len, target_len, cut) = self.fit(turn.prompt_len(), turn.answer_len())?;
            truncated |= cut;
            turn.cut(source_len, target_len)
        };
        let parts = [
            cut_alone(&f.conversation)?,
            cut_alone(&f.kl_conversation())?,
        ];
        Ok(two_sequences(parts, truncated, Some(f.desirable)))
    }

    /// The prompt and answer lengths that fit `cutoff_len` (LLaMA-Factory's
    /// `infer_seqlen`), and whether that cuts anything.
    fn fit(&self, prompt_len: usize, answer_len: usize) -> Result<(usize, usize, bool), Skip> {
        let cutoff = self.options.cutoff_len;
        if prompt_len + answer_len <= cutoff {
            return Ok((prompt_len, answer_len, false));
        }
        if self.options.overlong == Overlong::Drop {
            return Err(Skip::TooLong {
                tokens: prompt_len + answer_len,
            });
        }
        let (s, t) = infer_seqlen(prompt_len, answer_len, cutoff);
        Ok((s, t, true))
    }

    /// A conversation whose last answer alone is trained: everything before it is the
    /// prompt.
    fn last_turn(&self, conversation: &Conversation) -> Result<LastTurn, Skip> {
        let (ids, turns, tail) = self.turns(conversation)?;
        let last = turns.into_iter().last().ok_or(Skip::NoSupervisedTokens)?;
        Ok(LastTurn {
            ids,
            tail: tail.len(),
            last,
        })
    }

    /// Renders and tokenizes one conversation and locates its turns: the ids, each
    /// assistant turn as a (source, target) pair of token ranges, and the tokens after
    /// the last turn.
    fn turns(&self, conversation: &Conversation) -> Result<Turns, Skip> {
        let template = self
            .template
            .ok_or_else(|| Skip::RenderFailed("no chat template configured".into()))?;
        let text = template
            .render(&conversation.messages, &conversation.tools, false)
            .map_err(Skip::RenderFailed)?;
        let spans = locate_turns(template, conversation, &text).map_err(Skip::TurnNotFound)?;
        let (ids, offsets) = self
            .tokenizer
            .encode_with_offsets(&text)
            .map_err(Skip::Tokenizer)?;
        let offsets = offsets.as_slice();
        // First token whose text starts at or after `pos`.
        let token_at = |pos: usize| offsets.partition_point(|&(start, _)| start < pos);
        let header_len = template.markers.assistant_header.len();
        let mut pairs = Vec::with_capacity(spans.len());
        let mut previous_end = 0;
        for span in &spans {
            let target = token_at(span.start)..token_at(span.end);
            let source = previous_end..target.start;
            let header_start = token_at(span.start.saturating_sub(header_len));
            let header_tokens = if text[..span.start].ends_with(&template.markers.assistant_header)
            {
                target.start.saturating_sub(header_start.max(source.start))
            } else {
                0
            };
            let eot_tokens =
                target.end - token_at(span.end_of_turn).clamp(target.start, target.end);
            previous_end = target.end;
            pairs.push(Pair {
                source,
                target,
                header_tokens,
                eot_tokens,
                weight: span.weight,
            });
        }
        let tail = previous_end..ids.len();
        Ok((ids, pairs, tail))
    }

    /// Builds labels and applies truncation.
    fn assemble(&self, ids: &[u32], pairs: &[Pair], tail: Range<usize>) -> Result<Encoded, Skip> {
        let o = &self.options;
        let last = pairs.len().saturating_sub(1);
        let cutoff = o.cutoff_len;
        let mut kept: Vec<(Vec<usize>, Vec<usize>)> = pairs
            .iter()
            .map(|p| (p.source.clone().collect(), p.target.clone().collect()))
            .collect();
        let mut tail: Vec<usize> = tail.collect();
        let total = ids.len();
        let truncated = total > cutoff;
        if truncated {
            if o.overlong == Overlong::Drop {
                return Err(Skip::TooLong { tokens: total });
            }
            tail.clear();
            // With mask_history the last turn is the one trained, so it is kept first.
            let order: Vec<usize> = if o.mask_history {
                (0..pairs.len()).rev().collect()
            } else {
                (0..pairs.len()).collect()
            };
            let mut used = 0;
            let mut selected = vec![(Vec::new(), Vec::new()); pairs.len()];
            for idx in order {
                let p = &pairs[idx];
                let remaining = cutoff.saturating_sub(used);
                let (src_len, tgt_len) = (p.source.len(), p.target.len());
                if src_len + tgt_len <= remaining {
                    selected[idx] = kept[idx].clone();
                    used += src_len + tgt_len;
                    continue;
                }
                // Too little room for a meaningful piece of this turn: stop here.
                if remaining < p.header_tokens + p.eot_tokens + 2 {
                    break;
                }
                let (mut s, mut t) = infer_seqlen(src_len, tgt_len, remaining);
                let min_t = p.eot_tokens.min(tgt_len);
                if t < min_t {
                    t = min_t;
                    s = s.min(remaining - t);
                }
                selected[idx] = (
                    keep_head_and_tail(&p.source, s, p.header_tokens),
                    keep_head_and_tail(&p.target, t, p.eot_tokens),
                );
                break;
            }
            kept = selected;
        }

        let mut input_ids = Vec::with_capacity(total.min(cutoff));
        let mut labels = Vec::with_capacity(total.min(cutoff));
        let mut weights = Vec::with_capacity(total.min(cutoff));
        for (idx, (source, target)) in kept.iter().enumerate() {
            let p = &pairs[idx];
            for &k in source {
                input_ids.push(ids[k]);
                let supervised = o.train_on_prompt;
                labels.push(if supervised {
                    i64::from(ids[k])
                } else {
                    IGNORE_INDEX
                });
                weights.push(if supervised { 1.0 } else { 0.0 });
            }
            let trained = !(o.mask_history && idx != last) && p.weight > 0.0;
            for &k in target {
                input_ids.push(ids[k]);
                labels.push(if trained {
                    i64::from(ids[k])
                } else {
                    IGNORE_INDEX
                });
                weights.push(if trained { p.weight } else { 0.0 });
            }
        }
        for &k in &tail {
            input_ids.push(ids[k]);
            labels.push(if o.train_on_prompt {
                i64::from(ids[k])
            } else {
                IGNORE_INDEX
            });
            weights.push(if o.train_on_prompt { 1.0 } else { 0.0 });
        }
        if labels.iter().all(|&l| l == IGNORE_INDEX) {
            return Err(Skip::NoSupervisedTokens);
        }
        let uniform = labels
            .iter()
            .zip(&weights)
            .all(|(&l, &w)| l == IGNORE_INDEX || w == 1.0);
        Ok(Encoded {
            input_ids,
            labels,
            weights: (!uniform).then_some(weights),
            truncated,
            second_start: None,
            desirable: None,
        })
    }
}

/// The first `len - protected` positions of `range` plus its last `protected` ones
/// (or only the last `len` when `len < protected`).
fn keep_head_and_tail(range: &Range<usize>, len: usize, protected: usize) -> Vec<usize> {
    let protected = protected.min(len).min(range.len());
    let head = len - protected;
    (range.start..range.start + head)
        .chain(range.end - protected..range.end)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infer_seqlen_matches_llamafactory() {
        // Worked through the formula of LLaMA-Factory's processor_utils.infer_seqlen.
        assert_eq!(infer_seqlen(3000, 2000, 1000), (600, 400));
        assert_eq!(infer_seqlen(2000, 3000, 1000), (400, 600));
        assert_eq!(infer_seqlen(1000, 100, 1000), (900, 100));
        assert_eq!(infer_seqlen(100, 1000, 1000), (100, 900));
        assert_eq!(infer_seqlen(100, 500, 1000), (100, 500));
        assert_eq!(infer_seqlen(500, 100, 1000), (500, 100));
        assert_eq!(infer_seqlen(10, 10, 1000), (10, 10));
    }

    #[test]
    fn head_and_tail_selection() {
        assert_eq!(
            keep_head_and_tail(&(10..20), 5, 2),
            vec![10, 11, 12, 18, 19]
        );
        assert_eq!(keep_head_and_tail(&(10..20), 1, 2), vec![19]);
        assert_eq!(
            keep_head_and_tail(&(10..20), 10, 2),
            (10..20).collect::<Vec<_>>()
        );
    }
}
