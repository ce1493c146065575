//! Reading tokenizer.json for the fast path: what it must say for the encoder to
//! reproduce the tokenizers crate, and the vocabulary and merges (strings borrowed from
//! the file where possible: a vocabulary has hundreds of thousands).

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::Deserialize;
use serde_json::Value;

use super::bpe::Bpe;
use super::pretok;

/// What the file says, checked.
pub(super) struct Read {
    pub nfc: bool,
    /// Split patterns, in order.
    pub patterns: Vec<String>,
    /// ByteLevel post-processors that trim offsets: their `add_prefix_space`.
    pub trims: Vec<bool>,
    pub bpe: Bpe,
    /// The `added_tokens` list, as the tokenizers crate numbers them.
    pub added: Vec<AddedTokenEntry>,
}

/// One entry of `added_tokens`. Every field is required: a file that leaves one out is
/// read by the tokenizers crate alone.
#[derive(Debug, Clone, Deserialize)]
pub struct AddedTokenEntry {
    pub id: u32,
    pub content: String,
    pub single_word: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub normalized: bool,
    pub special: bool,
}

pub(super) fn read(json: &str) -> Result<Read, String> {
    let file: File = serde_json::from_str(json).map_err(|e| format!("not read as BPE: {e}"))?;
    if !file.truncation.is_null() || !file.padding.is_null() {
        return Err("the file sets truncation or padding".into());
    }
    let nfc = normalizer_is_nfc(&file.normalizer)?;
    let patterns = pre_tokenizer_splits(&file.pre_tokenizer)?;
    let mut trims = Vec::new();
    post_processor_trims(&file.post_processor, &mut trims)?;
    let model = file.model;
    if model.kind.as_deref() != Some("BPE") {
        return Err(format!("model type {:?} is not BPE", model.kind));
    }
    if model.dropout.is_some_and(|d| d != 0.0) {
        return Err("BPE dropout".into());
    }
    if model.byte_fallback == Some(true) {
        return Err("byte_fallback".into());
    }
    for (what, affix) in [
        (
            "continuing_subword_prefix",
            &model.continuing_subword_prefix,
        ),
        ("end_of_word_suffix", &model.end_of_word_suffix),
    ] {
        if affix.as_deref().is_some_and(|a| !a.is_empty()) {
            return Err(format!("{what} is set"));
        }
    }
    // As the tokenizers crate reads them: all pairs, or all legacy "a b" lines (where a
    // "#version" line is skipped and takes no rank).
    let legacy = matches!(model.merges.first(), Some(Merge::Line(_)));
    let mut merges: Vec<(&str, &str)> = Vec::with_capacity(model.merges.len());
    for m in &model.merges {
        match (m, legacy) {
            (Merge::Pair(a, b), false) => merges.push((&a.0, &b.0)),
            (Merge::Line(l), true) if l.0.starts_with("#version") => {}
            (Merge::Line(l), true) => match l.0.split(' ').collect::<Vec<_>>()[..] {
                [a, b] => merges.push((a, b)),
                _ => return Err(format!("malformed merge {:?}", l.0)),
            },
            _ => return Err("merges mix pairs and lines".into()),
        }
    }
    let vocab: Vec<(&str, u32)> = model.vocab.iter().map(|(t, id)| (&*t.0, *id)).collect();
    let mut added = file.added_tokens;
    number_added_tokens(&mut added, &vocab)?;
    let bpe = Bpe::new(&vocab, &merges, model.ignore_merges.unwrap_or(false))?;
    Ok(Read {
        nfc,
        patterns,
        trims,
        bpe,
        added,
    })
}

/// Numbers the added tokens as the tokenizers crate does when it loads the file
/// (`AddedVocabulary::add_tokens`), whatever ids the file lists: a token already in the
/// vocabulary takes its id there, the others the next ids after the vocabulary, in file
/// order. Two tokens of one content are left to the tokenizers crate.
fn number_added_tokens(added: &mut [AddedTokenEntry], vocab: &[(&str, u32)]) -> Result<(), String> {
    let mut contents = std::collections::HashSet::new();
    if !added.iter().all(|t| contents.insert(t.content.clone())) {
        return Err("two added tokens have the same content".into());
    }
    let in_vocab: std::collections::HashMap<&str, u32> = vocab
        .iter()
        .filter(|(t, _)| contents.contains(*t))
        .map(|&(t, id)| (t, id))
        .collect();
    let mut next = vocab.len() as u32;
    for t in added.iter_mut().filter(|t| !t.content.is_empty()) {
        t.id = match in_vocab.get(t.content.as_str()) {
            Some(&id) => id,
            None => {
                next += 1;
                next - 1
            }
        };
    }
    Ok(())
}

#[derive(Deserialize)]
struct File<'a> {
    #[serde(default)]
    truncation: Value,
    #[serde(default)]
    padding: Value,
    #[serde(default)]
    normalizer: Value,
    #[serde(default)]
    pre_tokenizer: Value,
    #[serde(default)]
    post_processor: Value,
    #[serde(default)]
    added_tokens: Vec<AddedTokenEntry>,
    #[serde(borrow)]
    model: Model<'a>,
}

