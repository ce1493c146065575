//! The chat panel: base and tuned models side by side, loaded once and kept, each answer
//! streamed as server-sent events with the template saved with the model.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};
use ferrotune_data::conversation::{Message, Role};
use ferrotune_model::generate::Flow;
use ferrotune_serve::loading::{self, ModelSource};
use ferrotune_serve::turn::{ChatModel, Turn, TurnEvent};
use ferrotune_serve::SamplingOptions;
use serde_json::{json, Value};

/// A model as the page names it: the base (folder or Hub id) and the adapter, if any.
type ModelKey = (String, Option<PathBuf>);

/// Models loaded for chat, kept for the next question.
/// A model ready to chat, with the base folder its sampling defaults are read from.
struct Loaded {
    chat: Mutex<ChatModel>,
    base: PathBuf,
}

#[derive(Default)]
pub struct ChatModels {
    loaded: Mutex<HashMap<ModelKey, Arc<Loaded>>>,
}

/// One request of the panel.
pub struct ChatRequest {
    pub model: String,
    pub adapter: Option<PathBuf>,
    pub messages: Vec<Message>,
    pub max_new_tokens: usize,
    pub temperature: f64,
}

impl ChatRequest {
    pub fn from_json(
        body: &Value,
        resolve: impl Fn(&str) -> Result<PathBuf, String>,
    ) -> Result<Self, String> {
        let model = body["model"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or("missing \"model\"")?;
        let mut model = resolve(model)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or(model.to_string());
        let mut adapter = match body["adapter"].as_str().filter(|s| !s.is_empty()) {
            Some(a) => Some(resolve(a)?),
            None => None,
        };
        // The base an adapter (or a LoRA run's output) names, without the adapter.
        if body["base_only"].as_bool() == Some(true) {
            let source = ModelSource::locate(Some(&model), adapter.as_deref())
                .map_err(|e| format!("{e:#}"))?;
            model = source.base.to_string_lossy().into_owned();
            adapter = None;
        }
        let messages = body["messages"]
            .as_array()
            .ok_or("missing \"messages\"")?
            .iter()
            .map(|m| {
                let role = match m["role"].as_str() {
                    Some("system") => Role::System,
                    Some("user") => Role::User,
                    Some("assistant") => Role::Assistant,
                    other => {
                        return Err(format!(
                            "message role {other:?}: expected system, user or assistant"
                        ))
                    }
                };
                Ok(Message::new(
                    role,
                    m["content"].as_str().unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ChatRequest {
            model,
            adapter,
            messages,
            max_new_tokens: body["max_new_tokens"].as_u64().unwrap_or(256) as usize,
            temperature: body["temperature"].as_f64().unwrap_or(0.0),
        })
    }
}

impl ChatModels {
    fn get(&self, model: &str, adapter: Option<&PathBuf>) -> Result<Arc<Loaded>> {
        let key = (model.to_string(), adapter.cloned());
        if let Some(m) = self.loaded.lock().expect("chat lock").get(&key) {
            return Ok(Arc::clone(m));
        }
        let source = ModelSource::locate(Some(model), adapter.map(PathBuf::as_path))?;
        let (tok, template) = loading::tokenizer_and_template(&source, None)?;
        let template = template.ok_or_else(|| {
            anyhow!(
                "{} has no chat template (chat_template.jinja or tokenizer_config.json)",
                source.tokenizer_dir().display()
            )
        })?;
        let chat = Arc::new(Loaded {
            chat: Mutex::new(ChatModel::load(&source, tok, template, None)?),
            base: source.base,
        });
        self.loaded
            .lock()
            .expect("chat lock")
            .insert(key, Arc::clone(&chat));
        Ok(chat)
    }

    /// Answers `request`, handing `send` each event's JSON: `{"text": piece}` as the
    /// answer grows, then `{"done": true, "finish": ..., "tokens": n}`. `send` returns
    /// false when the page went away, which stops generating.
    pub fn answer(
        &self,
        request: &ChatRequest,
        mut send: impl FnMut(&Value) -> bool,
    ) -> Result<()> {
        let loaded = self.get(&request.model, request.adapter.as_ref())?;
        let chat = loaded.chat.lock().expect("chat model lock");
        let sampling = SamplingOptions {
            max_new_tokens: request.max_new_tokens,
            temperature: Some(request.temperature),
            top_p: None,
            top_k: None,
            repetition_penalty: None,
            seed: 0,
        };
        let config = sampling.config(&loaded.base, chat.stop_ids().to_vec())?;
        let turn = Turn {
            messages: &request.messages,
            tools: &[],
            config: &config,
            extra_stops: &[],
        };
        let done = chat
            .answer(&turn, |event| match event {
                TurnEvent::Started => Flow::Continue,
                TurnEvent::Text(piece) => {
                    if send(&json!({ "text": piece })) {
                        Flow::Continue
                    } else {
                        Flow::Stop
                    }
                }
            })
            .map_err(|e| anyhow!("{e}"))?;
        send(&json!({
            "done": true,
            "finish": done.finish.as_str(),
            "tokens": done.completion_tokens,
        }));
        Ok(())
    }
}
