//! Element-wise building blocks in vector lanes, shared by the fused training ops (`fused`)
//! and the decoding engine (`crate::infer`): a branch-free `exp` and sigmoid, sums in
//! eight lanes, loops built for AVX-512 as well (`wide_where_available!`), and output
//! buffers a kernel fills without a zero fill first.

use std::mem::MaybeUninit;

/// Sum of `a[i] * b[i]` in eight lanes, so that it vectorises.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// 1.5 * 2^23: an f32 this large has no fraction bits, so adding it to a value below 2^22
/// in magnitude and taking it away again rounds the value to the nearest integer, ties to
/// even, in plain arithmetic that vectorises (baseline x86-64 SIMD has no rounding
/// instruction, and `round` is a libm call a value there).
pub(crate) const ROUND_TO_INTEGER: f32 = 12_582_912.0;

/// `exp(x)` for `x <= 0` (softmax and log-sum-exp arguments, shifted by their maximum),
/// branch-free so that loops over it vectorise, unlike libm's `expf`: Cephes' `expf`
/// (range reduction by `ln 2` in two parts, a degree-6 polynomial, the exponent set in
/// the bits), within 2 ulp of the exact value. 0 below `-87.3`, where f32 `exp` leaves
/// the normal range; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = ROUND_TO_INTEGER;
    let xc = x.clamp(-87.3, 0.0);
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_66;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // The integer n sits in the low mantissa bits of `shifted`; read it there rather than
    // with a float-to-int conversion, which keeps the loops vectorisable. n is in
    // [-126, 0], a normal exponent.
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        y * scale
    }
}

/// Defines `fn $name` whose body is compiled twice, for the baseline and for AVX-512F
/// (16 lanes instead of SSE's 4), the second chosen at run time where the CPU has it, and
/// a module `$name` holding the two builds (`body`, and `wide` on x86-64) for tests that
/// compare them. For element-wise loops whose arithmetic, not memory, sets the pace (an
/// exponential, a square root and a division): the same f32 operations at either width
/// (Rust never fuses a multiply and an add on its own), so the same bits.
#[macro_export]
macro_rules! wide_where_available {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if $crate::ops::lanes::has_avx512f() {
                // SAFETY: the CPU has AVX-512F (checked).
                return unsafe { $name::wide($($arg),*) };
            }
            $name::body($($arg),*)
        }

        /// The two builds of the function of the same name.
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[inline(always)]
            pub(super) fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            pub(super) unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
        }
    };
}

/// Whether the CPU has AVX-512F (checked once): the choice `wide_where_available!` makes.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512f() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// An output buffer of `n` floats for a kernel that writes every element before it reads
/// any: `vec![0.0; n]` would first fill it with zeros, a pass over memory for nothing (the
/// zero fills showed in a LoRA training step's profile; docs/perf-log/2026-11-26-speed-rounds.md).
pub(crate) fn output_buffer(n: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` elements need no initialisation.
    unsafe { v.set_len(n) };
    v
}

/// A kernel's output chunk as floats, once the kernel has written all of it.
///
/// # Safety
/// Every element of `chunk` has been written.
pub(crate) unsafe fn written(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    &mut *(chunk as *mut [MaybeUninit<f32>] as *mut [f32])
}

/// The buffer of [`output_buffer`] as floats, once every element has been written.
///
/// # Safety
/// Every element of `v` has been written.
pub(crate) unsafe fn all_written(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity())
}

/// The largest element, in eight lanes.
pub(crate) fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = acc[l].max(c[l]);
        }
    }
    tail.iter()
        .chain(&acc)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// The sum of the elements, in eight lanes (a plain `sum` is one chain of dependent adds).
pub(crate) fn sum_of(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

wide_where_available! {
    /// `sum(exp(x - shift))` for `shift >= max(x)`: the exponentials of a block go to a
    /// buffer in a plain element-wise loop (which vectorises), then are summed.
    pub(crate) fn sum_exp(x: &[f32], shift: f32) -> f32 {
        let mut buf = [0f32; 256];
        let mut total = 0f32;
        for c in x.chunks(buf.len()) {
            let b = &mut buf[..c.len()];
            for (b, &v) in b.iter_mut().zip(c) {
                *b = exp_neg(v - shift);
            }
            total += sum_of(b);
        }
        total
    }
}

wide_where_available! {
    /// `x = exp(x - shift)` in place, for `shift >= max(x)`.
    pub(crate) fn exp_shifted(x: &mut [f32], shift: f32) {
        for v in x.iter_mut() {
            *v = exp_neg(*v - shift);
        }
    }
}

wide_where_available! {
    /// `out = exp(x - shift) * k`, for `shift >= max(x)`.
    pub(crate) fn exp_shifted_scaled(out: &mut [f32], x: &[f32], shift: f32, k: f32) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = exp_neg(x - shift) * k;
        }
    }
}

/// `1 / (1 + exp(-x))` from [`exp_neg`] of `-|x|`, branch-free so that loops over it
/// vectorise (libm's `expf` is a call per element).
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    let e = exp_neg(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 {
        r
    } else {
        e * r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the CPU has AVX-512F the functions of `wide_where_available!` take their
    /// AVX-512 build; it must give the baseline build's bits (the same f32 operations in
    /// the same order at another lane width). SwiGLU's are checked in `fused`, AdamW's in
    /// ferrotune-train.
    #[test]
    fn the_avx512_builds_give_the_baseline_bits() {
        let x: Vec<f32> = (0..1001)
            .map(|i| ((i * 37 % 401) as f32 - 200.0) * 0.07)
            .collect();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);

        assert_eq!(sum_exp(&x, max).to_bits(), sum_exp::body(&x, max).to_bits());

        let (mut a, mut b) = (x.clone(), x.clone());
        exp_shifted(&mut a, max);
        exp_shifted::body(&mut b, max);
        assert_eq!(bits(&a), bits(&b));

        let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        exp_shifted_scaled(&mut a, &x, max, 0.3);
        exp_shifted_scaled::body(&mut b, &x, max, 0.3);
        assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn exp_neg_is_within_two_ulp_of_exp() {
        let mut worst = 0f64;
        for i in 0..=873_000 {
            let x = -(i as f32) * 1e-4;
            let want = (x as f64).exp();
            let got = exp_neg(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        // 2 ulp of f32 is 2^-22 relative at worst.
        assert!(
            worst < 2.0 * f32::EPSILON as f64,
            "relative error {worst:e}"
        );
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(-100.0), 0.0);
        assert_eq!(exp_neg(f32::MIN), 0.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert!(exp_neg(f32::NAN).is_nan());
    }
}
