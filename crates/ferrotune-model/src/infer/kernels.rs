//! The dot products of one weight row with up to [`TILE`] input rows: AVX2 + FMA where
//! the CPU has them (checked once at run time), plain loops otherwise.

use super::{bf16_to_f32, f16_to_f32, BLOCK};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

pub trait Rows: Sync {
    /// Weight `(r, i)` as f32 (the portable path).
    fn get(&self, r: usize, i: usize) -> f32;
    /// Whether the vector path may be used (whole blocks of 32).
    fn blocks(&self) -> bool;
    #[cfg(target_arch = "x86_64")]
    /// Adds block `b` of row `r` (32 weights) times the 32 inputs at `x` into `acc`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, `(r, b)` is inside the matrix and `x` holds 32
    /// floats.
    unsafe fn accumulate(&self, r: usize, b: usize, x: *const f32, acc: &mut [__m256; 4]);
    #[cfg(target_arch = "x86_64")]
    /// Weights `8 g .. 8 g + 8` of block `b` of row `r`, widened to f32.
    ///
    /// # Safety
    /// As [`Rows::accumulate`], and `g < 4`.
    unsafe fn group(&self, r: usize, b: usize, g: usize) -> __m256;
}

pub struct F32Rows<'a> {
    pub data: &'a [f32],
    pub cols: usize,
}

pub struct Bf16Rows<'a> {
    pub data: &'a [u16],
    pub cols: usize,
}

pub struct Q8Rows<'a> {
    pub quants: &'a [i8],
    pub scales: &'a [u16],
    pub cols: usize,
}

impl Rows for F32Rows<'_> {
    fn get(&self, r: usize, i: usize) -> f32 {
        self.data[r * self.cols + i]
    }
    fn blocks(&self) -> bool {
        self.cols.is_multiple_of(BLOCK)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn group(&self, r: usize, b: usize, g: usize) -> __m256 {
        _mm256_loadu_ps(self.data.as_ptr().add(r * self.cols + b * BLOCK + 8 * g))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn accumulate(&self, r: usize, b: usize, x: *const f32, acc: &mut [__m256; 4]) {
        let p = self.data.as_ptr().add(r * self.cols + b * BLOCK);
        for (g, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(
                _mm256_loadu_ps(p.add(8 * g)),
                _mm256_loadu_ps(x.add(8 * g)),
                *a,
            );
        }
    }
}

impl Rows for Bf16Rows<'_> {
    fn get(&self, r: usize, i: usize) -> f32 {
        bf16_to_f32(self.data[r * self.cols + i])
    }
    fn blocks(&self) -> bool {
        self.cols.is_multiple_of(BLOCK)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn group(&self, r: usize, b: usize, g: usize) -> __m256 {
        let p = self.data.as_ptr().add(r * self.cols + b * BLOCK + 8 * g) as *const __m128i;
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
            _mm_loadu_si128(p),
        )))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn accumulate(&self, r: usize, b: usize, x: *const f32, acc: &mut [__m256; 4]) {
        let p = self.data.as_ptr().add(r * self.cols + b * BLOCK) as *const __m128i;
        // A macro, not a closure: a closure would not inherit the caller's target
        // features, and its intrinsics would become calls.
        macro_rules! widen {
            ($i:expr) => {
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                    _mm_loadu_si128(p.add($i)),
                )))
            };
        }
        acc[0] = _mm256_fmadd_ps(widen!(0), _mm256_loadu_ps(x), acc[0]);
        acc[1] = _mm256_fmadd_ps(widen!(1), _mm256_loadu_ps(x.add(8)), acc[1]);
        acc[2] = _mm256_fmadd_ps(widen!(2), _mm256_loadu_ps(x.add(16)), acc[2]);
        acc[3] = _mm256_fmadd_ps(widen!(3), _mm256_loadu_ps(x.add(24)), acc[3]);
    }
}

