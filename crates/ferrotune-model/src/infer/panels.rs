//! Inference weights in panels, and their products with a few input rows.
//!
//! A panel is [`PANEL`] output rows of a weight stored input column by input column:
//! weight `(r, k)` lives at `[r / PANEL][k][r % PANEL]` (bf16 and q8_0 reorder the rows
//! within a column, or a pair of columns, so that widening them needs no shuffle:
//! [`bf16_slot`], [`q8_at`]). A decoding step multiplies each
//! weight by 1 to 8 input rows (the batch); with a panel's rows side by side, one load of
//! 32 weights feeds an FMA for every input row (its value at `k` broadcast), and the sums
//! land in the output's own lanes, with no horizontal sums. Against row-major weights (a
//! dot product per weight row, tiles of 4 input rows), batched decoding is much faster
//! and batch 1 unchanged (docs/perf-log/2026-11-26-speed-rounds.md, "Third round: weights in panels").
//!
//! The tile body is written once over plain arrays and compiled per instruction set
//! (AVX-512, AVX2 + FMA, portable), chosen once at run time; the compiler keeps the
//! arrays in vector registers (as fast as hand-written intrinsics, measured).

use rayon::prelude::*;

use super::{bf16_to_f32, f16_to_f32, q8dot, BLOCK};
use element::Element;
pub use element::Nibbles;

mod element;

/// Output rows a panel holds: two AVX-512 registers.
pub const PANEL: usize = 32;

/// A weight in panels, padded with zero rows to whole panels.
pub enum Panels {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    /// ggml's Q8_0 blocks (32 weights along the input, one f16 scale), quants in panels
    /// and each panel row's block scales as `[panel][block][row]`.
    Q8 {
        quants: Vec<i8>,
        scales: Vec<u16>,
    },
    /// ggml's Q4_1 blocks (32 weights along the input as 4-bit quants `q`, one f16 scale
    /// `d` and one f16 minimum `m`: the weight is `q d + m`); quants two columns a byte
    /// ([`q4_at`]), scales and minimums as q8_0's scales.
    Q4 {
        quants: Vec<Nibbles>,
        scales: Vec<u16>,
        mins: Vec<u16>,
    },
}

/// Reorders a row-major `(rows, cols)` array into panels, zero rows padding the last;
/// panel row `l`'s value at column `k` goes to `at(k, l)` within its panel.
fn into_panels<T: Copy + Default>(
    w: &[T],
    rows: usize,
    cols: usize,
    at: fn(usize, usize) -> usize,
) -> Vec<T> {
    let panels = rows.div_ceil(PANEL);
    let mut out = vec![T::default(); panels * cols * PANEL];
    for (p, panel) in out.chunks_exact_mut(cols * PANEL).enumerate() {
        for l in 0..PANEL.min(rows - p * PANEL) {
            let row = &w[(p * PANEL + l) * cols..][..cols];
            for (k, &v) in row.iter().enumerate() {
                panel[at(k, l)] = v;
            }
        }
    }
    out
}

/// Where weight `(l, k)` of a panel lies in it: column by column, rows in order.
fn in_order(k: usize, l: usize) -> usize {
    k * PANEL + l
}

/// Where weight `(l, k)` of a bf16 panel lies: column by column, rows in [`bf16_slot`]s.
fn bf16_at(k: usize, l: usize) -> usize {
    k * PANEL + bf16_slot(l)
}

/// Where weight `(l, k)` of a q8_0 panel lies: in column pairs, 32-bit word `j` of a pair
/// holding rows `j` and `j + 16`, each row's two quants side by side (bytes: row `j` at
/// `k` and `k + 1`, then row `j + 16`). Widening takes each byte of the words with two
/// shifts, no shuffle, the rows coming out in order; AVX-512 VNNI's `vpdpwssd`, which
/// multiplies a pair of 16-bit weights by a pair of inputs in each 32-bit lane, takes
/// the pairs as they lie (`q8dot`).
fn q8_at(k: usize, l: usize) -> usize {
    (k & !1) * PANEL + 4 * (l % (PANEL / 2)) + 2 * (l / (PANEL / 2)) + (k & 1)
}

/// Where weight `(l, k)` of a q4_1 panel lies: in column pairs of one byte a row, rows in
/// order, column `k` (even) in the low nibble. Widening a pair is a zero extension of the
/// 32 bytes and two plain integer instructions.
fn q4_at(k: usize, l: usize) -> usize {
    (k / 2) * PANEL + l
}

