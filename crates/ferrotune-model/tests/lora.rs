//! LoRA against PEFT (../shared/fixtures/models/*/lora), PEFT-layout round trips, merging,
//! and freeze tuning.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use ferrotune_model::tuning::{
    add_lora, freeze_tuning, load_peft_adapter, merge_lora, save_peft_adapter, LoraConfig,
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
        let parity = reference(&format!("fixtures/models/{name}/parity.safetensors"));
        let r = reference(&format!("fixtures/models/{name}/lora/parity.safetensors"));
        let mut model = base(name);
        let config =
            load_peft_adapter(&mut model, &shared(&format!("fixtures/models/{name}/lora")))
                .unwrap();
        assert_eq!((config.rank, config.alpha), (4, 8.0));
        let b = batch(&parity);
        let (logits, loss) = model.forward_loss(&b, true).unwrap();
        let diff = max_abs_diff(&logits, &r["logits"]);
        assert!(diff <= 1e-4, "{name}: logits differ by {diff}");
        let mean = loss.mean().unwrap();
        let (ours, theirs) = (
            mean.to_scalar::<f32>().unwrap(),
            r["loss"].to_vec1::<f32>().unwrap()[0],
        );
        assert!(
            ((ours - theirs) / theirs).abs() <= 1e-5,
            "{name}: loss {ours} vs {theirs}"
        );

        let grads = mean.backward().unwrap();
        let mut lora_params = 0;
        for p in model.params() {
            if p.is_trainable() {
                let g = grads
                    .get(p.tensor())
                    .unwrap_or_else(|| panic!("{name}: {} got no gradient", p.name()));
                let d = rel_norm_diff(g, &r[&format!("grad.{}", p.name())]);
                assert!(d <= 1e-4, "{name}: gradient of {} differs by {d}", p.name());
                lora_params += 1;
            } else {
                assert!(
                    grads.get(p.tensor()).is_none(),
                    "{name}: frozen {} got a gradient",
                    p.name()
                );
            }
        }
        assert_eq!(
            lora_params,
            r.keys().filter(|k| k.starts_with("grad.")).count()
        );

        merge_lora(&mut model).unwrap();
        for (key, expected) in r.iter().filter(|(k, _)| k.starts_with("merged.")) {
            let name_in_model = &key["merged.".len()..];
            let p = model
                .params()
                .into_iter()
                .find(|p| p.name() == name_in_model)
                .unwrap();
            let d = max_abs_diff(p.tensor(), expected);
            assert!(d <= 1e-6, "{name}: merged {name_in_model} differs by {d}");
        }
        let merged_logits = model.forward(&b, false).unwrap();
        assert!(
            max_abs_diff(&merged_logits, &r["logits"]) <= 1e-4,
            "{name}: merged model logits"
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
            let dims = p.tensor().dims().to_vec();
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
    let parity = reference(&format!("fixtures/models/{name}/parity.safetensors"));
    let mut model = base(name);
    let trainable = freeze_tuning(&mut model, 1, false).unwrap();
    assert_eq!(trainable, 9, "2 norms + 7 projections of layer 1");
    let (_, loss) = model.forward_loss(&batch(&parity), true).unwrap();
    let grads = loss.mean().unwrap().backward().unwrap();
    for p in model.params() {
        match grads.get(p.tensor()) {
            Some(g) => {
                assert!(p.name().starts_with("model.layers.1."), "{}", p.name());
                let d = rel_norm_diff(g, &parity[&format!("grad.{}", p.name())]);
                assert!(d <= 1e-4, "gradient of {} differs by {d}", p.name());
            }
            None => assert!(!p.is_trainable(), "{} got no gradient", p.name()),
        }
    }
}
