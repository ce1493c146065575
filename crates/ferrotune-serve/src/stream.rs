//! Generated ids to text as they arrive: incremental decoding that only ever hands out
//! whole characters (a byte-level token can end inside a UTF-8 sequence, so Chinese
//! would otherwise print as replacement characters), and stop strings that end the
//! answer without any part of them ever being shown.

use anyhow::{anyhow, Result};
use ferrotune_data::TokenizerBundle;
use ferrotune_model::generate::{generate, Decoder, Flow, GenerationConfig};

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-turn id or stop string (or the reader stopped listening).
    Stop,
    /// max_new_tokens reached.
    Length,
}

impl Finish {
    /// The OpenAI `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// A finished answer.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish: Finish,
}

/// Decodes ids one at a time. Decoding re-reads only a short window (the ids since the
/// last text handed out plus one before, so tokenizers that strip a leading space see
/// the same context), keeping each step cheap however long the answer gets.
pub struct TextStream<'a> {
    tok: &'a TokenizerBundle,
    skip_special: bool,
    stops: Vec<String>,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a TokenizerBundle, stops: &[String], skip_special: bool) -> Self {
        TextStream {
            tok,
            skip_special,
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .hf()?
            .decode(ids, self.skip_special)
            .map_err(|e| anyhow!("cannot decode generated ids: {e}"))
    }

    /// Adds one id; returns the text that is now final (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        self.ids.push(id);
        let before = self.decode(&self.ids[self.prefix..self.read])?;
        let now = self.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{fffd}') {
            self.append(&before, &now)?;
            self.prefix = self.read;
            self.read = self.ids.len();
        }
        Ok(self.release(false))
    }

    /// The end of generation: whatever is left, incomplete characters included.
    pub fn finish(&mut self) -> Result<String> {
        if !self.stopped && self.read < self.ids.len() {
            let before = self.decode(&self.ids[self.prefix..self.read])?;
            let now = self.decode(&self.ids[self.prefix..])?;
            self.append(&before, &now)?;
            self.read = self.ids.len();
        }
        Ok(self.release(true))
    }

    fn append(&mut self, before: &str, now: &str) -> Result<()> {
        match now.strip_prefix(before) {
            Some(new) => self.text.push_str(new),
            // The window decoded differently than its start alone: decode everything.
            None => {
                let all = self.decode(&self.ids)?;
                let kept = self.text.len().min(all.len());
                if all.is_char_boundary(kept) {
                    self.text.push_str(&all[kept..]);
                }
            }
        }
        Ok(())
    }

    /// Hands out the text that can no longer turn into a stop string.
    fn release(&mut self, at_end: bool) -> String {
        if self.stopped {
            return String::new();
        }
        let tail = &self.text[self.emitted..];
        if let Some(at) = first_stop(tail, &self.stops) {
            let end = self.emitted + at;
            self.text.truncate(end);
            self.stopped = true;
            let out = self.text[self.emitted..].to_string();
            self.emitted = end;
            return out;
        }
        let mut safe = self.text.len();
        if !at_end {
            // Hold back the longest ending that could be the start of a stop string.
            for stop in &self.stops {
                for (i, _) in stop.char_indices().skip(1) {
                    if tail.ends_with(&stop[..i]) {
                        safe = safe.min(self.text.len() - i);
                    }
                }
            }
        }
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        out
    }

    /// Whether a stop string ended the answer.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The answer so far (up to any stop string).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Where the earliest stop string begins in `text`: the answer ends there, streamed
/// ([`TextStream`]) or decoded whole ([`answer_text`]).
pub fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// A whole generated answer as text, by the rule the stream follows: stop ids at its
/// end dropped, special tokens skipped, the text cut at the first stop string.
pub fn answer_text(
    tok: &TokenizerBundle,
    mut ids: Vec<u32>,
    stop_ids: &[u32],
    stop_strings: &[String],
) -> Result<String> {
    while ids.last().is_some_and(|id| stop_ids.contains(id)) {
        ids.pop();
    }
    let mut text = tok
        .hf()?
        .decode(&ids, true)
        .map_err(|e| anyhow!("cannot decode an answer: {e}"))?;
    if let Some(at) = first_stop(&text, stop_strings) {
        text.truncate(at);
    }
    Ok(text)
}

