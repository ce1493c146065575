//! ferrotune's data side: every dataset sample becomes exactly the token ids and loss
//! mask the model trains on.
//!
//! The path reads in named stages, like the tokenizers pipeline:
//!
//! | stage | module | what it does |
//! |---|---|---|
//! | source | [`source`], [`registry`], [`stream`] | files, folders, globs and `dataset_info.json` entries to raw JSON records (whole, or streamed record by record with a resumable position) |
//! | format | [`format`], [`placeholders`] | alpaca / sharegpt / openai / text records to a [`Sample`], `{{name}}` placeholders filled |
//! | process | [`dataset`] | one dataset a chunk of records at a time: parse, format, template, tokenize, mask, in parallel, folded in order |
//! | read | [`records`] | source and format for one dataset, as training samples it or every record: the one reader of the pipeline, `data check` and `eval predict` |
//! | template | [`template`] | a conversation to the exact text, with jinja chat templates |
//! | tokenize + mask | [`encode`] | text to ids, labels (-100 on prompts), weights, truncation |
//! | mix | [`mix`], [`samples`] | several datasets into one mixture (concat / interleave, shares, replay): an order over the examples, which stay in their cache entries |
//! | pack | [`pack`] | examples into rows: greedy or neat (bin-packed, kept apart) packing |
//! | cache | [`cache`], [`cache_build`] | tokenized datasets stored once (written chunk by chunk, resumed after an interruption), memory-mapped on the next run |
//! | tokenize (fast) | [`fastbpe`] | byte-level BPE ids and offsets identical to the tokenizers crate, faster |
//! | check | [`quality`] | the quality report of `data check`: duplicates, empty or echoed replies, stray tokens, ... |
//! | stats | [`stats`] | length percentiles of the examples |
//!
//! [`pipeline::prepare`] runs them all and reports what happened to every record.

pub mod cache;
pub mod cache_build;
pub mod config;
pub mod conversation;
pub mod dataset;
pub mod encode;
pub mod error;
pub mod fastbpe;
pub mod format;
pub mod live;
pub mod mix;
pub mod pack;
pub mod pipeline;
pub mod placeholders;
pub mod quality;
pub mod records;
pub mod registry;
pub mod rng;
pub mod samples;
mod sampling;
pub mod source;
pub mod stats;
pub mod stream;
pub mod template;
pub mod tokenizer;

pub use config::DataArgs;
pub use conversation::{Conversation, Message, Role, Sample, ToolCall};
pub use encode::{EncodeOptions, Encoded, Encoder, Overlong, IGNORE_INDEX};
pub use error::{unknown_choice, DataError, RecordRef, Result};
pub use format::{Formatting, RecordFormat, Stage};
pub use template::{ChatTemplate, TemplateChoice};
pub use tokenizer::TokenizerBundle;
