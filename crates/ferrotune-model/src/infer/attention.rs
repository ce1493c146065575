//! Attention over the cached keys and values: AVX2 + FMA where the CPU has them (checked
//! once at run time), plain loops otherwise.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::ops::lanes::{exp_neg, sum_of};

#[cfg(target_arch = "x86_64")]
fn simd() -> bool {
    static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SIMD.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
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
    let sum = softmax_weights(&mut scores);
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

/// `exp(s - max s)` in place, and their sum: the exponentials in a loop of their own,
/// which vectorises (a running sum in the same loop would keep it scalar).
#[inline]
fn softmax_weights(scores: &mut [f32]) -> f32 {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for s in scores.iter_mut() {
        *s = exp_neg(*s - max);
    }
    sum_of(scores)
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
    let sum = softmax_weights(&mut scores);
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
    use crate::infer::test_noise as noise;
    use crate::infer::Keys;

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
