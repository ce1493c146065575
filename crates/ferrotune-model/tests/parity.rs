//! Forward, loss and gradients of the three fixture models against transformers
//! (../shared/fixtures/models/*/parity.safetensors), and the packed row.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use ferrotune_model::weights::load_model;
use ferrotune_model::{Batch, CausalLm};
use ferrotune_testing::shared;

pub const MODELS: [&str; 3] = ["llama_gqa_untied", "qwen2_bias_tied", "qwen3_qknorm_tied"];

fn reference(path: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(shared(path), &Device::Cpu).unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn rel_norm_diff(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    let norm = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    diff / norm.max(1e-12)
}

/// The padded batch of a parity file.
fn padded_batch(r: &HashMap<String, Tensor>) -> Batch {
    let (b, s) = r["input_ids"].dims2().unwrap();
    let ids: Vec<u32> = ints(&r["input_ids"])
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let mask: Vec<u32> = ints(&r["attention_mask"])
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let positions = (0..b).flat_map(|_| 0..s as u32).collect();
    Batch::from_parts(
        ids,
        ints(&r["labels"]),
        None,
        positions,
        mask,
        b,
        s,
        &Device::Cpu,
    )
    .unwrap()
}

fn packed_batch(r: &HashMap<String, Tensor>) -> Batch {
    let ids: Vec<u32> = ints(&r["packed_input_ids"])
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let positions: Vec<u32> = ints(&r["packed_position_ids"])
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let segments = Batch::segments_from_positions(&positions);
    let n = ids.len();
    Batch::from_parts(
        ids,
        ints(&r["packed_labels"]),
        None,
        positions,
        segments,
        1,
        n,
        &Device::Cpu,
    )
    .unwrap()
}

fn trainable_model(name: &str) -> CausalLm {
    let mut model = load_model(
        &shared(&format!("fixtures/models/{name}")),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    for p in model.params_mut() {
        p.set_trainable(true).unwrap();
    }
    model
}

#[test]
fn logits_loss_and_every_gradient_match_transformers() {
    for name in MODELS {
        let r = reference(&format!("fixtures/models/{name}/parity.safetensors"));
        let model = trainable_model(name);
        let batch = padded_batch(&r);
        let (logits, loss) = model.forward_loss(&batch, true).unwrap();
        let diff = max_abs_diff(&logits, &r["logits"]);
        assert!(diff <= 1e-4, "{name}: logits differ by {diff}");
        let mean = loss.mean().unwrap();
        let ours = mean.to_scalar::<f32>().unwrap();
        let theirs = r["loss"].to_vec1::<f32>().unwrap()[0];
        assert!(
            ((ours - theirs) / theirs).abs() <= 1e-5,
            "{name}: loss {ours} vs {theirs}"
        );

        let grads = mean.backward().unwrap();
        let mut checked = 0;
        for p in model.params() {
            let g = grads.get(p.tensor()).unwrap_or_else(|| {
                panic!("{name}: trainable parameter {} got no gradient", p.name())
            });
            let reference = &r[&format!("grad.{}", p.name())];
            let d = rel_norm_diff(g, reference);
            assert!(
                d <= 1e-4,
                "{name}: gradient of {} differs by {d} (relative norm)",
                p.name()
            );
            checked += 1;
        }
        let expected = r.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(
            checked, expected,
            "{name}: every reference gradient is checked"
        );
    }
}

#[test]
fn packed_row_gives_the_same_loss_and_logits() {
    for name in MODELS {
        let r = reference(&format!("fixtures/models/{name}/parity.safetensors"));
        let model = trainable_model(name);
        let (packed_logits, packed_loss) = model.forward_loss(&packed_batch(&r), false).unwrap();
        let ours = packed_loss.mean().unwrap().to_scalar::<f32>().unwrap();
        let theirs = r["loss"].to_vec1::<f32>().unwrap()[0];
        assert!(
            ((ours - theirs) / theirs).abs() <= 1e-5,
            "{name}: packed loss {ours} vs {theirs}"
        );

        // Packed logits equal the reference logits at the unpadded positions, in order.
        let mask = ints(&r["attention_mask"]);
        let (b, s, v) = r["logits"].dims3().unwrap();
        let reference = r["logits"].reshape((b * s, v)).unwrap();
        let keep: Vec<u32> = (0..b * s)
            .filter(|&i| mask[i] == 1)
            .map(|i| i as u32)
            .collect();
        let keep = Tensor::new(keep.as_slice(), &Device::Cpu).unwrap();
        let expected = reference.index_select(&keep, 0).unwrap();
        let packed = packed_logits.squeeze(0).unwrap();
        let diff = max_abs_diff(&packed, &expected);
        assert!(diff <= 1e-4, "{name}: packed logits differ by {diff}");
    }
}
