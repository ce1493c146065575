//! GGUF export -> import round trips on small models written by the test itself (never a
//! download): weights, config, logits and the rebuilt tokenizer.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use ferrotune_model::check::max_abs_diff;
use ferrotune_model::gguf::{export_gguf, import_gguf, permute, unpermute};
use ferrotune_model::init::init_model;
use ferrotune_model::weights::load_model;
use ferrotune_model::{Batch, CausalLm, ModelConfig};
use ferrotune_testing::{workspace_root, TempDir};

fn tiny(architecture: &str, tie: bool) -> CausalLm {
    let tokenizer: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("examples/tokenizer/tokenizer.json"))
            .unwrap(),
    )
    .unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object().unwrap().len()
        + tokenizer["added_tokens"].as_array().unwrap().len();
    let config = ModelConfig::from_value(serde_json::json!({
        "architectures": [architecture], "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": tie, "bos_token_id": null, "eos_token_id": 2
    }))
    .unwrap();
    let mut model = init_model(config, 3, &Device::Cpu).unwrap();
    // Norm weights of 1 would hide a mix-up between them: make every weight distinct.
    for p in model.params_mut() {
        if p.tensor().unwrap().rank() == 1 {
            let n = p.tensor().unwrap().dims()[0];
            let v: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 / 100.0).collect();
            p.set(&candle_core::Tensor::from_vec(v, n, &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    model
}

fn logits(m: &CausalLm) -> candle_core::Tensor {
    let ids: Vec<u32> = (0..20).map(|i| (i * 7 % 500) as u32).collect();
    m.forward(&Batch::prompt(&ids, &Device::Cpu).unwrap(), false)
        .unwrap()
}

fn round_trip(architecture: &str, tie: bool, dtype: GgmlDType) -> (CausalLm, CausalLm, TempDir) {
    let model = tiny(architecture, tie);
    let dir = TempDir::new("gguf");
    let tokenizer = workspace_root().join("examples/tokenizer");
    let file = dir.path().join("model.gguf");
    export_gguf(&model, &tokenizer, None, &file, dtype).unwrap();
    let imported = import_gguf(&file, &dir.path().join("hf")).unwrap();
    assert!(
        imported.chat_template,
        "the tokenizer's chat template travels"
    );
    let again = load_model(&dir.path().join("hf"), DType::F32, &Device::Cpu).unwrap();
    (model, again, dir)
}

#[test]
fn f32_round_trip_is_exact_for_every_architecture() {
    for (arch, tie) in [
        ("LlamaForCausalLM", false),
        ("Qwen2ForCausalLM", true),
        ("Qwen3ForCausalLM", true),
    ] {
        let (model, again, _dir) = round_trip(arch, tie, GgmlDType::F32);
        assert_eq!(again.config.architecture, model.config.architecture);
        assert_eq!(again.config.num_key_value_heads, 2);
        assert_eq!(again.config.tie_word_embeddings, tie);
        let (a, b) = (model.params(), again.params());
        assert_eq!(a.len(), b.len(), "{arch}");
        for (p, q) in a.iter().zip(&b) {
            assert_eq!(p.name(), q.name());
            assert_eq!(
                max_abs_diff(p.tensor().unwrap(), q.tensor().unwrap()).unwrap(),
                0.0,
                "{arch}: {}",
                p.name()
            );
        }
        assert_eq!(
            max_abs_diff(&logits(&model), &logits(&again)).unwrap(),
            0.0,
            "{arch}"
        );
    }
}

#[test]
fn q8_0_round_trip_is_within_quantisation_error() {
    let (model, again, _dir) = round_trip("LlamaForCausalLM", false, GgmlDType::Q8_0);
    for (p, q) in model.params().iter().zip(again.params()) {
        let scale = p
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
        let d = max_abs_diff(p.tensor().unwrap(), q.tensor().unwrap()).unwrap();
        assert!(d <= scale / 100.0, "{}: {d} vs scale {scale}", p.name());
    }
    let d = max_abs_diff(&logits(&model), &logits(&again)).unwrap();
    assert!(d < 1e-2, "logits differ by {d}");
}

#[test]
fn the_rebuilt_tokenizer_encodes_like_the_original() {
    let (_, _, dir) = round_trip("Qwen3ForCausalLM", true, GgmlDType::F32);
    let original = tokenizers::Tokenizer::from_file(
        workspace_root().join("examples/tokenizer/tokenizer.json"),
    )
    .unwrap();
    let rebuilt = tokenizers::Tokenizer::from_file(dir.path().join("hf/tokenizer.json")).unwrap();
    for text in [
        "Who are you?",
        "我是 Ferro。",
        "<|im_start|>user\nhi<|im_end|>\n",
        "17 + 25 = 42.",
        "  odd   spacing\n\n",
    ] {
        let a = original.encode(text, false).unwrap();
        let b = rebuilt.encode(text, false).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "{text:?}");
        assert_eq!(rebuilt.decode(b.get_ids(), false).unwrap(), text);
    }
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("hf/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert!(config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
}

#[test]
fn llama_cpp_permutation_is_undone() {
    let w = candle_core::Tensor::arange(0f32, 64.0 * 3.0, &Device::Cpu)
        .unwrap()
        .reshape((64, 3))
        .unwrap();
    let p = permute(&w, 4).unwrap();
    assert!(max_abs_diff(&p, &w).unwrap() > 0.0);
    assert_eq!(max_abs_diff(&unpermute(&p, 4).unwrap(), &w).unwrap(), 0.0);
    // Row order within a head: llama.cpp interleaves the two rotary halves.
    let rows: Vec<f32> = p.get(1).unwrap().to_vec1().unwrap();
    assert_eq!(
        rows,
        vec![24.0, 25.0, 26.0],
        "row 1 of head 0 is row 8 (= 16/2) of the original"
    );
}

#[test]
fn not_a_gguf_file() {
    let dir = TempDir::new("not-gguf");
    let file = dir.write("x.gguf", "nope");
    let e = import_gguf(&file, &dir.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.gguf") && e.contains("not a readable GGUF file"),
        "{e}"
    );
}