impl Rows for Q8Rows<'_> {
    fn get(&self, r: usize, i: usize) -> f32 {
        let at = r * self.cols + i;
        self.quants[at] as f32 * f16_to_f32(self.scales[at / BLOCK])
    }
    fn blocks(&self) -> bool {
        true
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn group(&self, r: usize, b: usize, g: usize) -> __m256 {
        let at = r * self.cols + b * BLOCK;
        let bits = *self.scales.get_unchecked(at / BLOCK);
        let d = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
        let q = _mm_loadl_epi64(self.quants.as_ptr().add(at + 8 * g) as *const __m128i);
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d)
    }
    /// The block's 32 products summed unscaled, then scaled once: a multiply per block
    /// instead of one per 8 weights. The path is bound by the instructions that widen the
    /// int8 weights; saving the multiplies measured within the noise (15-17 GB/s on one
    /// thread either way). An integer path (activations quantized per block as llama.cpp
    /// does, AVX-512 VNNI) decoded SmolLM2 10-17% faster but answered "What is the
    /// capital of France?" with "L'Étoile, la Cité, la France, la France, ..." (the
    /// prompt's rows quantized), and drifted from f32 sooner even when used for decoded
    /// tokens only, so q8_0 keeps f32 activations (docs/PERFORMANCE.md).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn accumulate(&self, r: usize, b: usize, x: *const f32, acc: &mut [__m256; 4]) {
        let at = r * self.cols + b * BLOCK;
        let bits = *self.scales.get_unchecked(at / BLOCK);
        let d = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
        let p = self.quants.as_ptr().add(at);
        macro_rules! widen {
            ($off:expr) => {
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                    p.add($off) as *const __m128i
                )))
            };
        }
        let mut s0 = _mm256_mul_ps(widen!(0), _mm256_loadu_ps(x));
        let mut s1 = _mm256_mul_ps(widen!(8), _mm256_loadu_ps(x.add(8)));
        s0 = _mm256_fmadd_ps(widen!(16), _mm256_loadu_ps(x.add(16)), s0);
        s1 = _mm256_fmadd_ps(widen!(24), _mm256_loadu_ps(x.add(24)), s1);
        // Fixed accumulators: indexing them by `b` put all four on the stack.
        acc[0] = _mm256_fmadd_ps(s0, d, acc[0]);
        acc[1] = _mm256_fmadd_ps(s1, d, acc[1]);
    }
}

