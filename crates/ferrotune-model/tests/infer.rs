//! The inference engine (f32, bf16, q8_0, q4_1 weights) against the composed model, whose
//! cached logits match transformers (generate_and_save.rs, parity.rs).

use candle_core::{DType, Device};
use ferrotune_model::generate::{generate, generate_batch, Decoder, Flow, GenerationConfig};
use ferrotune_model::infer::{InferenceModel, WeightType};
use ferrotune_model::weights::load_model;
use ferrotune_model::CausalLm;
use ferrotune_testing::shared;

const MODELS: [&str; 3] = ["llama_gqa_untied", "qwen2_bias_tied", "qwen3_qknorm_tied"];

fn model(name: &str) -> CausalLm {
    load_model(
        &shared(&format!("fixtures/models/{name}")),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

/// A prompt of 11 tokens in two rows of a left-padded batch (the second padded by 4),
/// then three single-token steps; the logits of every step.
fn steps<M: Decoder>(m: &M) -> Vec<Vec<Vec<f32>>> {
    let prompt: Vec<u32> = (0..11).map(|i| (i * 37 + 5) % 300).collect();
    let short = &prompt[4..];
    let ids: Vec<u32> = prompt
        .iter()
        .copied()
        .chain(std::iter::repeat_n(0, 4).chain(short.iter().copied()))
        .collect();
    let positions: Vec<u32> = (0..11)
        .chain(std::iter::repeat_n(0, 4).chain(0..7))
        .collect();
    let segments: Vec<u32> = std::iter::repeat_n(1, 11)
        .chain(std::iter::repeat_n(0, 4).chain(std::iter::repeat_n(1, 7)))
        .collect();
    let mut cache = m.new_cache();
    let mut out = vec![m
        .decode(&ids, 2, &positions, &segments, &mut cache)
        .unwrap()];
    for t in 0..3u32 {
        let next = [t * 11 + 1, t * 13 + 2];
        out.push(
            m.decode(&next, 2, &[11 + t, 7 + t], &[1, 1], &mut cache)
                .unwrap(),
        );
    }
    out
}

/// Largest difference against the reference, and the reference's largest |logit|.
fn compare(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> (f32, f32) {
    let (mut diff, mut scale) = (0f32, 0f32);
    for (sa, sb) in a.iter().zip(b) {
        assert_eq!(sa.len(), sb.len(), "rows");
        for (ra, rb) in sa.iter().zip(sb) {
            assert_eq!(ra.len(), rb.len(), "vocabulary");
            for (x, y) in ra.iter().zip(rb) {
                diff = diff.max((x - y).abs());
                scale = scale.max(y.abs());
            }
        }
    }
    (diff, scale)
}

#[test]
fn engine_logits_match_the_composed_model() {
    for name in MODELS {
        let reference = steps(&model(name));
        for (ty, tolerance) in [
            (WeightType::F32, 1e-4),
            // bf16 keeps 8 bits of mantissa (relative error 2^-9 per weight); q8_0 about
            // 1/254 of each block's largest weight. Relative to the largest logit.
            (WeightType::Bf16, 0.02),
            (WeightType::Q8_0, 0.03),
            // q4_1: half of a 16-level step of each block's range, on random weights
            // (the panels' own tests check the kernels exactly against the rounding).
            (WeightType::Q4_1, 0.35),
        ] {
            let engine = InferenceModel::new(model(name), ty).unwrap();
            let (diff, scale) = compare(&steps(&engine), &reference);
            eprintln!("{name} {ty}: largest difference {diff:.2e}, largest logit {scale:.2}");
            let bound = if ty == WeightType::F32 {
                tolerance
            } else {
                tolerance * scale
            };
            assert!(
                diff <= bound,
                "{name} {ty}: logits differ by {diff} (largest logit {scale}, bound {bound})"
            );
        }
    }
}

#[test]
fn engine_generation_equals_the_composed_model_in_f32() {
    let config = GenerationConfig {
        max_new_tokens: 12,
        ..GenerationConfig::default()
    };
    let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 200, 3, 44], vec![9, 8, 7], vec![300, 1]];
    for name in MODELS {
        let composed = model(name);
        let engine = InferenceModel::new(model(name), WeightType::F32).unwrap();
        let expect = generate_batch(&composed, &prompts, &config, 0).unwrap();
        assert_eq!(
            generate_batch(&engine, &prompts, &config, 0).unwrap(),
            expect
        );
        for (p, e) in prompts.iter().zip(&expect) {
            assert_eq!(
                &generate(&engine, p, &config, |_| Flow::Continue).unwrap(),
                e
            );
        }
        for ty in [WeightType::Bf16, WeightType::Q8_0, WeightType::Q4_1] {
            let engine = InferenceModel::new(model(name), ty).unwrap();
            let out = generate_batch(&engine, &prompts, &config, 0).unwrap();
            assert_eq!(out.len(), prompts.len());
            for o in &out {
                assert_eq!(
                    o.len(),
                    12,
                    "{name} {ty}: no stop id, so every token is made"
                );
                assert!(o
                    .iter()
                    .all(|&id| (id as usize) < engine.config().vocab_size));
            }
        }
    }
}

/// Two rows of 60 prompt tokens, then 40 single-token steps: the engine's cache grows
/// twice (room for 64 positions a head, then half again) and keeps every key and value.
#[test]
fn a_growing_cache_keeps_its_keys_and_values() {
    for name in MODELS {
        let composed = model(name);
        let engine = InferenceModel::new(model(name), WeightType::F32).unwrap();
        let (a, b) = (decode_long(&engine), decode_long(&composed));
        let (diff, scale) = compare(&a, &b);
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "{name}: logits differ by {diff}"
        );
    }
}

