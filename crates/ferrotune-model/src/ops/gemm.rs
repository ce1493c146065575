//! The matrix products of the model: the linear layers (`x W^T`, and in the backward
//! pass `g W` and `g^T x`) and the attention's batched products.
//!
//! f32 CPU products call the gemm crate (the kernels inside candle's matmul) directly,
//! or the system OpenBLAS for 2-D products when the `openblas` feature is on; other
//! devices and dtypes take candle's matmul. Calling gemm directly instead of through
//! `Tensor::matmul` does three things candle does not:
//!
//! * the thread count follows the calling rayon pool (`rayon::current_num_threads`), not
//!   the process-wide RAYON_NUM_THREADS: inside a one-thread training worker
//!   (`ferrotune_train::parallel`) products take gemm's single-thread path;
//! * the output is not zero-filled first (gemm writes every element);
//! * a batched product (attention's (batch, heads) products) on several threads splits
//!   the batch between them, each product single-threaded, instead of splitting each
//!   small product in two.
//!
//! The OpenBLAS option: at the training shapes, on the AVX-512 development machine,
//! candle's gemm crate and OpenBLAS run at the same speed (docs/perf-log/2026-11-26-speed-rounds.md;
//! re-measure with `cargo run --release -p ferrotune-model --features openblas --example
//! gemm_shapes`). OpenBLAS keeps its own thread pool, sized like candle's matmul from
//! `RAYON_NUM_THREADS` (the physical core count when unset), checked before every product.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};

/// Whether `a @ b` takes our CPU path: f32 CPU tensors of the same rank, at least 2.
pub(crate) fn on_cpu_path(a: &Tensor, b: &Tensor) -> bool {
    a.device().is_cpu()
        && b.device().is_cpu()
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && a.rank() >= 2
        && a.rank() == b.rank()
}

/// `a @ b` for `a` (..., m, k) and `b` (..., k, n) with the same leading (batch)
/// dimensions and any layout (transposed views such as `w.t()` need no copy), not
/// tracked for gradients.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if on_cpu_path(a, b) {
        return a.apply_op2_no_bwd(b, &Product);
    }
    a.matmul(b)
}

/// `sum_i s_i * (a_i @ b_i)` for 2-D products of one output shape: on the CPU in f32 the
/// products accumulate into one buffer (gemm's `dst = dst + s * a b`), with no tensor
/// per product and no pass to add them; candle's ops elsewhere. Not tracked for
/// gradients. For a LoRA layer, `x W^T + s (x A^T) B^T` and `g W + (g B) A`.
pub fn sum_of_products(terms: &[(&Tensor, &Tensor, f64)]) -> Result<Tensor> {
    let Some(&(a0, b0, _)) = terms.first() else {
        candle_core::bail!("sum_of_products: no term");
    };
    let cpu = terms
        .iter()
        .all(|(a, b, _)| on_cpu_path(a, b) && a.rank() == 2 && b.device().same_device(a0.device()));
    if !cpu {
        let mut sum = (matmul(a0, b0)? * terms[0].2)?;
        for (a, b, s) in &terms[1..] {
            sum = (sum + (matmul(a, b)? * *s)?)?;
        }
        return Ok(sum);
    }
    let guards: Vec<_> = terms
        .iter()
        .map(|(a, b, _)| (a.storage_and_layout(), b.storage_and_layout()))
        .collect();
    let mut operands = Vec::with_capacity(terms.len());
    for (((sa, la), (sb, lb)), (_, _, s)) in guards.iter().zip(terms) {
        match (&**sa, &**sb) {
            (
                candle_core::Storage::Cpu(CpuStorage::F32(a)),
                candle_core::Storage::Cpu(CpuStorage::F32(b)),
            ) => operands.push((a.as_slice(), *la, b.as_slice(), *lb, *s as f32)),
            _ => candle_core::bail!("sum_of_products: expected f32 CPU tensors"),
        }
    }
    let (out, shape) = direct::sum_2d(&operands)?;
    Tensor::from_vec(out, shape, a0.device())
}

/// A 2-D f32 operand inside a slice: its elements, row stride and column stride.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