/// The slot of panel row `l` in a bf16 column: rows `j` and `j + PANEL / 2` share the
/// 32-bit word `j`, row `j` in its low half. Widening is then a shift (low halves) and a
/// mask (high halves) of whole words, with no shuffle: one load of a column's 64 bytes
/// and two plain integer instructions give both registers of f32 weights, where
/// zero-extending 16-bit values into 32-bit lanes takes a shuffle a register.
fn bf16_slot(l: usize) -> usize {
    let (word, high) = (l % (PANEL / 2), l >= PANEL / 2);
    // The low half of a word is its first u16 on a little-endian machine.
    2 * word + usize::from(high == cfg!(target_endian = "little"))
}

impl Panels {
    pub fn f32(w: &[f32], rows: usize, cols: usize) -> Self {
        Panels::F32(into_panels(w, rows, cols, in_order))
    }

    pub fn bf16(w: &[f32], rows: usize, cols: usize) -> Self {
        let bits: Vec<u16> = w
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect();
        Panels::Bf16(into_panels(&bits, rows, cols, bf16_at))
    }

    /// ggml's Q8_0 rounding (`cols` a multiple of [`BLOCK`]), then reordered.
    pub fn q8(w: &[f32], rows: usize, cols: usize) -> Self {
        let (quants, scales) = super::quantize_q8(w);
        Panels::Q8 {
            quants: into_panels(&quants, rows, cols, q8_at),
            scales: into_panels(&scales, rows, cols / BLOCK, in_order),
        }
    }

    /// ggml's Q4_1 rounding (`cols` a multiple of [`BLOCK`]), then reordered.
    pub fn q4(w: &[f32], rows: usize, cols: usize) -> Self {
        let (quants, scales, mins) = super::quantize_q4_1(w);
        // Two columns a byte: quants pair up along each row before the reorder.
        let pairs: Vec<Nibbles> = quants
            .chunks_exact(2)
            .map(|q| Nibbles(q[0] | (q[1] << 4)))
            .collect();
        Panels::Q4 {
            quants: into_panels(&pairs, rows, cols / 2, |k, l| q4_at(2 * k, l)),
            scales: into_panels(&scales, rows, cols / BLOCK, in_order),
            mins: into_panels(&mins, rows, cols / BLOCK, in_order),
        }
    }

    /// Bytes of a `(rows, cols)` weight (the padding rows of the last panel left out).
    pub fn bytes(&self, rows: usize, cols: usize) -> usize {
        let n = rows * cols;
        match self {
            Panels::F32(_) => 4 * n,
            Panels::Bf16(_) => 2 * n,
            Panels::Q8 { .. } => n + 2 * (n / BLOCK),
            Panels::Q4 { .. } => n / 2 + 4 * (n / BLOCK),
        }
    }

    /// Weight `(r, k)` as f32.
    pub fn get(&self, r: usize, k: usize, cols: usize) -> f32 {
        let (p, l) = (r / PANEL, r % PANEL);
        let panel = p * cols * PANEL;
        match self {
            Panels::F32(v) => v[panel + in_order(k, l)],
            Panels::Bf16(v) => bf16_to_f32(v[panel + bf16_at(k, l)]),
            Panels::Q8 { quants, scales } => {
                let scale = scales[(p * (cols / BLOCK) + k / BLOCK) * PANEL + l];
                quants[panel + q8_at(k, l)] as f32 * f16_to_f32(scale)
            }
            Panels::Q4 {
                quants,
                scales,
                mins,
            } => {
                let at = (p * (cols / BLOCK) + k / BLOCK) * PANEL + l;
                let byte = quants[panel / 2 + q4_at(k, l)].0;
                let q = if k.is_multiple_of(2) {
                    byte & 15
                } else {
                    byte >> 4
                };
                q as f32 * f16_to_f32(scales[at]) + f16_to_f32(mins[at])
            }
        }
    }

    /// `y (m, rows) = x (m, cols) W^T`; the caller checks the lengths.
    pub fn matmul(&self, rows: usize, cols: usize, x: &[f32], m: usize, y: &mut [f32]) {
        self.matmul_on(Isa::detected(), rows, cols, x, m, y);
    }

