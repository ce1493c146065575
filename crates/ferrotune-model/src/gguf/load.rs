//! A GGUF file used in place: training, generation and export read its quantized tensors
//! as they are, with no dequantized copy written or held.
//!
//! Everything else ferrotune reads from a model folder (config.json, the tokenizer, the
//! generation defaults) comes from the file's metadata into a small folder that stands
//! for the file (`gguf_folder`, in the ferrotune cache, made once per file): it holds
//! those files and `gguf_source.json`, which names the GGUF file and its SHA-256. Loading
//! that folder (`weights::load_model`) reads the weights from the file: norms in f32,
//! every matrix in its file type (`StoredWeight`), the q/k rows of Llama-architecture
//! files unpermuted by reordering whole rows of blocks.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use super::hf_name;
use super::read::{permuted_heads, read_header, unpermute, write_tokenizer};
use crate::error::{ModelError, Result};
use crate::llama::{CausalLm, StoredMap, WeightMap};
use crate::save::write_config_files;
use crate::stored::StoredWeight;

/// The file in a GGUF folder that names its GGUF file.
pub const GGUF_SOURCE: &str = "gguf_source.json";

/// The GGUF file a folder stands for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GgufSource {
    /// The file, as an absolute path.
    pub file: PathBuf,
    /// Its SHA-256, hex.
    pub sha256: String,
    pub bytes: u64,
}

impl GgufSource {
    /// The source a GGUF folder names, or None for another folder.
    pub fn of_folder(dir: &Path) -> Result<Option<GgufSource>> {
        GgufSource::read(&dir.join(GGUF_SOURCE))
    }

    /// The source a JSON file records, or None when there is no such file.
    fn read(path: &Path) -> Result<Option<GgufSource>> {
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ModelError::file(path, format!("malformed: {e}")))
    }
}

/// The file an adapter trained on a GGUF base writes beside adapter_config.json: the
/// base's [`GgufSource`] (file and SHA-256), so that chat, serve, eval and export find
/// the same file and notice when it changed.
pub const ADAPTER_BASE: &str = "base_gguf.json";

/// Records the GGUF base `base_dir` stands for (when it stands for one) in an adapter
/// folder.
pub fn record_adapter_base(adapter_dir: &Path, base_dir: &Path) -> Result<()> {
    let Some(source) = GgufSource::of_folder(base_dir)? else {
        return Ok(());
    };
    let path = adapter_dir.join(ADAPTER_BASE);
    let text = serde_json::to_string_pretty(&source).expect("json") + "\n";
    std::fs::write(&path, text).map_err(|e| ModelError::file(&path, format!("cannot write: {e}")))
}

/// The GGUF base an adapter folder records, if any.
pub fn adapter_base(adapter_dir: &Path) -> Result<Option<GgufSource>> {
    GgufSource::read(&adapter_dir.join(ADAPTER_BASE))
}

/// Checks that `base_dir` stands for the GGUF file the adapter recorded (the same
/// SHA-256): an adapter applied to another base would run without a word otherwise.
pub fn check_adapter_base(adapter_dir: &Path, base_dir: &Path) -> Result<()> {
    let Some(recorded) = adapter_base(adapter_dir)? else {
        return Ok(());
    };
    let found = GgufSource::of_folder(base_dir)?;
    match found {
        Some(found) if found.sha256 == recorded.sha256 => Ok(()),
        Some(found) => Err(ModelError::file(
            &found.file,
            format!(
                "the adapter in {} was trained on {} (SHA-256 {}), and this file's SHA-256 is {}: \
                 give the base it was trained on with --model",
                adapter_dir.display(),
                recorded.file.display(),
                recorded.sha256,
                found.sha256
            ),
        )),
        None => Err(ModelError::file(
            base_dir,
            format!(
                "the adapter in {} was trained on the GGUF file {} (SHA-256 {}), not on this folder: \
                 give that file with --model",
                adapter_dir.display(),
                recorded.file.display(),
                recorded.sha256
            ),
        )),
    }
}