/// `dst = s (a @ b)`, or `dst += s (a @ b)` with `accumulate`, for `a` (m, k), `b` (k, n)
/// and `dst` (m, n) lying in `dst` with row stride `dst_row_stride` (a block of columns of
/// a wider matrix): the stored-weight products write each panel's columns in place.
pub(crate) fn product_into(
    dst: &mut [f32],
    dst_row_stride: usize,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    s: f32,
    a: Strided<'_>,
    b: Strided<'_>,
) -> Result<()> {
    if m * n == 0 {
        return Ok(());
    }
    let reach = |o: &Strided<'_>, rows: usize, cols: usize| {
        (rows - 1) * o.row_stride + (cols - 1) * o.col_stride + 1
    };
    if (m - 1) * dst_row_stride + n > dst.len() || n > dst_row_stride {
        candle_core::bail!("product_into: a ({m}, {n}) output does not fit its buffer");
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return Ok(());
    }
    if reach(&a, m, k) > a.data.len() || reach(&b, k, n) > b.data.len() {
        candle_core::bail!("product_into: an operand reaches past its buffer");
    }
    // Safety: checked above that every element the strides reach lies inside the
    // operands and the output; the output is initialised (a slice of f32).
    unsafe {
        direct::product(
            dst.as_mut_ptr(),
            dst_row_stride,
            (m, n, k),
            accumulate,
            s,
            (a.data.as_ptr(), a.row_stride, a.col_stride),
            (b.data.as_ptr(), b.row_stride, b.col_stride),
            direct::parallelism(),
        )
    };
    Ok(())
}

/// `out += sum_i s_i (a_i @ b_i)` for 2-D f32 CPU tensors and a row-major (m, n) `out`:
/// the LoRA terms added to a stored weight's product. Not tracked.
pub(crate) fn add_products(
    out: &mut [f32],
    (m, n): (usize, usize),
    terms: &[(&Tensor, &Tensor, f64)],
) -> Result<()> {
    for &(a, b, s) in terms {
        let (a, b) = (a.contiguous()?, b.contiguous()?);
        let ((am, k), (k2, bn)) = (a.dims2()?, b.dims2()?);
        if am != m || bn != n || k != k2 {
            candle_core::bail!("add_products: ({am}, {k}) @ ({k2}, {bn}) into ({m}, {n})");
        }
        super::custom_op::with_data(&a, "add_products", |a| {
            super::custom_op::with_data(&b, "add_products", |b| {
                let operand = |data, cols| Strided {
                    data,
                    row_stride: cols,
                    col_stride: 1,
                };
                product_into(
                    out,
                    n,
                    (m, n, k),
                    true,
                    s as f32,
                    operand(a, k),
                    operand(b, n),
                )
            })
        })?;
    }
    Ok(())
}

/// `a @ b` on CPU storages inside a custom op's forward pass, with the layouts
/// `matmul` accepts.
pub fn cpu_matmul(
    a: &CpuStorage,
    al: &Layout,
    b: &CpuStorage,
    bl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    if let (CpuStorage::F32(a), CpuStorage::F32(b)) = (a, b) {
        #[cfg(feature = "openblas")]
        if al.dims().len() == 2 && bl.dims().len() == 2 {
            let (out, shape) = blas::sgemm(a, al, b, bl)?;
            return Ok((CpuStorage::F32(out), shape));
        }
        let (out, shape) = direct::sgemm(a, al, b, bl)?;
        return Ok((CpuStorage::F32(out), shape));
    }
    let (m, k) = al.shape().dims2()?;
    let (_, n) = bl.shape().dims2()?;
    Ok((a.matmul(b, (1, m, n, k), al, bl)?, Shape::from((m, n))))
}

/// `a @ b`, forward only.
struct Product;

impl candle_core::CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "f32-product"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_matmul(a, al, b, bl)
    }
}

/// OpenBLAS' build configuration and the kernel it chose for this CPU (e.g.
/// `OpenBLAS 0.3.21 DYNAMIC_ARCH ... Cooperlake`), or None without the feature.
pub fn backend_info() -> Option<String> {
    #[cfg(feature = "openblas")]
    {
        Some(blas::info())
    }
    #[cfg(not(feature = "openblas"))]
    {
        None
    }
}

/// f32 products through the gemm crate.
mod direct {
    use std::mem::MaybeUninit;

    use candle_core::{Layout, Result, Shape};
    use gemm::Parallelism;
    use rayon::prelude::*;