    fn matmul_on(&self, isa: Isa, rows: usize, cols: usize, x: &[f32], m: usize, y: &mut [f32]) {
        assert!(x.len() == m * cols && y.len() == m * rows);
        let (scales, mins): (&[u16], &[u16]) = (&[], &[]);
        match self {
            Panels::F32(data) => product(
                isa,
                &Weights {
                    data,
                    scales,
                    mins,
                    cols,
                },
                rows,
                x,
                m,
                y,
            ),
            Panels::Bf16(data) => product(
                isa,
                &Weights {
                    data,
                    scales,
                    mins,
                    cols,
                },
                rows,
                x,
                m,
                y,
            ),
            Panels::Q4 {
                quants,
                scales,
                mins,
            } => {
                let w = Weights {
                    data: quants,
                    scales,
                    mins,
                    cols,
                };
                product(isa, &w, rows, x, m, y)
            }
            Panels::Q8 { quants, scales } => {
                #[cfg(target_arch = "x86_64")]
                if m <= 2 && isa == Isa::Avx512 && q8dot::available() {
                    let xq: Vec<q8dot::Int16Row> =
                        x.chunks_exact(cols).map(q8dot::Int16Row::new).collect();
                    let panels = quants.len() / (cols * PANEL);
                    by_panels(panels, rows, m, y, Split::LongRuns, |p, out| {
                        for (row, out) in xq.iter().zip(out.chunks_exact_mut(PANEL)) {
                            // SAFETY: VNNI was detected, p < panels, the row has `cols`
                            // columns.
                            unsafe { q8dot::panel_row(quants, scales, cols, p, row, out) }
                        }
                    });
                    return;
                }
                let w = Weights {
                    data: quants,
                    scales,
                    mins,
                    cols,
                };
                product(isa, &w, rows, x, m, y)
            }
        }
    }
}

/// A weight's panels as the tile body reads them. The reads skip bounds checks: the tile
/// stays inside panel `p` and column `k < cols`, which [`product`] checks.
struct Weights<'a, E> {
    data: &'a [E],
    /// f16 bits, `[panel][block][row]`; empty where unscaled.
    scales: &'a [u16],
    /// f16 bits laid out as `scales`; empty but for q4_1.
    mins: &'a [u16],
    cols: usize,
}

impl<E: Element> Weights<'_, E> {
    fn panels(&self) -> usize {
        self.data.len() * E::PER_ITEM / (self.cols * PANEL)
    }

    /// Columns `k` and `k + 1` (`k` even) of panel `p`, widened to f32 (unscaled).
    ///
    /// # Safety
    /// `p < panels()` and `k + 1 < cols`.
    #[inline(always)]
    unsafe fn column_pair(&self, p: usize, k: usize) -> [[f32; PANEL]; 2] {
        E::widen_pair(self.data, (p * self.cols + k) * PANEL / E::PER_ITEM)
    }

    /// Column `k` of panel `p`, widened to f32 (unscaled; not for q8_0's pairs).
    ///
    /// # Safety
    /// `p < panels()` and `k < cols`.
    #[inline(always)]
    unsafe fn column(&self, p: usize, k: usize) -> [f32; PANEL] {
        E::widen_column(self.data, (p * self.cols + k) * PANEL)
    }

    /// Asks for the quants [`PREFETCH_BYTES`] past block `b` of panel `p`, and the scales
    /// two blocks on. At one or two input rows a q8_0 tile spends more instructions per
    /// byte than f32's, so the core's own look-ahead covers fewer bytes of the stream,
    /// and each panel's few scale lines are too short a stream for the hardware
    /// prefetcher: SmolLM2's products stream faster with these hints than without
    /// (docs/perf-log/2026-11-26-speed-rounds.md, "Fourth round: the machine's two states").
    #[inline(always)]
    fn prefetch_ahead(&self, p: usize, b: usize) {
        let item = std::mem::size_of::<E>();
        let quants = (p * self.cols + b * BLOCK) * PANEL * item / E::PER_ITEM;
        let scales = (p * (self.cols / BLOCK) + b + 2) * PANEL;
        for line in (0..BLOCK * PANEL * item / E::PER_ITEM).step_by(64) {
            prefetch(
                self.data
                    .as_ptr()
                    .cast::<u8>()
                    .wrapping_add(quants + PREFETCH_BYTES + line),
            );
        }
        prefetch(self.scales.as_ptr().wrapping_add(scales).cast::<u8>());
        if E::OFFSET {
            prefetch(self.mins.as_ptr().wrapping_add(scales).cast::<u8>());
        }
    }

    /// The scales of block `b` of panel `p`.
    ///
    /// # Safety
    /// `E::SCALED`, `p < panels()` and `b < cols / BLOCK`.
    #[inline(always)]
    unsafe fn scales(&self, p: usize, b: usize) -> [f32; PANEL] {
        Self::block_values(self.scales, self.cols, p, b)
    }

    /// The minimums of block `b` of panel `p`.
    ///
    /// # Safety
    /// `E::OFFSET`, `p < panels()` and `b < cols / BLOCK`.
    #[inline(always)]
    unsafe fn mins(&self, p: usize, b: usize) -> [f32; PANEL] {
        Self::block_values(self.mins, self.cols, p, b)
    }

    /// A block's f16 values of every panel row, widened.
    ///
    /// # Safety
    /// `p` and `b` inside `values`, laid out `[panel][block][row]`.
    #[inline(always)]
    unsafe fn block_values(values: &[u16], cols: usize, p: usize, b: usize) -> [f32; PANEL] {
        let bits: [u16; PANEL] = read(values, (p * (cols / BLOCK) + b) * PANEL);
        let mut out = [0f32; PANEL];
        for l in 0..PANEL {
            out[l] = f16_widened(bits[l]);
        }
        out
    }
}

