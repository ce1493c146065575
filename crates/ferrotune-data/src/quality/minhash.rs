//! Near-duplicate detection: MinHash signatures of unit shingles, grouped by locality
//! sensitive hashing so that 100k samples take seconds instead of 10^10 comparisons.
//!
//! Each text becomes the set of its 3-unit shingles (words, or single CJK characters,
//! see [`super::text::units`]); 128 multiply-add-shift hash functions with fixed seeds
//! give a signature whose agreement rate estimates the Jaccard similarity of two sets.
//! The signature is cut into 32 bands of 4 rows: texts that agree on a whole band share
//! a bucket and are compared ([`super::groups`]). At a Jaccard similarity of 0.7 two
//! texts share a band with probability 1 - (1 - 0.7^4)^32 > 0.9999, at 0.3 only one in
//! four pairs is compared.

use super::text::{hash64, mix64, units};
use crate::rng::SplitMix64;

pub const NUM_HASHES: usize = 128;
pub const BANDS: usize = 32;
const ROWS: usize = NUM_HASHES / BANDS;
/// Units per shingle.
pub const SHINGLE: usize = 3;
/// Fixed, so the same data always gives the same report.
const SEED: u64 = 0x6d69_6e68_6173_6821;

pub type Signature = [u32; NUM_HASHES];

/// The hash family: `(a * x + b) >> 32` on a 32-bit folded shingle hash, Dietzfelbinger's
/// universal multiply-add-shift, cheap enough to vectorise.
pub struct MinHasher {
    a: [u64; NUM_HASHES],
    b: [u64; NUM_HASHES],
}

impl Default for MinHasher {
    fn default() -> Self {
        let mut rng = SplitMix64(SEED);
        let mut a = [0u64; NUM_HASHES];
        let mut b = [0u64; NUM_HASHES];
        for (a, b) in a.iter_mut().zip(&mut b) {
            *a = rng.next_u64() | 1;
            *b = rng.next_u64();
        }
        MinHasher { a, b }
    }
}

impl MinHasher {
    /// The signature of a normalized text, or `None` when it has too few units to say
    /// anything about near-duplication (exact duplicates catch those).
    pub fn signature(&self, text: &str, min_shingles: usize) -> Option<Signature> {
        let hashes: Vec<u64> = units(text)
            .iter()
            .map(|u| hash64(u.as_bytes(), SEED))
            .collect();
        if hashes.len() < SHINGLE + min_shingles.max(1) - 1 {
            return None;
        }
        let mut sig = [u32::MAX; NUM_HASHES];
        for w in hashes.windows(SHINGLE) {
            let shingle = mix64(
                w[0] ^ w[1].rotate_left(21).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    ^ w[2].rotate_left(42).wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
            );
            let x = (shingle ^ (shingle >> 32)) & 0xffff_ffff;
            for ((s, a), b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                *s = (*s).min((a.wrapping_mul(x).wrapping_add(*b) >> 32) as u32);
            }
        }
        Some(sig)
    }
}

/// The estimated Jaccard similarity of the sets behind two signatures.
pub fn similarity(a: &Signature, b: &Signature) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / NUM_HASHES as f64
}

/// The bucket of each band of a signature: two signatures that agree on a whole band
/// share its bucket (the band's number is hashed in, so buckets of different bands
/// never meet).
pub fn band_keys(signature: &Signature) -> [u64; BANDS] {
    std::array::from_fn(|band| {
        let mut h = band as u64;
        for &r in &signature[band * ROWS..(band + 1) * ROWS] {
            h = mix64(h ^ u64::from(r)).wrapping_add(0x9e37_79b9_7f4a_7c15);
        }
        h
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::text::normalize;

    #[test]
    fn similar_texts_have_similar_signatures() {
        let h = MinHasher::default();
        let a = h
            .signature(
                &normalize("the quick brown fox jumps over the lazy dog near the river bank today"),
                1,
            )
            .unwrap();
        let b = h
            .signature(
                &normalize("the quick brown fox jumps over the lazy dog near the river bank now"),
                1,
            )
            .unwrap();
        let c = h
            .signature(
                &normalize("completely different words appear in this other sentence here"),
                1,
            )
            .unwrap();
        assert!(similarity(&a, &b) > 0.6, "{}", similarity(&a, &b));
        assert!(similarity(&a, &c) < 0.2, "{}", similarity(&a, &c));
        let shared = |x: &Signature, y: &Signature| {
            let (kx, ky) = (band_keys(x), band_keys(y));
            kx.iter().zip(&ky).filter(|(p, q)| p == q).count()
        };
        assert!(shared(&a, &b) > 0 && shared(&a, &c) == 0);
        assert!(h.signature("too short", 1).is_none());
    }
}