    /// The offset of the element at `index` (row-major over `dims`) of the leading
    /// `dims.len()` dimensions.
    fn offset(mut index: usize, dims: &[usize], stride: &[usize]) -> usize {
        let mut at = 0;
        for (&d, &s) in dims.iter().zip(stride).rev() {
            at += (index % d) * s;
            index /= d;
        }
        at
    }

    /// One past the furthest element a layout reaches (0 for an empty one).
    fn reach(l: &Layout) -> usize {
        if l.dims().contains(&0) {
            return 0;
        }
        l.start_offset()
            + l.dims()
                .iter()
                .zip(l.stride())
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    }

    /// The threads gemm may use for one product called from this thread.
    pub(super) fn parallelism() -> Parallelism {
        match rayon::current_num_threads() {
            0 | 1 => Parallelism::None,
            n => Parallelism::Rayon(n),
        }
    }

    /// `dst = s * (a @ b)`, or `dst += s * (a @ b)` with `accumulate`, for an (m, n)
    /// `dst` with row stride `dst_rs` and operands given as (first element, row stride,
    /// column stride).
    ///
    /// Safety: every element the operands' strides reach lies inside their buffers, and
    /// `dst` holds (m - 1) * dst_rs + n elements (initialised when `accumulate`).
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product(
        dst: *mut f32,
        dst_rs: usize,
        (m, n, k): (usize, usize, usize),
        accumulate: bool,
        s: f32,
        (a, a_rs, a_cs): (*const f32, usize, usize),
        (b, b_rs, b_cs): (*const f32, usize, usize),
        parallelism: Parallelism,
    ) {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            1.0,
            s,
            false,
            false,
            false,
            parallelism,
        )
    }

    /// One 2-D operand: its elements, layout and the coefficient of its product.
    pub(super) type Term<'a> = (&'a [f32], &'a Layout, &'a [f32], &'a Layout, f32);

    /// `sum_i s_i * (a_i @ b_i)` of 2-D products with the same output shape, into a new
    /// row-major buffer: the first product writes it, the others add to it.
    pub(super) fn sum_2d(terms: &[Term<'_>]) -> Result<(Vec<f32>, Shape)> {
        let Some(&(_, al, _, bl, _)) = terms.first() else {
            candle_core::bail!("sum of products: no term");
        };
        let (m, n) = (al.dims()[0], bl.dims()[1]);
        for &(a, al, b, bl, _) in terms {
            let (&[am, k], &[k2, bn]) = (al.dims(), bl.dims()) else {
                candle_core::bail!("sum of products: 2-D operands expected");
            };
            if am != m || bn != n || k != k2 {
                candle_core::bail!("sum of products: ({am}, {k}) @ ({k2}, {bn}) into ({m}, {n})");
            }
            if reach(al) > a.len() || reach(bl) > b.len() {
                candle_core::bail!("sum of products: an operand's layout reaches past its storage");
            }
        }
        // The products with an inner dimension: the first writes the output, the others
        // add to it. Without one the sum is zeros.
        let mut products = terms.iter().filter(|t| t.1.dims()[1] > 0).peekable();
        if m * n == 0 || products.peek().is_none() {
            return Ok((vec![0f32; m * n], Shape::from((m, n))));
        }
        // Not zero-filled: the first product writes every element without reading it.
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        for (i, &(a, al, b, bl, s)) in products.enumerate() {
            let (sa, sb) = (al.stride(), bl.stride());
            // Safety: `reach` checked every operand element lies inside its buffer, and
            // `out` has room for the m x n output, which the first product writes in full
            // before any other reads it.
            unsafe {
                product(
                    out.as_mut_ptr(),
                    n,
                    (m, n, al.dims()[1]),
                    i > 0,
                    s,
                    (a.as_ptr().add(al.start_offset()), sa[0], sa[1]),
                    (b.as_ptr().add(bl.start_offset()), sb[0], sb[1]),
                    parallelism(),
                )
            }
        }
        // Safety: the first product wrote all m x n elements.
        unsafe { out.set_len(m * n) };
        Ok((out, Shape::from((m, n))))
    }

    /// `a (..., m, k) @ b (..., k, n)` into a new row-major buffer.
    pub(super) fn sgemm(
        a: &[f32],
        al: &Layout,
        b: &[f32],
        bl: &Layout,
    ) -> Result<(Vec<f32>, Shape)> {
        let r = al.dims().len();
        if r < 2 || bl.dims().len() != r || al.dims()[..r - 2] != bl.dims()[..r - 2] {
            candle_core::bail!("matmul: shapes {:?} and {:?}", al.dims(), bl.dims());
        }
        let batch_dims = &al.dims()[..r - 2];
        let (m, k) = (al.dims()[r - 2], al.dims()[r - 1]);
        let (k2, n) = (bl.dims()[r - 2], bl.dims()[r - 1]);
        if k != k2 {
            candle_core::bail!("matmul: ({m}, {k}) @ ({k2}, {n})");
        }
        if reach(al) > a.len() || reach(bl) > b.len() {
            candle_core::bail!("matmul: an operand's layout reaches past its storage");
        }
        let batches: usize = batch_dims.iter().product();
        let mut shape = batch_dims.to_vec();
        shape.extend([m, n]);
        let size = m * n;
        if batches * size == 0 || k == 0 {
            return Ok((vec![0f32; batches * size], Shape::from(shape)));
        }
        let (sa, sb) = (al.stride(), bl.stride());
        let a_at = |i: usize| al.start_offset() + offset(i, batch_dims, &sa[..r - 2]);
        let b_at = |i: usize| bl.start_offset() + offset(i, batch_dims, &sb[..r - 2]);
        let batch = |dst: &mut [MaybeUninit<f32>], i: usize, parallelism: Parallelism| {
            // Safety: `reach` checked that every element of both operands lies inside
            // their buffers, and `dst` holds exactly the m x n output, written without
            // being read.
            unsafe {
                product(
                    dst.as_mut_ptr() as *mut f32,
                    n,
                    (m, n, k),
                    false,
                    1.0,
                    (a.as_ptr().add(a_at(i)), sa[r - 2], sa[r - 1]),
                    (b.as_ptr().add(b_at(i)), sb[r - 2], sb[r - 1]),
                    parallelism,
                )
            }
        };
        let mut out: Vec<f32> = Vec::with_capacity(batches * size);
        let dst = &mut out.spare_capacity_mut()[..batches * size];
        let threads = rayon::current_num_threads();
        if threads > 1 && batches >= threads {
            // Whole products per thread.
            dst.par_chunks_mut(size)
                .enumerate()
                .for_each(|(i, d)| batch(d, i, Parallelism::None));
        } else {
            for (i, d) in dst.chunks_mut(size).enumerate() {
                batch(d, i, parallelism());
            }
        }
        // Safety: the products above wrote all of these elements.
        unsafe { out.set_len(batches * size) };
        Ok((out, Shape::from(shape)))
    }
}

