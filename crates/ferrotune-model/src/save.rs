//! Writes a model folder in Hugging Face layout that transformers loads: config.json,
//! model.safetensors (sharded with an index above a size limit), generation_config.json,
//! and, when given, the tokenizer files and the chat template used in training. Weights
//! are written one tensor at a time, LoRA adapters merged as each is reached
//! ([`output_tensors`]), so a base held quantized is never dequantized whole.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::linear::Linear;
use crate::llama::CausalLm;
use crate::param::Param;

/// Shard size above which weights are split (transformers' default is 5 GB).
pub const DEFAULT_SHARD_BYTES: usize = 5 * 1024 * 1024 * 1024;

pub struct SaveOptions<'a> {
    /// dtype written to disk (`None`: the dtype named in the original config, else f32).
    pub dtype: Option<DType>,
    pub max_shard_bytes: usize,
    /// A tokenizer folder whose files are copied along.
    pub tokenizer_dir: Option<&'a Path>,
    /// The chat template used in training, written to chat_template.jinja and into
    /// tokenizer_config.json.
    pub chat_template: Option<&'a str>,
}

impl Default for SaveOptions<'_> {
    fn default() -> Self {
        SaveOptions {
            dtype: None,
            max_shard_bytes: DEFAULT_SHARD_BYTES,
            tokenizer_dir: None,
            chat_template: None,
        }
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

fn dtype_from_name(name: Option<&str>) -> DType {
    match name {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => DType::F32,
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |e| ModelError::file(path, e.to_string())
}

/// Writes config.json (the original keys, with the ones ferrotune decides updated;
/// `dtype` as torch_dtype) and generation_config.json (bos and eos ids) into `dir`.
pub fn write_config_files(config: &ModelConfig, dir: &Path, dtype: DType) -> Result<()> {
    // config.json: the original keys, with the ones ferrotune decides updated.
    let mut raw = config.raw.clone();
    raw.insert(
        "architectures".into(),
        json!([config.architecture.hf_class()]),
    );
    raw.insert("model_type".into(), json!(config.architecture.model_type()));
    raw.insert("torch_dtype".into(), json!(dtype_name(dtype)));
    raw.remove("dtype");
    write_json(&dir.join("config.json"), &Value::Object(raw))?;

    let mut generation = json!({"_from_model_config": true});
    if let Some(bos) = config.bos_token_id {
        generation["bos_token_id"] = json!(bos);
    }
    match config.eos_token_ids.as_slice() {
        [] => {}
        [one] => generation["eos_token_id"] = json!(one),
        many => generation["eos_token_id"] = json!(many),
    }
    write_json(&dir.join("generation_config.json"), &generation)?;

    Ok(())
}

/// One tensor of a saved model: a parameter as it is, or a linear weight with its LoRA
/// adapter merged in. Its dense values are computed when a writer reaches it, so that a
/// model whose base is held quantized is written one dense tensor at a time, never whole
/// in f32.
pub struct OutputTensor<'a> {
    param: &'a Param,
    adapted: Option<&'a Linear>,
}

impl OutputTensor<'_> {
    /// The Hugging Face name.
    pub fn name(&self) -> &str {
        self.param.name()
    }

    pub fn dims(&self) -> Vec<usize> {
        self.param.dims()
    }

    /// The dense f32 values on the CPU, the adapter merged in.
    pub fn dense(&self) -> Result<Tensor> {
        let t = match self.adapted {
            Some(linear) => linear.merged_weight()?,
            None => self.param.to_dense()?,
        };
        Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    }
}

/// The tensors a saved model holds, in the model's order: its parameters but the
/// adapters', with each adapted weight merged.
pub fn output_tensors(model: &CausalLm) -> Vec<OutputTensor<'_>> {
    let adapted: HashMap<&str, &Linear> = model
        .layers
        .iter()
        .flat_map(|l| {
            let (a, m) = (&l.self_attn, &l.mlp);
            [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ]
        })
        .filter(|lin| lin.lora.is_some())
        .map(|lin| (lin.weight.name(), lin))
        .collect();
    model
        .params()
        .into_iter()
        .filter(|p| !p.name().contains(".lora_"))
        .map(|param| OutputTensor {
            param,
            adapted: adapted.get(param.name()).copied(),
        })
        .collect()
}

