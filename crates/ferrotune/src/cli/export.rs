//! `ferrotune export`: a LoRA adapter merged into its base and written as a Hugging Face
//! model folder (with the tokenizer and the training chat template) and / or a GGUF file
//! for llama.cpp. The base is held as training held it (quantized, 16-bit or f32) and each
//! tensor is merged as it is written, so a model that trained quantized exports on the
//! same machine. The written folder is read back and checked on a probe prompt: it must
//! give the logits of base + adapter.

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
use ferrotune_model::weights::{load_model_quantized, Quantization};
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

/// How the written folder is read back for the check: as written, or (an f32 folder too
/// large for this machine in f32) with its matrices held as bf16.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ReadBack {
    AsWritten,
    Bf16,
    /// Not even in bf16 does it fit: the folder is not read back (said so).
    Skipped,
}

/// Export holds the base as training held it plus one tensor's dense copies while that
/// tensor is written; the written folder is then read back on its own. Stops before
/// loading when the first cannot fit in the memory available, instead of failing an
/// allocation halfway, and says how the folder will be read back.
fn check_export_fits(source: &ModelSource, folder: Option<DType>) -> Result<ReadBack> {
    use ferrotune_model::memory::{available_bytes, human, weight_bytes, WeightStorage};
    let config = ferrotune_model::ModelConfig::from_file(&source.base.join("config.json"))?;
    let held = match ferrotune_model::gguf::GgufSource::of_folder(&source.base)? {
        Some(gguf) => std::fs::metadata(&gguf.file).map(|m| m.len()).unwrap_or(0),
        None => match source.base_storage()? {
            Some(q) => weight_bytes(
                &config,
                WeightStorage::Types {
                    matrices: q.matrices,
                    embeddings: q.embeddings,
                },
            ),
            None => weight_bytes(&config, WeightStorage::F32),
        },
    };
    // The largest tensor, the embedding: merged f32, converted, and its written copy.
    let largest = (config.vocab_size * config.hidden_size * 4) as u64;
    let need = held + 3 * largest;
    let Some(available) = available_bytes() else {
        return Ok(ReadBack::AsWritten);
    };
    if need > available {
        bail!(
            "exporting needs the base as it was trained ({}) and one tensor at a time in f32:              about {} for {:.1}B parameters, and {} are available: export on a machine with              more memory, or use the adapter as it is (chat, serve and eval take --adapter)",
            human(held),
            human(need),
            config.num_parameters() as f64 / 1e9,
            human(available)
        );
    }
    let f32_folder = match folder {
        Some(d) => d == DType::F32,
        None => !matches!(config.torch_dtype.as_deref(), Some("bfloat16" | "float16")),
    };
    // Reading back holds the folder's matrices (f32 or 16-bit) and a tensor in f32.
    let in_f32 = weight_bytes(&config, WeightStorage::F32) + largest;
    let in_16_bits = weight_bytes(&config, WeightStorage::uniform(GgmlDType::BF16)) + 2 * largest;
    Ok(if f32_folder && in_f32 <= available {
        ReadBack::AsWritten
    } else if in_16_bits > available {
        ReadBack::Skipped
    } else if f32_folder {
        ReadBack::Bf16
    } else {
        ReadBack::AsWritten
    })
}

