//! The fused CPU ops (ops' `*_fused` and the fused cross-entropy) against their composed
//! versions: values and every gradient, on shapes large enough to be split over several
//! parallel tasks.

use candle_core::{DType, Device, Result, Tensor, Var};
use ferrotune_model::ops::{
    apply_rope_composed, apply_rope_fused, cross_entropy, cross_entropy_composed,
    fused_kernels_apply, linear_cross_entropy, rms_norm_composed, rms_norm_fused, swiglu,
    swiglu_composed,
};

/// Deterministic values in [-scale, scale).
fn values(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Largest absolute difference, relative to the largest magnitude of `want`.
fn rel_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let got = &got.to_dtype(DType::F32).unwrap();
    let want = &want.to_dtype(DType::F32).unwrap();
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    diff / scale.max(1e-30)
}

/// A loss that weighs each output element differently, so every gradient element matters.
fn weighted_sum(out: &Tensor, seed: u64) -> Result<Tensor> {
    (out * values(out.dims(), seed, 1.0))?.sum_all()
}

fn var(shape: &[usize], seed: u64, scale: f32) -> Var {
    Var::from_tensor(&values(shape, seed, scale)).unwrap()
}

#[test]
fn rms_norm_values_and_gradients_match_the_composed_op() {
    // 600 rows of 64: several tasks of 256 rows.
    let x = var(&[3, 200, 64], 1, 3.0);
    let w = var(&[64], 2, 1.5);
    let fused_out = rms_norm_fused(&x, &w, 1e-6).unwrap();
    let composed_out = rms_norm_composed(&x, &w, 1e-6).unwrap();
    assert!(rel_diff(&fused_out, &composed_out) < 1e-6);
    let gf = weighted_sum(&fused_out, 3).unwrap().backward().unwrap();
    let gc = weighted_sum(&composed_out, 3).unwrap().backward().unwrap();
    let dx = rel_diff(gf.get(&x).unwrap(), gc.get(&x).unwrap());
    let dw = rel_diff(gf.get(&w).unwrap(), gc.get(&w).unwrap());
    assert!(dx < 1e-5, "d_x differs by {dx}");
    assert!(dw < 1e-5, "d_weight differs by {dw}");

    // A frozen weight gets no gradient; the input's is unchanged.
    let frozen = w.as_tensor().detach();
    let out = rms_norm_fused(&x, &frozen, 1e-6).unwrap();
    let g = weighted_sum(&out, 3).unwrap().backward().unwrap();
    assert!(g.get(&frozen).is_none());
    assert!(rel_diff(g.get(&x).unwrap(), gc.get(&x).unwrap()) < 1e-5);

    // Rows of the wrong width are an error, not a panic.
    assert!(rms_norm_fused(&x, &values(&[63], 4, 1.0), 1e-6).is_err());
}

#[test]
fn rope_values_and_gradients_match_the_composed_op() {
    let (b, h, s, d) = (2, 4, 300, 32);
    // Angles of real positions: position p, frequency 10000^(-2i/d), halves repeated.
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for row in 0..b * s {
        let p = (row % s + 7 * (row / s)) as f32;
        let angles: Vec<f32> = (0..d / 2)
            .map(|i| p * 10000f32.powf(-2.0 * i as f32 / d as f32))
            .collect();
        for _ in 0..2 {
            cos.extend(angles.iter().map(|a| a.cos()));
            sin.extend(angles.iter().map(|a| a.sin()));
        }
    }
    let cos = Tensor::from_vec(cos, (b, 1, s, d), &Device::Cpu).unwrap();
    let sin = Tensor::from_vec(sin, (b, 1, s, d), &Device::Cpu).unwrap();
    let x = var(&[b, h, s, d], 5, 2.0);
    let fused_out = apply_rope_fused(&x, &cos, &sin).unwrap();
    let composed_out = apply_rope_composed(&x, &cos, &sin).unwrap();
    assert!(rel_diff(&fused_out, &composed_out) < 1e-6);
    let gf = weighted_sum(&fused_out, 6).unwrap().backward().unwrap();
    let gc = weighted_sum(&composed_out, 6).unwrap().backward().unwrap();
    let dx = rel_diff(gf.get(&x).unwrap(), gc.get(&x).unwrap());
    assert!(dx < 1e-6, "d_x differs by {dx}");

    // A non-contiguous input (the layout the attention hands over before its copy).
    let xt = x
        .as_tensor()
        .transpose(1, 2)
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    let out = apply_rope_fused(&xt, &cos, &sin).unwrap();
    assert!(rel_diff(&out, &composed_out) < 1e-6);

    // cos/sin that do not fit are an error.
    assert!(apply_rope_fused(&x, &cos.narrow(2, 0, 10).unwrap(), &sin).is_err());
}

