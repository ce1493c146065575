//! Evaluation of fine-tuned models: automatic metrics and human rating.
//!
//! The automatic metrics reproduce three Python tools to their printed precision, so
//! numbers from ferrotune and from the tools people already cite can sit in one table:
//!
//! * LLaMA-Factory's predict-mode BLEU-4 and ROUGE-1/2/L ([`llamafactory`]): jieba word
//!   segmentation ([`segment`]), the `rouge_chinese` package and nltk's smoothed
//!   sentence BLEU over characters;
//! * sacrebleu's corpus BLEU with the 13a tokenizer ([`bleu::corpus_bleu`]);
//! * Google's `rouge-score` ([`rouge::rouge_score`]).
//!
//! Human evaluation: [`sheet`] writes rating sheets (CSV and a self-contained HTML
//! form) over five dimensions, [`summary`] aggregates the filled sheets and measures
//! agreement between raters ([`agreement`]).

pub mod agreement;
pub mod bleu;
pub mod error;
pub mod llamafactory;
pub mod predictions;
pub mod pytext;
pub mod report;
pub mod rouge;
pub mod segment;
pub mod sheet;
pub mod summary;

pub use error::{EvalError, Result};
pub use predictions::{Prediction, Predictions};
pub use report::MetricsReport;
