//! The dot products of one weight row with up to [`super::TILE`] input rows: AVX2 + FMA where
//! the CPU has them (checked once at run time), plain loops otherwise.

use super::{bf16_to_f32, f16_to_f32, BLOCK};

pub trait Rows: Sync {
    /// Weight `(r, i)` as f32 (the portable path).
    fn get(&self, r: usize, i: usize) -> f32;
    /// Whether the vector path may be used (whole blocks of 32).
    fn blocks(&self) -> bool;
    #[cfg(target_arch = "x86_64")]
    /// The 32 weights of block `b` of row `r`, widened to f32 (8 per register).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, and `(r, b)` is inside the matrix.
    unsafe fn block(&self, r: usize, b: usize) -> [std::arch::x86_64::__m256; 4];
    #[cfg(target_arch = "x86_64")]
    /// Weights `8 g .. 8 g + 8` of block `b` of row `r`, widened to f32.
    ///
    /// # Safety
    /// As [`Rows::block`], and `g < 4`.
    unsafe fn group(&self, r: usize, b: usize, g: usize) -> std::arch::x86_64::__m256;
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

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

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
    unsafe fn block(&self, r: usize, b: usize) -> [__m256; 4] {
        let p = self.data.as_ptr().add(r * self.cols + b * BLOCK);
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ]
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
    unsafe fn block(&self, r: usize, b: usize) -> [__m256; 4] {
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
        [widen!(0), widen!(1), widen!(2), widen!(3)]
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
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block(&self, r: usize, b: usize) -> [__m256; 4] {
        let at = r * self.cols + b * BLOCK;
        let bits = *self.scales.get_unchecked(at / BLOCK);
        let d = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
        let p = self.quants.as_ptr().add(at);
        macro_rules! widen {
            ($off:expr) => {
                _mm256_mul_ps(
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        p.add($off) as *const __m128i
                    ))),
                    d,
                )
            };
        }
        [widen!(0), widen!(8), widen!(16), widen!(24)]
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
                1 => avx_rows::<R, 1, 1, 4>(w, j0, n, x, cols, o),
                2 => avx_tiles::<R, 2, 1>(w, j0, n, x, cols, o),
                3 => avx_tiles::<R, 3, 1>(w, j0, n, x, cols, o),
                _ => avx_tiles::<R, 4, 1>(w, j0, n, x, cols, o),
            }
        }
        return;
    }
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

/// Tiles of `MT` (2 to 4) input rows against `NR` weight rows, the inputs held in
/// registers across the weight rows: fewer loads per FMA than streaming both (a tile
/// of 8 rows took 9 loads for 8 FMAs; batch-8 decoding went from 110-120 to about
/// 140 tokens/s in all with tiles of 4).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx_tiles<R: Rows, const MT: usize, const NR: usize>(
    w: &R,
    j0: usize,
    n: usize,
    x: &[f32],
    cols: usize,
    o: Out<'_>,
) {
    let xp = x.as_ptr();
    let mut j = 0;
    while j < n {
        if j + NR > n {
            avx_tiles::<R, MT, 1>(
                w,
                j0 + j,
                n - j,
                x,
                cols,
                Out {
                    part: &mut o.part[j * o.m..],
                    ..o
                },
            );
            return;
        }
        let mut acc = [[_mm256_setzero_ps(); MT]; NR];
        for b in 0..cols / BLOCK {
            for g in 0..4 {
                let mut xv = [_mm256_setzero_ps(); MT];
                for (t, v) in xv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(xp.add(t * cols + b * BLOCK + g * 8));
                }
                for (k, ak) in acc.iter_mut().enumerate() {
                    let wv = w.group(j0 + j + k, b, g);
                    for (a, v) in ak.iter_mut().zip(&xv) {
                        *a = _mm256_fmadd_ps(wv, *v, *a);
                    }
                }
            }
        }
        for (k, ak) in acc.iter().enumerate() {
            for (t, s) in ak.iter().enumerate() {
                let q = _mm_add_ps(_mm256_castps256_ps128(*s), _mm256_extractf128_ps::<1>(*s));
                let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
                let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
                *o.part.get_unchecked_mut((j + k) * o.m + o.r0 + t) = _mm_cvtss_f32(q);
            }
        }
        j += NR;
    }
}

