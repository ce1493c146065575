//! A GGUF file written one tensor at a time: the header (metadata and every tensor's
//! name, shape, type and offset) is known from shapes and types alone, so each tensor's
//! values are computed, quantized and written in turn and never held together. The
//! layout is candle's and llama.cpp's: little-endian, data aligned to 32 bytes.

use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::Value as G;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;

use crate::error::{ModelError, Result};

const MAGIC: u32 = 0x4655_4747;
const VERSION: u32 = 3;
const ALIGNMENT: usize = 32;

/// One tensor to write: `values` gives its dense values (f32, shape `dims`) when the
/// writer reaches it.
pub struct GgufTensor<'a> {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
    pub values: Box<dyn Fn() -> Result<Tensor> + 'a>,
}

impl GgufTensor<'_> {
    fn bytes(&self) -> usize {
        let elems: usize = self.dims.iter().product();
        elems / self.dtype.block_size() * self.dtype.type_size()
    }
}

/// The GGUF specification's code for a metadata value's type.
fn value_code(v: &G) -> u32 {
    match v {
        G::U8(_) => 0,
        G::I8(_) => 1,
        G::U16(_) => 2,
        G::I16(_) => 3,
        G::U32(_) => 4,
        G::I32(_) => 5,
        G::F32(_) => 6,
        G::Bool(_) => 7,
        G::String(_) => 8,
        G::Array(_) => 9,
        G::U64(_) => 10,
        G::I64(_) => 11,
        G::F64(_) => 12,
    }
}

/// ggml's code for a tensor type.
fn type_code(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn padding(len: usize) -> usize {
    len.next_multiple_of(ALIGNMENT) - len
}

fn string(w: &mut Vec<u8>, s: &str) {
    w.extend((s.len() as u64).to_le_bytes());
    w.extend(s.as_bytes());
}

fn value(w: &mut Vec<u8>, v: &G) -> Result<()> {
    match v {
        G::U8(x) => w.push(*x),
        G::I8(x) => w.extend(x.to_le_bytes()),
        G::U16(x) => w.extend(x.to_le_bytes()),
        G::I16(x) => w.extend(x.to_le_bytes()),
        G::U32(x) => w.extend(x.to_le_bytes()),
        G::I32(x) => w.extend(x.to_le_bytes()),
        G::U64(x) => w.extend(x.to_le_bytes()),
        G::I64(x) => w.extend(x.to_le_bytes()),
        G::F32(x) => w.extend(x.to_le_bytes()),
        G::F64(x) => w.extend(x.to_le_bytes()),
        G::Bool(x) => w.push(u8::from(*x)),
        G::String(x) => string(w, x),
        G::Array(items) => {
            let ty = items.first().map_or(value_code(&G::U32(0)), value_code);
            if items.iter().any(|i| value_code(i) != ty) {
                return Err(ModelError::invalid("a GGUF array mixes value types"));
            }
            w.extend(ty.to_le_bytes());
            w.extend((items.len() as u64).to_le_bytes());
            for item in items {
                value(w, item)?;
            }
        }
    }
    Ok(())
}

/// Writes `path` (as `path.partial`, renamed into place once whole).
pub fn write_gguf_file(path: &Path, meta: &[(String, G)], tensors: &[GgufTensor]) -> Result<()> {
    let err = |e: std::io::Error| ModelError::file(path, format!("cannot write GGUF: {e}"));
    let mut head = Vec::new();
    head.extend(MAGIC.to_le_bytes());
    head.extend(VERSION.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((meta.len() as u64).to_le_bytes());
    for (key, v) in meta {
        string(&mut head, key);
        head.extend(value_code(v).to_le_bytes());
        value(&mut head, v)?;
    }
    let mut offset = 0;
    for t in tensors {
        string(&mut head, &t.name);
        head.extend((t.dims.len() as u32).to_le_bytes());
        // ggml lists dimensions innermost first.
        for &d in t.dims.iter().rev() {
            head.extend((d as u64).to_le_bytes());
        }
        head.extend(type_code(t.dtype).to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        offset += t.bytes() + padding(t.bytes());
    }
    head.resize(head.len() + padding(head.len()), 0);

    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let written = write_body(&partial, &head, tensors);
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    std::fs::rename(&partial, path).map_err(err)
}

/// The header, then each tensor's values computed, quantized and written in turn.
fn write_body(path: &Path, head: &[u8], tensors: &[GgufTensor]) -> Result<()> {
    let err = |e: std::io::Error| ModelError::file(path, format!("cannot write GGUF: {e}"));
    let file = std::fs::File::create(path).map_err(err)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(head).map_err(err)?;
    for t in tensors {
        let dense = (t.values)()?;
        let q = QTensor::quantize(&dense, t.dtype)?;
        let data = q.data()?;
        if data.len() != t.bytes() {
            return Err(ModelError::invalid(format!(
                "GGUF tensor {}: {} bytes, {} expected",
                t.name,
                data.len(),
                t.bytes()
            )));
        }
        out.write_all(&data).map_err(err)?;
        out.write_all(&vec![0; padding(data.len())]).map_err(err)?;
    }
    out.flush().map_err(err)
}
