//! `ferrotune export`: a LoRA adapter (non-zero B, laid out as a training run writes it)
//! merged into its base. The written Hugging Face folder gives the logits of base +
//! adapter; GGUF files read back by `model import-gguf` give the same logits exactly
//! (f32) or within rounding (f16, q8_0).

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{DType, Device, Tensor};
use ferrotune_model::batch::Batch;
use ferrotune_model::check::max_abs_diff;
use ferrotune_model::tuning::{add_lora, load_peft_adapter, save_peft_adapter, LoraConfig};
use ferrotune_model::weights::load_model;
use ferrotune_model::CausalLm;
use ferrotune_testing::{cli, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn ferrotune(args: &[&str]) -> Output {
    cli::output(BIN, args)
}

fn ok(args: &[&str]) -> Output {
    cli::run_ok(BIN, args)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A random base model (untied head, grouped-query attention) and a LoRA adapter on it
/// with non-zero B, in a folder like a LoRA run's output (adapter, tokenizer, template).
fn base_and_adapter(dir: &Path) -> (PathBuf, PathBuf) {
    let base = cli::tiny_model(BIN, dir, false);
    let mut model = load_model(&base, DType::F32, &Device::Cpu).unwrap();
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    assert_eq!(add_lora(&mut model, &lora, 3).unwrap(), 14);
    // Fixed noise (not `randn`), so that the tolerances below see the same logits each run.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for (_, linear) in model.linears_mut() {
        let b = &mut linear.lora.as_mut().unwrap().b;
        let dims = b.dims();
        let values: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.17
            })
            .collect();
        b.set(&Tensor::from_vec(values, dims, &Device::Cpu).unwrap())
            .unwrap();
    }
    let adapter = dir.join("run");
    save_peft_adapter(&model, &lora, &adapter, Some(path(&base))).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(base.join(file), adapter.join(file)).unwrap();
    }
    std::fs::write(
        adapter.join("chat_template.jinja"),
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
         {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    )
    .unwrap();
    (base, adapter)
}

fn logits(model: &CausalLm) -> Tensor {
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 580).collect();
    model
        .forward(&Batch::prompt(&ids, &Device::Cpu).unwrap(), false)
        .unwrap()
}

fn load(dir: &Path) -> CausalLm {
    load_model(dir, DType::F32, &Device::Cpu).unwrap()
}

fn import(gguf: &Path, out: &Path) -> CausalLm {
    ok(&["model", "import-gguf", path(gguf), "--out", path(out)]);
    load(out)
}

fn cli_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn merged_exports_give_the_logits_of_base_plus_adapter() {
    let tmp = TempDir::new("export");
    let (base, adapter) = base_and_adapter(tmp.path());
    let mut unmerged = load(&base);
    let base_logits = logits(&unmerged);
    load_peft_adapter(&mut unmerged, &adapter).unwrap();
    let expected = logits(&unmerged);
    // The adapter matters, so the comparisons below can fail.
    assert!(max_abs_diff(&expected, &base_logits).unwrap() > 1e-2);

    // The base comes from adapter_config.json; the template and tokenizer from the run.
    let hf = tmp.path().join("merged");
    let gguf32 = tmp.path().join("gguf/merged-f32.gguf");
    let o = ok(&[
        "export",
        "--adapter",
        path(&adapter),
        "--out",
        path(&hf),
        "--gguf",
        path(&gguf32),
        "--gguf-type",
        "f32",
    ]);
    let (err, said) = (cli_text(&o.stderr), cli_text(&o.stdout));
    assert!(err.contains("merging 14 LoRA projections"), "{err}");
    assert!(
        said.contains("vs base + adapter: max |diff|") && said.contains("vs the base alone"),
        "{said}"
    );
    let merged = load(&hf);
    assert!(merged.params().iter().all(|p| !p.name().contains("lora")));
    let merged_logits = logits(&merged);
    let d = max_abs_diff(&merged_logits, &expected).unwrap();
    assert!(d <= 1e-4, "merged folder: logits differ by {d}");
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "config.json",
    ] {
        assert!(hf.join(file).is_file(), "{file} missing");
    }
    assert_eq!(
        std::fs::read_to_string(hf.join("chat_template.jinja")).unwrap(),
        std::fs::read_to_string(adapter.join("chat_template.jinja")).unwrap()
    );

    // GGUF f32: the very same weights come back.
    let reimported = import(&gguf32, &tmp.path().join("from-f32"));
    assert_eq!(
        max_abs_diff(&logits(&reimported), &merged_logits).unwrap(),
        0.0
    );

    // f16 and q8_0: within their rounding, and not exact (the type was applied).
    let scale = max_abs(&merged_logits);
    for (kind, tolerance) in [("f16", 2e-3), ("q8_0", 2e-2)] {
        let file = tmp.path().join(format!("merged-{kind}.gguf"));
        ok(&[
            "export",
            "--model",
            path(&base),
            "--adapter",
            path(&adapter),
            "--gguf",
            path(&file),
            "--gguf-type",
            kind,
        ]);
        let back = import(&file, &tmp.path().join(format!("from-{kind}")));
        let d = max_abs_diff(&logits(&back), &merged_logits).unwrap();
        assert!(
            d > 0.0 && d <= tolerance * scale,
            "{kind}: logits differ by {d} (scale {scale})"
        );
    }
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn a_model_without_an_adapter_exports_as_it_is_and_mistakes_are_named() {
    let tmp = TempDir::new("export-plain");
    let (base, adapter) = base_and_adapter(tmp.path());
    let out = tmp.path().join("copy");
    ok(&[
        "export",
        "--model",
        path(&base),
        "--out",
        path(&out),
        "--dtype",
        "bf16",
    ]);
    let copy = load(&out);
    assert_eq!(copy.config.torch_dtype.as_deref(), Some("bfloat16"));
    let d = max_abs_diff(&logits(&copy), &logits(&load(&base))).unwrap();
    assert!(d > 0.0 && d < 0.05, "bf16 copy: {d}");

    // An adapter folder given as the model is an adapter, with its base from its config.
    let o = ok(&[
        "export",
        "--model",
        path(&adapter),
        "--gguf",
        path(&tmp.path().join("a.gguf")),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("merging 14"));

    let o = ferrotune(&[
        "export",
        "--model",
        path(&base),
        "--adapter",
        path(&base),
        "--out",
        path(&out),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a LoRA adapter folder"));
    let o = ferrotune(&["export", "--model", path(&base)]);
    assert!(!o.status.success(), "needs --out or --gguf");
}
