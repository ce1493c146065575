//! `ferrotune export`: a LoRA adapter merged into its base and written as a Hugging Face
//! model folder (with the tokenizer and the training chat template) and / or a GGUF file
//! for llama.cpp. The merge is checked on a probe prompt before anything is written: the
//! merged model must give the logits of base + adapter.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use ferrotune_data::conversation::{Message, Role};
use ferrotune_model::batch::Batch;
use ferrotune_model::check::max_abs_diff;
use ferrotune_model::gguf::export_gguf;
use ferrotune_model::save::{save_model, SaveOptions};
use ferrotune_model::tuning::merge_lora;
use ferrotune_model::weights::load_model;
use ferrotune_model::CausalLm;

use ferrotune_serve::loading::{self, ModelSource};

/// Largest logit difference accepted between the merged model and base + adapter, relative
/// to the largest logit (at least 1): merging reorders float32 sums, and over a real model's
/// 30 layers with logits near 20 that alone moves the logits by about 1e-4 absolute.
const MERGE_TOL: f32 = 1e-4;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The base model (folder or Hub id). May be left out when the adapter's
    /// adapter_config.json names it (base_model_name_or_path), as training writes it.
    #[arg(long)]
    model: Option<String>,
    /// The PEFT LoRA adapter to merge: an adapter folder or a LoRA run's output folder.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Write a Hugging Face model folder here.
    #[arg(long, required_unless_present = "gguf")]
    out: Option<PathBuf>,
    /// Weight dtype of the model folder (default: the base model's).
    #[arg(long, value_enum)]
    dtype: Option<FolderDtype>,
    /// Write a GGUF file (llama.cpp) here.
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Weight type of the GGUF file's matrices (norms stay f32; a quantized type falls
    /// back to f16 for matrices whose rows are not a multiple of its block size).
    #[arg(long, value_enum, default_value_t = GgufType::F16)]
    gguf_type: GgufType,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FolderDtype {
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum GgufType {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "q4_k")]
    Q4K,
    #[value(name = "q5_k")]
    Q5K,
    #[value(name = "q6_k")]
    Q6K,
}

impl GgufType {
    fn ggml(self) -> GgmlDType {
        match self {
            GgufType::F32 => GgmlDType::F32,
            GgufType::F16 => GgmlDType::F16,
            GgufType::Bf16 => GgmlDType::BF16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
            GgufType::Q4_0 => GgmlDType::Q4_0,
            GgufType::Q4_1 => GgmlDType::Q4_1,
            GgufType::Q5_0 => GgmlDType::Q5_0,
            GgufType::Q5_1 => GgmlDType::Q5_1,
            GgufType::Q4K => GgmlDType::Q4K,
            GgufType::Q5K => GgmlDType::Q5K,
            GgufType::Q6K => GgmlDType::Q6K,
        }
    }
}

/// Merging dequantizes the base into f32 matrices, the whole model at once: a base held
/// quantized (a GGUF file, a 4-bit run) grows about 7x. Stops before loading when that
/// cannot fit in the memory available, instead of failing an allocation halfway.
fn check_merge_fits(source: &ModelSource) -> Result<()> {
    use ferrotune_model::memory::{available_bytes, human};
    let config = ferrotune_model::ModelConfig::from_file(&source.base.join("config.json"))?;
    // The f32 model, the quantized base while it is being replaced, and the written
    // copies of one shard.
    let need = config.num_parameters() as u64 * 4 * 5 / 4;
    if let Some(available) = available_bytes() {
        if need > available {
            bail!(
                "merging this adapter needs the base dequantized to f32: about {} for {:.1}B \
                 parameters, and {} are available. Exporting models this size by streaming \
                 one layer at a time is not done yet: export on a machine with more memory, or \
                 use the adapter as it is (chat, serve and eval take --adapter)",
                human(need),
                config.num_parameters() as f64 / 1e9,
                human(available)
            );
        }
    }
    Ok(())
}

pub fn run(a: ExportArgs) -> Result<()> {
    let source = ModelSource::locate(a.model.as_deref(), a.adapter.as_deref())?;
    let (tok, template) = loading::tokenizer_and_template(&source, None)?;
    let template_source = template.as_ref().map(|t| t.source().to_string());
    check_merge_fits(&source)?;
    let mut model = source.load_unmerged()?;

    // The probe: a short chat prompt (or plain text without a template), tokenized.
    let text = match &template {
        Some(t) => t
            .render(
                &[Message::new(Role::User, "Hello! Who are you? 你好")],
                &[],
                true,
            )
            .map_err(|e| anyhow::anyhow!("chat template: {e}"))?,
        None => "The quick brown fox jumps over the lazy dog. 你好".to_string(),
    };
    let probe: Vec<u32> = tok
        .tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
        .get_ids()
        .to_vec();
    let expected = logits(&model, &probe)?;
    let merged = merge_lora(&mut model)?;
    let diff = max_abs_diff(&logits(&model, &probe)?, &expected)?;
    let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
    let tolerance = MERGE_TOL * scale;
    if merged > 0 {
        eprintln!(
            "merged {merged} LoRA projections; merged vs base + adapter logits on a {}-token probe: max |diff| {diff:.3e} (tolerance {tolerance:.1e}: 1e-4 x the largest logit {scale:.2})",
            probe.len()
        );
    } else {
        eprintln!("no adapter: exporting the model as it is");
    }
    if diff.is_nan() || diff > tolerance {
        bail!("the merged model's logits differ from base + adapter by {diff:.3e} (> {tolerance:.1e}); nothing written");
    }

    if let Some(out) = &a.out {
        let dtype = a.dtype.map(|d| match d {
            FolderDtype::F32 => DType::F32,
            FolderDtype::Bf16 => DType::BF16,
            FolderDtype::F16 => DType::F16,
        });
        let options = SaveOptions {
            dtype,
            tokenizer_dir: Some(source.tokenizer_dir()),
            chat_template: template_source.as_deref(),
            ..SaveOptions::default()
        };
        save_model(&model, out, &options)?;
        // Read back what was written: the folder must give the same logits.
        let reloaded = load_model(out, DType::F32, &Device::Cpu)?;
        let diff = max_abs_diff(&logits(&reloaded, &probe)?, &expected)?;
        let exact = matches!(
            reloaded.config.torch_dtype.as_deref(),
            Some("float32") | None
        );
        println!(
            "wrote {} ({}; reloaded logits vs base + adapter: max |diff| {diff:.3e})",
            out.display(),
            reloaded.config.torch_dtype.as_deref().unwrap_or("float32")
        );
        if exact && (diff.is_nan() || diff > tolerance) {
            bail!(
                "{}: the written model's logits differ by {diff:.3e} (> {tolerance:.1e})",
                out.display()
            );
        }
    }
    if let Some(path) = &a.gguf {
        write_gguf(
            &model,
            &source,
            template_source.as_deref(),
            path,
            a.gguf_type,
        )?;
    }
    Ok(())
}

fn write_gguf(
    model: &CausalLm,
    source: &ModelSource,
    template: Option<&str>,
    path: &Path,
    kind: GgufType,
) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    export_gguf(model, source.tokenizer_dir(), template, path, kind.ggml())?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:?} matrices, {:.1} MiB)",
        path.display(),
        kind.ggml(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// Logits of one unpadded row.
fn logits(model: &CausalLm, ids: &[u32]) -> Result<Tensor> {
    Ok(model.forward(&Batch::prompt(ids, model.device())?, false)?)
}