/// Whether `path` names a GGUF file: a file ending in `.gguf`.
pub fn is_gguf_file(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The GGUF file a model folder holds when it holds one and no config.json (a folder of
/// llama.cpp files), or an error when it holds several.
pub fn gguf_in_folder(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.is_dir() || dir.join("config.json").is_file() {
        return Ok(None);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::file(dir, e.to_string()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_gguf_file(p))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(ModelError::file(
            dir,
            format!(
                "holds several GGUF files ({}); name one as model_name_or_path",
                found
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The folder that stands for the GGUF file `file`, made on first use under `cache`
/// (named by the file's stem and a hash of its path, size and modification time, so
/// that a changed file gets a new folder).
pub fn gguf_folder(file: &Path, cache: &Path) -> Result<PathBuf> {
    let file = file
        .canonicalize()
        .map_err(|e| ModelError::file(file, format!("cannot open: {e}")))?;
    let meta = std::fs::metadata(&file).map_err(|e| ModelError::file(&file, e.to_string()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = Sha256::digest(format!("{}\n{}\n{modified}", file.display(), meta.len()));
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let dir = cache.join(format!("{stem}-{}", &hex(&key)[..16]));
    if dir.join(GGUF_SOURCE).is_file() {
        return Ok(dir);
    }
    // Made in a scratch folder and renamed, so that an interrupted run leaves no half
    // folder behind.
    let scratch = cache.join(format!(
        ".{stem}-{}-{}",
        &hex(&key)[..16],
        std::process::id()
    ));
    let io = |p: &Path, e: std::io::Error| ModelError::file(p, e.to_string());
    std::fs::create_dir_all(&scratch).map_err(|e| io(&scratch, e))?;
    let header = read_header(&file)?;
    write_config_files(&header.config, &scratch, DType::F32)?;
    write_tokenizer(&header.content, &header.tokens, &scratch)
        .map_err(|e| ModelError::file(&file, e.to_string()))?;
    let source = GgufSource {
        sha256: sha256_file(&file)?,
        bytes: meta.len(),
        file,
    };
    let text = serde_json::to_string_pretty(&source).expect("json") + "\n";
    std::fs::write(scratch.join(GGUF_SOURCE), text).map_err(|e| io(&scratch, e))?;
    if std::fs::rename(&scratch, &dir).is_err() {
        // Another process made it first.
        let _ = std::fs::remove_dir_all(&scratch);
        if !dir.join(GGUF_SOURCE).is_file() {
            return Err(ModelError::file(&dir, "cannot create the GGUF folder"));
        }
    }
    Ok(dir)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| ModelError::file(path, format!("cannot open: {e}")))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| ModelError::file(path, e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Loads the model of a GGUF file with its matrices in their file types (see the module
/// documentation); `dtype` is the dtype of the tensors that are not stored (norms).
pub fn load_gguf_model(source: &GgufSource, dtype: DType, device: &Device) -> Result<CausalLm> {
    let path = &source.file;
    let mut header = read_header(path)?;
    let fail = |p: String| ModelError::file(path, p);
    let mut tensors = WeightMap::new();
    let mut stored = StoredMap::new();
    let mut names: Vec<String> = header.content.tensor_infos.keys().cloned().collect();
    names.sort();
    for name in names {
        let Some(hf) = hf_name(&name) else {
            if name == "rope_freqs.weight" {
                continue;
            }
            return Err(fail(format!("unexpected tensor {name}")));
        };
        let q = header
            .content
            .tensor(&mut header.file, &name, &Device::Cpu)
            .map_err(|e| fail(format!("cannot read tensor {name}: {e}")))?;
        if q.shape().rank() != 2 || q.dtype() == GgmlDType::F32 {
            let t = q
                .dequantize(&Device::Cpu)
                .map_err(|e| fail(format!("cannot read tensor {name}: {e}")))?;
            let t = match permuted(&header, &name).filter(|_| t.rank() == 2) {
                Some(heads) => unpermute(&t, heads)?,
                None => t,
            };
            tensors.insert(hf, t.to_device(device)?);
            continue;
        }
        let (rows, cols) = q.shape().dims2()?;
        let bytes = q.data()?;
        let mut w = StoredWeight::from_bytes(q.dtype(), rows, cols, &bytes)
            .map_err(|e| fail(format!("tensor {name}: {e}")))?;
        drop(bytes);
        if let Some(heads) = permuted(&header, &name) {
            w = w.reorder_rows(&unpermuted_order(rows, heads)?)?;
        }
        stored.insert(hf, w);
    }
    let (model, unused) =
        CausalLm::from_stored_weights(header.config.clone(), tensors, stored, dtype, device)
            .map_err(|e| fail(format!("weights do not fit the config: {e}")))?;
    if !unused.is_empty() {
        return Err(fail(format!("tensors the model does not use: {unused:?}")));
    }
    Ok(model)
}

/// The heads whose rows llama.cpp permuted in tensor `name` of this file, if any.
fn permuted(header: &super::read::Header, name: &str) -> Option<usize> {
    permuted_heads(&header.arch, name, header.heads, header.kv_heads)
}

/// The order of rows that undoes llama.cpp's permutation of `rows` rows over `heads`
/// heads (row `i` of the result is row `order[i]` of the file), found by unpermuting the
/// row numbers themselves.
fn unpermuted_order(rows: usize, heads: usize) -> Result<Vec<usize>> {
    let index: Vec<f32> = (0..rows).map(|r| r as f32).collect();
    let index = Tensor::from_vec(index, (rows, 1), &Device::Cpu)?;
    let order = unpermute(&index, heads)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(order.into_iter().map(|r| r as usize).collect())
}

/// The model card of a GGUF file for `model info`: each storage type and how many
/// tensors and bytes it holds.
pub fn storage_summary(path: &Path) -> Result<Vec<(String, usize, u64)>> {
    let header = read_header(path)?;
    let mut by_type: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for info in header.content.tensor_infos.values() {
        let n = info.shape.elem_count();
        let bytes = (n / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()) as u64;
        let e = by_type
            .entry(crate::stored::storage_name(info.ggml_dtype).to_string())
            .or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    Ok(by_type.into_iter().map(|(k, (n, b))| (k, n, b)).collect())
}

/// The ferrotune cache folder for GGUF folders: `gguf` beside `$FERROTUNE_CACHE_DIR`
/// when that is set, else `$XDG_CACHE_HOME/ferrotune/gguf`, else `~/.cache/ferrotune/gguf`.
pub fn gguf_cache() -> Option<PathBuf> {
    crate::hub::ferrotune_cache("gguf")
}
