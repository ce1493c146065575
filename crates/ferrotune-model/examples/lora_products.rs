//! The products of one LoRA projection (rank 8) at the training shapes of the speed
//! issue's model, on one thread (a data-parallel training shard): microseconds per
//! product, against the frozen base product of the same layer.
//!
//!     cargo run --release -p ferrotune-model --example lora_products -- [ROWS]

use std::time::Instant;

use candle_core::{Device, Tensor};
use ferrotune_model::ops::gemm;

fn best(mut f: impl FnMut() -> candle_core::Result<Tensor>, reps: usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(f().expect("product"));
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best * 1e6
}

fn main() -> candle_core::Result<()> {
    let rows: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(256);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    pool.install(|| -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let r = 8;
        for (inf, outf) in [(256, 256), (256, 688), (688, 256)] {
            let x = Tensor::randn(0f32, 1.0, (rows, inf), &dev)?;
            let g = Tensor::randn(0f32, 1.0, (rows, outf), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (outf, inf), &dev)?;
            let a = Tensor::randn(0f32, 1.0, (r, inf), &dev)?;
            let b = Tensor::randn(0f32, 1.0, (outf, r), &dev)?;
            let u = gemm::matmul(&x, &a.t()?)?;
            let gu = gemm::matmul(&g, &b)?;
            let gf = |m: usize, n: usize, k: usize, us: f64| 2.0 * (m * n * k) as f64 / us / 1e3;
            let base = best(|| gemm::matmul(&x, &w.t()?), 50);
            let base_dx = best(|| gemm::matmul(&g, &w), 50);
            let t_u = best(|| gemm::matmul(&x, &a.t()?), 200);
            let t_fwd = best(|| gemm::sum_of_products(&[(&x, &w.t()?, 1.0), (&u, &b.t()?, 2.0)]), 50);
            let t_db = best(|| gemm::sum_of_products(&[(&g.t()?, &u, 2.0)]), 200);
            let t_gu = best(|| gemm::sum_of_products(&[(&g, &b, 2.0)]), 200);
            let t_da = best(|| gemm::matmul(&gu.t()?, &x), 200);
            let t_dx = best(|| gemm::sum_of_products(&[(&g, &w, 1.0), (&gu, &a, 1.0)]), 50);
            println!(
                "in {inf} out {outf} rows {rows}: base x W^T {base:.1} us ({:.0} GFLOP/s), g W {base_dx:.1}",
                gf(rows, outf, inf, base)
            );
            println!(
                "  u = x A^T {t_u:.1} ({:.0}); fwd sum (+u B^T) {t_fwd:.1} (+{:.1}); dB = g^T u {t_db:.1} ({:.0}); gu = g B {t_gu:.1} ({:.0}); dA = gu^T x {t_da:.1} ({:.0}); dx sum (+gu A) {t_dx:.1} (+{:.1})",
                gf(rows, r, inf, t_u),
                t_fwd - base,
                gf(outf, r, rows, t_db),
                gf(rows, r, outf, t_gu),
                gf(r, inf, rows, t_da),
                t_dx - base_dx
            );
            // The same products with the rank as the output's rows (transposed results).
            let tt_u = best(|| gemm::matmul(&a, &x.t()?), 200);
            let tt_db = best(|| gemm::matmul(&u.t()?, &g), 200);
            let tt_gu = best(|| gemm::matmul(&b.t()?, &g.t()?), 200);
            println!("  rank-major: u^T = A x^T {tt_u:.1}; dB^T = u^T g {tt_db:.1}; gu^T = B^T g^T {tt_gu:.1}");
            let lora_extra = t_u + (t_fwd - base) + t_db + t_gu + t_da + (t_dx - base_dx);
            println!("  LoRA's extra per layer: {lora_extra:.1} us against base fwd+dx {:.1} us", base + base_dx);
        }
        Ok(())
    })
}
