//! A frozen weight kept in its storage type: GGUF blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! the K-quants) or 16-bit floats (F16, BF16), or F32, as llama.cpp lays them out: each
//! row of the (out, in) matrix is `in / block` blocks, rows one after another.
//!
//! Nothing here multiplies: the products (`ops::stored`) ask for a few rows at a time,
//! dequantized into an f32 panel (`dequantize_rows`), and multiply the panel. The bytes
//! are shared (`Arc`), so a narrowed view (`narrow_rows`, the head's vocabulary blocks)
//! or a clone costs nothing. Dequantization is candle's (`GgmlType::to_float`, the
//! reference llama.cpp's formats define), so a stored weight multiplies exactly as its
//! dequantized f32 import does.

use std::sync::Arc;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, DType, Device, Result, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Bytes in an 8-byte aligned buffer: every block type's alignment (at most 4) holds at
/// the start of every row, whose byte length is a whole number of blocks.
struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // Safety: `words` holds at least `bytes.len()` bytes; u64 has no invalid bit pattern.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                words.as_mut_ptr() as *mut u8,
                bytes.len(),
            )
        };
        AlignedBytes {
            words,
            len: bytes.len(),
        }
    }

    fn zeroed(len: usize) -> Self {
        AlignedBytes {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    fn as_slice(&self) -> &[u8] {
        // Safety: the words hold `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // Safety: as `as_slice`; any byte pattern is a valid u64.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.len) }
    }
}

/// A weight (rows, cols) held in a GGUF storage type.
#[derive(Clone)]
pub struct StoredWeight {
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    bytes: Arc<AlignedBytes>,
    /// The first row of this view in `bytes` (a narrowed weight shares its parent's bytes).
    first_row: usize,
    /// Multiply in bf16 with f32 accumulation (`ops::bf16`) instead of f32.
    bf16_products: bool,
}

impl std::fmt::Debug for StoredWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredWeight({}, {}x{})",
            storage_name(self.dtype),
            self.rows,
            self.cols
        )
    }
}

/// The lower-case name of a storage type, as configs and reports spell it (`q4_k`).
pub fn storage_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// The storage types a frozen weight can be held in, by name.
pub const STORAGE_TYPES: [(&str, GgmlDType); 14] = [
    ("f32", GgmlDType::F32),
    ("f16", GgmlDType::F16),
    ("bf16", GgmlDType::BF16),
    ("q4_0", GgmlDType::Q4_0),
    ("q4_1", GgmlDType::Q4_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q5_1", GgmlDType::Q5_1),
    ("q8_0", GgmlDType::Q8_0),
    ("q2_k", GgmlDType::Q2K),
    ("q3_k", GgmlDType::Q3K),
    ("q4_k", GgmlDType::Q4K),
    ("q5_k", GgmlDType::Q5K),
    ("q6_k", GgmlDType::Q6K),
    ("q8_k", GgmlDType::Q8K),
];

/// A storage type by its name (case-insensitive).
pub fn parse_storage(name: &str) -> Option<GgmlDType> {
    let name = name.to_ascii_lowercase();
    STORAGE_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, d)| d)
}

/// Bytes a row of `cols` weights takes in `dtype`, or an error when `cols` is not a whole
/// number of its blocks.
pub fn row_bytes(dtype: GgmlDType, cols: usize) -> Result<usize> {
    let block = dtype.block_size();
    if !cols.is_multiple_of(block) {
        bail!(
            "{} stores rows in blocks of {block} weights; a row of {cols} does not divide",
            storage_name(dtype)
        );
    }
    Ok(cols / block * dtype.type_size())
}

/// The type a row of `cols` weights is stored in when `want` is asked for: `want` when
/// its blocks divide the row; else llama.cpp's fallback (`llama_tensor_get_type`: a
/// K-quant's 256-weight superblocks fall back to a 32-weight type of at least its bits),
/// and f16 when not even 32 divides the row.
pub fn fit_type(want: GgmlDType, cols: usize) -> GgmlDType {
    if cols.is_multiple_of(want.block_size()) {
        return want;
    }
    let fallback = match want {
        GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K | GgmlDType::Q8K => GgmlDType::Q8_0,
        _ => GgmlDType::F16,
    };
    if cols.is_multiple_of(fallback.block_size()) {
        fallback
    } else {
        GgmlDType::F16
    }
}

impl StoredWeight {
    /// A weight from its bytes as a GGUF file holds them.
    pub fn from_bytes(dtype: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        let want = rows * row_bytes(dtype, cols)?;
        if bytes.len() != want {
            bail!(
                "a {rows}x{cols} {} weight takes {want} bytes, got {}",
                storage_name(dtype),
                bytes.len()
            );
        }
        Ok(StoredWeight {
            dtype,
            rows,
            cols,
            bytes: Arc::new(AlignedBytes::new(bytes)),
            first_row: 0,
            bf16_products: false,
        })
    }