#[cfg(feature = "openblas")]
mod blas {
    use std::ffi::{c_char, c_int, CStr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use candle_core::{Layout, Result, Shape};

    const ROW_MAJOR: c_int = 101;
    const NO_TRANS: c_int = 111;
    const TRANS: c_int = 112;

    #[link(name = "openblas")]
    extern "C" {
        fn cblas_sgemm(
            layout: c_int,
            trans_a: c_int,
            trans_b: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: f32,
            a: *const f32,
            lda: c_int,
            b: *const f32,
            ldb: c_int,
            beta: f32,
            c: *mut f32,
            ldc: c_int,
        );
        fn openblas_set_num_threads(n: c_int);
        fn openblas_get_config() -> *const c_char;
        fn openblas_get_corename() -> *const c_char;
    }

    pub(super) fn info() -> String {
        // Safety: both return static NUL-terminated strings.
        let (config, core) = unsafe {
            (
                CStr::from_ptr(openblas_get_config()),
                CStr::from_ptr(openblas_get_corename()),
            )
        };
        format!(
            "{} (kernel {})",
            config.to_string_lossy(),
            core.to_string_lossy()
        )
    }

    /// Sizes OpenBLAS' pool like candle's matmul (RAYON_NUM_THREADS, else the physical
    /// cores), when that changed since the last product.
    fn sync_threads() {
        static SET: AtomicUsize = AtomicUsize::new(0);
        let n = candle_core::utils::get_num_threads().max(1);
        if SET.swap(n, Ordering::Relaxed) != n {
            // Safety: plain FFI call with a positive count.
            unsafe { openblas_set_num_threads(n as c_int) }
        }
    }

    /// How a 2-D operand is read: transposed or not, its leading dimension and its first
    /// element, or None when neither of its strides is 1 (it is copied first).
    fn operand(l: &Layout) -> Option<(bool, usize, usize)> {
        let (rows, cols) = (l.dims()[0], l.dims()[1]);
        let (s0, s1) = (l.stride()[0], l.stride()[1]);
        let at = l.start_offset();
        if s1 == 1 || cols == 1 {
            // Row-major: element (i, j) at i * s0 + j.
            let ld = if rows == 1 { cols.max(1) } else { s0 };
            (ld >= cols.max(1)).then_some((false, ld, at))
        } else if s0 == 1 || rows == 1 {
            // A transposed view: element (i, j) at i + j * s1.
            let ld = if cols == 1 { rows.max(1) } else { s1 };
            (ld >= rows.max(1)).then_some((true, ld, at))
        } else {
            None
        }
    }

    /// `a (m, k) @ b (k, n)` into a new row-major (m, n) buffer.
    pub(super) fn sgemm(
        a: &[f32],
        al: &Layout,
        b: &[f32],
        bl: &Layout,
    ) -> Result<(Vec<f32>, Shape)> {
        let (m, k) = (al.dims()[0], al.dims()[1]);
        let (k2, n) = (bl.dims()[0], bl.dims()[1]);
        if k != k2 {
            candle_core::bail!("sgemm: ({m}, {k}) @ ({k2}, {n})");
        }
        let too_big = [m, n, k].iter().any(|&d| d > c_int::MAX as usize / 2);
        if too_big {
            candle_core::bail!("sgemm: dimensions beyond the BLAS index range");
        }
        let mut out = vec![0f32; m * n];
        if m == 0 || n == 0 || k == 0 {
            return Ok((out, Shape::from((m, n))));
        }
        // The last element an operand read in place reaches must lie inside its buffer.
        let fits = |data: &[f32], (t, ld, at): (bool, usize, usize), rows: usize, cols: usize| {
            let last = if t {
                (cols - 1) * ld + rows
            } else {
                (rows - 1) * ld + cols
            };
            at + last <= data.len()
        };
        // Operands whose strides BLAS cannot express are copied to row-major first.
        let (a_copy, b_copy);
        let (ta, lda, a_ptr) = match operand(al) {
            Some(op) if fits(a, op, m, k) => (op.0, op.1, a[op.2..].as_ptr()),
            Some(_) => candle_core::bail!("sgemm: operand layout reaches past its storage"),
            None => {
                a_copy = gather(a, al);
                (false, k, a_copy.as_ptr())
            }
        };
        let (tb, ldb, b_ptr) = match operand(bl) {
            Some(op) if fits(b, op, k, n) => (op.0, op.1, b[op.2..].as_ptr()),
            Some(_) => candle_core::bail!("sgemm: operand layout reaches past its storage"),
            None => {
                b_copy = gather(b, bl);
                (false, n, b_copy.as_ptr())
            }
        };
        sync_threads();
        let flag = |t: bool| if t { TRANS } else { NO_TRANS };
        // Safety: the pointers cover every element read (checked by `fits` or copied),
        // `out` holds m * n elements with leading dimension n, and all sizes fit c_int.
        unsafe {
            cblas_sgemm(
                ROW_MAJOR,
                flag(ta),
                flag(tb),
                m as c_int,
                n as c_int,
                k as c_int,
                1.0,
                a_ptr,
                lda as c_int,
                b_ptr,
                ldb as c_int,
                0.0,
                out.as_mut_ptr(),
                n as c_int,
            );
        }
        Ok((out, Shape::from((m, n))))
    }

    /// The elements of a strided 2-D operand, row-major.
    fn gather(data: &[f32], l: &Layout) -> Vec<f32> {
        let (rows, cols) = (l.dims()[0], l.dims()[1]);
        let (s0, s1) = (l.stride()[0], l.stride()[1]);
        let at = l.start_offset();
        let mut out = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            out.extend((0..cols).map(|j| data[at + i * s0 + j * s1]));
        }
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    use candle_core::{Device, Tensor};

    use super::{matmul, sum_of_products};

    /// The largest absolute difference of two tensors (the ops' unit tests share it).
    pub(in crate::ops) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Every operand layout the model and the backward passes produce (and a few they do
    /// not) gives candle's own product.
    #[test]
    fn products_match_candle_for_every_layout() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (6, 5), &dev).unwrap();
        let big = Tensor::randn(0f32, 1.0, (9, 11), &dev).unwrap();
        let cube = Tensor::randn(0f32, 1.0, (5, 3, 6), &dev).unwrap();
        let row = Tensor::randn(0f32, 1.0, (1, 5), &dev).unwrap();
        let cases: Vec<(&str, Tensor, Tensor)> = vec![
            ("x W^T", x.clone(), w.t().unwrap()),
            ("g W", w.t().unwrap().t().unwrap(), w.t().unwrap()),
            ("g^T x", x.t().unwrap(), x.clone()),
            // An offset and a leading dimension wider than the columns.
            (
                "narrowed",
                big.narrow(0, 1, 7).unwrap().narrow(1, 2, 5).unwrap(),
                big.narrow(0, 2, 5).unwrap().narrow(1, 3, 4).unwrap(),
            ),
            // Neither stride is 1: copied first.
            (
                "strided",
                x.clone(),
                cube.narrow(2, 1, 1).unwrap().squeeze(2).unwrap(),
            ),
            // A broadcast row (stride 0).
            (
                "broadcast",
                row.broadcast_as((4, 5)).unwrap(),
                w.t().unwrap(),
            ),
            ("single row", row.clone(), w.t().unwrap()),
            ("single column", x.clone(), row.t().unwrap()),
        ];
        for (name, a, b) in cases {
            let want = a.matmul(&b).unwrap();
            let got = matmul(&a, &b).unwrap();
            assert_eq!(got.dims(), want.dims(), "{name}");
            assert!(max_diff(&got, &want) < 1e-5, "{name}");
        }
    }

