//! A tokenizer folder as Hugging Face lays it out: `tokenizer.json` (the tokenizers
//! pipeline), `tokenizer_config.json` (special tokens, `chat_template`) and optionally
//! `chat_template.jinja` / `special_tokens_map.json`.
//!
//! Text is encoded through [`TokenizerBundle::encode_with_offsets`]: the fast byte-level
//! BPE encoder ([`crate::fastbpe`]) when the tokenizer allows it, the tokenizers crate
//! otherwise. `FERROTUNE_HF_TOKENIZER=1` at load forces the tokenizers crate.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{DataError, Result};
use crate::fastbpe::{FastBpe, IdsAndOffsets};
use crate::template::SpecialTokens;

pub struct TokenizerBundle {
    pub dir: PathBuf,
    /// The tokenizers crate's tokenizer (see [`TokenizerBundle::hf`]).
    hf: HfTokenizer,
    pub specials: SpecialTokens,
    /// The folder's own chat template, if it has one.
    pub chat_template: Option<String>,
    /// `add_bos_token` from tokenizer_config.json (LLaMA-Factory prepends BOS to
    /// pretraining documents when it is set).
    pub add_bos_token: bool,
    /// The fast encoder, when the tokenizer is byte-level BPE it reproduces exactly.
    fast: Option<FastBpe>,
}

impl std::fmt::Debug for TokenizerBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizerBundle")
            .field("dir", &self.dir)
            .field("specials", &self.specials)
            .field("fast", &self.fast.is_some())
            .finish()
    }
}

/// Which token pads batches, and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PadToken {
    pub id: u32,
    pub token: String,
    /// Empty when the tokenizer names a pad token; otherwise says what was picked.
    pub note: String,
}

impl TokenizerBundle {
    pub fn load(dir: &Path) -> Result<Self> {
        let tokenizer_json = dir.join("tokenizer.json");
        if !dir.is_dir() {
            return Err(DataError::file(dir, "tokenizer folder does not exist"));
        }
        if !tokenizer_json.is_file() {
            return Err(DataError::file(
                dir,
                "tokenizer folder has no tokenizer.json (ferrotune reads the fast-tokenizer file that \
                 `tokenizer.save_pretrained` writes)",
            ));
        }
        let force_hf =
            std::env::var("FERROTUNE_HF_TOKENIZER").is_ok_and(|v| !v.is_empty() && v != "0");
        let fast = if force_hf {
            None
        } else {
            std::fs::read_to_string(&tokenizer_json)
                .ok()
                .and_then(|json| FastBpe::from_json(&json).ok())
        };
        let hf = HfTokenizer {
            path: tokenizer_json.clone(),
            loaded: OnceLock::new(),
        };
        // Without the fast encoder the tokenizers crate encodes: load it now, so that a
        // file it cannot read is reported here.
        let special_tokens: Vec<String> = match &fast {
            Some(fast) => fast.special_tokens().to_vec(),
            None => hf
                .get()?
                .get_added_tokens_decoder()
                .values()
                .filter(|t| t.special)
                .map(|t| t.content.clone())
                .collect(),
        };
        let config = read_json_object(&dir.join("tokenizer_config.json"))?;
        let special_map = read_json_object(&dir.join("special_tokens_map.json"))?;
        let token = |key: &str| {
            config
                .get(key)
                .and_then(token_content)
                .or_else(|| special_map.get(key).and_then(token_content))
        };
        let mut all = special_tokens;
        let specials_named = [
            token("bos_token"),
            token("eos_token"),
            token("pad_token"),
            token("unk_token"),
        ];
        for t in specials_named.iter().flatten() {
            if !all.contains(t) {
                all.push(t.clone());
            }
        }
        all.sort();
        let [bos, eos, pad, unk] = specials_named;
        let chat_template = read_chat_template(dir, &config)?;
        Ok(TokenizerBundle {
            dir: dir.to_path_buf(),
            hf,
            specials: SpecialTokens {
                bos,
                eos,
                pad,
                unk,
                all,
            },
            chat_template,
            add_bos_token: config
                .get("add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            fast,
        })
    }

    /// The ids and byte offsets of `text` as `tokenizer.encode(text, false)` gives them:
    /// through the fast encoder when it applies, else the tokenizers crate.
    pub fn encode_with_offsets(&self, text: &str) -> std::result::Result<IdsAndOffsets, String> {
        if let Some(done) = self.fast.as_ref().and_then(|f| f.encode(text)) {
            return Ok(done);
        }
        let encoding = self
            .hf()
            .map_err(|e| e.to_string())?
            .encode(text, false)
            .map_err(|e| e.to_string())?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// The fast encoder, when this tokenizer uses it.
    pub fn fast_encoder(&self) -> Option<&FastBpe> {
        self.fast.as_ref()
    }

    /// The tokenizers crate's tokenizer of the folder, for decoding and vocabulary
    /// queries. With the fast encoder it is loaded on first use: preparing data never
    /// needs it, and loading it costs as much as the fast encoder's own load.
    pub fn hf(&self) -> Result<&Tokenizer> {
        self.hf.get()
    }

    /// Whether the tokenizers crate's tokenizer has been loaded (it is not, with the fast
    /// encoder, until something decodes or asks the vocabulary).
    pub fn hf_is_loaded(&self) -> bool {
        self.hf.loaded.get().is_some()
    }

    /// The id of a token (an added token's content, or a vocabulary entry).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        if let Some(id) = self.fast.as_ref().and_then(|f| f.added_token_id(token)) {
            return Some(id);
        }
        self.hf().ok()?.token_to_id(token)
    }

