//! Using a trained model: loading it with its adapter and the chat template saved with it
//! ([`loading`]), answering a conversation, streamed or not ([`turn`], [`stream`]),
//! predicting a dataset in batches ([`predict`]), and an OpenAI-compatible HTTP server
//! ([`server`]). The `ferrotune` binary's `chat`, `serve` and `eval predict` parse their
//! arguments, call these, and print.

pub mod loading;
pub mod predict;
pub mod server;
pub mod stream;
pub mod turn;

pub use loading::{ModelSource, SamplingOptions};
pub use predict::{PredictOptions, PredictReport, Prediction};
pub use server::{serve, ServeOptions, Server};
pub use stream::{Completion, Finish};
pub use turn::{ChatModel, Turn, TurnError, TurnEvent};
