//! [`Collective`] over MPI (rsmpi against the system's MPI library).
//!
//! rsmpi has no in-place all-reduce, so each call copies one bucket of the buffer
//! ([`BUCKET`] elements at most) aside as the send buffer and reduces into the buffer
//! itself: the extra memory is one bucket, whatever the gradient's size.
//!
//! MPI is initialised with `MPI_THREAD_FUNNELED`: the trainer's worker threads compute,
//! and only the main thread calls MPI. Errors abort the job (MPI's default handler),
//! which is what a data-parallel run wants: a rank that cannot reduce cannot go on.

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use crate::{Collective, DistError, Result, BUCKET};

pub struct MpiWorld {
    world: SimpleCommunicator,
    /// Finalises MPI when dropped, so it is kept for the process's life.
    _universe: Universe,
}

impl MpiWorld {
    pub fn init() -> Result<Self> {
        let (universe, _threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| DistError("MPI was already initialised in this process".into()))?;
        Ok(MpiWorld {
            world: universe.world(),
            _universe: universe,
        })
    }
}

/// Reduces `data` in buckets with `op`.
fn all_reduce<T: Equivalence + Copy + Default>(
    world: &SimpleCommunicator,
    data: &mut [T],
    op: SystemOperation,
) {
    let mut send = vec![T::default(); data.len().min(BUCKET)];
    for chunk in data.chunks_mut(BUCKET) {
        let send = &mut send[..chunk.len()];
        send.copy_from_slice(chunk);
        world.all_reduce_into(&send[..], chunk, op);
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum_f32(&self, data: &mut [f32]) -> Result<()> {
        all_reduce(&self.world, data, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()> {
        all_reduce(&self.world, data, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_max_u64(&self, data: &mut [u64]) -> Result<()> {
        all_reduce(&self.world, data, SystemOperation::max());
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn describe(&self) -> String {
        let library = mpi::environment::library_version().unwrap_or_default();
        // "Open MPI v4.1.4, package: ..., ident: ...": the name and version.
        let first = library
            .lines()
            .next()
            .and_then(|l| l.split(',').next())
            .unwrap_or("MPI")
            .trim()
            .to_string();
        format!("{} processes over {first}", self.size())
    }
}