#[cfg(target_arch = "x86_64")]
fn simd() -> bool {
    static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SIMD.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// Input rows one kernel call holds in registers.
pub const TILE: usize = 4;

/// Weight rows `j0 .. j0 + n` against the `mt` input rows of `x` (each `cols` long):
/// `part[j * m + r0 + t] = dot(row j0 + j of w, row t of x)`.
#[allow(clippy::too_many_arguments)]
pub fn rows<R: Rows>(
    w: &R,
    j0: usize,
    n: usize,
    x: &[f32],
    mt: usize,
    cols: usize,
    part: &mut [f32],
    m: usize,
    r0: usize,
) {
    assert!(x.len() >= mt * cols && part.len() >= n * m && r0 + mt <= m);
    #[cfg(target_arch = "x86_64")]
    if simd() && w.blocks() {
        let o = Out { part, m, r0 };
        // SAFETY: the features were detected; the slices are checked above and the
        // weight rows by the caller (j0 + n <= rows).
        // Few input rows: one weight row at a time, so that the weights are read in
        // order, one stream for the hardware prefetcher (interleaving 4 rows of a few
        // hundred bytes each halved the streaming rate), with enough accumulators to
        // hide the FMA latency.
        unsafe {
            match mt {
                1 => avx_row(w, j0, n, x, cols, o),
                2 => avx_tiles::<R, 2>(w, j0, n, x, cols, o),
                3 => avx_tiles::<R, 3>(w, j0, n, x, cols, o),
                _ => avx_tiles::<R, 4>(w, j0, n, x, cols, o),
            }
        }
        return;
    }
    rows_plain(w, j0, n, x, mt, cols, part, m, r0);
}

/// [`rows`] in plain loops: the portable path, and the reference for the vector path.
#[allow(clippy::too_many_arguments)]
fn rows_plain<R: Rows>(
    w: &R,
    j0: usize,
    n: usize,
    x: &[f32],
    mt: usize,
    cols: usize,
    part: &mut [f32],
    m: usize,
    r0: usize,
) {
    for j in 0..n {
        for t in 0..mt {
            let xr = &x[t * cols..(t + 1) * cols];
            part[j * m + r0 + t] = xr
                .iter()
                .enumerate()
                .map(|(i, &v)| w.get(j0 + j, i) * v)
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
struct Out<'a> {
    part: &'a mut [f32],
    m: usize,
    r0: usize,
}

/// Tiles of `MT` (2 to 4) input rows against one weight row at a time, the inputs read
/// from L1 for each weight row: fewer loads per FMA than streaming both (a tile of 8
/// rows took 9 loads for 8 FMAs; batch-8 decoding went from 110-120 to about 140
/// tokens/s in all with tiles of 4). Two weight rows at a time, or tiles of 8 rows in
/// AVX-512's 32 registers, measured no faster in whole decoding steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx_tiles<R: Rows, const MT: usize>(
    w: &R,
    j0: usize,
    n: usize,
    x: &[f32],
    cols: usize,
    o: Out<'_>,
) {
    let xp = x.as_ptr();
    for j in 0..n {
        // Two sums per input row, alternate groups: one chain of FMAs per row left
        // their latency exposed (a 1,536-column product took 290-320 us at m = 8 on
        // one thread, 210-250 with two).
        let mut acc = [[_mm256_setzero_ps(); 2]; MT];
        for b in 0..cols / BLOCK {
            for g in 0..4 {
                let wv = w.group(j0 + j, b, g);
                for (t, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(xp.add(t * cols + b * BLOCK + g * 8));
                    a[g % 2] = _mm256_fmadd_ps(wv, xv, a[g % 2]);
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            *o.part.get_unchecked_mut(j * o.m + o.r0 + t) = hsum(_mm256_add_ps(a[0], a[1]));
        }
    }
}

/// One input row against the weight rows one at a time, four accumulators: enough
/// independent FMA chains in flight to hide their latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx_row<R: Rows>(w: &R, j0: usize, n: usize, x: &[f32], cols: usize, o: Out<'_>) {
    let xp = x.as_ptr();
    for j in 0..n {
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..cols / BLOCK {
            w.accumulate(j0 + j, b, xp.add(b * BLOCK), &mut acc);
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        *o.part.get_unchecked_mut(j * o.m + o.r0) = hsum(s);
    }
}

/// `out = softmax(q . k_t * scale) . v_t` over the positions `t` of `visible`;
/// zeros when nothing is visible (a padding query whose output is never used).
pub fn attend(q: &[f32], keys: &super::Keys<'_>, visible: &[u32], scale: f32, out: &mut [f32]) {
    assert!(q.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if simd() && q.len().is_multiple_of(8) {
        // SAFETY: the features were detected; every visible position's vector lies inside
        // the cache (checked once here, not per load).
        let hd = q.len();
        let end = visible
            .iter()
            .map(|&t| t as usize * keys.stride + keys.offset + hd)
            .max()
            .unwrap_or(0);
        assert!(end <= keys.k.len() && end <= keys.v.len());
        unsafe { attend_avx(q, keys, visible, scale, out) };
        return;
    }
    attend_body(q, keys, visible, scale, out);
}

/// The vector path: the scores of four positions at a time (four independent sums, the
/// query read once for the four), then the weighted sum of the values with the output
/// held in registers, 64 floats at a time. Loops that wrote each partial sum back to
/// memory took 15% of a q8_0 decoding step at 288 positions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx(
    q: &[f32],
    keys: &super::Keys<'_>,
    visible: &[u32],
    scale: f32,
    out: &mut [f32],
) {
    let hd = q.len();
    if visible.is_empty() {
        out.fill(0.0);
        return;
    }
    let at = |t: u32| t as usize * keys.stride + keys.offset;
    let (qp, kp, vp) = (q.as_ptr(), keys.k.as_ptr(), keys.v.as_ptr());
    let mut scores = vec![0f32; visible.len()];
    let mut quads = visible.chunks_exact(4);
    let mut i = 0;
    for ts in quads.by_ref() {
        let k = [
            kp.add(at(ts[0])),
            kp.add(at(ts[1])),
            kp.add(at(ts[2])),
            kp.add(at(ts[3])),
        ];
        let mut acc = [_mm256_setzero_ps(); 4];
        for c in (0..hd).step_by(8) {
            let qv = _mm256_loadu_ps(qp.add(c));
            for (a, kr) in acc.iter_mut().zip(&k) {
                *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr.add(c)), *a);
            }
        }
        // (a0 a1 a2 a3) summed lane-wise into four totals in one register.
        let h01 = _mm256_hadd_ps(acc[0], acc[1]);
        let h23 = _mm256_hadd_ps(acc[2], acc[3]);
        let h = _mm256_hadd_ps(h01, h23);
        let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        _mm_storeu_ps(
            scores.as_mut_ptr().add(i),
            _mm_mul_ps(s, _mm_set1_ps(scale)),
        );
        i += 4;
    }
    for &t in quads.remainder() {
        let kr = kp.add(at(t));
        let mut a = _mm256_setzero_ps();
        for c in (0..hd).step_by(8) {
            a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), _mm256_loadu_ps(kr.add(c)), a);
        }
        scores[i] = hsum(a) * scale;
        i += 1;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = _mm256_set1_ps(1.0 / sum);
    let op = out.as_mut_ptr();
    let mut c = 0;
    while c + 64 <= hd {
        weighted_sum::<8>(vp, visible, &scores, &at, c, inv, op);
        c += 64;
    }
    while c < hd {
        weighted_sum::<1>(vp, visible, &scores, &at, c, inv, op);
        c += 8;
    }
}

/// `out[c .. c + 8 G] = inv * sum_t p_t v_t[c .. c + 8 G]`, the `G` sums in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_sum<const G: usize>(
    vp: *const f32,
    visible: &[u32],
    p: &[f32],
    at: &impl Fn(u32) -> usize,
    c: usize,
    inv: __m256,
    op: *mut f32,
) {
    let mut acc = [_mm256_setzero_ps(); G];
    for (&t, &pt) in visible.iter().zip(p) {
        let v = vp.add(at(t) + c);
        let pv = _mm256_set1_ps(pt);
        for (g, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v.add(8 * g)), *a);
        }
    }
    for (g, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(op.add(c + 8 * g), _mm256_mul_ps(*a, inv));
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn hsum(s: __m256) -> f32 {
    let q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
    _mm_cvtss_f32(q)
}

/// Plain loops: the portable path, and the reference the vector path is tested against.
fn attend_body(q: &[f32], keys: &super::Keys<'_>, visible: &[u32], scale: f32, out: &mut [f32]) {
    let hd = q.len();
    out.fill(0.0);
    if visible.is_empty() {
        return;
    }
    let at = |t: u32| t as usize * keys.stride + keys.offset;
    let mut scores = Vec::with_capacity(visible.len());
    for &t in visible {
        let k = &keys.k[at(t)..][..hd];
        let dot: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
        scores.push(dot * scale);
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for (&t, &p) in visible.iter().zip(&scores) {
        let v = &keys.v[at(t)..][..hd];
        for (o, &vv) in out.iter_mut().zip(v) {
            *o += p * vv;
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::Keys;

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn the_vector_products_match_plain_loops() {
        for cols in [64, 576, 1536] {
            let n_rows = 11;
            let w = noise(n_rows * cols, cols as u32);
            let (quants, scales) = crate::infer::quantize_q8(&w);
            let bf: Vec<u16> = w
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            let f32_rows = F32Rows { data: &w, cols };
            let q8_rows = Q8Rows {
                quants: &quants,
                scales: &scales,
                cols,
            };
            let bf16_rows = Bf16Rows { data: &bf, cols };
            for mt in 1..=TILE {
                let x = noise(mt * cols, 5 + mt as u32);
                let m = mt + 2;
                let check = |fast: &[f32], plain: &[f32]| {
                    for (a, b) in fast.iter().zip(plain) {
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "{cols} columns, {mt} rows: {a} vs {b}"
                        );
                    }
                };
                // Weight rows 2 .. 11 into rows 1 .. 1 + mt of a wider output.
                let (mut fast, mut plain) = (vec![0f32; 9 * m], vec![0f32; 9 * m]);
                rows(&f32_rows, 2, 9, &x, mt, cols, &mut fast, m, 1);
                rows_plain(&f32_rows, 2, 9, &x, mt, cols, &mut plain, m, 1);
                check(&fast, &plain);
                rows(&q8_rows, 2, 9, &x, mt, cols, &mut fast, m, 1);
                rows_plain(&q8_rows, 2, 9, &x, mt, cols, &mut plain, m, 1);
                check(&fast, &plain);
                rows(&bf16_rows, 2, 9, &x, mt, cols, &mut fast, m, 1);
                rows_plain(&bf16_rows, 2, 9, &x, mt, cols, &mut plain, m, 1);
                check(&fast, &plain);
            }
        }
    }

    #[test]
    fn the_vector_attention_matches_plain_loops() {
        for (hd, heads, positions) in [(8, 2, 3), (16, 3, 9), (64, 3, 37), (72, 2, 12), (128, 1, 5)]
        {
            let stride = heads * hd;
            let k = noise(positions * stride, hd as u32);
            let v = noise(positions * stride, 7 + hd as u32);
            let q = noise(hd, 3);
            // Every other position but the last few, some visible sets not a multiple of 4.
            for visible in [
                (0..positions as u32).collect::<Vec<_>>(),
                (0..positions as u32).step_by(2).collect(),
                vec![positions as u32 - 1],
                vec![],
            ] {
                for head in 0..heads {
                    let keys = Keys {
                        k: &k,
                        v: &v,
                        stride,
                        offset: head * hd,
                    };
                    let (mut fast, mut plain) = (vec![9f32; hd], vec![9f32; hd]);
                    attend(&q, &keys, &visible, 0.3, &mut fast);
                    attend_body(&q, &keys, &visible, 0.3, &mut plain);
                    for (a, b) in fast.iter().zip(&plain) {
                        assert!((a - b).abs() <= 1e-5, "hd {hd}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
