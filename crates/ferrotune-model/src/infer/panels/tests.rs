//! The panels' products against plain loops on every instruction set, and the stored
//! weights against their rounding.

use super::*;
use crate::infer::test_noise as noise;

/// Every instruction set this CPU runs, the portable one included.
fn isas() -> Vec<Isa> {
    let mut out = vec![Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            out.push(Isa::Avx2);
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            out.push(Isa::Avx512);
        }
    }
    out
}

#[test]
fn panel_products_match_plain_loops_on_every_instruction_set() {
    // 75 rows leave a partial last panel; 40 columns are not whole q8_0 blocks.
    for (rows, cols) in [(75, 64), (64, 576), (33, 1536), (75, 40)] {
        let w = noise(rows * cols, (rows + cols) as u32);
        let mut kinds = vec![
            ("f32", Panels::f32(&w, rows, cols)),
            ("bf16", Panels::bf16(&w, rows, cols)),
        ];
        if cols.is_multiple_of(BLOCK) {
            kinds.push(("q8_0", Panels::q8(&w, rows, cols)));
            kinds.push(("q4_1", Panels::q4(&w, rows, cols)));
        }
        for (name, panels) in &kinds {
            // The reference: the stored weights read one by one, dot products in order.
            let stored: Vec<f32> = (0..rows * cols)
                .map(|i| panels.get(i / cols, i % cols, cols))
                .collect();
            // Every tile height of every instruction set, and several tiles a panel.
            for m in (1..=8).chain([11, 19]) {
                let x = noise(m * cols, 7 + m as u32);
                let mut want = vec![0f32; m * rows];
                for t in 0..m {
                    for r in 0..rows {
                        want[t * rows + r] = (0..cols)
                            .map(|k| stored[r * cols + k] * x[t * cols + k])
                            .sum();
                    }
                }
                // Where q8_0 rounds the input to int16 (`q8dot`), each input is off
                // by at most half its block's step, max |x| / 32767 / 2.
                let mut rounding = vec![0f32; m * rows];
                if *name == "q8_0" && m <= 2 && q8dot::available() {
                    for t in 0..m {
                        for r in 0..rows {
                            rounding[t * rows + r] = (0..cols / BLOCK)
                                .map(|b| {
                                    let block = b * BLOCK..(b + 1) * BLOCK;
                                    let amax = x[t * cols..][block.clone()]
                                        .iter()
                                        .fold(0f32, |a, v| a.max(v.abs()));
                                    let weights: f32 =
                                        block.map(|k| stored[r * cols + k].abs()).sum();
                                    amax / 32767.0 / 2.0 * weights
                                })
                                .sum();
                        }
                    }
                }
                for isa in isas() {
                    let mut got = vec![f32::NAN; m * rows];
                    panels.matmul_on(isa, rows, cols, &x, m, &mut got);
                    let int16 = isa == Isa::Avx512;
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        let allowed = if int16 { rounding[i] } else { 0.0 };
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + b.abs()) + allowed,
                            "{name} {rows}x{cols}, m {m}, {isa:?}, output {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn f16_scales_widen_exactly() {
    for bits in (0..=0xffffu16).filter(|b| b & 0x7c00 != 0x7c00) {
        assert_eq!(
            f16_widened(bits).to_bits(),
            f16_to_f32(bits).to_bits(),
            "{bits:#06x}"
        );
    }
}

#[test]
fn panels_keep_every_weight_where_it_was() {
    let (rows, cols) = (45, 64);
    let mut w = noise(rows * cols, 3);
    // A block whose f16 scale is subnormal (below 6.1e-5).
    w[cols..cols + BLOCK].iter_mut().for_each(|v| *v *= 1e-4);
    let (f, b, q, q4) = (
        Panels::f32(&w, rows, cols),
        Panels::bf16(&w, rows, cols),
        Panels::q8(&w, rows, cols),
        Panels::q4(&w, rows, cols),
    );
    let (quants, scales) = crate::infer::quantize_q8(&w);
    let (quants4, scales4, mins4) = crate::infer::quantize_q4_1(&w);
    for r in 0..rows {
        for k in 0..cols {
            let i = r * cols + k;
            assert_eq!(f.get(r, k, cols), w[i]);
            assert_eq!(b.get(r, k, cols), half::bf16::from_f32(w[i]).to_f32());
            let dq = quants[i] as f32 * f16_to_f32(scales[i / BLOCK]);
            assert_eq!(q.get(r, k, cols), dq, "q8_0 ({r}, {k})");
            let (d, m) = (f16_to_f32(scales4[i / BLOCK]), f16_to_f32(mins4[i / BLOCK]));
            let dq4 = quants4[i] as f32 * d + m;
            assert_eq!(q4.get(r, k, cols), dq4, "q4_1 ({r}, {k})");
        }
    }
}