pub fn run(a: ExportArgs) -> Result<()> {
    let source = ModelSource::locate(a.model.as_deref(), a.adapter.as_deref())?;
    let (tok, template) = loading::tokenizer_and_template(&source, None)?;
    let template_source = template.as_ref().map(|t| t.source().to_string());
    let dtype = a.dtype.map(|d| match d {
        FolderDtype::F32 => DType::F32,
        FolderDtype::Bf16 => DType::BF16,
        FolderDtype::F16 => DType::F16,
    });
    let read_back = check_export_fits(&source, dtype)?;
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
        .encode_with_offsets(&text)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
        .0;
    let expected = logits(&model, &probe)?;
    let base_alone = without_adapters(&mut model, |m| logits(m, &probe))?;
    let adapted = model
        .linears_mut()
        .iter()
        .filter(|(_, l)| l.lora.is_some())
        .count();
    if adapted > 0 {
        eprintln!(
            "merging {adapted} LoRA projections into the base, one tensor at a time as it is \
             written; a written folder is read back and checked against base + adapter on a \
             {}-token probe",
            probe.len()
        );
    } else {
        eprintln!("no adapter: exporting the model as it is");
    }

    if let Some(out) = &a.out {
        let options = SaveOptions {
            dtype,
            tokenizer_dir: Some(source.tokenizer_dir()),
            chat_template: template_source.as_deref(),
            ..SaveOptions::default()
        };
        save_model(&model, out, &options)?;
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
    drop(model);
    if let Some(out) = &a.out {
        check_written(out, read_back, &probe, &expected, base_alone.as_ref())?;
    }
    Ok(())
}

/// The model's logits with its adapters switched off (`None` when it has none).
fn without_adapters(
    model: &mut CausalLm,
    f: impl FnOnce(&CausalLm) -> Result<Tensor>,
) -> Result<Option<Tensor>> {
    let mut taken = Vec::new();
    for (name, lin) in model.linears_mut() {
        if let Some(lora) = lin.lora.take() {
            taken.push((name, lora));
        }
    }
    if taken.is_empty() {
        return Ok(None);
    }
    let out = f(model);
    for (name, lin) in model.linears_mut() {
        if let Some(at) = taken.iter().position(|(n, _)| *n == name) {
            lin.lora = Some(taken.swap_remove(at).1);
        }
    }
    out.map(Some)
}

/// Reads the written folder back and compares its logits on the probe with base +
/// adapter's: within [`MERGE_TOL`] where it holds f32 as written; otherwise (16-bit
/// rounding) it must at least be nearer base + adapter than the base alone, so that a
/// merge that left the base as it was cannot pass.
fn check_written(
    out: &Path,
    read_back: ReadBack,
    probe: &[u32],
    expected: &Tensor,
    base_alone: Option<&Tensor>,
) -> Result<()> {
    let written = ModelSource {
        base: out.to_path_buf(),
        adapter: None,
    };
    let reloaded = match read_back {
        ReadBack::Skipped => {
            println!(
                "wrote {}; not read back: its weights would not fit in this machine's memory \
                 even in bf16 (base + adapter's logits were computed before writing; check the \
                 folder on a larger machine with `ferrotune model check`)",
                out.display()
            );
            return Ok(());
        }
        ReadBack::AsWritten => written.load_unmerged()?,
        ReadBack::Bf16 => {
            eprintln!(
                "reading the written f32 folder back with its matrices held as bf16: in f32 it \
                 would not fit in this machine's memory"
            );
            load_model_quantized(
                out,
                Quantization::sixteen_bit(GgmlDType::BF16),
                DType::F32,
                &Device::Cpu,
            )?
        }
    };
    let got = logits(&reloaded, probe)?;
    let diff = max_abs_diff(&got, expected)?;
    let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
    let tolerance = MERGE_TOL * scale;
    let f32_held = read_back == ReadBack::AsWritten && written.base_storage()?.is_none();
    let stored = reloaded
        .config
        .torch_dtype
        .as_deref()
        .unwrap_or("float32")
        .to_string();
    let vs_base = base_alone.map(|b| max_abs_diff(&got, b)).transpose()?;
    match vs_base {
        Some(from_base) => println!(
            "wrote {} ({stored}; read back, logits vs base + adapter: max |diff| {diff:.3e}, vs \
             the base alone {from_base:.3e})",
            out.display()
        ),
        None => println!(
            "wrote {} ({stored}; read back, logits vs the model: max |diff| {diff:.3e})",
            out.display()
        ),
    }
    if diff.is_nan() || (f32_held && diff > tolerance) {
        bail!(
            "{}: the written model's logits differ from base + adapter by {diff:.3e} (> \
             {tolerance:.1e}: 1e-4 x the largest logit {scale:.2})",
            out.display()
        );
    }
    if let Some(from_base) = vs_base.filter(|&d| diff > 1.5 * d) {
        bail!(
            "{}: the written model is nearer the base without the adapter (max |diff| \
             {from_base:.3e}) than base + adapter ({diff:.3e}): the merge did not take",
            out.display()
        );
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
