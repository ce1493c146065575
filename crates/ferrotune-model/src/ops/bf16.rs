//! Matrix products in bf16 with f32 accumulation (`bf16: true`): the frozen products of a
//! stored weight, `x W^T` and `g W`, where AVX512-BF16's `vdpbf16ps` multiplies pairs of
//! bf16 values and adds both products to an f32 lane. A portable kernel computes the
//! same sums the same way (the product of two bf16 values is exact in f32, and each pair
//! is added odd element first, as the instruction does), so the fallback matches the fast
//! path on every CPU up to denormals.
//!
//! Shapes and layouts: C (m, n) f32 with row stride ldc; A (m, k) as bf16 pairs, (m, k/2)
//! 32-bit words, `A[r][j] = bf16(a[r][2j]) | bf16(a[r][2j+1]) << 16`; B packed for C's
//! columns in blocks of 32 (two registers): `[n/32][k/2][32]` words, word (blk, j, l) the
//! pair of column `32 blk + l` at depth 2j and 2j + 1, zeros past n and k. The kernel
//! keeps an 8 x 32 block of C in 16 registers and, for each pair of depths, loads two
//! registers of B and broadcasts each row's pair of A.

use rayon::prelude::*;

/// Columns per packed block of B: two 16-lane registers.
pub(crate) const NR: usize = 32;
/// Rows of C per kernel call.
const MR: usize = 8;

/// Whether this CPU has AVX512-BF16 (and AVX-512F), checked once.
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 to bf16 bits, rounded to nearest even (NaN stays NaN). Written out rather than
/// `half::bf16::from_f32`, which does not inline into the packing loops and made bf16
/// training markedly slower (docs/PERFORMANCE.md, issue 22's section).
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

fn from_bf16(b: u32) -> f32 {
    f32::from_bits(b << 16)
}

/// A value the packers read: f32 (rounded to bf16) or bf16 bits as stored.
pub(crate) trait Element: Copy + Send + Sync {
    const ZERO: Self;
    fn bits(self) -> u32;
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    fn bits(self) -> u32 {
        to_bf16(self) as u32
    }
}

impl Element for u16 {
    const ZERO: Self = 0;
    fn bits(self) -> u32 {
        self as u32
    }
}

fn pair_of<E: Element>(lo: E, hi: E) -> u32 {
    lo.bits() | hi.bits() << 16
}

/// Rows of `a` (m rows of k values, row stride `lda`) as bf16 pairs: (m, ceil(k/2)).
pub(crate) fn pairs_of(a: &[f32], m: usize, k: usize, lda: usize) -> Vec<u32> {
    pairs_of_with(a, m, k, lda, !has_avx512_bf16())
}

/// [`pairs_of`], on the portable path when `portable` (the tests compare both). A row's
/// pairs are its bf16 values in order, which AVX512-BF16 converts 32 at a time
/// (`vcvtne2ps2bf16`, round to nearest even as [`to_bf16`]).
pub(crate) fn pairs_of_with(a: &[f32], m: usize, k: usize, lda: usize, portable: bool) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let mut out = vec![0u32; m * kp];
    out.par_chunks_mut(kp.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            let src = &a[r * lda..r * lda + k];
            // Whole groups of 32 values through the instruction, the rest one by one.
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if !portable && has_avx512_bf16() {
                done = k / 32 * 32;
                // Safety: the CPU has AVX512-BF16; `src` holds `done` values and `row`
                // `done / 2` words.
                unsafe { avx512::convert(&src[..done], &mut row[..done / 2]) };
            }
            for (j, w) in row.iter_mut().enumerate().skip(done / 2) {
                let hi = src.get(2 * j + 1).copied().unwrap_or(0.0);
                *w = pair_of(src[2 * j], hi);
            }
        });
    out
}

/// B for `C = A W^T` from the rows of `w` (n rows of k values): column c of B is row c
/// of `w`.
pub(crate) fn pack_rows<E: Element>(w: &[E], n: usize, k: usize) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let blocks = n.div_ceil(NR);
    let mut out = vec![0u32; blocks * kp * NR];
    out.par_chunks_mut(kp * NR)
        .enumerate()
        .for_each(|(blk, block)| {
            for l in 0..NR.min(n - blk * NR) {
                let row = &w[(blk * NR + l) * k..][..k];
                for j in 0..kp {
                    let hi = row.get(2 * j + 1).copied().unwrap_or(E::ZERO);
                    block[j * NR + l] = pair_of(row[2 * j], hi);
                }
            }
        });
    out
}

/// B for `C = G W` from `w` (p rows of n values): the depth runs over w's rows, column c
/// of B is column c of `w`.
pub(crate) fn pack_columns<E: Element>(w: &[E], p: usize, n: usize) -> Vec<u32> {
    let pp = p.div_ceil(2);
    let blocks = n.div_ceil(NR);
    let mut out = vec![0u32; blocks * pp * NR];
    out.par_chunks_mut(pp * NR)
        .enumerate()
        .for_each(|(blk, block)| {
            for j in 0..pp {
                let lo = &w[2 * j * n..][..n];
                let hi = (2 * j + 1 < p).then(|| &w[(2 * j + 1) * n..][..n]);
                for l in 0..NR.min(n - blk * NR) {
                    let c = blk * NR + l;
                    block[j * NR + l] = pair_of(lo[c], hi.map_or(E::ZERO, |h| h[c]));
                }
            }
        });
    out
}