/// How far ahead of a q8_0 tile its quants are asked for (4 KiB; shorter and longer
/// distances measured slower, docs/perf-log/2026-11-26-speed-rounds.md).
const PREFETCH_BYTES: usize = 4096;

/// A hint to bring the cache line at `at` in; it never faults, so `at` may lie past the
/// data (the last panels' look-ahead).
#[inline(always)]
pub(super) fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and faults on no address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// `PANEL` values of `T` at `at` (an unaligned read of an array).
///
/// # Safety
/// `at + PANEL <= v.len()`.
#[inline(always)]
unsafe fn read<T: Copy>(v: &[T], at: usize) -> [T; PANEL] {
    debug_assert!(at + PANEL <= v.len());
    std::ptr::read_unaligned(v.as_ptr().add(at) as *const [T; PANEL])
}

/// A finite f16 as f32 in plain arithmetic, so that the compiler vectorises it: exponent
/// and mantissa shifted into place read as an f32 whose exponent is short by the biases'
/// difference (127 - 15), which the multiply restores; subnormals come out right too.
#[inline(always)]
fn f16_widened(bits: u16) -> f32 {
    let magnitude = f32::from_bits(((bits & 0x7fff) as u32) << 13) * f32::from_bits(0x7780_0000);
    if bits & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// The instruction set the tiles are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    fn detected() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                    return Isa::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
    }

    /// Input rows a tile holds: two accumulators a row, in 32 AVX-512 registers (16 for
    /// 8 rows, the rest for weights); AVX2's 16 registers take 4 a row.
    fn tile_rows(self) -> usize {
        match self {
            Isa::Avx512 => 8,
            Isa::Avx2 | Isa::Portable => 2,
        }
    }
}

