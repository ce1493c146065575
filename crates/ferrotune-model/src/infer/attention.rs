//! Attention over the cached keys and values: AVX2 + FMA where the CPU has them (checked
//! once at run time), plain loops otherwise.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::ops::lanes::{exp_neg, sum_of};

/// The length of one part of a query's attention, in positions: a row that sees `n`
/// positions is split into `max(1, n / PART)` parts of near-equal length. Parts of 32
/// positions decoded SmolLM2 slower than the split by heads at short contexts, parts of
/// 128 kept up with it there and were faster at long ones (docs/perf-log/).
///
/// The split depends on `n` alone, never on the batch or the thread count: the parts'
/// sums are combined in a fixed order, so a prompt decodes to the same logits, bit for
/// bit, alone or in any batch, on any number of threads.
const PART: usize = 128;

/// The queries of a step and what they attend to: rows of the fused q/k/v projection
/// (queries first), the key/value cache of each sample (head-major, `cap` positions a
/// key/value head), and the positions each row sees.
pub struct Step<'a> {
    pub qkv: &'a [f32],
    pub row_len: usize,
    /// Rows a sample (row `r` belongs to sample `r / rows_per_sample`).
    pub rows_per_sample: usize,
    pub keys: &'a [Vec<f32>],
    pub values: &'a [Vec<f32>],
    pub cap: usize,
    pub visible: &'a [Vec<u32>],
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// One batch row's cached keys and values of one key/value head: position `t`'s vector
/// starts at `t * stride + offset`.
struct Keys<'a> {
    k: &'a [f32],
    v: &'a [f32],
    stride: usize,
    offset: usize,
}

/// A stretch of positions of one row's attention for one key/value head, taken by one
/// task for all the query heads that share that key/value head.
struct Part {
    row: usize,
    kv_head: usize,
    positions: std::ops::Range<usize>,
}

/// Every query head of every row attending over its visible positions, written to `out`
/// (row-major, heads side by side). The positions are split into parts (flash-decoding's
/// split along the keys), each part taken for the query heads of one key/value head
/// together, and the parts' sums combined afterwards in order: the threads share the work
/// evenly whatever the number of heads, and each key and value is read from memory once
/// (split by query head, nine heads on two threads left one thread a head longer, and
/// the three heads of one key/value head could land on both threads, each reading the
/// keys and values).
pub fn attend_step(step: &Step<'_>, out: &mut [f32]) {
    let (hd, group) = (step.head_dim, step.heads / step.kv_heads);
    let rows = step.visible.len();
    assert!(out.len() == rows * step.heads * hd && step.heads.is_multiple_of(step.kv_heads));
    let mut parts = Vec::new();
    // Where the parts of (row, key/value head) start in `parts`.
    let mut first = Vec::with_capacity(rows * step.kv_heads + 1);
    for (row, visible) in step.visible.iter().enumerate() {
        let n = visible.len();
        let count = (n / PART).max(1);
        for kv_head in 0..step.kv_heads {
            first.push(parts.len());
            for i in 0..count {
                parts.push(Part {
                    row,
                    kv_head,
                    positions: i * n / count..(i + 1) * n / count,
                });
            }
        }
    }
    first.push(parts.len());
    let mut sums = vec![0f32; parts.len() * group * hd];
    let mut stats = vec![(0f32, 0f32); parts.len() * group];
    sums.par_chunks_mut(group * hd)
        .zip(stats.par_chunks_mut(group))
        .zip(parts.par_iter())
        .for_each(|((sums, stats), part)| {
            let sample = part.row / step.rows_per_sample;
            let keys = Keys {
                k: &step.keys[sample],
                v: &step.values[sample],
                stride: hd,
                offset: part.kv_head * step.cap * hd,
            };
            let visible = &step.visible[part.row][part.positions.clone()];
            for (j, (sum, stat)) in sums.chunks_exact_mut(hd).zip(stats).enumerate() {
                let head = part.kv_head * group + j;
                let q = &step.qkv[part.row * step.row_len + head * hd..][..hd];
                *stat = attend_part(q, &keys, visible, step.scale, sum);
            }
        });
    for (row, out) in out.chunks_exact_mut(step.heads * hd).enumerate() {
        for (head, out) in out.chunks_exact_mut(hd).enumerate() {
            let (kv_head, j) = (head / group, head % group);
            let at = row * step.kv_heads + kv_head;
            let own = (first[at]..first[at + 1]).map(|p| {
                let i = p * group + j;
                (stats[i], &sums[i * hd..(i + 1) * hd])
            });
            combine(own, out);
        }
    }
}

