//! The batch type (padded and packed rows) and the loss's ignore index and weights.

use candle_core::{DType, Device};
use ferrotune_model::tuning::{add_lora, LoraConfig};
use ferrotune_model::weights::load_model;
use ferrotune_model::{Batch, CausalLm, Example, IGNORE_INDEX};
use ferrotune_testing::shared;

fn model() -> CausalLm {
    load_model(
        &shared("fixtures/models/qwen2_bias_tied"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

fn example(ids: &[u32], prompt: usize) -> Example {
    Example {
        input_ids: ids.to_vec(),
        labels: ids
            .iter()
            .enumerate()
            .map(|(i, &t)| if i < prompt { IGNORE_INDEX } else { t as i64 })
            .collect(),
        weights: None,
        reference_logp: None,
        desirable: None,
    }
}

#[test]
fn padded_and_packed_rows_give_the_same_summed_loss() {
    let m = model();
    let a = example(&[5, 9, 13, 17, 21, 25, 29], 3);
    let b = example(&[40, 41, 42, 43, 44], 2);
    let padded = Batch::padded(&[a.clone(), b.clone()], 0, 8, &Device::Cpu).unwrap();
    assert_eq!((padded.batch, padded.seq_len), (2, 8));
    assert_eq!(&padded.segment_ids[..8], &[1, 1, 1, 1, 1, 1, 1, 0]);
    // Targets: the next token's label within the sample; 4 + 3 supervised.
    assert_eq!(padded.supervised_tokens, 7);
    let packed = Batch::packed(&[vec![&a, &b]], 0, 1, &Device::Cpu).unwrap();
    assert_eq!(
        packed.position_ids,
        vec![0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]
    );
    assert_eq!(packed.segment_ids, vec![1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
    assert_eq!(
        packed.supervised_tokens, 7,
        "no target crosses into the next sample"
    );
    let (_, l1) = m.forward_loss(&padded, false).unwrap();
    let (_, l2) = m.forward_loss(&packed, false).unwrap();
    let (s1, s2) = (
        l1.sum.to_scalar::<f32>().unwrap(),
        l2.sum.to_scalar::<f32>().unwrap(),
    );
    assert!((s1 - s2).abs() / s1 < 1e-5, "{s1} vs {s2}");
}

#[test]
fn weights_scale_the_loss_and_zero_weights_mask() {
    let m = model();
    let plain = example(&[5, 9, 13, 17, 21, 25], 0);
    let base = m
        .forward_loss(
            &Batch::padded(std::slice::from_ref(&plain), 0, 1, &Device::Cpu).unwrap(),
            false,
        )
        .unwrap()
        .1;
    let doubled = Example {
        weights: Some(vec![2.0; 6]),
        ..plain.clone()
    };
    let twice = m
        .forward_loss(
            &Batch::padded(&[doubled], 0, 1, &Device::Cpu).unwrap(),
            false,
        )
        .unwrap()
        .1;
    let (b, t) = (
        base.sum.to_scalar::<f32>().unwrap(),
        twice.sum.to_scalar::<f32>().unwrap(),
    );
    assert!((t - 2.0 * b).abs() < 1e-4 * b, "{t} vs 2 x {b}");
    // Weight 0 on the last two targets equals masking them.
    let zeroed = Example {
        weights: Some(vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]),
        ..plain.clone()
    };
    let masked = example(&[5, 9, 13, 17, 21, 25], 0);
    let masked = Example {
        labels: masked
            .labels
            .iter()
            .enumerate()
            .map(|(i, &l)| if i >= 4 { IGNORE_INDEX } else { l })
            .collect(),
        ..masked
    };
    let z = m
        .forward_loss(
            &Batch::padded(&[zeroed], 0, 1, &Device::Cpu).unwrap(),
            false,
        )
        .unwrap()
        .1;
    let k = m
        .forward_loss(
            &Batch::padded(&[masked], 0, 1, &Device::Cpu).unwrap(),
            false,
        )
        .unwrap()
        .1;
    let (z, k) = (
        z.sum.to_scalar::<f32>().unwrap(),
        k.sum.to_scalar::<f32>().unwrap(),
    );
    assert!((z - k).abs() < 1e-5 * k.abs().max(1.0), "{z} vs {k}");
}

#[test]
fn lora_dropout_applies_in_training_only() {
    let mut m = model();
    let config = LoraConfig {
        rank: 2,
        dropout: 0.5,
        ..LoraConfig::default()
    };
    add_lora(&mut m, &config, 0).unwrap();
    for p in m.params_mut() {
        if p.name().contains("lora_B") {
            let dims = p.tensor().unwrap().dims().to_vec();
            p.set(&candle_core::Tensor::ones(dims, DType::F32, &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let batch = Batch::padded(&[example(&[5, 9, 13, 17, 21, 25], 2)], 0, 1, &Device::Cpu).unwrap();
    let eval_a = m.forward(&batch, false).unwrap();
    let eval_b = m.forward(&batch, false).unwrap();
    let train = m.forward(&batch, true).unwrap();
    let diff = |x: &candle_core::Tensor, y: &candle_core::Tensor| {
        ferrotune_model::check::max_abs_diff(x, y).unwrap()
    };
    assert_eq!(diff(&eval_a, &eval_b), 0.0);
    assert!(diff(&eval_a, &train) > 1e-3);
    let (_, loss) = m.forward_loss(&batch, true).unwrap();
    let grads = loss.mean().unwrap().backward().unwrap();
    for p in m.params() {
        assert_eq!(
            grads.get(p.tensor().unwrap()).is_some(),
            p.is_trainable(),
            "{}",
            p.name()
        );
    }
}

/// A model whose pad id is its end-of-turn id must still learn to stop: padding is marked
/// by the segment ids, never by comparing ids with the pad id, so the end of turn stays a
/// target (moved here with the batch the trainer builds when collate.rs was removed).
#[test]
fn padding_never_masks_an_end_of_turn_that_equals_the_pad_id() {
    let eos = 2;
    let a = Example {
        input_ids: vec![5, 6, eos],
        labels: vec![IGNORE_INDEX, 6, i64::from(eos)],
        weights: None,
        reference_logp: None,
        desirable: None,
    };
    let b = example(&[7; 9], 0);
    let batch = Batch::padded(&[a, b], eos, 8, &Device::Cpu).unwrap();
    assert_eq!((batch.batch, batch.seq_len), (2, 16));
    let targets: Vec<Vec<i64>> = batch.targets.unwrap().to_vec2().unwrap();
    // Position 0 predicts 6, position 1 the end of turn; nothing after it.
    assert_eq!(
        &targets[0][..4],
        &[6, i64::from(eos), IGNORE_INDEX, IGNORE_INDEX]
    );
    assert!(targets[0][2..].iter().all(|&t| t == IGNORE_INDEX));
    assert_eq!(&batch.segment_ids[..4], &[1, 1, 1, 0]);
    let ids: Vec<Vec<u32>> = batch.input_ids.to_vec2().unwrap();
    assert_eq!(ids[0][3], eos);
    assert_eq!(
        batch.segment_ids[16..].iter().filter(|&&s| s == 1).count(),
        9
    );
    assert_eq!(batch.supervised_tokens, 2 + 8);
    assert!(batch.target_weights.is_none());
}
