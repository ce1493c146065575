//! GFLOP/s of the matrix products a training step makes, at the shapes of the benchmark
//! models: candle's matmul (the gemm crate) against the path `ferrotune_model::ops::gemm`
//! takes (OpenBLAS when built with `--features openblas`), on 1 and 2 threads.
//!
//!     cargo run --release -p ferrotune-model --example gemm_shapes
//!     cargo run --release -p ferrotune-model --features openblas --example gemm_shapes
//!     cargo run --release -p ferrotune-model --features openblas --example gemm_shapes -- 2 512x256x8000
//!
//! Arguments: a thread list (`1,2`, the default) and shapes `MxKxN` (tokens x in x out of
//! a projection; the shapes by default). Each shape is measured as the forward
//! product `x W^T` (M,K)x(N,K)^T and its two backward products, `g W` (M,N)x(N,K) for the
//! input and `g^T x` (M,N)^T x (M,K) for the weight. Prints a markdown table: GFLOP/s of
//! the fastest of the repeats made in at least 0.3 s (on a shared machine the fastest
//! repeat is the one least disturbed by other processes).

use std::time::Instant;

use candle_core::{Device, Tensor};
use ferrotune_model::ops::gemm;

const SHAPES: [&str; 6] = [
    "512x256x688",
    "512x256x768",
    "512x688x256",
    "512x256x8000",
    "1024x576x1536",
    "1024x1536x576",
];

/// The fastest time of `f` over repeats lasting at least 0.3 s (and 5 repeats), after two
/// warm-up calls.
fn time(mut f: impl FnMut() -> candle_core::Result<Tensor>) -> candle_core::Result<f64> {
    f()?;
    f()?;
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < 5 || started.elapsed().as_secs_f64() < 0.3 {
        let t = Instant::now();
        let out = f()?;
        times.push(t.elapsed().as_secs_f64());
        drop(out);
    }
    Ok(times.iter().copied().fold(f64::INFINITY, f64::min))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads: Vec<usize> = match args.first() {
        Some(t) if !t.contains('x') => t.split(',').map(str::parse).collect::<Result<_, _>>()?,
        _ => vec![1, 2],
    };
    let shapes: Vec<String> = args.iter().filter(|a| a.contains('x')).cloned().collect();
    let shapes = if shapes.is_empty() {
        SHAPES.iter().map(|s| s.to_string()).collect()
    } else {
        shapes
    };
    let dev = Device::Cpu;
    let other = gemm::backend_info().unwrap_or_else(|| "candle (no openblas feature)".into());
    println!("ops::gemm path: {other}");
    println!();
    println!("| M x K x N | product | threads | candle GFLOP/s | ops::gemm GFLOP/s | ratio | max abs diff |");
    println!("|---|---|---|---|---|---|---|");
    for spec in &shapes {
        let dims: Vec<usize> = spec.split('x').map(str::parse).collect::<Result<_, _>>()?;
        let [m, k, n] = dims[..] else {
            return Err(format!("shape {spec}: expected MxKxN").into());
        };
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (n, k), &dev)?;
        let g = Tensor::randn(0f32, 1.0, (m, n), &dev)?;
        let flops = 2.0 * (m * n * k) as f64;
        for &t in &threads {
            // candle's matmul and the OpenBLAS pool size themselves from this; rayon's
            // global pool is built once, so each count gets its own pool (products run
            // inside it: gemm and ops::gemm split over the pool they are called from).
            std::env::set_var("RAYON_NUM_THREADS", t.to_string());
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
            pool.install(|| -> candle_core::Result<()> {
                let products: [(&str, &Tensor, Tensor); 3] = [
                    ("x W^T (forward)", &x, w.t()?),
                    ("g W (grad x)", &g, w.clone()),
                    ("g^T x (grad W)", &x, g.t()?),
                ];
                for (name, a, b) in products {
                    // g^T x is (N,M) x (M,K): the first operand is g^T.
                    let (a, b) = if name.starts_with("g^T") {
                        (b, a.clone())
                    } else {
                        (a.clone(), b)
                    };
                    let reference = a.matmul(&b)?;
                    let ours = gemm::matmul(&a, &b)?;
                    let diff = (reference - ours)?
                        .abs()?
                        .flatten_all()?
                        .max(0)?
                        .to_scalar::<f32>()?;
                    let candle = time(|| a.matmul(&b))?;
                    let routed = time(|| gemm::matmul(&a, &b))?;
                    println!(
                        "| {spec} | {name} | {t} | {:.0} | {:.0} | {:.2}x | {diff:.1e} |",
                        flops / candle / 1e9,
                        flops / routed / 1e9,
                        candle / routed
                    );
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}
