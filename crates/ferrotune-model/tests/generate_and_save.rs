//! Generation with a KV cache against full forward passes (which match transformers, see
//! parity.rs), sampling rules, and the save -> load round trip.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use ferrotune_model::generate::{
    argmax, generate, generate_batch, Flow, GenerationConfig, Sampler,
};
use ferrotune_model::save::{save_model, SaveOptions};
use ferrotune_model::weights::load_model;
use ferrotune_model::{Batch, CausalLm, KvCache};
use ferrotune_testing::{shared, TempDir};

const MODELS: [&str; 3] = ["llama_gqa_untied", "qwen2_bias_tied", "qwen3_qknorm_tied"];

fn model(name: &str) -> CausalLm {
    load_model(
        &shared(&format!("fixtures/models/{name}")),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

fn parity(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        shared(&format!("fixtures/models/{name}/parity.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

/// The unpadded ids of row `row` of the parity batch.
fn row_ids(r: &HashMap<String, Tensor>, row: usize) -> Vec<u32> {
    let ids = r["input_ids"].get(row).unwrap().to_vec1::<i64>().unwrap();
    let mask = r["attention_mask"]
        .get(row)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    ids.iter()
        .zip(&mask)
        .filter(|(_, m)| **m == 1)
        .map(|(i, _)| *i as u32)
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    ferrotune_model::check::max_abs_diff(a, b).unwrap()
}

#[test]
fn cached_step_by_step_logits_equal_the_reference() {
    for name in MODELS {
        let m = model(name);
        let r = parity(name);
        let ids = row_ids(&r, 0);
        // Prompt of 5 tokens, then one token at a time, teacher-forced.
        let mut cache = KvCache::new(m.layers.len());
        let mut rows = Vec::new();
        let prompt = Tensor::new(&ids[..5], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        rows.push(
            m.forward_cached(&prompt, &[0, 1, 2, 3, 4], &[1; 5], &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap(),
        );
        for (t, &id) in ids.iter().enumerate().skip(5) {
            let x = Tensor::new(&[id], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            rows.push(
                m.forward_cached(&x, &[t as u32], &[1], &mut cache)
                    .unwrap()
                    .squeeze(0)
                    .unwrap(),
            );
        }
        let ours = Tensor::cat(&rows, 0).unwrap();
        let reference = r["logits"].get(0).unwrap().narrow(0, 0, ids.len()).unwrap();
        let d = max_abs_diff(&ours, &reference);
        assert!(d <= 1e-4, "{name}: cached logits differ by {d}");
        // Greedy next-token choices match the reference's argmax at every position.
        for t in 0..ids.len() {
            let mine = argmax(&ours.get(t).unwrap().to_vec1::<f32>().unwrap());
            let theirs = argmax(&reference.get(t).unwrap().to_vec1::<f32>().unwrap());
            assert_eq!(mine, theirs, "{name}: position {t}");
        }
    }
}

#[test]
fn greedy_generation_equals_recomputing_the_whole_sequence() {
    for name in MODELS {
        let m = model(name);
        let prompt = row_ids(&parity(name), 1);
        let config = GenerationConfig {
            max_new_tokens: 12,
            ..GenerationConfig::default()
        };
        let mut streamed = Vec::new();
        let out = generate(&m, &prompt, &config, |id| {
            streamed.push(id);
            Flow::Continue
        })
        .unwrap();
        assert_eq!(out.len(), 12);
        assert_eq!(streamed, out);
        let mut seq = prompt.clone();
        for &expected in &out {
            let logits = m
                .forward(&Batch::prompt(&seq, &Device::Cpu).unwrap(), false)
                .unwrap();
            let last = logits
                .get(0)
                .unwrap()
                .get(seq.len() - 1)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(argmax(&last), expected, "{name}");
            seq.push(expected);
        }
        // Stopping: on a stop id, and when the callback says so.
        let stop = GenerationConfig {
            stop_token_ids: vec![out[2]],
            ..config.clone()
        };
        let first_stop = out.iter().position(|&t| t == out[2]).unwrap();
        assert_eq!(
            generate(&m, &prompt, &stop, |_| Flow::Continue).unwrap(),
            out[..=first_stop].to_vec()
        );
        let mut n = 0;
        let early = generate(&m, &prompt, &config, |_| {
            n += 1;
            if n == 3 {
                Flow::Stop
            } else {
                Flow::Continue
            }
        })
        .unwrap();
        assert_eq!(early, out[..3].to_vec());
    }
}

#[test]
fn batched_generation_equals_one_at_a_time() {
    let m = model("qwen3_qknorm_tied");
    let r = parity("qwen3_qknorm_tied");
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| row_ids(&r, i)).collect();
    assert!(
        prompts[0].len() != prompts[2].len(),
        "prompts of different lengths"
    );
    let config = GenerationConfig {
        max_new_tokens: 8,
        ..GenerationConfig::default()
    };
    let batched = generate_batch(&m, &prompts, &config, 0).unwrap();
    for (p, out) in prompts.iter().zip(&batched) {
        assert_eq!(out, &generate(&m, p, &config, |_| Flow::Continue).unwrap());
    }
}

#[test]
fn sampling_rules() {
    let logits = [1.0f32, 3.0, 2.0, -1.0];
    let mut greedy = Sampler::new(GenerationConfig::default());
    assert_eq!(greedy.sample(&logits, &[]), 1);
    // Repetition penalty 10 pushes the seen token 1 below token 2.
    let mut penalised = Sampler::new(GenerationConfig {
        repetition_penalty: 10.0,
        ..GenerationConfig::default()
    });
    assert_eq!(penalised.sample(&logits, &[1]), 2);
    // top_k 1 is greedy whatever the temperature; top_p small keeps only the best token.
    for config in [
        GenerationConfig {
            temperature: 5.0,
            top_k: Some(1),
            ..GenerationConfig::default()
        },
        GenerationConfig {
            temperature: 1.0,
            top_p: Some(0.01),
            ..GenerationConfig::default()
        },
    ] {
        let mut s = Sampler::new(config);
        for _ in 0..50 {
            assert_eq!(s.sample(&logits, &[]), 1);
        }
    }
    // Temperature sampling follows the softmax: token 1 is most frequent, all four appear
    // at temperature 2, and the same seed gives the same draws.
    let config = GenerationConfig {
        temperature: 2.0,
        seed: 3,
        ..GenerationConfig::default()
    };
    let draws = |c: &GenerationConfig| {
        let mut s = Sampler::new(c.clone());
        (0..2000)
            .map(|_| s.sample(&logits, &[]))
            .collect::<Vec<u32>>()
    };
    let a = draws(&config);
    assert_eq!(a, draws(&config));
    let counts: Vec<usize> = (0..4)
        .map(|t| a.iter().filter(|&&x| x == t).count())
        .collect();
    assert!(
        counts[1] > counts[2] && counts[2] > counts[0] && counts[0] > counts[3] && counts[3] > 0,
        "{counts:?}"
    );
}

#[test]
fn save_and_load_round_trip_bit_exactly() {
    for name in MODELS {
        let m = model(name);
        for max_shard_bytes in [usize::MAX, 60_000] {
            let dir = TempDir::new("save");
            let options = SaveOptions {
                max_shard_bytes,
                chat_template: Some("{{ messages }}"),
                ..SaveOptions::default()
            };
            save_model(&m, dir.path(), &options).unwrap();
            let sharded = dir.path().join("model.safetensors.index.json").is_file();
            assert_eq!(sharded, max_shard_bytes != usize::MAX, "{name}");
            let again = load_model(dir.path(), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(again.config.architecture, m.config.architecture);
            assert_eq!(again.config.rope_theta, m.config.rope_theta);
            assert_eq!(
                again.config.tie_word_embeddings,
                m.config.tie_word_embeddings
            );
            let (a, b) = (m.params(), again.params());
            assert_eq!(a.len(), b.len());
            for (p, q) in a.iter().zip(&b) {
                assert_eq!(p.name(), q.name());
                assert_eq!(
                    max_abs_diff(p.tensor().unwrap(), q.tensor().unwrap()),
                    0.0,
                    "{name}: {}",
                    p.name()
                );
            }
            let template = std::fs::read_to_string(dir.path().join("chat_template.jinja")).unwrap();
            assert_eq!(template, "{{ messages }}");
            assert!(dir.path().join("generation_config.json").is_file());
        }
    }
}

#[test]
fn bf16_and_f16_files_load_into_f32_master_weights() {
    let m = model("qwen3_qknorm_tied");
    for dtype in [DType::BF16, DType::F16] {
        let dir = TempDir::new("half");
        save_model(
            &m,
            dir.path(),
            &SaveOptions {
                dtype: Some(dtype),
                ..SaveOptions::default()
            },
        )
        .unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            config["torch_dtype"],
            if dtype == DType::BF16 {
                "bfloat16"
            } else {
                "float16"
            }
        );
        let again = load_model(dir.path(), DType::F32, &Device::Cpu).unwrap();
        for (p, q) in m.params().iter().zip(again.params()) {
            assert_eq!(q.tensor().unwrap().dtype(), DType::F32);
            let rounded = p
                .tensor()
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            assert_eq!(
                max_abs_diff(&rounded, q.tensor().unwrap()),
                0.0,
                "{}",
                p.name()
            );
        }
    }
}

#[test]
fn init_follows_transformers() {
    let config = ferrotune_model::ModelConfig::from_value(serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "vocab_size": 1000, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "initializer_range": 0.05
    }))
    .unwrap();
    let a = ferrotune_model::init::init_model(config.clone(), 1, &Device::Cpu).unwrap();
    let b = ferrotune_model::init::init_model(config, 1, &Device::Cpu).unwrap();
    for (p, q) in a.params().iter().zip(b.params()) {
        assert_eq!(
            max_abs_diff(p.tensor().unwrap(), q.tensor().unwrap()),
            0.0,
            "same seed, same weights"
        );
        let v = p
            .tensor()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        if p.name().ends_with("norm.weight") {
            assert!(v.iter().all(|&x| x == 1.0), "{}", p.name());
        } else if p.name().ends_with(".bias") {
            assert!(v.iter().all(|&x| x == 0.0), "{}", p.name());
        } else {
            let std =
                (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32).sqrt();
            assert!(
                (std - 0.05).abs() < 0.005 && mean.abs() < 0.005,
                "{}: mean {mean} std {std}",
                p.name()
            );
        }
    }
}