    /// The same weight, multiplied in bf16 (f32 accumulation) when `on`.
    pub fn with_bf16_products(mut self, on: bool) -> Self {
        self.bf16_products = on;
        self
    }

    /// Whether the products read this weight in bf16.
    pub fn bf16_products(&self) -> bool {
        self.bf16_products
    }

    /// Quantizes a 2-D tensor into `dtype` (llama.cpp's reference quantization, through
    /// candle), one slab of rows at a time so that no f32 copy of the whole is made
    /// beyond the input.
    pub fn quantize(t: &Tensor, dtype: GgmlDType) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        StoredWeight::from_row_slabs(dtype, rows, cols, |r0, n| {
            // A fresh buffer: candle's quantize reads the storage from its start.
            t.narrow(0, r0, n)?.to_dtype(DType::F32)?.force_contiguous()
        })
    }

    /// A (rows, cols) weight quantized into `dtype` from slabs of rows that `slab(r0, n)`
    /// gives in f32, in order: about 1 MiB at a time, an even number of rows each (so that
    /// values drawn in pairs pair up as in one go), never the whole weight in f32.
    pub fn from_row_slabs(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        mut slab: impl FnMut(usize, usize) -> Result<Tensor>,
    ) -> Result<Self> {
        // Written in place: the weight's bytes are allocated once, never copied whole.
        let row = row_bytes(dtype, cols)?;
        let mut bytes = AlignedBytes::zeroed(rows * row);
        let step = ((1 << 20) / cols.max(1)).max(2) & !1;
        for r0 in (0..rows).step_by(step) {
            let n = step.min(rows - r0);
            let part = QTensor::quantize(&slab(r0, n)?, dtype)?;
            let data = part.data()?;
            if data.len() != n * row {
                bail!(
                    "quantizing rows {r0}..{}: {} bytes, {} expected",
                    r0 + n,
                    data.len(),
                    n * row
                );
            }
            bytes.as_mut_slice()[r0 * row..(r0 + n) * row].copy_from_slice(&data);
        }
        Ok(StoredWeight {
            dtype,
            rows,
            cols,
            bytes: Arc::new(bytes),
            first_row: 0,
            bf16_products: false,
        })
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// (rows, cols).
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes this view's rows take.
    pub fn storage_bytes(&self) -> usize {
        self.rows * self.row_len()
    }

    fn row_len(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Rows `r0 .. r0 + n`, sharing the bytes.
    pub fn narrow_rows(&self, r0: usize, n: usize) -> Result<Self> {
        if r0 + n > self.rows {
            bail!("rows {r0}..{} of a weight with {} rows", r0 + n, self.rows);
        }
        Ok(StoredWeight {
            rows: n,
            first_row: self.first_row + r0,
            ..self.clone()
        })
    }

    /// The same weight with its rows reordered: row `i` of the result is row `order[i]`.
    pub fn reorder_rows(&self, order: &[usize]) -> Result<Self> {
        if order.len() != self.rows || order.iter().any(|&r| r >= self.rows) {
            bail!("a row order for {} rows expected", self.rows);
        }
        let len = self.row_len();
        let all = self.view();
        let mut bytes = Vec::with_capacity(self.storage_bytes());
        for &r in order {
            bytes.extend_from_slice(&all[r * len..(r + 1) * len]);
        }
        StoredWeight::from_bytes(self.dtype, self.rows, self.cols, &bytes)
    }

    /// This view's bytes.
    fn view(&self) -> &[u8] {
        let len = self.row_len();
        &self.bytes.as_slice()[self.first_row * len..(self.first_row + self.rows) * len]
    }

    /// Rows `r0 .. r0 + n` as bf16 bits, row-major, when the weight is stored in bf16
    /// (read in place: no conversion).
    pub fn bf16_rows(&self, r0: usize, n: usize) -> Option<&[u16]> {
        if self.dtype != GgmlDType::BF16 || r0 + n > self.rows {
            return None;
        }
        let len = self.row_len();
        let bytes = &self.view()[r0 * len..(r0 + n) * len];
        // Safety: the buffer is 8-byte aligned and every row starts at an even offset
        // (2 bytes a value); u16 has no invalid bit pattern.
        Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const u16, bytes.len() / 2) })
    }

    /// Rows `r0 .. r0 + n` in f32, row-major, into `out` (n * cols), split over rayon's
    /// threads in groups of rows.
    pub fn dequantize_rows(&self, r0: usize, n: usize, out: &mut [f32]) -> Result<()> {
        if r0 + n > self.rows || out.len() != n * self.cols {
            bail!(
                "dequantize rows {r0}..{} of {} into {} values",
                r0 + n,
                self.rows,
                out.len()
            );
        }
        let len = self.row_len();
        let bytes = &self.view()[r0 * len..(r0 + n) * len];
        let group = (4096 / self.cols.max(1)).max(1);
        let dtype = self.dtype;
        out.par_chunks_mut(group * self.cols)
            .zip(bytes.par_chunks(group * len))
            .for_each(|(o, b)| to_f32(dtype, b, o));
        Ok(())
    }

    /// The given rows (an embedding lookup) in f32, (ids.len(), cols).
    pub fn gather_rows(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let (len, cols) = (self.row_len(), self.cols);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.rows) {
            bail!("row {bad} of a weight with {} rows", self.rows);
        }
        let all = self.view();
        let mut out = vec![0f32; ids.len() * cols];
        out.par_chunks_mut(cols)
            .zip(ids.par_iter())
            .for_each(|(o, &i)| to_f32(self.dtype, &all[i as usize * len..][..len], o));
        Tensor::from_vec(out, (ids.len(), cols), device)
    }

    /// The whole weight in f32, (rows, cols).
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows(0, self.rows, &mut out)?;
        Tensor::from_vec(out, (self.rows, self.cols), device)
    }
}