    /// The pad token: the tokenizer's own, else EOS (padding is read from the attention
    /// mask, never by comparing ids, so sharing an id with EOS is safe), else UNK, else
    /// id 0.
    pub fn pad_token(&self) -> PadToken {
        let s = &self.specials;
        if let Some((t, id)) = s.pad.as_ref().and_then(|t| Some((t, self.token_id(t)?))) {
            return PadToken {
                id,
                token: t.clone(),
                note: String::new(),
            };
        }
        for (name, candidate) in [("eos", &s.eos), ("unk", &s.unk)] {
            if let Some((t, id)) = candidate
                .as_ref()
                .and_then(|t| Some((t, self.token_id(t)?)))
            {
                return PadToken {
                    id,
                    token: t.clone(),
                    note: format!("the tokenizer has no pad token; padding with its {name} token {t:?} (id {id})"),
                };
            }
        }
        let token = self
            .hf()
            .ok()
            .and_then(|t| t.id_to_token(0))
            .unwrap_or_default();
        PadToken {
            id: 0,
            token: token.clone(),
            note: format!(
                "the tokenizer has no pad, eos or unk token; padding with id 0 ({token:?})"
            ),
        }
    }

    /// The token that ends a pretraining document: the vocabulary's document separator
    /// (`<|endoftext|>` in Qwen / GPT vocabularies, `<|end_of_text|>` in Llama 3) where it
    /// has one, else EOS. Chat models' EOS is often an end-of-turn token instead.
    pub fn document_end(&self) -> Option<(u32, String)> {
        ["<|endoftext|>", "<|end_of_text|>"]
            .into_iter()
            .map(String::from)
            .chain(self.specials.eos.clone())
            .find_map(|t| Some((self.token_id(&t)?, t)))
    }

    /// The BOS id when pretraining documents should start with it.
    pub fn document_start(&self) -> Option<u32> {
        if self.add_bos_token {
            self.specials.bos.as_deref().and_then(|t| self.token_id(t))
        } else {
            None
        }
    }
}

/// `tokenizer.json` through the tokenizers crate, loaded once, when first asked for.
struct HfTokenizer {
    path: PathBuf,
    loaded: OnceLock<std::result::Result<Tokenizer, String>>,
}

impl HfTokenizer {
    fn get(&self) -> Result<&Tokenizer> {
        self.loaded
            .get_or_init(|| Tokenizer::from_file(&self.path).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| DataError::file(&self.path, format!("cannot load tokenizer: {e}")))
    }
}

fn read_json_object(path: &Path) -> Result<serde_json::Map<String, Value>> {
    if !path.is_file() {
        return Ok(serde_json::Map::new());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DataError::file(path, "expected a JSON object")),
        Err(e) => Err(DataError::file(path, format!("malformed JSON: {e}"))),
    }
}

/// A special token is written either as a string or as an AddedToken object.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// `chat_template.jinja` (newer transformers), else `chat_template` in the config: a
/// string, or a list of named templates of which `default` is used.
fn read_chat_template(
    dir: &Path,
    config: &serde_json::Map<String, Value>,
) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| DataError::file(&jinja, format!("cannot read: {e}")));
    }
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => Ok(list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(String::from)),
        Some(_) => Err(DataError::file(
            &dir.join("tokenizer_config.json"),
            "chat_template must be a string or a list of {name, template}",
        )),
    }
}