/// `C = A B` (or `C += A B` with `accumulate`) for C (m, n) inside `c` with row stride
/// `ldc`, A as pairs (m, kp) and B packed (`pack_rows` / `pack_columns`, depth kp pairs).
/// Rows of C are split over rayon's threads. `portable` forces the portable kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    c: &mut [f32],
    ldc: usize,
    (m, n, kp): (usize, usize, usize),
    a: &[u32],
    b: &[u32],
    accumulate: bool,
    portable: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= m * kp && b.len() >= n.div_ceil(NR) * kp * NR);
    assert!(c.len() >= (m - 1) * ldc + n && n <= ldc);
    let fast = !portable && has_avx512_bf16();
    let rows_per_task = (MR * 4).max(1);
    let task = |(t, c): (usize, &mut [f32])| {
        let r0 = t * rows_per_task;
        let rows = rows_per_task.min(m - r0);
        for rb in (0..rows).step_by(MR) {
            let mr = MR.min(rows - rb);
            let a = &a[(r0 + rb) * kp..];
            for blk in 0..n.div_ceil(NR) {
                let nr = NR.min(n - blk * NR);
                let b = &b[blk * kp * NR..][..kp * NR];
                let c = &mut c[rb * ldc + blk * NR..];
                if fast {
                    #[cfg(target_arch = "x86_64")]
                    // Safety: the CPU has AVX512-BF16 (checked); `a` holds mr rows of kp
                    // words, `b` kp x 32 words and `c` mr rows of nr values at stride
                    // ldc (asserted above).
                    unsafe {
                        avx512::block(c, ldc, mr, nr, kp, a, b, accumulate)
                    };
                } else {
                    portable_block(c, ldc, mr, nr, kp, a, b, accumulate);
                }
            }
        }
    };
    // Whole row groups per task; the last chunk ends at the last row's columns.
    let span = rows_per_task * ldc;
    let end = (m - 1) * ldc + n;
    c[..end].par_chunks_mut(span).enumerate().for_each(task);
}

