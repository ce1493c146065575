//! LoRA on a quantized base, read in place from a GGUF file, computes what LoRA on that
//! file's dequantized f32 import computes: logits, adapter gradients and a 12-step AdamW
//! trajectory, for every storage type a GGUF file can hold, on a small Llama-architecture
//! model the test writes (widths multiples of 256, the K-quants' block; q/k rows
//! permuted in the file and restored on load; an untied head).

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use ferrotune_model::gguf::{export_gguf, gguf_folder, import_gguf};
use ferrotune_model::init::init_model;
use ferrotune_model::ops::{linear_cross_entropy_frozen, FrozenWeight};
use ferrotune_model::stored::StoredWeight;
use ferrotune_model::tuning::{add_lora, LoraConfig};
use ferrotune_model::weights::load_model;
use ferrotune_model::{Batch, CausalLm, Example, ModelConfig};
use ferrotune_testing::{workspace_root, TempDir};
use ferrotune_train::optim::{AdamW, AdamWConfig};

const TYPES: [GgmlDType; 12] = [
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

fn tokenizer_dir() -> std::path::PathBuf {
    workspace_root().join("examples/tokenizer")
}

fn tiny_llama() -> CausalLm {
    let tokenizer: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tokenizer_dir().join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object().unwrap().len()
        + tokenizer["added_tokens"].as_array().unwrap().len();
    let config = ModelConfig::from_value(serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "tie_word_embeddings": false, "eos_token_id": 2
    }))
    .unwrap();
    init_model(config, 5, &Device::Cpu).unwrap()
}

fn batch(vocab: usize) -> Batch {
    let examples: Vec<Example> = (0..3u32)
        .map(|r| {
            let ids: Vec<u32> = (0..20 + 3 * r)
                .map(|i| (i * 37 + r * 11 + 5) % vocab as u32)
                .collect();
            let mut labels: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
            labels[..4].fill(-100);
            Example {
                input_ids: ids,
                labels,
                weights: None,
                reference_logp: None,
                desirable: None,
            }
        })
        .collect();
    Batch::padded(&examples, 0, 8, &Device::Cpu).unwrap()
}

/// The same adapter on both models: LoRA's A from the seed, B set to fixed noise so that
/// the adapter changes the logits from the first step.
fn with_adapter(model: &mut CausalLm) {
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec!["all".into()],
        use_rslora: false,
    };
    add_lora(model, &lora, 7).unwrap();
    for (i, (_, linear)) in model.linears_mut().into_iter().enumerate() {
        let b = &mut linear.lora.as_mut().unwrap().b;
        let dims = b.dims();
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|k| (((k * 7 + i * 13) % 17) as f32 - 8.0) * 0.002)
            .collect();
        b.set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let n = b.sqr().unwrap().sum_all().unwrap();
    (d.to_scalar::<f32>().unwrap() / n.to_scalar::<f32>().unwrap().max(1e-30)).sqrt()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Gradients of the trainable parameters for the batch's mean loss, in order.
fn gradients(model: &CausalLm, batch: &Batch) -> (f32, Vec<Tensor>) {
    let loss = model.loss(batch, true).unwrap();
    let mean = loss.mean().unwrap();
    let grads = mean.backward().unwrap();
    let g = model
        .trainable_params()
        .iter()
        .map(|p| grads.get(p.tensor().unwrap()).unwrap().clone())
        .collect();
    (mean.to_scalar::<f32>().unwrap(), g)
}

#[test]
fn lora_on_a_stored_base_equals_lora_on_its_dequantized_import() {
    let dir = TempDir::new("stored-base");
    let base = tiny_llama();
    let vocab = base.config.vocab_size;
    let batch = batch(vocab);
    for dtype in TYPES {
        let file = dir.path().join(format!("tiny-{dtype:?}.gguf"));
        export_gguf(&base, &tokenizer_dir(), None, &file, dtype).unwrap();
        let folder = gguf_folder(&file, &dir.path().join("cache")).unwrap();
        let mut stored = load_model(&folder, DType::F32, &Device::Cpu).unwrap();
        let import = dir.path().join(format!("import-{dtype:?}"));
        import_gguf(&file, &import).unwrap();
        let mut dense = load_model(&import, DType::F32, &Device::Cpu).unwrap();
        let stored_count = stored.params().iter().filter(|p| p.is_stored()).count();
        assert_eq!(
            stored_count,
            2 * 7 + 2,
            "{dtype:?}: every matrix stays stored"
        );
        assert!(dense.params().iter().all(|p| !p.is_stored()));
        with_adapter(&mut stored);
        with_adapter(&mut dense);

        let (a, b) = (
            stored.forward(&batch, false).unwrap(),
            dense.forward(&batch, false).unwrap(),
        );
        let d = max_abs(&a, &b);
        assert!(d < 1e-4, "{dtype:?}: logits differ by {d}");

        let mut opt = [
            AdamW::new(AdamWConfig::default()),
            AdamW::new(AdamWConfig::default()),
        ];
        for step in 0..12 {
            let (ls, gs) = gradients(&stored, &batch);
            let (ld, gd) = gradients(&dense, &batch);
            assert!(
                ((ls - ld) / ld).abs() < 1e-4,
                "{dtype:?} step {step}: loss {ls} vs {ld}"
            );
            if step == 0 {
                for (x, y) in gs.iter().zip(&gd) {
                    let r = rel(x, y);
                    assert!(r < 1e-4, "{dtype:?}: adapter gradients differ by {r}");
                }
            }
            opt[0].step(&stored.trainable_params(), &gs, 1e-3).unwrap();
            opt[1].step(&dense.trainable_params(), &gd, 1e-3).unwrap();
        }
        for (p, q) in stored
            .trainable_params()
            .iter()
            .zip(dense.trainable_params())
        {
            let r = rel(p.tensor().unwrap(), q.tensor().unwrap());
            assert!(
                r < 1e-4,
                "{dtype:?}: {} after 12 steps differs by {r}",
                p.name()
            );
        }
    }
}

/// The chunked head loss on a stored head: the value and the input's gradient equal
/// those on the dequantized head, in blocks of rows.
#[test]
fn the_chunked_loss_reads_a_stored_head() {
    let dev = Device::Cpu;
    let (rows, h, vocab) = (24, 256, 600);
    let w = Tensor::randn(0f32, 0.5, (vocab, h), &dev).unwrap();
    let stored = StoredWeight::quantize(&w, GgmlDType::Q4K).unwrap();
    let dense = stored.dequantize(&dev).unwrap();
    let x = candle_core::Var::randn(0f32, 1.0, (rows, h), &dev).unwrap();
    let targets: Vec<i64> = (0..rows as i64).map(|r| (r * 53) % vocab as i64).collect();
    let targets = Tensor::new(targets.as_slice(), &dev).unwrap();
    let coef = Tensor::ones(rows, DType::F32, &dev).unwrap();
    let run = |w: &FrozenWeight| {
        let v = linear_cross_entropy_frozen(x.as_tensor(), w, &targets, &coef, 3000, true).unwrap();
        let g = v.sum_all().unwrap().backward().unwrap();
        (v, g.get(x.as_tensor()).unwrap().clone())
    };
    let (vs, gs) = run(&FrozenWeight::Stored(stored));
    let (vd, gd) = run(&FrozenWeight::Dense(dense));
    assert!(rel(&vs, &vd) < 1e-5);
    assert!(rel(&gs, &gd) < 1e-5);
}
