//! The scores LLaMA-Factory's predict mode writes (`predict_bleu-4`, `predict_rouge-1`,
//! ...), computed as its `ComputeSimilarity` does, so runs of both tools compare.

use serde::{Deserialize, Serialize};

use crate::{bleu, pytext, rouge, segment};

/// One sample's scores, each x100 and rounded to 4 decimals as LLaMA-Factory stores
/// them before averaging.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LfScores {
    #[serde(rename = "bleu-4")]
    pub bleu4: f64,
    #[serde(rename = "rouge-1")]
    pub rouge1: f64,
    #[serde(rename = "rouge-2")]
    pub rouge2: f64,
    #[serde(rename = "rouge-l")]
    pub rouge_l: f64,
}

/// Scores one prediction against its label.
///
/// ROUGE: both texts are segmented with jieba and the words joined by spaces (so
/// English is split into words and punctuation, Chinese into words), then scored by
/// `rouge_chinese`; a text with no word scores 0. BLEU-4: nltk's sentence BLEU over
/// characters with smoothing method 3.
pub fn score(prediction: &str, label: &str) -> LfScores {
    let hypothesis = segment::cut(prediction).join(" ");
    let reference = segment::cut(label).join(" ");
    let rouge = rouge::rouge_chinese(&hypothesis, &reference).unwrap_or_default();
    let hyp_chars: Vec<char> = prediction.chars().collect();
    let ref_chars: Vec<char> = label.chars().collect();
    let bleu = bleu::nltk_sentence_bleu(&ref_chars, &hyp_chars);
    let scaled = |x: f64| pytext::round(x * 100.0, 4);
    LfScores {
        bleu4: scaled(bleu),
        rouge1: scaled(rouge.rouge1),
        rouge2: scaled(rouge.rouge2),
        rouge_l: scaled(rouge.rouge_l),
    }
}

/// The mean of each score over the samples (of the rounded values, as LLaMA-Factory
/// averages them); all zero for no samples.
pub fn mean(samples: &[LfScores]) -> LfScores {
    if samples.is_empty() {
        return LfScores::default();
    }
    let n = samples.len() as f64;
    let avg = |f: fn(&LfScores) -> f64| samples.iter().map(f).sum::<f64>() / n;
    LfScores {
        bleu4: avg(|s| s.bleu4),
        rouge1: avg(|s| s.rouge1),
        rouge2: avg(|s| s.rouge2),
        rouge_l: avg(|s| s.rouge_l),
    }
}