/// `out = sum_p e_p acc_p / sum_p e_p l_p` over the parts `((max_p, l_p), acc_p)` of one
/// query's attention, `e_p = exp(max_p - max)`: the softmax over all the parts'
/// positions. Zeros when no part saw a position.
fn combine<'a>(parts: impl Iterator<Item = ((f32, f32), &'a [f32])> + Clone, out: &mut [f32]) {
    let max = parts
        .clone()
        .filter(|((_, l), _)| *l > 0.0)
        .map(|((m, _), _)| m)
        .fold(f32::NEG_INFINITY, f32::max);
    out.fill(0.0);
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut total = 0.0;
    for ((m, l), acc) in parts.filter(|((_, l), _)| *l > 0.0) {
        let e = exp_neg(m - max);
        total += e * l;
        for (o, &a) in out.iter_mut().zip(acc) {
            *o += e * a;
        }
    }
    let inv = 1.0 / total;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(target_arch = "x86_64")]
fn simd() -> bool {
    static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SIMD.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// One part of an attention split over the positions: `out = sum_t p_t v_t` with
/// `p_t = exp(q . k_t * scale - max)` over the positions `t` of `visible`, and
/// `(max, sum_t p_t)`, from which [`combine`] normalises the parts together;
/// `(-inf, 0)` and zeros when `visible` is empty.
fn attend_part(
    q: &[f32],
    keys: &Keys<'_>,
    visible: &[u32],
    scale: f32,
    out: &mut [f32],
) -> (f32, f32) {
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
        return unsafe { attend_avx(q, keys, visible, scale, out) };
    }
    attend_body(q, keys, visible, scale, out)
}

/// The vector path: the scores of four positions at a time (four independent sums, the
/// query read once for the four), then the weighted sum of the values with the output
/// held in registers, 64 floats at a time: loops that wrote each partial sum back to
/// memory took a large share of a q8_0 decoding step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx(
    q: &[f32],
    keys: &Keys<'_>,
    visible: &[u32],
    scale: f32,
    out: &mut [f32],
) -> (f32, f32) {
    let hd = q.len();
    if visible.is_empty() {
        out.fill(0.0);
        return (f32::NEG_INFINITY, 0.0);
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
    let (max, sum) = softmax_weights(&mut scores);
    let op = out.as_mut_ptr();
    let mut c = 0;
    while c + 64 <= hd {
        weighted_sum::<8>(vp, visible, &scores, &at, c, op);
        c += 64;
    }
    while c < hd {
        weighted_sum::<1>(vp, visible, &scores, &at, c, op);
        c += 8;
    }
    (max, sum)
}

/// `out[c .. c + 8 G] = sum_t p_t v_t[c .. c + 8 G]`, the `G` sums in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_sum<const G: usize>(
    vp: *const f32,
    visible: &[u32],
    p: &[f32],
    at: &impl Fn(u32) -> usize,
    c: usize,
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
        _mm256_storeu_ps(op.add(c + 8 * g), *a);
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

/// `exp(s - max s)` in place, and `(max s, their sum)`: the exponentials in a loop of
/// their own, which vectorises (a running sum in the same loop would keep it scalar).
#[inline]
fn softmax_weights(scores: &mut [f32]) -> (f32, f32) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for s in scores.iter_mut() {
        *s = exp_neg(*s - max);
    }
    (max, sum_of(scores))
}

