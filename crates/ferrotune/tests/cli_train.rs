//! `ferrotune train` end to end on a tiny model made with `model init` and the example
//! data: the loss falls, outputs are written, and an interrupted run resumes exactly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferrotune_testing::cli;
use ferrotune_testing::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn ferrotune() -> Command {
    cli::command(BIN)
}

fn run(args: &[&str]) -> Output {
    cli::output(BIN, args)
}

fn tiny_model(dir: &Path) -> PathBuf {
    cli::tiny_model(BIN, dir, true)
}

fn config(dir: &Path, model: &Path, output: &Path, extra: &str) -> PathBuf {
    let path = dir.join(format!(
        "train-{}.yaml",
        output.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &path,
        format!(
            "model_name_or_path: {}\ndataset: identity_demo,tool_demo\ndataset_dir: examples/data\ncutoff_len: 256\n\
             placeholders: {{name: Ferro, author: the ferrotune project}}\noutput_dir: {}\n\
             per_device_train_batch_size: 4\ngradient_accumulation_steps: 2\n\
             lr_scheduler_type: cosine\nwarmup_ratio: 0.1\nlogging_steps: 1\nseed: 7\nreport_to: none\n{extra}",
            model.display(),
            output.display()
        ),
    )
    .unwrap();
    path
}

fn losses(output: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn mean(xs: &[(u64, f64)]) -> f64 {
    xs.iter().map(|(_, l)| l).sum::<f64>() / xs.len() as f64
}

#[test]
fn full_sft_then_lora_on_its_output_both_learn_and_write_their_outputs() {
    let tmp = TempDir::new("train");
    let model = tiny_model(tmp.path());
    // Full fine-tuning of the random model.
    let full = tmp.path().join("full");
    let extra = "finetuning_type: full\nlearning_rate: 3.0e-3\nnum_train_epochs: 8\nval_size: 0.1\neval_strategy: steps\neval_steps: 8\n";
    let o = run(&[
        "train",
        config(tmp.path(), &model, &full, extra).to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("note: ignoring report_to"), "{err}");
    let l = losses(&full);
    assert!(
        l.last().unwrap().1 < l.first().unwrap().1 * 0.8,
        "full: {l:?}"
    );
    for file in [
        "metrics.jsonl",
        "train_config.json",
        "train_summary.json",
        "chat_template.jinja",
        "tokenizer.json",
        "model.safetensors",
    ] {
        assert!(full.join(file).is_file(), "full: {file}");
    }
    assert!(std::fs::read_to_string(full.join("metrics.jsonl"))
        .unwrap()
        .contains("eval_loss"));

    // Continual SFT: LoRA on the full run's output.
    let lora = tmp.path().join("lora");
    let extra =
        "finetuning_type: lora\nlora_rank: 16\nlearning_rate: 1.0e-2\nnum_train_epochs: 16\n";
    let o = run(&[
        "train",
        config(tmp.path(), &full, &lora, extra).to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = losses(&lora);
    let (first, last) = (mean(&l[..4]), mean(&l[l.len() - 4..]));
    assert!(last < first * 0.95, "lora: {first} -> {last}");
    for file in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "chat_template.jinja",
        "tokenizer.json",
    ] {
        assert!(lora.join(file).is_file(), "lora: {file}");
    }
}

#[test]
fn an_interrupted_run_resumes_exactly() {
    let tmp = TempDir::new("resume");
    let model = tiny_model(tmp.path());
    let extra = "finetuning_type: full\nlearning_rate: 3.0e-3\nmax_steps: 24\nsave_steps: 8\n";
    // Uninterrupted.
    let straight = tmp.path().join("straight");
    let o = run(&[
        "train",
        config(tmp.path(), &model, &straight, extra)
            .to_str()
            .unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Killed after its first checkpoint, then resumed.
    let broken = tmp.path().join("broken");
    let cfg = config(tmp.path(), &model, &broken, extra);
    let mut child = ferrotune()
        .args(["train", cfg.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !broken.join("checkpoint-8").is_dir() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !broken.join("model.safetensors").exists(),
        "killed before the end"
    );
    let o = run(&[
        "train",
        cfg.to_str().unwrap(),
        "resume_from_checkpoint=auto",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("resumed from"), "{err}");
    let (a, b) = (losses(&straight), losses(&broken));
    assert_eq!(a.len(), 24);
    assert_eq!(
        a, b,
        "per-step losses of the resumed run equal the uninterrupted run's"
    );
}

/// LLaMA-Factory's own example config (examples/train_lora/llama3_lora_sft.yaml), key for
/// key, runs as it is: only the model path, the data folder and the step count differ.
#[test]
fn a_llamafactory_config_runs_unchanged() {
    let tmp = TempDir::new("lf-config");
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let shared = ferrotune_testing::shared("data");
    std::fs::write(
        data.join("dataset_info.json"),
        serde_json::json!({
            "identity": {"file_name": shared.join("identity.json")},
            "alpaca_en_demo": {"file_name": shared.join("alpaca_en_demo.json")},
            "hub_only": {"hf_hub_url": "someone/something"}
        })
        .to_string(),
    )
    .unwrap();
    let out = tmp.path().join("saves");
    let cfg = tmp.path().join("llama3_lora_sft.yaml");
    std::fs::write(
        &cfg,
        format!(
            "### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
dataset_dir: {data}
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: {out}
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null

### eval
# eval_dataset: alpaca_en_demo
# val_size: 0.1
# per_device_eval_batch_size: 1
# eval_strategy: steps
# eval_steps: 500
",
            model = model.display(),
            data = data.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let o = run(&[
        "train",
        cfg.to_str().unwrap(),
        "max_steps=3",
        "max_samples=40",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    for ignored in [
        "trust_remote_code",
        "preprocessing_num_workers",
        "ddp_timeout",
        "report_to",
        "save_only_model",
    ] {
        assert!(
            err.contains(ignored),
            "{ignored} is named as ignored: {err}"
        );
    }
    // bf16: true multiplies the frozen matrices in bf16 where the CPU has AVX512-BF16, and
    // says it stays f32 where it has not.
    assert!(
        err.contains("multiply in bf16 with f32 sums") || err.contains("no AVX512-BF16"),
        "{err}"
    );
    assert!(out.join("adapter_model.safetensors").is_file());
    let template = std::fs::read_to_string(out.join("chat_template.jinja")).unwrap();
    assert!(
        template.contains("<|start_header_id|>"),
        "the llama3 template is saved"
    );
    // Using the hub-only entry is the error, not its presence.
    let o = run(&[
        "train",
        cfg.to_str().unwrap(),
        "dataset=hub_only",
        "max_steps=1",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("local files only"));
}

#[test]
fn ewc_runs_with_a_reference_dataset() {
    let tmp = TempDir::new("ewc");
    let model = tiny_model(tmp.path());
    let out = tmp.path().join("ewc");
    let extra = "finetuning_type: full\nlearning_rate: 3.0e-3\nmax_steps: 4\newc_lambda: 1000\newc_dataset: tool_demo\n";
    let o = run(&[
        "train",
        config(tmp.path(), &model, &out, extra).to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success()
            && err.contains("EWC: estimating the Fisher information on 3 reference samples"),
        "{err}"
    );
    assert!(out.join("ewc_fisher.safetensors").is_file());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("ewc_penalty"), "{metrics}");
    // Without reference data or a saved Fisher it is a clear error.
    let o = run(&[
        "train",
        config(
            tmp.path(),
            &model,
            &tmp.path().join("bad"),
            "ewc_lambda: 1.0\nmax_steps: 1\n",
        )
        .to_str()
        .unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("ewc_lambda needs ewc_dataset"));
}

#[test]
fn non_finite_steps_are_skipped_then_the_run_stops() {
    let tmp = TempDir::new("nan");
    let model = tiny_model(tmp.path());
    let out = tmp.path().join("nan");
    let extra = "finetuning_type: full\nlearning_rate: 1.0e30\nmax_grad_norm: 0\nmax_steps: 12\neval_dataset: tool_demo\n";
    let o = run(&[
        "train",
        config(tmp.path(), &model, &out, extra).to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not finite; step skipped (micro-batches"),
        "{err}"
    );
    assert!(
        err.contains("5 steps in a row had a non-finite loss or gradient"),
        "{err}"
    );
}

#[test]
fn an_existing_output_is_not_overwritten_by_accident() {
    let tmp = TempDir::new("exists");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("something"), "precious").unwrap();
    let cfg = config(
        tmp.path(),
        &tmp.path().join("no-model"),
        &out,
        "max_steps: 1\n",
    );
    let o = run(&["train", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("exists and is not empty") && err.contains("overwrite_output_dir"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("something")).unwrap(),
        "precious"
    );
    // A typo in a key is caught before anything runs.
    let o = run(&["train", cfg.to_str().unwrap(), "learning_rat=1e-4"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("did you mean `learning_rate`?"));
}

#[test]
fn a_misspelt_choice_value_fails_before_data_or_model_are_read() {
    let tmp = TempDir::new("choices");
    let out = tmp.path().join("out");
    let cfg = config(tmp.path(), &tmp.path().join("no-model"), &out, "");
    for (key, value, accepted) in [
        ("finetuning_type", "loar", "full, lora, freeze"),
        (
            "lr_scheduler_type",
            "cosine_restarts",
            "constant, constant_with_warmup, linear, cosine, cosine_with_min_lr",
        ),
        ("save_strategy", "best", "no, steps, epoch"),
        ("eval_strategy", "stpes", "no, steps, epoch"),
    ] {
        let o = run(&["train", cfg.to_str().unwrap(), &format!("{key}={value}")]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("`{key}`: unknown value {value:?}"))
                && err.contains(&format!("accepted values: {accepted}")),
            "{err}"
        );
        // Neither the data (its cache lines) nor the model (which does not exist) was read.
        assert!(!err.contains("data:") && !err.contains("no-model"), "{err}");
        assert!(!out.exists(), "{err}");
    }
}

#[test]
fn neat_packing_of_a_mixture_trains() {
    let tmp = TempDir::new("packing");
    let model = tiny_model(tmp.path());
    let out = tmp.path().join("packed");
    let extra = "finetuning_type: full\nlearning_rate: 3.0e-3\nmax_steps: 8\n";
    let o = run(&[
        "train",
        config(tmp.path(), &model, &out, extra).to_str().unwrap(),
        "dataset=identity_demo,tool_demo:25%",
        "neat_packing=true",
        "group_by_length=true",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("packing (Neat)"), "{err}");
    // Written to a pipe, progress is whole lines: no bar redrawn in place.
    assert!(!err.contains('\r'), "{err:?}");
    let l = losses(&out);
    assert_eq!(l.len(), 8, "{l:?}");
    assert!(l.last().unwrap().1 < l.first().unwrap().1, "{l:?}");
    // The mixture is saved with the run, so a later stage can replay it.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["neat_packing"], serde_json::json!(true));
    assert!(saved["dataset_dir"].is_string());
}

#[test]
fn gradient_checkpointing_trains_the_same_steps() {
    let tmp = TempDir::new("checkpointing");
    let model = tiny_model(tmp.path());
    let base = "finetuning_type: full\nlearning_rate: 3.0e-3\nmax_steps: 4\n";
    let mut runs = Vec::new();
    // Checkpointing is on by default (LLaMA-Factory's default); both keys turn it off.
    for (name, extra) in [
        ("recomputed", ""),
        ("plain", "gradient_checkpointing: false\n"),
        ("disabled", "disable_gradient_checkpointing: true\n"),
    ] {
        let out = tmp.path().join(name);
        let cfg = config(tmp.path(), &model, &out, &format!("{base}{extra}"));
        let o = run(&["train", cfg.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        runs.push(losses(&out));
    }
    assert_eq!(runs[0].len(), 4);
    for run in &runs[1..] {
        for ((s, a), (_, b)) in runs[0].iter().zip(run) {
            assert!((a - b).abs() <= 1e-4 * a.abs(), "step {s}: {a} vs {b}");
        }
    }
    // LoRA dropout replays its masks in the recomputation (ops::dropout): it trains.
    let cfg = config(
        tmp.path(),
        &model,
        &tmp.path().join("dropout"),
        "lora_dropout: 0.1\nmax_steps: 1\n",
    );
    let o = run(&["train", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn quantization_keys_quantize_the_base_or_name_what_is_wrong() {
    let tmp = TempDir::new("quantized");
    let model = tiny_model(tmp.path());
    let base = "learning_rate: 1.0e-3\nmax_steps: 3\n";
    let mut runs = Vec::new();
    for (name, extra) in [
        ("f32", ""),
        ("q8", "quantization_bit: 8\n"),
        ("q4", "quantization_bit: 4\nquantization_type: nf4\n"),
    ] {
        let out = tmp.path().join(name);
        let cfg = config(tmp.path(), &model, &out, &format!("{base}{extra}"));
        let o = run(&["train", cfg.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        if name != "f32" {
            assert!(
                err.contains("quantization_bit") && err.contains("GPU library"),
                "{err}"
            );
        }
        runs.push(losses(&out));
    }
    // The 4-bit run's adapter records its base's storage; export holds the base so (the
    // adapter was trained against those weights), merges tensor by tensor, and its f32
    // folder must give base + adapter's logits within 1e-4 (checked by export itself).
    let recorded = std::fs::read_to_string(tmp.path().join("q4/base_storage.json")).unwrap();
    assert!(
        recorded.contains("\"q4_k\"") && recorded.contains("\"bf16\""),
        "{recorded}"
    );
    assert!(!tmp.path().join("f32/base_storage.json").exists());
    let merged = tmp.path().join("q4-merged");
    let o = run(&[
        "export",
        "--adapter",
        tmp.path().join("q4").to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--dtype",
        "f32",
    ]);
    let (err, said) = (
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout),
    );
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("held as the adapter's training held it: q4_k"),
        "{err}"
    );
    assert!(said.contains("vs base + adapter"), "{said}");
    // Quantization moves the losses a little, not a lot: q8_0 less than the 4-bit type.
    let first = |r: &[(u64, f64)]| r[0].1;
    let d8 = (first(&runs[1]) - first(&runs[0])).abs() / first(&runs[0]);
    let d4 = (first(&runs[2]) - first(&runs[0])).abs() / first(&runs[0]);
    assert!(d8 > 0.0 && d8 < 0.01, "q8_0 moved the first loss by {d8}");
    assert!(d4 < 0.05, "4-bit moved the first loss by {d4}");

    for (extra, needle) in [
        ("quantization_bit: 3\n", "quantization_bit must be 4 or 8"),
        ("quantization_bit: 4\nquantization_type: nf5\n", "q4_k"),
        ("quantization_bit: 4\nquantization_method: gptq\n", "eetq"),
        (
            "quantization_bit: 4\nfinetuning_type: full\n",
            "adapters only",
        ),
    ] {
        let cfg = config(tmp.path(), &model, &tmp.path().join("bad"), extra);
        let o = run(&["train", cfg.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{extra}: {err}"
        );
    }
}

/// A Qwen2.5-7B-shaped bf16 model folder whose weights are a sparse file: config.json, the
/// example tokenizer and a model.safetensors whose header lists every tensor.
fn sparse_7b_folder(dir: &Path) -> PathBuf {
    let model = dir.join("qwen7b");
    std::fs::create_dir_all(&model).unwrap();
    let (h, i, v, layers, kv) = (3584usize, 18944usize, 152064usize, 28usize, 512usize);
    std::fs::write(
        model.join("config.json"),
        serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": v,
            "hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers,
            "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": false,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
            "torch_dtype": "bfloat16"
        })
        .to_string(),
    )
    .unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(
            ferrotune_testing::workspace_root()
                .join("examples/tokenizer")
                .join(f),
            model.join(f),
        )
        .unwrap();
    }
    let mut tensors = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, h]),
        ("lm_head.weight".to_string(), vec![v, h]),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.q_proj.bias", vec![h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.k_proj.bias", vec![kv]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.bias", vec![kv]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            tensors.push((format!("{p}.{name}"), shape));
        }
    }
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let bytes = 2 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut file = std::fs::File::create(model.join("model.safetensors")).unwrap();
    use std::io::Write;
    file.write_all(&(header.len() as u64).to_le_bytes())
        .unwrap();
    file.write_all(header.as_bytes()).unwrap();
    // The data: a hole of 15 GB, which takes no disk space.
    file.set_len((8 + header.len() + offset) as u64).unwrap();
    model
}

#[test]
fn the_memory_plan_stops_a_run_that_cannot_fit_before_loading_it() {
    let tmp = TempDir::new("memory-plan");
    let model = sparse_7b_folder(tmp.path());
    for (name, extra, cutoff, needle) in [
        // An f32 7B base takes 28 GiB: only a 4-bit base fits in 24 GiB.
        (
            "f32",
            "memory_limit: 24GiB\n",
            "cutoff_len=1024",
            "a 4-bit base",
        ),
        // Packed 4 x 4096 rows without checkpointing: checkpointing or shorter rows fit.
        (
            "unchecked",
            "memory_limit: 24GiB\nquantization_bit: 4\npacking: true\n\
             gradient_checkpointing: false\n",
            "cutoff_len=4096",
            "gradient checkpointing",
        ),
    ] {
        let out = tmp.path().join(name);
        let cfg = config(tmp.path(), &model, &out, extra);
        let started = std::time::Instant::now();
        let o = run(&["train", cfg.to_str().unwrap(), cutoff]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("memory plan") && err.contains("What would fit") && err.contains(needle),
            "{name}: {err}"
        );
        // Stopped before the data and the weights were read.
        assert!(!err.contains("data:"), "{name}: {err}");
        assert!(started.elapsed().as_secs() < 30);
    }
    // memory_limit accepts sizes only; a bad one is named.
    let cfg = config(
        tmp.path(),
        &model,
        &tmp.path().join("bad"),
        "memory_limit: lots\n",
    );
    let o = run(&["train", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("memory_limit \"lots\""),
        "{err}"
    );
}
