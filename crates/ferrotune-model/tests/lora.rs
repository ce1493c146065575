//! LoRA against PEFT (../shared/fixtures/models/*/lora), PEFT-layout round trips, merging,
//! and freeze tuning.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use ferrotune_model::check::{check, Tolerances};
use ferrotune_model::tuning::{
    add_lora, freeze_tuning, load_peft_adapter, save_peft_adapter, LoraConfig,
};
use ferrotune_model::weights::load_model;
use ferrotune_model::{Batch, CausalLm};
use ferrotune_testing::{shared, TempDir};

const MODELS: [&str; 3] = ["llama_gqa_untied", "qwen2_bias_tied", "qwen3_qknorm_tied"];

fn reference(path: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(shared(path), &Device::Cpu).unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    ferrotune_model::check::max_abs_diff(a, b).unwrap()
}

fn batch(r: &HashMap<String, Tensor>) -> Batch {
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

fn base(name: &str) -> CausalLm {
    load_model(
        &shared(&format!("fixtures/models/{name}")),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn peft_adapter_logits_loss_gradients_and_merge_match() {
    for name in MODELS {
        // The batch of the base parity file, with the adapter's logits, loss, gradients
        // and merged weights.
        let mut r = reference(&format!("fixtures/models/{name}/parity.safetensors"));
        r.retain(|k, _| !k.starts_with("grad.") && !k.starts_with("packed_"));
        r.extend(reference(&format!(
            "fixtures/models/{name}/lora/parity.safetensors"
        )));
        let mut model = base(name);
        let config =
            load_peft_adapter(&mut model, &shared(&format!("fixtures/models/{name}/lora")))
                .unwrap();
        assert_eq!((config.rank, config.alpha), (4, 8.0));
        let report = check(&mut model, &r, true).unwrap();
        let failures = report.failures(&Tolerances::default());
        assert!(failures.is_empty(), "{name}: {failures:?}");
        assert_eq!(report.grads_checked, 28, "{name}: every LoRA parameter");
        assert!(
            report.merged_max_abs_diff.unwrap() <= 1e-6,
            "{name}: {:?}",
            report.merged_max_abs_diff
        );
        let merged_logits = model.forward(&batch(&r), false).unwrap();
        assert!(
            max_abs_diff(&merged_logits, &r["logits"]) <= 1e-4,
            "{name}: merged model logits"
        );
    }
}

#[test]
fn frozen_weights_receive_no_gradient() {
    let name = "qwen3_qknorm_tied";
    let r = reference(&format!("fixtures/models/{name}/parity.safetensors"));
    let mut model = base(name);
    load_peft_adapter(&mut model, &shared(&format!("fixtures/models/{name}/lora"))).unwrap();
    let (_, loss) = model.forward_loss(&batch(&r), true).unwrap();
    let grads = loss.mean().unwrap().backward().unwrap();
    for p in model.params() {
        assert_eq!(
            grads.get(p.tensor().unwrap()).is_some(),
            p.is_trainable(),
            "{}",
            p.name()
        );
    }
}

#[test]
fn adapters_round_trip_through_peft_layout() {
    let name = "qwen2_bias_tied";
    let mut model = base(name);
    let config = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec!["q_proj".into(), "v_proj".into()],
        use_rslora: true,
        ..LoraConfig::default()
    };
    assert_eq!(add_lora(&mut model, &config, 7).unwrap(), 4);
    // B starts at zero: the adapted model equals the base model.
    let parity = reference(&format!("fixtures/models/{name}/parity.safetensors"));
    let b = batch(&parity);
    let before = model.forward(&b, false).unwrap();
    assert!(max_abs_diff(&before, &parity["logits"]) <= 1e-4);
    // Give B values so the round trip means something.
    for p in model.params_mut() {
        if p.name().contains("lora_B") {
            let dims = p.tensor().unwrap().dims().to_vec();
            p.set(&Tensor::randn(0f32, 0.1, dims, &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let adapted = model.forward(&b, false).unwrap();
    assert!(max_abs_diff(&adapted, &before) > 1e-3);
    let dir = TempDir::new("peft");
    save_peft_adapter(&model, &config, dir.path(), Some("qwen2_bias_tied")).unwrap();
    let mut reloaded = base(name);
    let config2 = load_peft_adapter(&mut reloaded, dir.path()).unwrap();
    assert_eq!(
        config2.targets,
        vec!["q_proj".to_string(), "v_proj".to_string()]
    );
    assert!(config2.use_rslora);
    let again = reloaded.forward(&b, false).unwrap();
    assert_eq!(max_abs_diff(&again, &adapted), 0.0);
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["peft_type"], "LORA");
    assert_eq!(saved["r"], 2);
}

#[test]
fn lora_a_is_kaiming_uniform_and_targets_are_checked() {
    let mut model = base("llama_gqa_untied");
    let config = LoraConfig {
        rank: 4,
        targets: vec!["all".into()],
        ..LoraConfig::default()
    };
    assert_eq!(add_lora(&mut model, &config, 1).unwrap(), 14);
    let a = model
        .params()
        .into_iter()
        .find(|p| p.name() == "model.layers.0.mlp.down_proj.lora_A.default.weight")
        .unwrap();
    let bound = 1.0 / (160f32).sqrt();
    let max = a
        .tensor()
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max <= bound && max > 0.5 * bound, "{max} vs bound {bound}");
    let bad = LoraConfig {
        targets: vec!["qkv".into()],
        ..LoraConfig::default()
    };
    let e = add_lora(&mut model, &bad, 1).unwrap_err().to_string();
    assert!(e.contains("unknown LoRA target \"qkv\""), "{e}");
}

#[test]
fn freeze_tuning_trains_only_the_last_layers() {
    let name = "llama_gqa_untied";
    let mut r = reference(&format!("fixtures/models/{name}/parity.safetensors"));
    let mut model = base(name);
    let trainable = freeze_tuning(&mut model, 1, false).unwrap();
    assert_eq!(trainable, 9, "2 norms + 7 projections of layer 1");
    r.retain(|k, _| !k.starts_with("grad.") || k.starts_with("grad.model.layers.1."));
    let report = check(&mut model, &r, false).unwrap();
    assert!(
        report.failures(&Tolerances::default()).is_empty(),
        "{report:?}"
    );
    assert_eq!(report.grads_checked, 9);
    assert_eq!(model.trainable_params().len(), 9);
}