/// Saves the model with any LoRA adapters merged, one tensor at a time: a tensor's dense
/// values exist only while it is written.
pub fn save_model(model: &CausalLm, dir: &Path, options: &SaveOptions) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dtype = options
        .dtype
        .unwrap_or_else(|| dtype_from_name(model.config.torch_dtype.as_deref()));

    write_config_files(&model.config, dir, dtype)?;

    // Weights, in shards of at most max_shard_bytes.
    let tensors = output_tensors(model);
    let bytes_of = |t: &OutputTensor| t.dims().iter().product::<usize>() * dtype.size_in_bytes();
    let mut shards: Vec<Vec<&OutputTensor>> = vec![Vec::new()];
    let mut size = 0;
    for t in &tensors {
        let bytes = bytes_of(t);
        if size > 0 && size + bytes > options.max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("a shard").push(t);
    }
    for stale in ["model.safetensors", "model.safetensors.index.json"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    if shards.len() == 1 {
        write_safetensors(&dir.join("model.safetensors"), &shards[0], dtype)?;
    } else {
        let n = shards.len();
        let mut weight_map = serde_json::Map::new();
        let mut total = 0;
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            for t in shard {
                weight_map.insert(t.name().to_string(), json!(file));
                total += bytes_of(t);
            }
            write_safetensors(&dir.join(&file), shard, dtype)?;
        }
        write_json(
            &dir.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
    }

    if let Some(tok) = options.tokenizer_dir {
        for file in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            let from = tok.join(file);
            if from.is_file() && tok.join(file) != dir.join(file) {
                std::fs::copy(&from, dir.join(file)).map_err(io(&from))?;
            }
        }
    }
    if let Some(template) = options.chat_template {
        let path = dir.join("chat_template.jinja");
        std::fs::write(&path, template).map_err(io(&path))?;
        let config_path = dir.join("tokenizer_config.json");
        let mut config = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|_| json!({})),
            Err(_) => json!({}),
        };
        config["chat_template"] = json!(template);
        write_json(&config_path, &config)?;
    }
    Ok(())
}

/// A tensor as the safetensors writer asks for it: shape and size up front, the bytes
/// computed when the writer reaches it. `View::data` cannot fail, so the first failure is
/// kept in `failed` (and zeros written) for [`write_safetensors`] to report.
struct LazyTensor<'a> {
    tensor: &'a OutputTensor<'a>,
    dtype: DType,
    shape: Vec<usize>,
    failed: &'a RefCell<Option<ModelError>>,
}

impl safetensors::View for LazyTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.into()
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let values = self
            .tensor
            .dense()
            .and_then(|t| Ok(t.to_dtype(self.dtype)?.contiguous()?));
        match values {
            Ok(t) => Cow::Owned(safetensors::View::data(&t).into_owned()),
            Err(e) => {
                self.failed.borrow_mut().get_or_insert(e);
                Cow::Owned(vec![0; self.data_len()])
            }
        }
    }
}

/// Writes one safetensors file (through a temporary file renamed into place).
fn write_safetensors(path: &Path, tensors: &[&OutputTensor], dtype: DType) -> Result<()> {
    let failed = RefCell::new(None);
    let views = tensors.iter().map(|&tensor| {
        let view = LazyTensor {
            tensor,
            dtype,
            shape: tensor.dims(),
            failed: &failed,
        };
        (tensor.name().to_string(), view)
    });
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| ModelError::file(path, e.to_string()))?;
    if let Some(e) = failed.into_inner() {
        let _ = std::fs::remove_file(path);
        return Err(ModelError::file(
            path,
            format!("cannot compute a tensor: {e}"),
        ));
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    std::fs::write(
        path,
        serde_json::to_string_pretty(value).expect("json") + "\n",
    )
    .map_err(io(path))
}
