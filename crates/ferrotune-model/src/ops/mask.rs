//! Which keys a query attends to: the one rule that training's additive bias and the
//! decoding engine's visible positions are both built from.
//!
//! Segment ids: 0 marks padding; packed samples have ids 1, 2, ... A query at key
//! position `t` (its own position among the keys, past positions included) sees key `k`
//! when `k <= t` (causal), the key is not padding, and either it belongs to the query's
//! segment or the query is itself padding (a padding query sees every real key before
//! it, as transformers does, so that its softmax stays defined).
//!
//! Shapes: segments row-major, (B, T) for the queries and (B, S) for the keys; the
//! bias (B, 1, T, S).

use candle_core::{DType, Device, Result, Tensor};

/// Whether a query of segment `query` sees an earlier (or its own) key of segment `key`.
#[inline]
pub fn sees(query: u32, key: u32) -> bool {
    key != 0 && (query == 0 || query == key)
}

/// The key positions a query of segment `query` at key position `at` sees, in order,
/// among one batch row's `keys` (their segment ids).
pub fn visible_keys(query: u32, at: usize, keys: &[u32]) -> impl Iterator<Item = usize> + '_ {
    keys.iter()
        .take(at + 1)
        .enumerate()
        .filter(move |&(_, &key)| sees(query, key))
        .map(|(k, _)| k)
}

/// The additive attention bias (batch, 1, q_len, k_len): 0 where `visible_keys` lets a
/// query see a key, `f32::MIN` elsewhere. `past` keys precede the queries (a cache).
pub fn attention_bias(
    q_segments: &[u32],
    k_segments: &[u32],
    batch: usize,
    past: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let q_len = q_segments.len() / batch;
    let k_len = k_segments.len() / batch;
    let mut bias = vec![f32::MIN; batch * q_len * k_len];
    for b in 0..batch {
        let keys = &k_segments[b * k_len..(b + 1) * k_len];
        for q in 0..q_len {
            let row = &mut bias[(b * q_len + q) * k_len..(b * q_len + q + 1) * k_len];
            for k in visible_keys(q_segments[b * q_len + q], past + q, keys) {
                row[k] = 0.0;
            }
        }
    }
    Tensor::from_vec(bias, (batch, 1, q_len, k_len), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row with left padding and two packed samples: each query sees its own
    /// sample's keys up to itself, padding queries every real key before them.
    #[test]
    fn the_rule_is_causal_within_a_sample_and_hides_padding() {
        let segments = [0, 0, 1, 1, 2, 2, 2];
        let seen = |q: usize| visible_keys(segments[q], q, &segments).collect::<Vec<_>>();
        assert_eq!(seen(0), Vec::<usize>::new());
        assert_eq!(seen(1), Vec::<usize>::new());
        assert_eq!(seen(3), vec![2, 3]);
        assert_eq!(seen(4), vec![4]);
        assert_eq!(seen(6), vec![4, 5, 6]);
        // A padding query after real keys (right padding) sees all of them.
        let right = [1, 1, 0];
        assert_eq!(visible_keys(0, 2, &right).collect::<Vec<_>>(), vec![0, 1]);
        // With cached keys, a query's own position counts from the first cached key.
        assert_eq!(
            visible_keys(1, 3, &[1, 1, 1, 1, 1]).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn the_bias_is_zero_exactly_where_a_key_is_visible() {
        // Two rows of three new queries after two cached keys.
        let q = [1, 1, 1, 0, 2, 2];
        let k = [1, 1, 1, 1, 1, 0, 0, 0, 2, 2];
        let bias = attention_bias(&q, &k, 2, 2, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(bias.dims(), [2, 1, 3, 5]);
        let bias = bias.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for b in 0..2 {
            for i in 0..3 {
                let keys = &k[b * 5..(b + 1) * 5];
                let visible: Vec<usize> = visible_keys(q[b * 3 + i], 2 + i, keys).collect();
                for t in 0..5 {
                    let want = if visible.contains(&t) { 0.0 } else { f32::MIN };
                    assert_eq!(bias[(b * 3 + i) * 5 + t], want, "row {b} query {i} key {t}");
                }
            }
        }
        // Row 0's last query sees the two cached keys and all three new ones.
        assert!(bias[10..15].iter().all(|&v| v == 0.0));
        // Row 1's first query is padding with no real key before it: it sees nothing.
        assert!(bias[15..20].iter().all(|&v| v == f32::MIN));
    }
}