    /// The attention's batched products, with transposed and narrowed operands, on one
    /// and two threads (whole products per thread, or each product split).
    #[test]
    fn batched_products_match_candle() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 3, 7, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 3, 9, 4), &dev).unwrap();
        let wide = Tensor::randn(0f32, 1.0, (2, 3, 9, 6), &dev).unwrap();
        let cases: Vec<(&str, Tensor, Tensor)> = vec![
            ("q k^T", q.clone(), k.t().unwrap()),
            ("p v", q.matmul(&k.t().unwrap()).unwrap(), k.clone()),
            ("p^T g", k.t().unwrap(), wide.clone()),
            (
                "narrowed",
                q.clone(),
                wide.narrow(3, 1, 4).unwrap().t().unwrap(),
            ),
            (
                "3-D",
                q.flatten_to(1).unwrap(),
                k.flatten_to(1).unwrap().t().unwrap(),
            ),
        ];
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (name, a, b) in &cases {
                let want = a.matmul(b).unwrap();
                let got = pool.install(|| matmul(a, b)).unwrap();
                assert_eq!(got.dims(), want.dims(), "{name}");
                assert!(max_diff(&got, &want) < 1e-5, "{name}, {threads} threads");
            }
        }
    }

    /// LoRA's two-term sums, with transposed operands and coefficients.
    #[test]
    fn sums_of_products_match_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (9, 5), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (6, 5), &dev).unwrap();
        let a = Tensor::randn(0f32, 1.0, (2, 5), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (6, 2), &dev).unwrap();
        let u = x.matmul(&a.t().unwrap()).unwrap();
        let want = (x.matmul(&w.t().unwrap()).unwrap()
            + (u.matmul(&b.t().unwrap()).unwrap() * 0.5).unwrap())
        .unwrap();
        let wt = w.t().unwrap();
        let bt = b.t().unwrap();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool
                .install(|| sum_of_products(&[(&x, &wt, 1.0), (&u, &bt, 0.5)]))
                .unwrap();
            assert!(max_diff(&got, &want) < 1e-5, "{threads} threads");
            let one = pool.install(|| sum_of_products(&[(&u, &bt, 3.0)])).unwrap();
            let want_one = (u.matmul(&bt).unwrap() * 3.0).unwrap();
            assert!(max_diff(&one, &want_one) < 1e-5);
        }
        assert!(
            sum_of_products(&[(&x, &wt, 1.0), (&x, &wt.narrow(1, 0, 5).unwrap(), 1.0)]).is_err()
        );
        assert!(sum_of_products(&[]).is_err());
    }
}