#[inline(always)]
fn fma<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    // Without FMA hardware `mul_add` is a library call.
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Panel `p` against the `MT` input rows of `x` (row `t` at `t * cols`): the `MT x PANEL`
/// outputs.
///
/// # Safety
/// `p < w.panels()` and `x.len() >= MT * w.cols`.
#[inline(always)]
unsafe fn tile<E: Element, const MT: usize, const FUSED: bool>(
    w: &Weights<'_, E>,
    p: usize,
    x: &[f32],
) -> [[f32; PANEL]; MT] {
    let cols = w.cols;
    let xv = |t: usize, k: usize| *x.get_unchecked(t * cols + k);
    let mut acc = [[0f32; PANEL]; MT];
    if E::SPLIT_SUMS && MT == 1 {
        // One row: two registers of sums, each multiply-add waiting four cycles (Zen 4)
        // for the last one into the same register, which bounds bf16 once its widening
        // is two plain instructions: even and odd columns sum apart, two chains a
        // register (faster in cache on one thread, docs/perf-log/2026-11-26-speed-rounds.md). f32 streamed
        // slower so (decoding SmolLM2), and keeps one chain.
        let mut odd = [0f32; PANEL];
        for k in (0..cols).step_by(2) {
            let wk = w.column(p, k);
            for l in 0..PANEL {
                acc[0][l] = fma::<FUSED>(wk[l], xv(0, k), acc[0][l]);
            }
            if k + 1 < cols {
                let wk = w.column(p, k + 1);
                for l in 0..PANEL {
                    odd[l] = fma::<FUSED>(wk[l], xv(0, k + 1), odd[l]);
                }
            }
        }
        for l in 0..PANEL {
            acc[0][l] += odd[l];
        }
    } else if !E::SCALED {
        for k in 0..cols {
            let wk = w.column(p, k);
            for (t, a) in acc.iter_mut().enumerate() {
                let v = xv(t, k);
                for l in 0..PANEL {
                    a[l] = fma::<FUSED>(wk[l], v, a[l]);
                }
            }
        }
    } else if MT <= 2 {
        // Few rows: each block's sums unscaled, then scaled once (a multiply per 32
        // columns instead of one per column; the widening bounds this loop).
        for b in 0..cols / BLOCK {
            w.prefetch_ahead(p, b);
            let mut part = [[0f32; PANEL]; MT];
            for k in (b * BLOCK..(b + 1) * BLOCK).step_by(2) {
                let pair = w.column_pair(p, k);
                for (i, wk) in pair.iter().enumerate() {
                    for (t, s) in part.iter_mut().enumerate() {
                        let v = xv(t, k + i);
                        for l in 0..PANEL {
                            s[l] = fma::<FUSED>(wk[l], v, s[l]);
                        }
                    }
                }
            }
            let d = w.scales(p, b);
            for (a, s) in acc.iter_mut().zip(&part) {
                for l in 0..PANEL {
                    a[l] = fma::<FUSED>(s[l], d[l], a[l]);
                }
            }
            if E::OFFSET {
                // sum_k (q d + m) x_k = d sum_k q x_k + m sum_k x_k over the block.
                let mins = w.mins(p, b);
                for (t, a) in acc.iter_mut().enumerate() {
                    let xs: f32 = (b * BLOCK..(b + 1) * BLOCK).map(|k| xv(t, k)).sum();
                    for l in 0..PANEL {
                        a[l] = fma::<FUSED>(mins[l], xs, a[l]);
                    }
                }
            }
        }
    } else {
        // Many rows: no room for a second set of sums, so each column is scaled once and
        // shared by the rows.
        for b in 0..cols / BLOCK {
            let d = w.scales(p, b);
            let mins = if E::OFFSET {
                w.mins(p, b)
            } else {
                [0f32; PANEL]
            };
            for k in (b * BLOCK..(b + 1) * BLOCK).step_by(2) {
                let mut pair = w.column_pair(p, k);
                for (i, wk) in pair.iter_mut().enumerate() {
                    for l in 0..PANEL {
                        wk[l] = if E::OFFSET {
                            fma::<FUSED>(wk[l], d[l], mins[l])
                        } else {
                            wk[l] * d[l]
                        };
                    }
                    for (t, a) in acc.iter_mut().enumerate() {
                        let v = xv(t, k + i);
                        for l in 0..PANEL {
                            a[l] = fma::<FUSED>(wk[l], v, a[l]);
                        }
                    }
                }
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tile_avx512<E: Element, const MT: usize>(
    w: &Weights<'_, E>,
    p: usize,
    x: &[f32],
) -> [[f32; PANEL]; MT] {
    tile::<E, MT, true>(w, p, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<E: Element, const MT: usize>(
    w: &Weights<'_, E>,
    p: usize,
    x: &[f32],
) -> [[f32; PANEL]; MT] {
    tile::<E, MT, true>(w, p, x)
}

/// The portable build: plain multiply-adds.
///
/// # Safety
/// As [`tile`].
unsafe fn tile_portable<E: Element, const MT: usize>(
    w: &Weights<'_, E>,
    p: usize,
    x: &[f32],
) -> [[f32; PANEL]; MT] {
    tile::<E, MT, false>(w, p, x)
}

/// Panel `p` against `mt <= isa.tile_rows()` input rows, written to `out` (`mt` rows of
/// `PANEL`).
///
/// # Safety
/// `isa` was detected (or is portable), `p < w.panels()`, `x.len() >= mt * w.cols`.
unsafe fn tile_into<E: Element>(
    isa: Isa,
    w: &Weights<'_, E>,
    p: usize,
    x: &[f32],
    mt: usize,
    out: &mut [f32],
) {
    macro_rules! run {
        ($f:ident, $mt:literal) => {{
            let acc = $f::<E, $mt>(w, p, x);
            out[..$mt * PANEL].copy_from_slice(acc.as_flattened());
        }};
    }
    #[cfg(target_arch = "x86_64")]
    match (isa, mt) {
        (Isa::Avx512, 1) => return run!(tile_avx512, 1),
        (Isa::Avx512, 2) => return run!(tile_avx512, 2),
        (Isa::Avx512, 3) => return run!(tile_avx512, 3),
        (Isa::Avx512, 4) => return run!(tile_avx512, 4),
        (Isa::Avx512, 5) => return run!(tile_avx512, 5),
        (Isa::Avx512, 6) => return run!(tile_avx512, 6),
        (Isa::Avx512, 7) => return run!(tile_avx512, 7),
        (Isa::Avx512, 8) => return run!(tile_avx512, 8),
        (Isa::Avx2, 1) => return run!(tile_avx2, 1),
        (Isa::Avx2, 2) => return run!(tile_avx2, 2),
        _ => {}
    }
    match mt {
        1 => run!(tile_portable, 1),
        _ => run!(tile_portable, 2),
    }
}

/// `y (m, rows) = x (m, cols) W^T`: panels in parallel tasks, each panel against the
/// input rows a tile at a time, the panel read from cache after the first tile.
fn product<E: Element>(
    isa: Isa,
    w: &Weights<'_, E>,
    rows: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) {
    let (cols, panels) = (w.cols, w.panels());
    assert!(panels * PANEL >= rows && x.len() >= m * cols && y.len() >= m * rows);
    let step = isa.tile_rows();
    let split = if m <= 2 && E::LONG_RUNS {
        Split::LongRuns
    } else {
        Split::Short
    };
    by_panels(panels, rows, m, y, split, |p, panel_out| {
        for r0 in (0..m).step_by(step) {
            let mt = step.min(m - r0);
            // SAFETY: p < panels, the rows are inside x (checked above), mt <= the
            // tile's rows.
            unsafe {
                tile_into(isa, w, p, &x[r0 * cols..], mt, &mut panel_out[r0 * PANEL..]);
            }
        }
    });
}

/// How [`by_panels`] shares a product's panels among the threads.
#[derive(Clone, Copy)]
enum Split {
    /// Two runs of neighbouring panels a thread, so that the hardware's and the tiles'
    /// look-ahead run on into the thread's next panel: q8_0 and bf16 at one or two input
    /// rows, whose tiles spend more instructions per byte (faster than tasks of 1-2
    /// panels: q8_0 in docs/perf-log/2026-11-26-speed-rounds.md's "Fourth round", bf16 in its "Sixth round").
    LongRuns,
    /// Tasks of one or two panels, so that a thread the machine slows down is made up for
    /// by the others: f32 at one or two rows (faster than long runs taking turns,
    /// docs/perf-log/2026-11-26-speed-rounds.md's "Sixth round"), and every product at more rows.
    Short,
}

/// Runs `panel(p, out)` for every panel `p` in parallel tasks split as `split` says, `out`
/// its `m` rows of [`PANEL`] outputs, which end up in `y (m, rows)`: written there
/// directly for one input row in whole panels, else copied there from a buffer.
fn by_panels(
    panels: usize,
    rows: usize,
    m: usize,
    y: &mut [f32],
    split: Split,
    panel: impl Fn(usize, &mut [f32]) + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    let tasks = match split {
        Split::LongRuns => 2 * threads,
        Split::Short => panels.div_ceil((panels / (8 * threads)).clamp(1, 2)),
    }
    .min(panels);
    // Outputs panel-major, `[panel][row][lane]`, so that tasks own contiguous memory:
    // one input row in whole panels is `y` itself; otherwise a buffer, copied into `y`.
    let direct = m == 1 && rows == panels * PANEL;
    let mut yt = if direct {
        Vec::new()
    } else {
        vec![0f32; panels * m * PANEL]
    };
    let outputs = if direct { &mut *y } else { &mut yt[..] };
    // Runs whose lengths differ by one panel at most.
    let first_panel = |task: usize| task * panels / tasks;
    let mut runs = Vec::with_capacity(tasks);
    let mut rest = outputs;
    for task in 0..tasks {
        let len = first_panel(task + 1) - first_panel(task);
        let (run, after) = rest.split_at_mut(len * m * PANEL);
        runs.push((first_panel(task), run));
        rest = after;
    }
    runs.into_par_iter().for_each(|(first, out)| {
        for (i, panel_out) in out.chunks_exact_mut(m * PANEL).enumerate() {
            panel(first + i, panel_out);
        }
    });
    if direct {
        return;
    }
    for (p, panel_out) in yt.chunks_exact(m * PANEL).enumerate() {
        let width = PANEL.min(rows - p * PANEL);
        for (r, lanes) in panel_out.chunks_exact(PANEL).enumerate() {
            y[r * rows + p * PANEL..][..width].copy_from_slice(&lanes[..width]);
        }
    }
}

#[cfg(test)]
mod tests;
