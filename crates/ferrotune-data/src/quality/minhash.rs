//! Near-duplicate detection: MinHash signatures of unit shingles, grouped by locality
//! sensitive hashing so that 100k samples take seconds instead of 10^10 comparisons.
//!
//! Each text becomes the set of its 3-unit shingles (words, or single CJK characters,
//! see [`super::text::units`]); 128 multiply-add-shift hash functions with fixed seeds
//! give a signature whose agreement rate estimates the Jaccard similarity of two sets.
//! The signature is cut into 32 bands of 4 rows: texts that agree on a whole band share
//! a bucket and are compared. At a Jaccard similarity of 0.7 two texts share a band with
//! probability 1 - (1 - 0.7^4)^32 > 0.9999, at 0.3 only one in four pairs is compared.

use rayon::prelude::*;

use super::text::{hash64, mix64, units};
use crate::rng::SplitMix64;

pub const NUM_HASHES: usize = 128;
const BANDS: usize = 32;
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

/// Groups of items whose estimated similarity is at least `threshold`, chained
/// transitively; each group sorted, groups ordered by their first item. Items without a
/// signature are never grouped.
pub fn clusters(signatures: &[Option<Signature>], threshold: f64) -> Vec<Vec<usize>> {
    let n = signatures.len();
    // Per band, (bucket hash, item) sorted: equal hashes are adjacent and in item order.
    let bands: Vec<Vec<(u64, u32)>> = (0..BANDS)
        .into_par_iter()
        .map(|band| {
            let mut keys: Vec<(u64, u32)> = signatures
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let rows = &s.as_ref()?[band * ROWS..(band + 1) * ROWS];
                    let mut h = band as u64;
                    for &r in rows {
                        h = mix64(h ^ u64::from(r)).wrapping_add(0x9e37_79b9_7f4a_7c15);
                    }
                    Some((h, i as u32))
                })
                .collect();
            keys.sort_unstable();
            keys
        })
        .collect();
    // Within a bucket, compare each item with the bucket's first and with its
    // predecessor: linear in the bucket size, and a truly similar pair shares many
    // bands, so it meets in one of them.
    let pairs: Vec<(u32, u32)> = bands
        .par_iter()
        .flat_map_iter(|keys| {
            let mut found = Vec::new();
            let mut start = 0;
            while start < keys.len() {
                let mut end = start + 1;
                while end < keys.len() && keys[end].0 == keys[start].0 {
                    end += 1;
                }
                let first = keys[start].1;
                for k in start + 1..end {
                    let item = keys[k].1;
                    let prev = keys[k - 1].1;
                    if close(signatures, first, item, threshold) {
                        found.push((first, item));
                    } else if prev != first && close(signatures, prev, item, threshold) {
                        found.push((prev, item));
                    }
                }
                start = end;
            }
            found
        })
        .collect();
    let mut parent: Vec<usize> = (0..n).collect();
    for (a, b) in pairs {
        union(&mut parent, a as usize, b as usize);
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..n {
        let root = find(&mut parent, i);
        groups.entry(root).or_default().push(i);
    }
    let mut out: Vec<Vec<usize>> = groups.into_values().filter(|g| g.len() > 1).collect();
    out.sort_by_key(|g| g[0]);
    out
}

fn close(signatures: &[Option<Signature>], a: u32, b: u32, threshold: f64) -> bool {
    match (&signatures[a as usize], &signatures[b as usize]) {
        (Some(x), Some(y)) => similarity(x, y) >= threshold,
        _ => false,
    }
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Unions by smaller root, so a group's root is its first item.
fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        parent[ra.max(rb)] = ra.min(rb);
    }
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
        assert_eq!(
            clusters(&[Some(a), Some(c), Some(b)], 0.6),
            vec![vec![0, 2]]
        );
        assert!(h.signature("too short", 1).is_none());
    }
}