/// `MT` input rows against `NR` weight rows at a time, `A` accumulators per pair:
/// enough independent FMA chains in flight to hide their latency when `MT` is small,
/// few enough to stay in the 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx_rows<R: Rows, const MT: usize, const NR: usize, const A: usize>(
    w: &R,
    j0: usize,
    n: usize,
    x: &[f32],
    cols: usize,
    o: Out<'_>,
) {
    let xp = x.as_ptr();
    let mut j = 0;
    while j < n {
        if j + NR > n {
            // The last rows, one at a time.
            avx_rows::<R, MT, 1, 2>(
                w,
                j0 + j,
                n - j,
                x,
                cols,
                Out {
                    part: &mut o.part[j * o.m..],
                    ..o
                },
            );
            return;
        }
        let mut acc = [[[_mm256_setzero_ps(); A]; MT]; NR];
        for b in 0..cols / BLOCK {
            for (k, ak) in acc.iter_mut().enumerate() {
                let wv = w.block(j0 + j + k, b);
                for (g, wg) in wv.iter().enumerate() {
                    for (t, a) in ak.iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(xp.add(t * cols + b * BLOCK + g * 8));
                        a[g % A] = _mm256_fmadd_ps(*wg, xv, a[g % A]);
                    }
                }
            }
        }
        for (k, ak) in acc.iter().enumerate() {
            for (t, a) in ak.iter().enumerate() {
                let mut s = a[0];
                for v in &a[1..] {
                    s = _mm256_add_ps(s, *v);
                }
                let lo = _mm256_castps256_ps128(s);
                let hi = _mm256_extractf128_ps::<1>(s);
                let q = _mm_add_ps(lo, hi);
                let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
                let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
                *o.part.get_unchecked_mut((j + k) * o.m + o.r0 + t) = _mm_cvtss_f32(q);
            }
        }
        j += NR;
    }
}

/// `out = softmax(q . k_t * scale) . v_t` over the positions `t` of `visible`;
/// zeros when nothing is visible (a padding query whose output is never used).
pub fn attend(q: &[f32], keys: &super::Keys<'_>, visible: &[u32], scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: the features were detected.
        unsafe { attend_avx(q, keys, visible, scale, out) };
        return;
    }
    attend_body(q, keys, visible, scale, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx(
    q: &[f32],
    keys: &super::Keys<'_>,
    visible: &[u32],
    scale: f32,
    out: &mut [f32],
) {
    attend_body(q, keys, visible, scale, out);
}

/// Plain loops, vectorized by the compiler with whatever the caller enables.
#[inline(always)]
fn attend_body(q: &[f32], keys: &super::Keys<'_>, visible: &[u32], scale: f32, out: &mut [f32]) {
    let hd = q.len();
    out.fill(0.0);
    if visible.is_empty() {
        return;
    }
    let at = |t: u32| t as usize * keys.stride + keys.offset;
    // Plain loops rather than iterator adapters: those compile to functions of their
    // own, outside this one's target features.
    let mut scores = Vec::with_capacity(visible.len());
    for &t in visible {
        let k = &keys.k[at(t)..][..hd];
        // Eight lanes summed apart: a reduction the compiler may vectorize.
        let mut lanes = [0f32; 8];
        let (qc, kc) = (q.chunks_exact(8), k.chunks_exact(8));
        let mut tail = 0f32;
        for (a, b) in qc.remainder().iter().zip(kc.remainder()) {
            tail += a * b;
        }
        for (a, b) in qc.zip(kc) {
            for i in 0..8 {
                lanes[i] += a[i] * b[i];
            }
        }
        let mut dot = tail;
        for l in lanes {
            dot += l;
        }
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