#[test]
fn swiglu_values_and_gradients_match_the_composed_op() {
    // Gates up to +-20, where the sigmoid saturates; 45,000 elements: three tasks.
    let gate = var(&[3, 50, 300], 7, 20.0);
    let up = var(&[3, 50, 300], 8, 2.0);
    let fused_out = swiglu(&gate, &up).unwrap();
    let composed_out = swiglu_composed(&gate, &up).unwrap();
    assert!(rel_diff(&fused_out, &composed_out) < 1e-6);
    let gf = weighted_sum(&fused_out, 9).unwrap().backward().unwrap();
    let gc = weighted_sum(&composed_out, 9).unwrap().backward().unwrap();
    let dg = rel_diff(gf.get(&gate).unwrap(), gc.get(&gate).unwrap());
    let du = rel_diff(gf.get(&up).unwrap(), gc.get(&up).unwrap());
    assert!(dg < 1e-5, "d_gate differs by {dg}");
    assert!(du < 1e-6, "d_up differs by {du}");

    // A strided view of the gate.
    let wide = var(&[3, 50, 600], 10, 5.0);
    let view = wide.narrow(2, 100, 300).unwrap();
    let out = swiglu(&view, &up).unwrap();
    let want = swiglu_composed(&view, &up).unwrap();
    assert!(rel_diff(&out, &want) < 1e-6);
    let g = weighted_sum(&out, 11).unwrap().backward().unwrap();
    let gw = weighted_sum(&want, 11).unwrap().backward().unwrap();
    assert!(rel_diff(g.get(&wide).unwrap(), gw.get(&wide).unwrap()) < 1e-5);

    assert!(swiglu(&gate, &values(&[3, 50, 299], 12, 1.0)).is_err());
}