fn decode_long<M: Decoder>(m: &M) -> Vec<Vec<Vec<f32>>> {
    let ids: Vec<u32> = (0..120).map(|i| (i * 29 + 3) % 300).collect();
    let positions: Vec<u32> = (0..60).chain(0..60).collect();
    let mut cache = m.new_cache();
    let mut out = vec![m
        .decode(&ids, 2, &positions, &[1; 120], &mut cache)
        .unwrap()];
    for t in 0..40u32 {
        let next = [(t * 7 + 1) % 300, (t * 11 + 2) % 300];
        out.push(
            m.decode(&next, 2, &[60 + t, 60 + t], &[1, 1], &mut cache)
                .unwrap(),
        );
    }
    out
}

#[test]
fn bad_input_is_an_error() {
    let engine = InferenceModel::new(model("llama_gqa_untied"), WeightType::Q8_0).unwrap();
    let mut cache = engine.new_cache();
    assert!(engine
        .decode(&[1, 2, 3], 2, &[0, 1, 2], &[1, 1, 1], &mut cache)
        .is_err());
    assert!(engine
        .decode(&[100_000], 1, &[0], &[1], &mut cache)
        .is_err());
    assert!("q4".parse::<WeightType>().is_err());
    assert_eq!("Q8_0".parse::<WeightType>(), Ok(WeightType::Q8_0));
    assert_eq!("q4_1".parse::<WeightType>(), Ok(WeightType::Q4_1));
}

/// One prompt's logits, prefill then `steps` single-token steps, decoded in row `at` of a
/// left-padded batch of `prompts` (every row fed the same tokens after its prompt).
fn row_logits(m: &InferenceModel, prompts: &[Vec<u32>], at: usize, steps: u32) -> Vec<Vec<f32>> {
    let b = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    let (mut ids, mut positions, mut segments) = (Vec::new(), Vec::new(), Vec::new());
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(0, pad).chain(p.iter().copied()));
        positions.extend(std::iter::repeat_n(0, pad).chain(0..p.len() as u32));
        segments.extend(std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, p.len())));
    }
    let mut cache = m.new_cache();
    let mut out = vec![m
        .decode(&ids, b, &positions, &segments, &mut cache)
        .unwrap()[at]
        .clone()];
    for t in 0..steps {
        let next = vec![(t * 31 + 1) % 300; b];
        let positions: Vec<u32> = prompts.iter().map(|p| p.len() as u32 + t).collect();
        out.push(
            m.decode(&next, b, &positions, &vec![1; b], &mut cache)
                .unwrap()[at]
                .clone(),
        );
    }
    out
}

/// A prompt long enough for the attention to be split into parts (over 256 positions)
/// gives the same f32 logits, bit for bit, alone or in batches of other sizes and
/// padding, on one, two or three threads: eval predict's answers must not depend on
/// which prompts share a batch with it, nor on the machine's core count.
#[test]
fn a_prompt_decodes_the_same_in_any_batch_on_any_threads() {
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared("fixtures/models/llama_gqa_untied/config.json")).unwrap(),
    )
    .unwrap();
    config["max_position_embeddings"] = 1024.into();
    let config = ferrotune_model::ModelConfig::from_value(config).unwrap();
    let model = ferrotune_model::init::init_model(config, 7, &Device::Cpu).unwrap();
    let engine = InferenceModel::new(model, WeightType::F32).unwrap();
    let prompt = |len: usize, salt: usize| -> Vec<u32> {
        (0..len)
            .map(|i| ((i * 37 + salt * 11 + 5) % 300) as u32)
            .collect()
    };
    let target = prompt(300, 0);
    let pool = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    };
    let alone = pool(2).install(|| row_logits(&engine, std::slice::from_ref(&target), 0, 6));
    let mut batches = vec![(2, vec![prompt(20, 1), target.clone(), prompt(310, 2)], 1)];
    let mut eight: Vec<Vec<u32>> = (1..8).map(|s| prompt(40 * s, s)).collect();
    eight.insert(5, target.clone());
    batches.push((2, eight, 5));
    batches.push((1, vec![target.clone()], 0));
    batches.push((3, vec![target.clone(), prompt(299, 3)], 0));
    for (threads, prompts, at) in batches {
        let got = pool(threads).install(|| row_logits(&engine, &prompts, at, 6));
        for (step, (a, b)) in alone.iter().zip(&got).enumerate() {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "step {step}: the prompt's logits differ in row {at} of a batch of {} on {threads} threads",
                prompts.len()
            );
        }
    }
}