/// Whole rows' bytes in `dtype` to f32 (`out` holds exactly their values).
fn to_f32(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        GgmlDType::F32 => blocks_to_f32::<f32>(bytes, out),
        GgmlDType::F16 => blocks_to_f32::<f16>(bytes, out),
        GgmlDType::BF16 => blocks_to_f32::<bf16>(bytes, out),
        GgmlDType::Q4_0 => blocks_to_f32::<BlockQ4_0>(bytes, out),
        GgmlDType::Q4_1 => blocks_to_f32::<BlockQ4_1>(bytes, out),
        GgmlDType::Q5_0 => blocks_to_f32::<BlockQ5_0>(bytes, out),
        GgmlDType::Q5_1 => blocks_to_f32::<BlockQ5_1>(bytes, out),
        GgmlDType::Q8_0 => blocks_to_f32::<BlockQ8_0>(bytes, out),
        GgmlDType::Q8_1 => blocks_to_f32::<BlockQ8_1>(bytes, out),
        GgmlDType::Q2K => blocks_to_f32::<BlockQ2K>(bytes, out),
        GgmlDType::Q3K => blocks_to_f32::<BlockQ3K>(bytes, out),
        GgmlDType::Q4K => blocks_to_f32::<BlockQ4K>(bytes, out),
        GgmlDType::Q5K => blocks_to_f32::<BlockQ5K>(bytes, out),
        GgmlDType::Q6K => blocks_to_f32::<BlockQ6K>(bytes, out),
        GgmlDType::Q8K => blocks_to_f32::<BlockQ8K>(bytes, out),
    }
}

/// Blocks of type `T`, given as bytes, to f32.
fn blocks_to_f32<T: GgmlType>(bytes: &[u8], out: &mut [f32]) {
    let size = std::mem::size_of::<T>();
    let count = bytes.len() / size;
    debug_assert_eq!(count * T::BLCK_SIZE, out.len());
    if (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        // Safety: the bytes hold `count` whole blocks at `T`'s alignment, and candle's
        // block types are plain `repr(C)` structs of integers and 16/32-bit floats, for
        // which every bit pattern is a value.
        let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, count) };
        T::to_float(blocks, out);
    } else {
        let mut blocks = vec![T::zeros(); count];
        // Safety: as above; `blocks` has room for `count` blocks.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                blocks.as_mut_ptr() as *mut u8,
                count * size,
            )
        };
        T::to_float(&blocks, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_rows_dequantize_like_candle() {
        let dev = Device::Cpu;
        let t = Tensor::randn(0f32, 1.0, (24, 512), &dev).unwrap();
        for (name, dtype) in STORAGE_TYPES {
            let w = StoredWeight::quantize(&t, dtype).unwrap();
            let want = QTensor::quantize(&t, dtype)
                .unwrap()
                .dequantize(&dev)
                .unwrap();
            let got = w.dequantize(&dev).unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
            let part = w.narrow_rows(5, 7).unwrap().dequantize(&dev).unwrap();
            let want_part = want.narrow(0, 5, 7).unwrap();
            let diff = (part - want_part)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name} narrowed");
            let rows = w.gather_rows(&[3, 0, 3], &dev).unwrap();
            let want_rows = want
                .index_select(&Tensor::new(&[3u32, 0, 3], &dev).unwrap(), 0)
                .unwrap();
            let diff = (rows - want_rows)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name} gathered");
        }
        assert!(StoredWeight::quantize(&t.narrow(1, 0, 100).unwrap(), GgmlDType::Q4_0).is_err());
        assert_eq!(parse_storage("Q4_K"), Some(GgmlDType::Q4K));
    }
}
