//! How a stored weight value widens to f32 in the tile: f32 as it is, bf16 bits, q8_0
//! quants and q4_1's nibble pairs, a column (or a pair of columns) of a panel at a time,
//! in the layouts `super` describes ([`super::bf16_slot`], [`super::q8_at`],
//! [`super::q4_at`]).

use super::{read, PANEL};
use crate::infer::bf16_to_f32;

/// A stored weight value: f32, bf16 bits (u16), a q8_0 quant (i8) or a pair of q4_1
/// quants ([`Nibbles`]).
pub(super) trait Element: Copy + Sync {
    /// Whether the values carry a scale per [`BLOCK`] input columns (q8_0, q4_1).
    const SCALED: bool;
    /// Whether the values carry a minimum per [`BLOCK`] input columns too (q4_1).
    const OFFSET: bool = false;
    /// Weights one stored item holds.
    const PER_ITEM: usize = 1;
    /// Whether a one-row tile sums even and odd columns apart ([`tile`]).
    const SPLIT_SUMS: bool = false;
    /// Whether products at one or two input rows give each thread two long runs of
    /// panels rather than tasks of one or two ([`Split`]).
    const LONG_RUNS: bool = true;
    fn widen(self) -> f32;

    /// The stored column at `at` (its [`PANEL`] values), widened to f32 in row order.
    ///
    /// # Safety
    /// `at + PANEL <= data.len()`.
    #[inline(always)]
    unsafe fn widen_column(data: &[Self], at: usize) -> [f32; PANEL] {
        // Loops, not `array::map`: the map was not vectorised (decoding far slower).
        let stored: [Self; PANEL] = read(data, at);
        let mut out = [0f32; PANEL];
        for l in 0..PANEL {
            out[l] = stored[l].widen();
        }
        out
    }

    /// The stored columns `k` and `k + 1` (`k` even) of the panel at `at` widened, for
    /// q8_0's column pairs ([`q8_at`]); two columns in order elsewhere.
    ///
    /// # Safety
    /// `at + 2 * PANEL <= data.len()`.
    #[inline(always)]
    unsafe fn widen_pair(data: &[Self], at: usize) -> [[f32; PANEL]; 2] {
        [
            Self::widen_column(data, at),
            Self::widen_column(data, at + PANEL),
        ]
    }
}

impl Element for f32 {
    const SCALED: bool = false;
    const LONG_RUNS: bool = false;
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Element for u16 {
    const SCALED: bool = false;
    const SPLIT_SUMS: bool = true;
    #[inline(always)]
    fn widen(self) -> f32 {
        bf16_to_f32(self)
    }

    /// The column's rows in pairs a 32-bit word ([`bf16_slot`]).
    #[inline(always)]
    unsafe fn widen_column(data: &[u16], at: usize) -> [f32; PANEL] {
        debug_assert!(at + PANEL <= data.len());
        let words: [u32; PANEL / 2] =
            std::ptr::read_unaligned(data.as_ptr().add(at) as *const [u32; PANEL / 2]);
        let mut out = [0f32; PANEL];
        for (j, &word) in words.iter().enumerate() {
            out[j] = f32::from_bits(word << 16);
            out[j + PANEL / 2] = f32::from_bits(word & 0xffff_0000);
        }
        out
    }
}

impl Element for i8 {
    const SCALED: bool = true;
    #[inline(always)]
    fn widen(self) -> f32 {
        self as f32
    }

    /// The pair's words ([`q8_at`]), each byte sign-extended by a left and a right shift.
    #[inline(always)]
    unsafe fn widen_pair(data: &[i8], at: usize) -> [[f32; PANEL]; 2] {
        let words: [i32; PANEL / 2] = std::ptr::read_unaligned(data.as_ptr().add(at).cast());
        let mut out = [[0f32; PANEL]; 2];
        for (j, &word) in words.iter().enumerate() {
            let w = i32::from_le(word);
            out[0][j] = ((w << 24) >> 24) as f32;
            out[1][j] = ((w << 16) >> 24) as f32;
            out[0][j + PANEL / 2] = ((w << 8) >> 24) as f32;
            out[1][j + PANEL / 2] = (w >> 24) as f32;
        }
        out
    }
}

/// Two q4_1 quants of one panel row: column `k` (even) in the low nibble, `k + 1` in the
/// high one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Nibbles(pub(super) u8);

impl Element for Nibbles {
    const SCALED: bool = true;
    const OFFSET: bool = true;
    const PER_ITEM: usize = 2;
    #[inline(always)]
    fn widen(self) -> f32 {
        unreachable!("q4_1 quants are read in column pairs")
    }

    #[inline(always)]
    unsafe fn widen_column(_: &[Self], _: usize) -> [f32; PANEL] {
        unreachable!("q4_1 quants are read in column pairs")
    }

    /// The pair's bytes ([`q4_at`]): low nibbles column `k`, high nibbles `k + 1`.
    #[inline(always)]
    unsafe fn widen_pair(data: &[Nibbles], at: usize) -> [[f32; PANEL]; 2] {
        let bytes: [u8; PANEL] = read(data, at).map(|n| n.0);
        let mut out = [[0f32; PANEL]; 2];
        for l in 0..PANEL {
            out[0][l] = (bytes[l] & 15) as f32;
            out[1][l] = (bytes[l] >> 4) as f32;
        }
        out
    }
}