/// The kernel's sums without AVX512-BF16: for each pair, the odd product then the even
/// one added to the f32 sum (both products exact), as `vdpbf16ps` adds them.
#[allow(clippy::too_many_arguments)]
fn portable_block(
    c: &mut [f32],
    ldc: usize,
    mr: usize,
    nr: usize,
    kp: usize,
    a: &[u32],
    b: &[u32],
    accumulate: bool,
) {
    for r in 0..mr {
        let a = &a[r * kp..][..kp];
        let row = &mut c[r * ldc..][..nr];
        let mut acc = [0f32; NR];
        for (j, &aw) in a.iter().enumerate() {
            let (a0, a1) = (from_bf16(aw & 0xFFFF), from_bf16(aw >> 16));
            let bw = &b[j * NR..][..NR];
            for (s, &w) in acc.iter_mut().zip(bw) {
                *s += a1 * from_bf16(w >> 16);
                *s += a0 * from_bf16(w & 0xFFFF);
            }
        }
        for (o, s) in row.iter_mut().zip(acc) {
            *o = if accumulate { *o + s } else { s };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// One block of up to 8 rows and 32 columns of C over the whole depth.
    ///
    /// Safety: the CPU has AVX512-BF16; `a` holds `mr` rows of `kp` words, `b` holds
    /// `kp * 32` words, and `c` holds `mr` rows of `nr` values at stride `ldc`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        c: &mut [f32],
        ldc: usize,
        mr: usize,
        nr: usize,
        kp: usize,
        a: &[u32],
        b: &[u32],
        accumulate: bool,
    ) {
        match mr {
            8 => rows::<8>(c, ldc, nr, kp, a, b, accumulate),
            7 => rows::<7>(c, ldc, nr, kp, a, b, accumulate),
            6 => rows::<6>(c, ldc, nr, kp, a, b, accumulate),
            5 => rows::<5>(c, ldc, nr, kp, a, b, accumulate),
            4 => rows::<4>(c, ldc, nr, kp, a, b, accumulate),
            3 => rows::<3>(c, ldc, nr, kp, a, b, accumulate),
            2 => rows::<2>(c, ldc, nr, kp, a, b, accumulate),
            _ => rows::<1>(c, ldc, nr, kp, a, b, accumulate),
        }
    }

    /// `src` (a multiple of 32 values) to bf16, in order, into `dst` (two a word).
    ///
    /// Safety: the CPU has AVX512-BF16; `dst` holds `src.len() / 2` words.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn convert(src: &[f32], dst: &mut [u32]) {
        for (s, d) in src.chunks_exact(32).zip(dst.chunks_exact_mut(16)) {
            let lo = _mm512_loadu_ps(s.as_ptr());
            let hi = _mm512_loadu_ps(s.as_ptr().add(16));
            // The second operand fills the low half of the result.
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(d.as_mut_ptr() as *mut _, packed);
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn rows<const R: usize>(
        c: &mut [f32],
        ldc: usize,
        nr: usize,
        kp: usize,
        a: &[u32],
        b: &[u32],
        accumulate: bool,
    ) {
        debug_assert!(R <= MR);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for j in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(j * NR) as *const _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(bp.add(j * NR + 16) as *const _));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*ap.add(r * kp + j) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
        let mask = |lanes: usize| -> __mmask16 {
            if lanes >= 16 {
                0xFFFF
            } else {
                ((1u32 << lanes) - 1) as __mmask16
            }
        };
        let (m0, m1) = (mask(nr), mask(nr.saturating_sub(16)));
        let cp = c.as_mut_ptr();
        for (r, acc) in acc.iter().enumerate() {
            for (h, (&v, m)) in acc.iter().zip([m0, m1]).enumerate() {
                if m == 0 {
                    continue;
                }
                let at = cp.add(r * ldc + 16 * h);
                let v = if accumulate {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(m, at), v)
                } else {
                    v
                };
                _mm512_mask_storeu_ps(at, m, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::infer::test_noise as values;

    /// `x W^T` and `g W` in bf16 against f32 products of the same values: within bf16
    /// rounding of the exact f32 result, and, against f32 sums of the bf16-rounded values,
    /// within f32 summation order; on the AVX512-BF16 kernel where the CPU has it and on
    /// the portable one everywhere.
    #[test]
    fn bf16_products_match_f32_within_bf16_rounding() {
        let round =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| from_bf16(to_bf16(x) as u32)).collect() };
        // The rounding is half's (round to nearest even), on both conversion paths.
        let xs: Vec<f32> = values(1000, 9).iter().map(|x| x * 1e3).collect();
        for x in &xs {
            assert_eq!(to_bf16(*x), half::bf16::from_f32(*x).to_bits());
        }
        assert_eq!(
            pairs_of_with(&xs, 10, 99, 100, true),
            pairs_of_with(&xs, 10, 99, 100, false)
        );
        assert_eq!(
            pairs_of_with(&xs, 1, 1000, 1000, true),
            pairs_of_with(&xs, 1, 1000, 1000, false)
        );
        for (m, n, k) in [(13, 70, 75), (8, 32, 64), (37, 100, 576), (1, 5, 3)] {
            let a = values(m * k, 1);
            let w = values(n * k, 2);
            let (ar, wr) = (round(&a), round(&w));
            let mut want = vec![0f32; m * n];
            let mut exact = vec![0f32; m * n];
            for r in 0..m {
                for c in 0..n {
                    for i in 0..k {
                        want[r * n + c] += ar[r * k + i] * wr[c * k + i];
                        exact[r * n + c] += a[r * k + i] * w[c * k + i];
                    }
                }
            }
            let pa = pairs_of(&a, m, k, k);
            let pb = pack_rows(&w, n, k);
            let scale = (k as f32).sqrt();
            let mut paths = vec![true];
            if has_avx512_bf16() {
                paths.push(false);
            }
            for portable in paths {
                let mut got = vec![0f32; m * n];
                gemm(
                    &mut got,
                    n,
                    (m, n, k.div_ceil(2)),
                    &pa,
                    &pb,
                    false,
                    portable,
                );
                for ((g, w), e) in got.iter().zip(&want).zip(&exact) {
                    assert!(
                        (g - w).abs() <= 1e-5 * scale,
                        "{m}x{n}x{k} {portable}: {g} vs {w}"
                    );
                    assert!(
                        (g - e).abs() <= 1e-2 * scale,
                        "{m}x{n}x{k} {portable}: {g} vs exact {e}"
                    );
                }
                // Accumulating adds to what is there.
                gemm(&mut got, n, (m, n, k.div_ceil(2)), &pa, &pb, true, portable);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - 2.0 * w).abs() <= 2e-5 * scale);
                }
            }
            // g W: C (m, k) = G (m, n) W (n, k), the depth over w's rows.
            let g = values(m * n, 3);
            let pg = pairs_of(&g, m, n, n);
            let pw = pack_columns(&w, n, k);
            let gr = round(&g);
            let mut want = vec![0f32; m * k];
            for r in 0..m {
                for c in 0..k {
                    for o in 0..n {
                        want[r * k + c] += gr[r * n + o] * wr[o * k + c];
                    }
                }
            }
            for portable in [true, !has_avx512_bf16()] {
                let mut got = vec![0f32; m * k];
                gemm(
                    &mut got,
                    k,
                    (m, k, n.div_ceil(2)),
                    &pg,
                    &pw,
                    false,
                    portable,
                );
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-5 * (n as f32).sqrt(),
                        "gW {m}x{n}x{k}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
