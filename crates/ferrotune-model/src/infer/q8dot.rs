//! q8_0 products at one input row in integer arithmetic, with AVX-512 VNNI.
//!
//! Widening every int8 weight to f32 costs a sign extension and a conversion a register
//! of 16 weights, which at one input row leaves q8_0 short of the memory's speed on a
//! fast machine. Here the input row is rounded to int16 per block of [`BLOCK`] columns
//! (a scale per block, as ggml does with int8; 16 bits keep the input 256 times finer
//! than ggml's 8, which cost SmolLM2 its answers in docs/perf-log/2026-11-26-speed-rounds.md), and `vpdpwssd` adds
//! the products of two int16 weight-input pairs into each 32-bit lane: per 64 weights,
//! two sign extensions and two instructions of products. Each block's integer sums are
//! then scaled once, by the weight's scale times the input's.

// Off x86-64 only `available` (false) is used.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

use super::panels::{prefetch, PANEL};
use super::BLOCK;
use crate::ops::lanes::ROUND_TO_INTEGER;

/// Whether this CPU runs [`panel_row`].
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One input row rounded to int16 per block: `x[k] ~ scales[k / BLOCK] * values[k]`.
pub(super) struct Int16Row {
    /// In order, so that on this little-endian machine the 32-bit word at `2i` holds
    /// `values[2i]` in its low half and `values[2i + 1]` in its high half: the pair that
    /// meets a weight pair in one 32-bit lane.
    values: Vec<i16>,
    scales: Vec<f32>,
}

impl Int16Row {
    /// `x`'s length is a multiple of [`BLOCK`]. Written as fixed-size loops, which the
    /// compiler vectorises: the rounding runs before each product's parallel part, on
    /// one thread.
    pub(super) fn new(x: &[f32]) -> Self {
        let mut values = vec![0i16; x.len()];
        let mut scales = Vec::with_capacity(x.len() / BLOCK);
        for (block, out) in x.chunks_exact(BLOCK).zip(values.chunks_exact_mut(BLOCK)) {
            let mut lanes = [0f32; 8];
            for part in block.chunks_exact(8) {
                for (m, v) in lanes.iter_mut().zip(part) {
                    *m = m.max(v.abs());
                }
            }
            let amax = lanes.iter().fold(0f32, |a, &m| a.max(m));
            let scale = amax / 32767.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (q, &v) in out.iter_mut().zip(block) {
                // To nearest, ties to even (|v * inverse| <= 32767): `round` and
                // `round_ties_even` were a libm call a value here, which showed in
                // decoding's profile.
                let r = (v * inverse + ROUND_TO_INTEGER) - ROUND_TO_INTEGER;
                *q = r.clamp(-32767.0, 32767.0) as i16;
            }
            scales.push(scale);
        }
        Int16Row { values, scales }
    }
}

/// Panel `p` of q8_0 `quants` (column pairs as `panels::q8_at` lays them) and `scales`
/// (f16, `[panel][block][row]`) against one input row: its [`PANEL`] outputs into `out`.
///
/// # Safety
/// [`available`], `p` is a panel of the weight, `cols` a multiple of [`BLOCK`], `x` has
/// `cols` columns and `out` [`PANEL`] elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn panel_row(
    quants: &[i8],
    scales: &[u16],
    cols: usize,
    p: usize,
    x: &Int16Row,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(out.len() >= PANEL && x.values.len() == cols);
    let blocks = cols / BLOCK;
    // A column pair's first 32 bytes sign-extend to rows 0, 16, 1, 17, ..., 7, 23 (one
    // 32-bit lane each), the next 32 to rows 8, 24, ..., 15, 31: these gather them back
    // in order, rows 0-15 and rows 16-31.
    let low_rows = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let high_rows = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mut acc = [_mm512_setzero_ps(); 2];
    let panel = quants.as_ptr().add(p * cols * PANEL);
    let panel_scales = scales.as_ptr().add(p * blocks * PANEL);
    for b in 0..blocks {
        let block = panel.add(b * BLOCK * PANEL);
        // The scales only: each panel's few scale lines are too short a stream for the
        // hardware prefetcher. The quants' own hints, which the widening tiles need,
        // slowed this faster loop down (SmolLM2's products at one row, hints 2-16 KiB
        // ahead; docs/perf-log/2026-11-26-speed-rounds.md).
        prefetch(panel_scales.wrapping_add((b + 2) * PANEL).cast());
        // Two sets of sums, even and odd column pairs, so that each `vpdpwssd` does not
        // wait for the last one into the same register.
        let mut sums = [_mm512_setzero_si512(); 4];
        let xs = x.values.as_ptr().add(b * BLOCK).cast::<i32>();
        for j in (0..BLOCK / 2).step_by(2) {
            for u in 0..2 {
                let pair = block.add((j + u) * 2 * PANEL);
                let xv = _mm512_set1_epi32(xs.add(j + u).read_unaligned());
                let first = _mm512_cvtepi8_epi16(_mm256_loadu_si256(pair.cast()));
                let second = _mm512_cvtepi8_epi16(_mm256_loadu_si256(pair.add(32).cast()));
                sums[2 * u] = _mm512_dpwssd_epi32(sums[2 * u], first, xv);
                sums[2 * u + 1] = _mm512_dpwssd_epi32(sums[2 * u + 1], second, xv);
            }
        }
        let first = _mm512_add_epi32(sums[0], sums[2]);
        let second = _mm512_add_epi32(sums[1], sums[3]);
        let xscale = _mm512_set1_ps(*x.scales.get_unchecked(b));
        let d = panel_scales.add(b * PANEL);
        for (half, rows) in [low_rows, high_rows].into_iter().enumerate() {
            let ints = _mm512_permutex2var_epi32(first, rows, second);
            let wscale = _mm512_cvtph_ps(_mm256_loadu_si256(d.add(16 * half).cast()));
            acc[half] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(ints),
                _mm512_mul_ps(wscale, xscale),
                acc[half],
            );
        }
    }
    _mm512_storeu_ps(out.as_mut_ptr(), acc[0]);
    _mm512_storeu_ps(out.as_mut_ptr().add(16), acc[1]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::test_noise as noise;

    #[test]
    fn inputs_round_to_int16_within_half_a_step() {
        let mut x = noise(4 * BLOCK, 11);
        x[BLOCK..2 * BLOCK].fill(0.0); // a block of zeros
        x[2 * BLOCK + 5] = -3.5; // a block whose largest value is negative
        x[3 * BLOCK..].iter_mut().for_each(|v| *v *= 1e-30); // tiny values
        let row = Int16Row::new(&x);
        for (b, block) in x.chunks_exact(BLOCK).enumerate() {
            let scale = row.scales[b];
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert_eq!(scale, amax / 32767.0, "block {b}");
            for (k, &v) in block.iter().enumerate() {
                let q = row.values[b * BLOCK + k];
                assert!(q.unsigned_abs() <= 32767);
                let error = (v - scale * q as f32).abs();
                assert!(
                    error <= scale * 0.5 * (1.0 + 1e-5),
                    "block {b}, column {k}: {v} vs {q}"
                );
            }
        }
        assert_eq!(row.values[2 * BLOCK + 5], -32767);
        assert!(row.values[BLOCK..2 * BLOCK].iter().all(|&q| q == 0));
    }
}