#[test]
fn cross_entropy_values_and_gradients_match_the_composed_op() {
    let (rows, vocab) = (70, 500);
    let logits = var(&[rows, vocab], 13, 8.0);
    let targets: Vec<i64> = (0..rows as i64)
        .map(|r| (r * 37 + 11) % vocab as i64)
        .collect();
    let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
    // Unsupervised rows (0), weighted rows and plain ones.
    let coef: Vec<f32> = (0..rows)
        .map(|r| match r % 5 {
            0 => 0.0,
            1 => 0.25,
            _ => 1.0,
        })
        .collect();
    let coef = Tensor::new(coef.as_slice(), &Device::Cpu).unwrap();
    let fused_out = cross_entropy(&logits, &targets, &coef).unwrap();
    let composed_out = cross_entropy_composed(&logits, &targets, &coef).unwrap();
    assert!(rel_diff(&fused_out, &composed_out) < 1e-6);
    // Through a weighted sum: the gradient arriving at each row differs.
    let gf = weighted_sum(&fused_out, 14).unwrap().backward().unwrap();
    let gc = weighted_sum(&composed_out, 14).unwrap().backward().unwrap();
    let dx = rel_diff(gf.get(&logits).unwrap(), gc.get(&logits).unwrap());
    assert!(dx < 1e-5, "d_logits differs by {dx}");
    // And through the plain sum the trainer uses (a broadcast gradient).
    let gf = fused_out.sum_all().unwrap().backward().unwrap();
    let gc = composed_out.sum_all().unwrap().backward().unwrap();
    assert!(rel_diff(gf.get(&logits).unwrap(), gc.get(&logits).unwrap()) < 1e-5);

    let outside = Tensor::new(&[vocab as i64; 70], &Device::Cpu).unwrap();
    let err = cross_entropy(&logits, &outside, &coef)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

#[test]
fn the_chunked_head_and_loss_match_the_whole_logits() {
    let (rows, h, vocab) = (70, 32, 500);
    let x = var(&[rows, h], 17, 1.0);
    let w = var(&[vocab, h], 18, 0.5);
    let targets: Vec<i64> = (0..rows as i64)
        .map(|r| (r * 53 + 3) % vocab as i64)
        .collect();
    let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
    let coef: Vec<f32> = (0..rows).map(|r| [1.0, 0.0, 0.5][r % 3]).collect();
    let coef = Tensor::new(coef.as_slice(), &Device::Cpu).unwrap();
    let whole =
        cross_entropy_composed(&x.matmul(&w.t().unwrap()).unwrap(), &targets, &coef).unwrap();
    let gw = weighted_sum(&whole, 19).unwrap().backward().unwrap();
    // Blocks of 14 vocabulary columns (the last one 10), and the whole vocabulary at once.
    for budget in [1000, rows * vocab] {
        let chunked = linear_cross_entropy(&x, &w, &targets, &coef, budget, true).unwrap();
        assert!(rel_diff(&chunked, &whole) < 1e-6, "budget {budget}");
        let gc = weighted_sum(&chunked, 19).unwrap().backward().unwrap();
        let dx = rel_diff(gc.get(&x).unwrap(), gw.get(&x).unwrap());
        let dw = rel_diff(gc.get(&w).unwrap(), gw.get(&w).unwrap());
        assert!(dx < 1e-5, "budget {budget}: d_x differs by {dx}");
        assert!(dw < 1e-5, "budget {budget}: d_w differs by {dw}");
    }
    // A frozen head gets no gradient; the input's is unchanged, whether it is computed in
    // the backward pass (evaluation) or in the forward pass (a training step: blocks of
    // 2 rows and of all 70).
    let frozen = w.as_tensor().detach();
    for (budget, train) in [(1000, false), (1000, true), (rows * vocab, true)] {
        let chunked = linear_cross_entropy(&x, &frozen, &targets, &coef, budget, train).unwrap();
        assert!(
            rel_diff(&chunked, &whole) < 1e-6,
            "budget {budget}, train {train}"
        );
        let g = weighted_sum(&chunked, 19).unwrap().backward().unwrap();
        assert!(g.get(&frozen).is_none());
        let dx = rel_diff(g.get(&x).unwrap(), gw.get(&x).unwrap());
        assert!(
            dx < 1e-5,
            "budget {budget}, train {train}: d_x differs by {dx}"
        );
    }

    let outside = Tensor::new(&[vocab as i64; 70], &Device::Cpu).unwrap();
    assert!(linear_cross_entropy(&x, &w, &outside, &coef, 1000, true).is_err());
}

#[test]
fn the_dispatch_keeps_other_dtypes_on_the_composed_path() {
    let x = values(&[4, 64], 15, 2.0).to_dtype(DType::F64).unwrap();
    let w = values(&[64], 16, 1.0).to_dtype(DType::F64).unwrap();
    assert!(!fused_kernels_apply(&[&x, &w]));
    let got = ferrotune_model::ops::rms_norm(&x, &w, 1e-6).unwrap();
    let want = rms_norm_composed(&x, &w, 1e-6).unwrap();
    assert_eq!(got.dtype(), DType::F64);
    assert!(rel_diff(&got, &want) == 0.0);
}

/// A one-layer model whose logits (128 tokens x 70,000) exceed the loss's budget, so
/// that `CausalLm::loss` takes the chunked path.
fn large_vocab_model(tied: bool) -> ferrotune_model::CausalLm {
    let config = ferrotune_model::ModelConfig::from_value(serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 70000,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
    }))
    .unwrap();
    let mut model = ferrotune_model::init::init_model(config, 3, &Device::Cpu).unwrap();
    ferrotune_model::tuning::train_everything(&mut model).unwrap();
    model
}