/// Generates an answer to `prompt`, handing each piece of final text to `on_text` as soon
/// as it is decoded; `on_text` returns [`Flow::Stop`] to cancel (e.g. the client left).
/// Stop ids are `config.stop_token_ids`; they are never part of the text.
#[allow(clippy::too_many_arguments)]
pub fn complete<M: Decoder + ?Sized>(
    model: &M,
    tok: &TokenizerBundle,
    prompt: &[u32],
    config: &GenerationConfig,
    stop_strings: &[String],
    skip_special: bool,
    mut on_text: impl FnMut(&str) -> Flow,
) -> Result<Completion> {
    let mut stream = TextStream::new(tok, stop_strings, skip_special);
    let mut failure = None;
    let mut cancelled = false;
    let new = generate(model, prompt, config, |id| {
        if config.stop_token_ids.contains(&id) {
            return Flow::Continue;
        }
        match stream.push(id) {
            Ok(piece) => {
                if !piece.is_empty() && on_text(&piece) == Flow::Stop {
                    cancelled = true;
                    return Flow::Stop;
                }
            }
            Err(e) => {
                failure = Some(e);
                return Flow::Stop;
            }
        }
        if stream.stopped() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if !cancelled {
        let rest = stream.finish()?;
        if !rest.is_empty() {
            on_text(&rest);
        }
    }
    let stopped_by_id = new
        .last()
        .is_some_and(|id| config.stop_token_ids.contains(id));
    let finish = if stream.stopped() || stopped_by_id || cancelled {
        Finish::Stop
    } else {
        Finish::Length
    };
    Ok(Completion {
        text: stream.text().to_string(),
        prompt_tokens: prompt.len(),
        completion_tokens: new.len(),
        finish,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TokenizerBundle {
        let dir = ferrotune_testing::workspace_root().join("examples/tokenizer");
        TokenizerBundle::load(&dir).unwrap()
    }

    fn ids(tok: &TokenizerBundle, text: &str) -> Vec<u32> {
        tok.hf()
            .unwrap()
            .encode(text, false)
            .unwrap()
            .get_ids()
            .to_vec()
    }

    /// Feeds ids one at a time and returns the pieces handed out.
    fn pieces(tok: &TokenizerBundle, ids: &[u32], stops: &[String]) -> (Vec<String>, String) {
        let mut s = TextStream::new(tok, stops, true);
        let mut out: Vec<String> = ids.iter().map(|&i| s.push(i).unwrap()).collect();
        out.push(s.finish().unwrap());
        (out, s.text().to_string())
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let tok = tokenizer();
        let text = "你好, 世界! Grüße 🎉 done";
        let ids = ids(&tok, text);
        assert!(ids.len() > text.chars().count() / 2);
        let (pieces, all) = pieces(&tok, &ids, &[]);
        assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')), "{pieces:?}");
        assert_eq!(pieces.concat(), text);
        assert_eq!(all, text);
    }

    #[test]
    fn stop_strings_end_the_text_and_are_never_shown() {
        let tok = tokenizer();
        let stops = vec!["### User".to_string()];
        let (out, all) = pieces(
            &tok,
            &ids(&tok, "The answer is 42.\n### User: more"),
            &stops,
        );
        assert_eq!(all, "The answer is 42.\n");
        assert_eq!(out.concat(), "The answer is 42.\n");
        assert!(out.iter().all(|p| !p.contains('#')), "{out:?}");
        // A partial stop string at the very end is text after all.
        let (out, all) = pieces(&tok, &ids(&tok, "ends with ### Us"), &stops);
        assert_eq!(all, "ends with ### Us");
        assert_eq!(out.concat(), all);
    }
}
