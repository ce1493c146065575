//! Gradient checkpointing gives the gradients of the ordinary backward pass, for every
//! trainable parameter, on the three fixture models (untied and tied heads, biases,
//! q/k norms), with full fine-tuning and with LoRA.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use ferrotune_model::ops::dropout::with_pass_seed;
use ferrotune_model::tuning::{load_peft_adapter, train_everything};
use ferrotune_model::weights::load_model;
use ferrotune_model::{Batch, CausalLm};
use ferrotune_testing::shared;

const MODELS: [&str; 3] = ["llama_gqa_untied", "qwen2_bias_tied", "qwen3_qknorm_tied"];

fn ints(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

/// The fixture's padded batch (labels with ignored positions, a padded row).
fn batch(name: &str) -> Batch {
    let path = shared(&format!("fixtures/models/{name}/parity.safetensors"));
    let r: HashMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let (b, s) = r["input_ids"].dims2().unwrap();
    let to_u32 = |t: &Tensor| ints(t).into_iter().map(|x| x as u32).collect::<Vec<_>>();
    Batch::from_parts(
        to_u32(&r["input_ids"]),
        ints(&r["labels"]),
        None,
        (0..b).flat_map(|_| 0..s as u32).collect(),
        to_u32(&r["attention_mask"]),
        b,
        s,
        &Device::Cpu,
    )
    .unwrap()
}

fn model(name: &str, lora: bool) -> CausalLm {
    let dir = shared(&format!("fixtures/models/{name}"));
    let mut model = load_model(&dir, DType::F32, &Device::Cpu).unwrap();
    if lora {
        load_peft_adapter(&mut model, &dir.join("lora")).unwrap();
    } else {
        train_everything(&mut model).unwrap();
    }
    model
}

/// Checkpointed against plain gradients; `dropout`: LoRA dropout on every adapter, both
/// passes training with the same pass seed (the recomputed layers must drop what the
/// first pass dropped).
fn compare(name: &str, lora: bool, dropout: Option<f32>) {
    let mut model = model(name, lora);
    if let Some(p) = dropout {
        for (_, linear) in model.linears_mut() {
            linear.lora.as_mut().unwrap().dropout = p;
        }
    }
    let train = dropout.is_some();
    let batch = batch(name);
    let scale = 1.0 / batch.supervised_tokens as f64;

    let loss = with_pass_seed(11, || model.loss(&batch, train)).unwrap();
    let plain = loss.sum.affine(scale, 0.0).unwrap().backward().unwrap();

    // Sum the parts as the trainer does (a tied embedding gets two).
    let mut parts: HashMap<String, Tensor> = HashMap::new();
    let checkpointed = with_pass_seed(11, || {
        model.backward_checkpointed(&batch, scale, train, |grads| {
            for p in model.params() {
                if let Some(g) = grads.get(p.tensor().unwrap()) {
                    let sum = match parts.remove(p.name()) {
                        Some(s) => (s + g)?,
                        None => g.clone(),
                    };
                    parts.insert(p.name().to_string(), sum);
                }
            }
            Ok(())
        })
    })
    .unwrap();
    let a = loss.sum.to_scalar::<f32>().unwrap();
    let b = checkpointed.sum.to_scalar::<f32>().unwrap();
    assert!((a - b).abs() <= 1e-6 * a.abs(), "{name}: loss {a} vs {b}");
    assert_eq!(checkpointed.tokens, loss.tokens);

    let mut trainable = 0;
    for p in model.params() {
        let got = parts.get(p.name());
        assert_eq!(
            got.is_some(),
            p.is_trainable(),
            "{name} (lora {lora}): {} gradient presence",
            p.name()
        );
        let Some(got) = got else { continue };
        trainable += 1;
        let want = plain
            .get(p.tensor().unwrap())
            .expect("the plain backward grads it");
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = ferrotune_model::check::max_abs_diff(got, want).unwrap();
        assert!(
            diff <= 1e-5 * scale.max(1e-3),
            "{name} (lora {lora}): {} differs by {diff} (gradient scale {scale})",
            p.name()
        );
    }
    assert!(trainable > 0);
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones_full() {
    for name in MODELS {
        compare(name, false, None);
    }
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones_lora() {
    for name in MODELS {
        compare(name, true, None);
    }
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones_with_lora_dropout() {
    for name in MODELS {
        compare(name, true, Some(0.3));
    }
    // The masks matter: another seed gives another loss.
    let mut model = model(MODELS[0], true);
    for (_, linear) in model.linears_mut() {
        linear.lora.as_mut().unwrap().dropout = 0.3;
    }
    let batch = batch(MODELS[0]);
    let loss = |seed| {
        with_pass_seed(seed, || model.loss(&batch, true))
            .unwrap()
            .sum
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(loss(11), loss(11));
    assert_ne!(loss(11), loss(12));
}
