//! Model folders in Hugging Face layout: config.json plus model.safetensors or shards
//! listed in model.safetensors.index.json, memory-mapped; f32 / bf16 / f16 on disk.

use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::llama::{CausalLm, WeightMap};

/// The safetensors files of a model folder.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| ModelError::file(&index, format!("cannot read: {e}")))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(&index, format!("malformed JSON: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::file(&index, "has no weight_map"))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.is_file() {
                return Err(ModelError::file(
                    f,
                    "shard listed in model.safetensors.index.json is missing",
                ));
            }
        }
        return Ok(files);
    }
    Err(ModelError::file(
        dir,
        "no model.safetensors or model.safetensors.index.json (is this a Hugging Face model folder?)",
    ))
}

/// Reads every tensor of the given safetensors files onto `device`.
pub fn read_safetensors(files: &[PathBuf], device: &Device) -> Result<WeightMap> {
    let mut map = WeightMap::new();
    each_tensor(files, |name, t| {
        map.insert(name, t.to_device(device)?);
        Ok(())
    })?;
    Ok(map)
}

/// Calls `f` with every tensor of the files in turn (a copy on the CPU, in the file's
/// dtype). Each file is memory-mapped and told to drop a tensor's pages once it is read:
/// mapped pages count in the process's resident memory for as long as they stay mapped,
/// so a load that converts as it goes (`load_model_quantized`) would otherwise carry the
/// whole file besides what it keeps.
pub fn each_tensor(
    files: &[PathBuf],
    mut f: impl FnMut(String, Tensor) -> Result<()>,
) -> Result<()> {
    use memmap2::UncheckedAdvice;
    for file in files {
        let cannot = |what: &str, e: &dyn std::fmt::Display| {
            ModelError::file(file, format!("cannot {what} safetensors: {e}"))
        };
        let handle = std::fs::File::open(file).map_err(|e| cannot("open", &e))?;
        // SAFETY: the file is only read; changing it while it is mapped is the user's
        // problem, as with every memory-mapped loader.
        let mapped = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| cannot("map", &e))?;
        let st = safetensors::SafeTensors::deserialize(&mapped).map_err(|e| cannot("read", &e))?;
        // Largest first, in a fixed order: a converting caller then holds a large source
        // tensor beside few converted ones, and the peak does not depend on the order a
        // hash map happens to give.
        let mut tensors = st.tensors();
        tensors.sort_by(|(a, x), (b, y)| y.data().len().cmp(&x.data().len()).then(a.cmp(b)));
        for (name, view) in tensors {
            let start = view.data().as_ptr() as usize - mapped.as_ptr() as usize;
            let len = view.data().len();
            let t = view
                .load(&Device::Cpu)
                .map_err(|e| ModelError::invalid(format!("cannot load tensor {name}: {e}")))?;
            f(name, t)?;
            // SAFETY: a read-only shared mapping: dropped pages are read again from the
            // file if touched, nothing is lost.
            unsafe { mapped.unchecked_advise_range(UncheckedAdvice::DontNeed, start, len) }
                .map_err(|e| cannot("release pages of", &e))?;
        }
    }
    Ok(())
}

/// Loads a model folder. `dtype` is the compute dtype (f32 for training: master weights
/// stay f32 whatever the file holds).
///
/// A folder standing for a GGUF file (`gguf::gguf_folder`) loads the file's tensors in
/// place, its matrices in their storage types.
pub fn load_model(dir: &Path, dtype: DType, device: &Device) -> Result<CausalLm> {
    if let Some(source) = crate::gguf::GgufSource::of_folder(dir)? {
        return crate::gguf::load_gguf_model(&source, dtype, device);
    }
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let weights = read_safetensors(&weight_files(dir)?, device)?;
    let (model, _unused) = CausalLm::from_weights(config, weights, dtype, device)
        .map_err(|e| ModelError::file(dir, e.to_string()))?;
    Ok(model)
}