/// Plain loops: the portable path, and the reference the vector path is tested against.
fn attend_body(
    q: &[f32],
    keys: &Keys<'_>,
    visible: &[u32],
    scale: f32,
    out: &mut [f32],
) -> (f32, f32) {
    let hd = q.len();
    out.fill(0.0);
    if visible.is_empty() {
        return (f32::NEG_INFINITY, 0.0);
    }
    let at = |t: u32| t as usize * keys.stride + keys.offset;
    let mut scores = Vec::with_capacity(visible.len());
    for &t in visible {
        let k = &keys.k[at(t)..][..hd];
        let dot: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
        scores.push(dot * scale);
    }
    let (max, sum) = softmax_weights(&mut scores);
    for (&t, &p) in visible.iter().zip(&scores) {
        let v = &keys.v[at(t)..][..hd];
        for (o, &vv) in out.iter_mut().zip(v) {
            *o += p * vv;
        }
    }
    (max, sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::test_noise as noise;

    /// [`attend_part`] or [`attend_body`].
    type Pass = fn(&[f32], &Keys<'_>, &[u32], f32, &mut [f32]) -> (f32, f32);

    /// `softmax(q . k_t * scale) . v_t` over all of `visible` by `pass` (the vector or
    /// the plain path); zeros when nothing is visible.
    fn whole(pass: Pass, q: &[f32], keys: &Keys<'_>, visible: &[u32], scale: f32) -> Vec<f32> {
        let mut out = vec![9f32; q.len()];
        let (_, sum) = pass(q, keys, visible, scale, &mut out);
        if sum > 0.0 {
            out.iter_mut().for_each(|o| *o /= sum);
        }
        out
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
                    let fast = whole(attend_part, &q, &keys, &visible, 0.3);
                    let plain = whole(attend_body, &q, &keys, &visible, 0.3);
                    for (a, b) in fast.iter().zip(&plain) {
                        assert!((a - b).abs() <= 1e-5, "hd {hd}: {a} vs {b}");
                    }
                }
            }
        }
    }

    /// Split into parts along the positions and combined, every head of every row matches
    /// one pass over all its positions; a row that sees nothing gets zeros.
    #[test]
    fn attention_in_parts_matches_one_pass_per_head() {
        let (heads, kv_heads, hd, cap) = (6, 2, 16, 640);
        let k = noise(kv_heads * cap * hd, 11);
        let v = noise(kv_heads * cap * hd, 12);
        // With five threads the first row is split in four parts, the second in two.
        let visible = vec![
            (0..600).collect::<Vec<u32>>(),
            (0..600).step_by(2).collect(),
            (0..40).collect(),
            vec![],
        ];
        let row_len = (heads + 2 * kv_heads) * hd;
        let qkv = noise(visible.len() * row_len, 13);
        let (keys, values) = (vec![k.clone()], vec![v.clone()]);
        let step = Step {
            qkv: &qkv,
            row_len,
            rows_per_sample: visible.len(),
            keys: &keys,
            values: &values,
            cap,
            visible: &visible,
            heads,
            kv_heads,
            head_dim: hd,
            scale: 0.7,
        };
        for threads in [1, 2, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![9f32; visible.len() * heads * hd];
            pool.install(|| attend_step(&step, &mut out));
            for (row, seen) in visible.iter().enumerate() {
                for head in 0..heads {
                    let keys = Keys {
                        k: &k,
                        v: &v,
                        stride: hd,
                        offset: (head / (heads / kv_heads)) * cap * hd,
                    };
                    let q = &qkv[row * row_len + head * hd..][..hd];
                    let want = whole(attend_body, q, &keys, seen, 0.7);
                    let got = &out[(row * heads + head) * hd..][..hd];
                    for (a, b) in got.iter().zip(&want) {
                        assert!((a - b).abs() <= 1e-5, "row {row} head {head}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