#[test]
fn the_model_loss_takes_the_chunked_path_with_the_same_loss_and_gradients() {
    use ferrotune_model::loss::{chunked_loss_applies, HeadWeight, LOGITS_BUDGET};
    use ferrotune_model::{Batch, Example};
    // 160 tokens, 139 of them supervised: 139 x 70,000 logits are over the budget.
    let ids: Vec<u32> = (0..160u32).map(|i| (i * 7919 + 13) % 70000).collect();
    let mut labels: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    labels[..20].fill(-100);
    let example = Example {
        input_ids: ids,
        labels,
        weights: None,
        reference_logp: None,
        desirable: None,
    };
    let batch = Batch::padded(&[example], 0, 1, &Device::Cpu).unwrap();
    for tied in [true, false] {
        let model = large_vocab_model(tied);
        let hidden = Tensor::zeros((1, 139, 16), DType::F32, &Device::Cpu).unwrap();
        assert!(chunked_loss_applies(
            &hidden,
            &HeadWeight::Trainable(model.embed_tokens.tensor().unwrap()),
            LOGITS_BUDGET
        ));
        let (_, whole) = model.forward_loss(&batch, true).unwrap();
        let chunked = model.loss(&batch, true).unwrap();
        assert_eq!(whole.tokens, chunked.tokens);
        assert!(rel_diff(&chunked.sum, &whole.sum) < 1e-6, "tied {tied}");
        let gw = whole.sum.backward().unwrap();
        let gc = chunked.sum.backward().unwrap();
        for p in model.params() {
            let v = p.var().unwrap().as_tensor();
            let d = rel_diff(gc.get(v).unwrap(), gw.get(v).unwrap());
            assert!(d < 1e-5, "tied {tied}: {} differs by {d}", p.name());
        }
    }
}

#[test]
fn attention_values_and_gradients_match_the_composed_op() {
    use ferrotune_model::ops::{attention, attention_composed};
    let (b, h, s, d) = (2, 3, 40, 8);
    // Causal, with the first 5 keys of the second row padding: its first 5 queries see
    // no key at all (every score masked), the case where the softmax must stay finite.
    let mut bias = vec![f32::MIN; b * s * s];
    for bi in 0..b {
        for q in 0..s {
            for k in 0..=q {
                if bi == 0 || k >= 5 {
                    bias[(bi * s + q) * s + k] = 0.0;
                }
            }
        }
    }
    let bias = Tensor::from_vec(bias, (b, 1, s, s), &Device::Cpu).unwrap();
    let (q, k, v) = (
        var(&[b, h, s, d], 20, 2.0),
        var(&[b, h, s, d], 21, 2.0),
        var(&[b, h, s, d], 22, 1.0),
    );
    let scale = 1.0 / (d as f64).sqrt();
    let fused_out = attention(&q, &k, &v, &bias, scale).unwrap();
    let composed_out = attention_composed(&q, &k, &v, &bias, scale).unwrap();
    assert!(fused_out
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
    assert!(rel_diff(&fused_out, &composed_out) < 1e-6);
    let gf = weighted_sum(&fused_out, 23).unwrap().backward().unwrap();
    let gc = weighted_sum(&composed_out, 23).unwrap().backward().unwrap();
    for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
        let diff = rel_diff(gf.get(t).unwrap(), gc.get(t).unwrap());
        assert!(diff < 1e-5, "d_{name} differs by {diff}");
    }
    assert!(attention(&q, &k, &v, &bias.narrow(2, 0, 10).unwrap(), scale).is_err());
}