#[derive(Deserialize)]
struct Model<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    dropout: Option<f64>,
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
    byte_fallback: Option<bool>,
    ignore_merges: Option<bool>,
    #[serde(borrow, deserialize_with = "vocab_entries")]
    vocab: Vec<(Str<'a>, u32)>,
    #[serde(borrow)]
    merges: Vec<Merge<'a>>,
}

/// A string of the file, borrowed where it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(PhantomData))
    }
}

struct StrVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for StrVisitor<'a> {
    type Value = Str<'a>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Str<'a>, E> {
        Ok(Str(Cow::Borrowed(s)))
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Str<'a>, E> {
        Ok(Str(Cow::Owned(s.to_string())))
    }
    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Str<'a>, E> {
        Ok(Str(Cow::Owned(s)))
    }
}

/// The vocabulary object as a list (no map is needed before the byte-level one).
fn vocab_entries<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(Str<'a>, u32)>, D::Error> {
    struct V<'a>(PhantomData<&'a ()>);
    impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
        type Value = Vec<(Str<'a>, u32)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of token -> id")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(entry) = map.next_entry()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V(PhantomData))
}

/// One merge: `["a", "b"]`, or the legacy `"a b"` (kept whole here, split later).
enum Merge<'a> {
    Pair(Str<'a>, Str<'a>),
    Line(Str<'a>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Merge<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Merge<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a merge: \"a b\" or [\"a\", \"b\"]")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Merge<'a>, E> {
                Ok(Merge::Line(Str(Cow::Borrowed(s))))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Merge<'a>, E> {
                Ok(Merge::Line(Str(Cow::Owned(s.to_string()))))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Merge<'a>, E> {
                Ok(Merge::Line(Str(Cow::Owned(s))))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Merge<'a>, A::Error> {
                let mut next = || -> Result<Str<'a>, A::Error> {
                    seq.next_element()?
                        .ok_or_else(|| serde::de::Error::custom("a merge pair needs two tokens"))
                };
                let (a, b) = (next()?, next()?);
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::custom("a merge pair has two tokens"));
                }
                Ok(Merge::Pair(a, b))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

fn kind(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// `Ok(true)` for NFC, `Ok(false)` for no normalizer.
fn normalizer_is_nfc(v: &Value) -> Result<bool, String> {
    match (v, kind(v)) {
        (Value::Null, _) => Ok(false),
        (_, "NFC") => Ok(true),
        (_, "Sequence") => {
            let mut nfc = false;
            for n in v["normalizers"].as_array().into_iter().flatten() {
                nfc |= normalizer_is_nfc(n)?;
            }
            Ok(nfc)
        }
        (_, other) => Err(format!("normalizer {other}")),
    }
}

/// The split patterns of a byte-level pre-tokenizer.
fn pre_tokenizer_splits(v: &Value) -> Result<Vec<String>, String> {
    let steps: Vec<&Value> = match kind(v) {
        "Sequence" => v["pretokenizers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect(),
        _ => vec![v],
    };
    let Some((last, splits)) = steps.split_last() else {
        return Err("no pre-tokenizer".into());
    };
    let mut patterns = Vec::new();
    for s in splits {
        if kind(s) != "Split" {
            return Err(format!("pre-tokenizer {} before ByteLevel", kind(s)));
        }
        if s["behavior"] != "Isolated" || s["invert"] != false {
            return Err("a Split that is not Isolated or is inverted".into());
        }
        match (
            s["pattern"]["Regex"].as_str(),
            s["pattern"]["String"].as_str(),
        ) {
            (Some(re), _) => patterns.push(re.to_string()),
            (None, Some(literal)) => patterns.push(regex::escape(literal)),
            _ => return Err("a Split without a pattern".into()),
        }
    }
    if kind(last) != "ByteLevel" {
        return Err(format!("pre-tokenizer {:?} is not byte-level", kind(last)));
    }
    if last["add_prefix_space"] != false {
        return Err("ByteLevel add_prefix_space".into());
    }
    if last
        .get("use_regex")
        .and_then(Value::as_bool)
        .unwrap_or(true)
    {
        patterns.push(pretok::GPT2_PATTERN.to_string());
    }
    Ok(patterns)
}

/// Collects what the post-processor does to `encode(text, false)`: only ByteLevel's
/// trimmed offsets change anything.
fn post_processor_trims(v: &Value, trims: &mut Vec<bool>) -> Result<(), String> {
    match (v, kind(v)) {
        (Value::Null, _) => Ok(()),
        (_, "ByteLevel") => {
            if v["trim_offsets"].as_bool().unwrap_or(true) {
                trims.push(v["add_prefix_space"].as_bool().unwrap_or(true));
            }
            Ok(())
        }
        (_, "TemplateProcessing") => {
            let single = v["single"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let sequences: Vec<&Value> = single.iter().filter_map(|p| p.get("Sequence")).collect();
            match sequences[..] {
                [s] if s["id"] == "A" => Ok(()),
                _ => Err("a TemplateProcessing whose single template is not one $A".into()),
            }
        }
        (_, "Sequence") => {
            for p in v["processors"].as_array().into_iter().flatten() {
                post_processor_trims(p, trims)?;
            }
            Ok(())
        }
        (_, other) => Err(format!("post-processor {other}")),
    }
}
