//! The inference products at SmolLM2-135M's shapes, own kernels (f32, bf16, q8_0) against
//! candle's quantized `QMatMul` (Q8_0): microseconds per product for m input rows.
//!
//! cargo run --release -p ferrotune-model --example skinny_matmul -- [THREADS]

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use ferrotune_model::infer::{streaming_sum, Matrix, WeightType};

fn best(mut f: impl FnMut(), reps: usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best * 1e6
}

fn main() -> candle_core::Result<()> {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    let dev = Device::Cpu;
    println!("| rows x cols | m | f32 | bf16 | q8_0 (own) | q8_0 (candle QMatMul) |");
    println!("|---|---|---|---|---|---|");
    for (rows, cols) in [
        (960, 576),
        (576, 576),
        (3072, 576),
        (576, 1536),
        (49152, 576),
    ] {
        let w = Tensor::randn(0f32, 0.05, (rows, cols), &dev)?;
        let q = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0)?)?;
        let own: Vec<Matrix> = [WeightType::F32, WeightType::Bf16, WeightType::Q8_0]
            .iter()
            .map(|&t| Matrix::new(&w, t))
            .collect::<candle_core::Result<_>>()?;
        let reps = (2_000_000_000 / (rows * cols * 4)).clamp(3, 2000);
        for m in [1usize, 8] {
            let x = Tensor::randn(0f32, 1.0, (m, cols), &dev)?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let mut y = vec![0f32; m * rows];
            let mut cells = Vec::new();
            for mat in &own {
                cells.push(best(|| mat.matmul(&xv, m, &mut y).unwrap(), reps));
            }
            cells.push(best(|| drop(q.forward(&x).unwrap()), reps));
            let cells: Vec<String> = cells.iter().map(|c| format!("{c:.0} us")).collect();
            println!("| {rows}x{cols} | {m} | {} |", cells.join(" | "));
        }
    }
    // Streaming: SmolLM2's 30 layers of products (538 MB in f32, far beyond the caches)
    // at m = 1, against a parallel sum over a buffer of the same size.
    let shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
    let mut layers = Vec::new();
    for _ in 0..30 {
        for (rows, cols) in shapes {
            layers.push(Tensor::randn(0f32, 0.05, (rows, cols), &dev)?);
        }
    }
    layers.push(Tensor::randn(0f32, 0.05, (49152, 576), &dev)?);
    let n: usize = layers.iter().map(|t| t.elem_count()).sum();
    let buffer: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let sum_s = best(
        || {
            std::hint::black_box(streaming_sum(&buffer));
        },
        3,
    );
    {
        // The fixed cost of a parallel product: 121 products of a tiny weight per pass.
        let tiny = Matrix::new(&Tensor::randn(0f32, 0.05, (64, 32), &dev)?, WeightType::F32)?;
        let x = vec![0.5f32; 32];
        let mut y = vec![0f32; 64];
        let s = best(
            || {
                rayon::scope(|_| {
                    for _ in 0..121 {
                        tiny.matmul(&x, 1, &mut y).unwrap();
                    }
                })
            },
            20,
        );
        println!(
            "121 tiny products: {s:.0} us a pass, {:.1} us each",
            s / 121.0
        );
    }
    println!(
        "sum of {} MB: {:.1} GB/s",
        4 * n / 1_000_000,
        4.0 * n as f64 / sum_s / 1e3
    );
    for ty in [WeightType::F32, WeightType::Bf16, WeightType::Q8_0] {
        let mats: Vec<Matrix> = layers
            .iter()
            .map(|w| Matrix::new(w, ty))
            .collect::<candle_core::Result<_>>()?;
        let bytes: usize = mats.iter().map(Matrix::bytes).sum();
        let xs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.5f32; m.cols()]).collect();
        let mut ys: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; m.rows()]).collect();
        let s = best(
            || {
                // On a pool thread, as the engine's decoding step runs.
                rayon::scope(|_| {
                    for ((m, x), y) in mats.iter().zip(&xs).zip(ys.iter_mut()) {
                        m.matmul(x, 1, y).unwrap();
                    }
                })
            },
            3,
        );
        println!(
            "{ty}: {:.1} MB in {:.2} ms: {:.1} GB/s, {:.1} passes/s",
            bytes as f64 / 1e6,
            s / 1e3,
            bytes as f64 / s / 1e3,
            1e6 / s
        );
    }
    Ok(())
}
