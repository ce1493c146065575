//! Data parallelism across processes (launched by `mpirun` or `srun`): every process
//! runs the same loop over the same global micro-batches, computes its shards of each
//! (`parallel::Share`), and the processes add their gradients and loss sums with one
//! bucketed all-reduce per optimizer step. Every process then holds the same gradient
//! and takes the same AdamW step, so the weights stay equal without being sent; a
//! checksum of them, compared every few steps, stops the run if they ever drift.
//!
//! The supervised-token count that normalises the loss is known to every process
//! without communication: each builds the whole global micro-batches (token ids only;
//! the costly passes are what is split).

use candle_core::{DType, Result, Tensor};
use ferrotune_dist::{Collective, BUCKET};
use ferrotune_model::Param;

use crate::parallel::Share;

/// The part of each micro-batch this process computes.
pub fn share(world: &dyn Collective) -> Share {
    Share {
        process: world.rank(),
        processes: world.size(),
    }
}

fn dist_err(e: ferrotune_dist::DistError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Sums `grads` and the numbers beside them (a step's loss sum and metric sums, EWC's
/// batch count) over the processes, in place. Tensors are packed into buckets of up to [`BUCKET`] elements
/// (a larger tensor is a bucket of its own), so a LoRA step's hundreds of small gradients
/// travel in one call.
pub fn all_reduce(world: &dyn Collective, grads: &mut [Tensor], numbers: &mut [f64]) -> Result<()> {
    if world.size() < 2 {
        return Ok(());
    }
    let mut start = 0;
    while start < grads.len() {
        let mut end = start;
        let mut elements = 0;
        while end < grads.len() && (end == start || elements + grads[end].elem_count() <= BUCKET) {
            elements += grads[end].elem_count();
            end += 1;
        }
        let mut flat: Vec<f32> = Vec::with_capacity(elements);
        for g in &grads[start..end] {
            flat.extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        }
        world.all_reduce_sum_f32(&mut flat).map_err(dist_err)?;
        let mut at = 0;
        for g in &mut grads[start..end] {
            let n = g.elem_count();
            *g = Tensor::from_slice(&flat[at..at + n], g.shape(), g.device())?
                .to_dtype(g.dtype())?;
            at += n;
        }
        start = end;
    }
    world.all_reduce_sum_f64(numbers).map_err(dist_err)?;
    Ok(())
}

/// A checksum of the trainable weights' bits (order-sensitive, so a swapped pair of
/// values differs too).
pub fn checksum(params: &[&Param]) -> Result<u64> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for p in params {
        let values = p
            .tensor()?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for v in values {
            hash = (hash ^ u64::from(v.to_bits())).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(hash)
}

/// Stops the run when the processes' weights differ: the maximum of the checksum and of
/// its complement over the processes tell its maximum and minimum in one all-reduce.
pub fn check_in_step(world: &dyn Collective, params: &[&Param], step: usize) -> Result<()> {
    if world.size() < 2 {
        return Ok(());
    }
    let own = checksum(params)?;
    let mut both = [own, !own];
    world.all_reduce_max_u64(&mut both).map_err(dist_err)?;
    let (max, min) = (both[0], !both[1]);
    if max != min {
        candle_core::bail!(
            "after step {step} the processes' weights differ (rank {}'s checksum {own:016x}; between {min:016x} and {max:016x} over the {} processes): every process must load the same model and data; stopping",
            world.rank(),
            world.size()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use ferrotune_dist::Solo;

    #[test]
    fn a_world_of_one_leaves_gradients_alone() {
        let g = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let mut grads = vec![g.clone()];
        let mut loss = 2.5;
        all_reduce(&Solo, &mut grads, std::slice::from_mut(&mut loss)).unwrap();
        assert_eq!(grads[0].to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(loss, 2.5);
    }
}
