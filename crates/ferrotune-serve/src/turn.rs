//! One turn of a conversation, for `chat`, `serve` and `eval predict` alike: the messages
//! rendered with the template the model was trained with (plus its generation prompt),
//! tokenized as training tokenizes, answered until a stop id or stop string, and the
//! answer streamed as whole characters.

use anyhow::Result;
use ferrotune_data::conversation::Message;
use ferrotune_data::template::ChatTemplate;
use ferrotune_data::TokenizerBundle;
use ferrotune_model::generate::{Flow, GenerationConfig};
use ferrotune_model::infer::{InferenceModel, WeightType};
use ferrotune_model::CausalLm;
use serde_json::Value;

use crate::loading::{self, ModelSource};
use crate::stream::{complete, Completion};

/// A conversation's prompt: the rendered text and its ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
}

/// Why a conversation could not become a prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptError {
    /// The template's own message (a role it does not know, a missing field, ...).
    Template(String),
    Tokenizer(String),
}

impl std::fmt::Display for PromptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PromptError::Template(e) => write!(f, "chat template: {e}"),
            PromptError::Tokenizer(e) => write!(f, "tokenizer: {e}"),
        }
    }
}

impl std::error::Error for PromptError {}

/// `messages` (and `tools`) rendered with `template` and its generation prompt, then
/// tokenized without added special tokens: the template writes those itself, as in
/// training.
pub fn build_prompt(
    template: &ChatTemplate,
    tok: &TokenizerBundle,
    messages: &[Message],
    tools: &[Value],
) -> std::result::Result<Prompt, PromptError> {
    let text = template
        .render(messages, tools, true)
        .map_err(PromptError::Template)?;
    let ids = tok
        .encode_with_offsets(&text)
        .map_err(PromptError::Tokenizer)?
        .0;
    Ok(Prompt { text, ids })
}

/// Why a turn produced no answer.
#[derive(Debug)]
pub enum TurnError {
    Prompt(PromptError),
    /// The prompt leaves no room in the model's context for an answer.
    TooLong {
        tokens: usize,
        context: usize,
    },
    /// The listener said stop before generation began (e.g. the client left).
    Cancelled,
    Generation(anyhow::Error),
}

impl std::fmt::Display for TurnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TurnError::Prompt(e) => write!(f, "{e}"),
            TurnError::TooLong { tokens, context } => write!(
                f,
                "the prompt is {tokens} tokens; the model's context is {context} tokens"
            ),
            TurnError::Cancelled => write!(f, "cancelled before generation began"),
            TurnError::Generation(e) => write!(f, "generation failed: {e:#}"),
        }
    }
}

impl std::error::Error for TurnError {}

/// What a turn tells its listener, in order: `Started` once the prompt is accepted,
/// then the answer's text piece by piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEvent<'a> {
    Started,
    Text(&'a str),
}

/// One turn's input.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    pub messages: &'a [Message],
    pub tools: &'a [Value],
    /// Sampling, and the stop ids (see [`ChatModel::stop_ids`]).
    pub config: &'a GenerationConfig,
    /// Stop strings besides the template's (an API request's `stop`).
    pub extra_stops: &'a [String],
}

/// A model ready to answer conversations: the inference weights, the tokenizer and the
/// chat template saved with it, and what ends an answer.
pub struct ChatModel {
    model: InferenceModel,
    weights: WeightType,
    tok: TokenizerBundle,
    template: ChatTemplate,
    stop_ids: Vec<u32>,
    stop_strings: Vec<String>,
}

impl ChatModel {
    /// Loads `source` and converts it to `weights` (None: as the base is stored, see
    /// [`loading::inference_weights`]). The adapter is merged one layer at a time as the
    /// layers are converted, so a quantized base is never held in f32 as a whole.
    pub fn load(
        source: &ModelSource,
        tok: TokenizerBundle,
        template: ChatTemplate,
        weights: Option<WeightType>,
    ) -> Result<Self> {
        Self::new(source.load_unmerged()?, tok, template, weights)
    }

    /// Converts a loaded model (merged or with its adapter) to `weights` for answering.
    pub fn new(
        model: CausalLm,
        tok: TokenizerBundle,
        template: ChatTemplate,
        weights: Option<WeightType>,
    ) -> Result<Self> {
        let stop_ids = loading::stop_ids(&model, &tok, Some(&template));
        let weights = weights.unwrap_or_else(|| loading::inference_weights(&model));
        let model = InferenceModel::new(model, weights)?;
        Ok(ChatModel {
            weights,
            stop_strings: template.stop_strings(),
            model,
            tok,
            template,
            stop_ids,
        })
    }

    /// The inference weights the model was converted to.
    pub fn weights(&self) -> WeightType {
        self.weights
    }

    /// Ids that end an answer; [`Turn::config`]'s `stop_token_ids` should be these.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Strings that end an answer (the template's end-of-turn marker and stop words).
    pub fn stop_strings(&self) -> &[String] {
        &self.stop_strings
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    pub fn tokenizer(&self) -> &TokenizerBundle {
        &self.tok
    }

    pub fn model(&self) -> &InferenceModel {
        &self.model
    }

    /// The prompt of a conversation whose next turn is the assistant's.
    pub fn prompt(
        &self,
        messages: &[Message],
        tools: &[Value],
    ) -> std::result::Result<Prompt, PromptError> {
        build_prompt(&self.template, &self.tok, messages, tools)
    }

    /// Answers the conversation, telling `listen` when generation starts and handing it
    /// each piece of text as soon as it is final; `listen` returns [`Flow::Stop`] to
    /// cancel. The answer is capped to what is left of the model's context.
    pub fn answer(
        &self,
        turn: &Turn<'_>,
        mut listen: impl FnMut(TurnEvent<'_>) -> Flow,
    ) -> std::result::Result<Completion, TurnError> {
        let prompt = self
            .prompt(turn.messages, turn.tools)
            .map_err(TurnError::Prompt)?;
        let context = self.model.config().max_position_embeddings;
        if prompt.ids.len() >= context {
            return Err(TurnError::TooLong {
                tokens: prompt.ids.len(),
                context,
            });
        }
        let config = GenerationConfig {
            max_new_tokens: turn.config.max_new_tokens.min(context - prompt.ids.len()),
            ..turn.config.clone()
        };
        let mut stops = self.stop_strings.clone();
        stops.extend(turn.extra_stops.iter().cloned());
        if listen(TurnEvent::Started) == Flow::Stop {
            return Err(TurnError::Cancelled);
        }
        complete(
            &self.model,
            &self.tok,
            &prompt.ids,
            &config,
            &stops,
            true,
            |piece| listen(TurnEvent::Text(piece)),
        )
        .map_err(TurnError::Generation)
    }

    /// Answers the conversation without streaming.
    pub fn reply(
        &self,
        messages: &[Message],
        config: &GenerationConfig,
    ) -> std::result::Result<Completion, TurnError> {
        let turn = Turn {
            messages,
            tools: &[],
            config,
            extra_stops: &[],
        };
        self.answer(&turn, |_| Flow::Continue)
    }
}
