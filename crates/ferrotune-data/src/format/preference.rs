//! The preference layouts of stage 2 (LLaMA-Factory's `ranking` datasets and KTO's
//! labelled answers): a prompt with chosen and rejected answers, or one answer with its
//! boolean `kto_tag`.

use serde_json::{Map, Value};

use super::{kind, openai_message, Formatting, RecordFormat};
use crate::conversation::{Message, PreferencePair, Role};
use crate::error::{DataError, RecordRef, Result};

impl RecordFormat {
    /// KTO's label of a record: its boolean `kto_tag` column.
    pub(super) fn kto_tag(&self, record: &Map<String, Value>, at: &RecordRef) -> Result<bool> {
        let col = self.columns.kto_tag.as_deref().ok_or_else(|| {
            DataError::record(
                at,
                "dataset_info.json maps no `kto_tag` column; stage kto needs one",
            )
        })?;
        match record.get(col) {
            Some(Value::Bool(b)) => Ok(*b),
            None | Some(Value::Null) => Err(DataError::record(
                at,
                format!("stage kto needs each record's label: no boolean {col:?} column (true: a desirable answer, false: an undesirable one)"),
            )),
            Some(other) => Err(DataError::record(
                at,
                format!("column {col:?} must be true or false, found {}", kind(other)),
            )),
        }
    }

    /// Whether a record given without a registry entry carries a preference pair.
    pub(super) fn has_pair_columns(&self, record: &Map<String, Value>) -> bool {
        let has = |c: &Option<String>| c.as_deref().is_some_and(|c| record.contains_key(c));
        has(&self.columns.chosen) && has(&self.columns.rejected)
    }

    /// A preference pair: the prompt turns (alpaca's instruction and input, or the
    /// messages column) and the chosen and rejected answers, LLaMA-Factory's ranking
    /// layout.
    pub(super) fn pair(
        &self,
        record: &Map<String, Value>,
        formatting: Formatting,
        at: &RecordRef,
    ) -> Result<PreferencePair> {
        let prompt = match formatting {
            Formatting::Alpaca => self.alpaca_prompt(record, at)?,
            Formatting::Sharegpt => self.sharegpt(record, at)?,
            Formatting::Openai => self.openai(record, at)?,
            Formatting::Text => {
                return Err(DataError::record(
                    at,
                    "plain-text records have no prompt and answers to compare; stage dpo needs preference pairs",
                ))
            }
        };
        let answer = |which: &str, col: &Option<String>| -> Result<Message> {
            let col = col.as_deref().ok_or_else(|| {
                DataError::record(
                    at,
                    format!(
                        "dataset_info.json maps no `{which}` column for this preference dataset"
                    ),
                )
            })?;
            let value = record.get(col).filter(|v| !v.is_null()).ok_or_else(|| {
                DataError::record(
                    at,
                    format!("a preference pair needs both answers, and this record has no {which} answer (column {col:?})"),
                )
            })?;
            let message = self.answer_message(value, formatting).map_err(|p| {
                DataError::record(at, format!("the {which} answer (column {col:?}) {p}"))
            })?;
            if message.content.trim().is_empty() && message.tool_calls.is_empty() {
                return Err(DataError::record(
                    at,
                    format!("the {which} answer (column {col:?}) is empty"),
                ));
            }
            Ok(message)
        };
        let chosen = answer("chosen", &self.columns.chosen)?;
        let rejected = answer("rejected", &self.columns.rejected)?;
        let pair = PreferencePair::new(prompt, chosen, rejected);
        for (which, c) in [("chosen", &pair.chosen), ("rejected", &pair.rejected)] {
            c.validate()
                .map_err(|p| DataError::record(at, format!("prompt + {which} answer: {p}")))?;
        }
        Ok(pair)
    }

    /// One answer of a pair: a message object in the dataset's tags (sharegpt
    /// `{from, value}`, OpenAI `{role, content}`), or a plain string.
    fn answer_message(&self, value: &Value, formatting: Formatting) -> Result<Message, String> {
        if let Some(text) = value.as_str() {
            return Ok(Message::new(Role::Assistant, text));
        }
        let obj = value.as_object().ok_or_else(|| {
            format!(
                "must be a string or a message object, found {}",
                kind(value)
            )
        })?;
        if formatting == Formatting::Openai || obj.contains_key("role") {
            let message = openai_message(value)?;
            if message.role != Role::Assistant {
                return Err(format!("has role {}, expected assistant", message.role));
            }
            return Ok(message);
        }
        let t = &self.tags;
        let role = obj.get(&t.role).and_then(Value::as_str);
        let content = obj.get(&t.content).and_then(Value::as_str);
        match (role, content) {
            (Some(r), Some(c)) if t.assistant.as_deref() == Some(r) => {
                Ok(Message::new(Role::Assistant, c))
            }
            (Some(r), Some(_)) => Err(format!(
                "has role {r:?}, expected the assistant tag {:?}",
                t.assistant.as_deref().unwrap_or("")
            )),
            _ => Err(format!(
                "must have string {:?} and {:?} fields",
                t.role, t.content
            )),
        }
    }
}