/// How a model folder's frozen matrices are held when it loads quantized (LLaMA-Factory's
/// `quantization_bit`): the decoder's linear weights in `matrices` (with llama.cpp's
/// fallback for rows the type's blocks do not divide, [`crate::stored::fit_type`]), the
/// embeddings and an untied head in `embeddings`; norms and biases stay in the compute
/// dtype.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantization {
    pub matrices: candle_core::quantized::GgmlDType,
    pub embeddings: candle_core::quantized::GgmlDType,
}

/// The file in a LoRA adapter's folder recording how its base was held in training
/// (`{"matrices": "q4_k", "embeddings": "bf16"}`), so that inference and export hold the
/// base the same way: the adapter was trained against those weights, and a 7B-class base
/// that trained quantized would not fit in f32 on the same machine.
pub const ADAPTER_BASE_STORAGE: &str = "base_storage.json";

impl Quantization {
    /// 16-bit floats held as they are (`torch_dtype` bfloat16 or float16): a lossless
    /// half of f32's memory.
    pub fn sixteen_bit(dtype: candle_core::quantized::GgmlDType) -> Self {
        Quantization {
            matrices: dtype,
            embeddings: dtype,
        }
    }

    /// Writes [`ADAPTER_BASE_STORAGE`] into `adapter_dir`.
    pub fn record_for_adapter(&self, adapter_dir: &Path) -> Result<()> {
        use crate::stored::storage_name;
        let path = adapter_dir.join(ADAPTER_BASE_STORAGE);
        let value = serde_json::json!({
            "matrices": storage_name(self.matrices),
            "embeddings": storage_name(self.embeddings),
        });
        let text = serde_json::to_string_pretty(&value).expect("json") + "\n";
        std::fs::write(&path, text)
            .map_err(|e| ModelError::file(&path, format!("cannot write: {e}")))
    }

    /// The storage an adapter folder records, if any.
    pub fn recorded_for_adapter(adapter_dir: &Path) -> Result<Option<Self>> {
        let path = adapter_dir.join(ADAPTER_BASE_STORAGE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ModelError::file(&path, format!("cannot read: {e}"))),
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(&path, format!("malformed JSON: {e}")))?;
        let field = |key: &str| {
            let name = value[key].as_str().unwrap_or_default();
            crate::stored::parse_storage(name).ok_or_else(|| {
                let choices: Vec<&str> = crate::stored::STORAGE_TYPES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect();
                ModelError::file(
                    &path,
                    format!(
                        "{key}: {name:?} is not a storage type (one of {})",
                        choices.join(", ")
                    ),
                )
            })
        };
        Ok(Some(Quantization {
            matrices: field("matrices")?,
            embeddings: field("embeddings")?,
        }))
    }
}

/// Loads a model folder with its matrices quantized as `q` says, one tensor at a time
/// from the memory-mapped files, so that the whole model is never held in f32 (nor in the
/// file's dtype). A folder standing for a GGUF file keeps the file's own types.
pub fn load_model_quantized(
    dir: &Path,
    q: Quantization,
    dtype: DType,
    device: &Device,
) -> Result<CausalLm> {
    if crate::gguf::GgufSource::of_folder(dir)?.is_some() {
        return load_model(dir, dtype, device);
    }
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let files = weight_files(dir)?;
    let mut tensors = WeightMap::new();
    let mut stored = crate::llama::StoredMap::new();
    each_tensor(&files, |name, t| {
        let target = if name.ends_with("embed_tokens.weight") || name.ends_with("lm_head.weight") {
            Some(q.embeddings)
        } else if name.ends_with("_proj.weight") && t.rank() == 2 {
            Some(q.matrices)
        } else {
            None
        };
        match target {
            Some(want) => {
                let ty = crate::stored::fit_type(want, t.dim(1)?);
                let w = crate::stored::StoredWeight::quantize(&t, ty)
                    .map_err(|e| ModelError::invalid(format!("cannot quantize {name}: {e}")))?;
                stored.insert(name, w);
            }
            None => {
                tensors.insert(name, t.to_device(device)?);
            }
        }
        Ok(())
    })?;
    let (model, _unused) = CausalLm::from_stored_weights(config, tensors, stored, dtype, device)
        .map_err(|e| ModelError::file(dir, e.to_string()))?;
    Ok(model)
}
