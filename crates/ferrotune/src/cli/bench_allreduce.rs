//! `ferrotune bench allreduce`: the all-reduce bandwidth a data-parallel run's gradients
//! get, launched as the run would be (`mpirun -np N ferrotune bench allreduce`).
//!
//! Figures follow nccl-tests: the algorithm bandwidth is the buffer's bytes over the
//! time of one all-reduce; the bus bandwidth multiplies it by 2 (N - 1) / N, what each
//! link carries in a ring all-reduce, so it compares across process counts.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use ferrotune_dist::World;
use serde_json::json;

#[derive(Debug, Args)]
pub struct BenchAllreduceArgs {
    /// Gradient size to reduce, in MiB of f32 (e.g. 4 for a LoRA adapter of ~1M
    /// parameters, 540 for a full fine-tuning of a 135M-parameter model).
    #[arg(long, value_name = "MIB", default_value_t = 64.0)]
    mib: f64,
    /// Timed all-reduces (after two untimed ones).
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Print one JSON line (rank 0).
    #[arg(long)]
    json: bool,
}

pub fn run(a: BenchAllreduceArgs, world: &World) -> Result<()> {
    if a.mib.is_nan() || a.mib <= 0.0 {
        bail!("--mib must be positive, not {}", a.mib);
    }
    let elements = ((a.mib * 1024.0 * 1024.0 / 4.0) as usize).max(1);
    let mut buffer: Vec<f32> = (0..elements).map(|i| (i % 7) as f32).collect();
    for _ in 0..2 {
        world.all_reduce_sum_f32(&mut buffer)?;
    }
    world.barrier()?;
    let iterations = a.iterations.max(1);
    let started = Instant::now();
    for _ in 0..iterations {
        world.all_reduce_sum_f32(&mut buffer)?;
    }
    let seconds = started.elapsed().as_secs_f64() / iterations as f64;
    // The slowest process sets the pace: take the maximum time over the processes.
    let mut nanos = [(seconds * 1e9) as u64];
    world.all_reduce_max_u64(&mut nanos)?;
    let slowest = nanos[0] as f64 / 1e9;
    let n = world.size();
    let bytes = (elements * 4) as f64;
    let algorithm = bytes / slowest / 1e9;
    let bus = algorithm * 2.0 * (n as f64 - 1.0) / n as f64;
    if world.is_main() {
        if a.json {
            println!(
                "{}",
                json!({"processes": n, "bytes": bytes, "seconds": slowest, "algorithm_gb_s": algorithm, "bus_gb_s": bus, "transport": world.describe()})
            );
        } else {
            println!(
                "all-reduce of {:.1} MiB (f32) over {}: {:.2} ms; algorithm bandwidth {:.2} GB/s, bus bandwidth {:.2} GB/s",
                bytes / (1024.0 * 1024.0),
                world.describe(),
                slowest * 1e3,
                algorithm,
                bus
            );
        }
    }
    Ok(())
}
