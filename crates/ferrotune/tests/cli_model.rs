//! `ferrotune model ...` as a user runs it.

use std::process::Output;

use ferrotune_testing::{shared, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn ferrotune(args: &[&str]) -> Output {
    ferrotune_testing::cli::output(BIN, args)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn info_reports_parameters_and_memory() {
    let dir = shared("fixtures/models/llama_gqa_untied");
    let o = ferrotune(&[
        "model",
        "info",
        dir.to_str().unwrap(),
        "--json",
        "--batch-size",
        "2",
        "--seq-len",
        "64",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["architecture"], "LlamaForCausalLM");
    // Embeddings 384x64, lm_head 384x64, 2 layers, final norm.
    let per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 160 + 2 * 64;
    assert_eq!(doc["parameters"], 2 * 384 * 64 + 2 * per_layer + 64);
    let full = &doc["memory"]["full"];
    let lora = &doc["memory"]["lora"];
    assert!(full["total_bytes"].as_u64() > lora["total_bytes"].as_u64());
    // Full tuning: a gradient, one more per shard run side by side, and two moments per
    // parameter, over the f32 weights.
    let shards = doc["shards"].as_u64().unwrap();
    let gradients = 1 + if shards > 1 { shards } else { 0 };
    assert_eq!(
        full["trainable_bytes"].as_u64().unwrap(),
        (gradients + 2) * 4 * doc["parameters"].as_u64().unwrap()
    );
    let q4 = &doc["memory"]["lora, q4_k + bf16 embeddings"];
    assert!(q4["weights_bytes"].as_u64() < lora["weights_bytes"].as_u64());
    let (table, _) = text(&ferrotune(&["model", "info", dir.to_str().unwrap()]));
    assert!(
        table.contains("parameters") && table.contains("lora") && table.contains("freeze"),
        "{table}"
    );
}

#[test]
fn check_passes_on_the_fixture_and_fails_on_a_wrong_reference() {
    let dir = shared("fixtures/models/qwen3_qknorm_tied");
    let reference = dir.join("parity.safetensors");
    let o = ferrotune(&[
        "model",
        "check",
        dir.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("ok: within tolerances") && out.contains("packed row"),
        "{out}"
    );

    let lora = dir.join("lora");
    let lora_ref = lora.join("parity.safetensors");
    // The adapter's parity file holds no batch (the library test combines it with the
    // base file): given alone it must fail with a clear message.
    let o = ferrotune(&[
        "model",
        "check",
        dir.to_str().unwrap(),
        "--reference",
        lora_ref.to_str().unwrap(),
        "--adapter",
        lora.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("the reference has no `input_ids`"),
        "{}",
        text(&o).1
    );

    let other = shared("fixtures/models/qwen2_bias_tied/parity.safetensors");
    let o = ferrotune(&[
        "model",
        "check",
        dir.to_str().unwrap(),
        "--reference",
        other.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn init_then_generate_and_import_errors() {
    let tmp = TempDir::new("cli-init");
    let config = tmp.write(
        "config.json",
        r#"{"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "tie_word_embeddings": true, "rope_theta": 10000.0}"#,
    );
    let out = tmp.path().join("model");
    let o = ferrotune(&[
        "model",
        "init",
        "--config",
        config.to_str().unwrap(),
        "--tokenizer",
        "examples/tokenizer",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["vocab_size"], 580);
    // An untrained model still generates through the tokenizer's chat template.
    let o = ferrotune(&[
        "model",
        "generate",
        out.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "5",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);

    let bad = tmp.write("bad.gguf", "GGUF but not really");
    let o = ferrotune(&[
        "model",
        "import-gguf",
        bad.to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("not a readable GGUF file"),
        "{}",
        text(&o).1
    );

    let o = ferrotune(&["model", "info", "Nobody/Nothing-1B"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("HF_HUB_OFFLINE"), "{}", text(&o).1);
}

#[test]
fn trajectory_check_replays_the_reference_run() {
    let dir = shared("fixtures/models/qwen3_qknorm_tied");
    let o = ferrotune(&[
        "model",
        "check",
        dir.to_str().unwrap(),
        "--trajectory",
        dir.to_str().unwrap(),
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["report"]["steps"].as_array().unwrap().len(), 12);
    // A different model's run does not match.
    let other = shared("fixtures/models/llama_gqa_untied");
    let o = ferrotune(&[
        "model",
        "check",
        dir.to_str().unwrap(),
        "--trajectory",
        other.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
}
