//! Stage 6, batch: examples become right-padded rows with an attention mask.
//!
//! Padding is marked by the attention mask alone and padded labels are -100, so a pad id
//! equal to EOS (SmolLM2 pads with `<|im_end|>`) never masks a trained EOS.

use crate::encode::{Encoded, IGNORE_INDEX};

/// A padded batch in row-major `[batch, seq_len]` vectors, device-independent.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    pub batch: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub attention_mask: Vec<u8>,
    /// Present when any example has per-token weights; 0 on padding.
    pub weights: Option<Vec<f32>>,
}

/// Pads to the longest example rounded up to a multiple of `multiple_of` (8 keeps matrix
/// shapes friendly).
pub fn pad_batch(examples: &[&Encoded], pad_id: u32, multiple_of: usize) -> PaddedBatch {
    let longest = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    let multiple_of = multiple_of.max(1);
    let seq_len = longest.div_ceil(multiple_of) * multiple_of;
    let n = examples.len() * seq_len;
    let mut batch = PaddedBatch {
        batch: examples.len(),
        seq_len,
        input_ids: vec![pad_id; n],
        labels: vec![IGNORE_INDEX; n],
        attention_mask: vec![0; n],
        weights: examples
            .iter()
            .any(|e| e.weights.is_some())
            .then(|| vec![0.0; n]),
    };
    for (row, e) in examples.iter().enumerate() {
        let at = row * seq_len;
        batch.input_ids[at..at + e.len()].copy_from_slice(&e.input_ids);
        batch.labels[at..at + e.len()].copy_from_slice(&e.labels);
        batch.attention_mask[at..at + e.len()].fill(1);
        if let Some(weights) = batch.weights.as_mut() {
            for (i, &label) in e.labels.iter().enumerate() {
                weights[at + i] = match &e.weights {
                    Some(w) => w[i],
                    None if label != IGNORE_INDEX => 1.0,
                    None => 0.0,
                };
            }
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_never_masks_an_eos_that_equals_the_pad_id() {
        let eos = 2;
        let a = Encoded {
            input_ids: vec![5, 6, eos],
            labels: vec![IGNORE_INDEX, 6, i64::from(eos)],
            weights: None,
            truncated: false,
        };
        let b = Encoded {
            input_ids: vec![7; 9],
            labels: vec![7; 9],
            weights: None,
            truncated: false,
        };
        let batch = pad_batch(&[&a, &b], eos, 8);
        assert_eq!(batch.seq_len, 16);
        assert_eq!(&batch.labels[..4], &[IGNORE_INDEX, 6, 2, IGNORE_INDEX]);
        assert_eq!(&batch.attention_mask[..4], &[1, 1, 1, 0]);
        assert_eq!(batch.input_ids[3], eos);
        assert_eq!(
            batch.attention_mask[16..25]
                .iter()
                .filter(|&&m| m == 1)
                .count(),
            9
        );
        assert!(batch.weights.is_none());
    }
}
