//! Model folders in Hugging Face layout: config.json plus model.safetensors or shards
//! listed in model.safetensors.index.json, memory-mapped; f32 / bf16 / f16 on disk.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};

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
    // SAFETY: the files are only read; mutating them while mapped is the user's problem,
    // as with every memory-mapped loader.
    let mmaped = unsafe { MmapedSafetensors::multi(files) }
        .map_err(|e| ModelError::file(&files[0], format!("cannot map safetensors: {e}")))?;
    let mut map = WeightMap::new();
    for (name, _) in mmaped.tensors() {
        let t = mmaped
            .load(&name, device)
            .map_err(|e| ModelError::invalid(format!("cannot load tensor {name}: {e}")))?;
        map.insert(name, t);
    }
    Ok(map)
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
    // SAFETY: as in `read_safetensors`.
    let mmaped = unsafe { MmapedSafetensors::multi(&files) }
        .map_err(|e| ModelError::file(&files[0], format!("cannot map safetensors: {e}")))?;
    let mut tensors = WeightMap::new();
    let mut stored = crate::llama::StoredMap::new();
    for (name, _) in mmaped.tensors() {
        let t = mmaped
            .load(&name, &Device::Cpu)
            .map_err(|e| ModelError::invalid(format!("cannot load tensor {name}: {e}")))?;
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
    }
    let (model, _unused) = CausalLm::from_stored_weights(config, tensors, stored, dtype, device)
        .map_err(|e| ModelError::file(dir, e.to_string()))?;
    Ok(model)
}
