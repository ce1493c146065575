//! Data parallelism across processes: the few collective operations a data-parallel
//! trainer needs, behind one small interface ([`Collective`]), so that MPI implements
//! them for CPU clusters today and NCCL can for GPUs later.
//!
//! A process learns whether it is one of several from its launcher's environment
//! ([`Launch::detect`]: `mpirun`/`mpiexec` of Open MPI, MPICH or Intel MPI, and Slurm's
//! `srun`). [`World::init`] then joins the MPI world when built with the `mpi` feature,
//! refuses to run when launched as several processes without it (each would train alone
//! and write the same outputs), and is a world of one otherwise.
//!
//! Every operation is called by every rank in the same order (the MPI rule); the
//! trainer keeps to it by running the same loop on every rank.

#[cfg(feature = "mpi")]
mod mpi_world;

use std::fmt;

/// A collective operation failed: the message says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DistError(pub String);

pub type Result<T> = std::result::Result<T, DistError>;

/// The operations data parallelism needs. Buffers are reduced in place: on return every
/// rank holds the element-wise result.
pub trait Collective {
    /// This process's place in the world, 0-based.
    fn rank(&self) -> usize;
    /// How many processes take part.
    fn size(&self) -> usize;
    fn all_reduce_sum_f32(&self, data: &mut [f32]) -> Result<()>;
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()>;
    fn all_reduce_max_u64(&self, data: &mut [u64]) -> Result<()>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// What carries the operations, for the run's first lines (e.g. the MPI library).
    fn describe(&self) -> String;
    /// Ends every process of the world with `code`: what a process that cannot go on
    /// does, since the others would wait for it forever at the next collective call.
    fn abort(&self, code: i32) -> !;
}

/// A world of one process: every operation is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_max_u64(&self, _: &mut [u64]) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "one process".into()
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// What the launcher's environment says of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub size: usize,
    /// Processes of the job on this machine (for the threads each should use).
    pub local_size: usize,
    /// Which launcher set the variables.
    pub launcher: &'static str,
}

impl Launch {
    /// The launch, when a launcher started this process as one of several; None for a
    /// plain start (or a launch of one process).
    pub fn detect() -> Option<Launch> {
        Self::from_env(|name| std::env::var(name).ok())
    }

    /// [`Self::detect`] over any environment (tests).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Launch> {
        let num = |name: &str| var(name)?.trim().parse::<usize>().ok();
        // (launcher, rank, size, processes on this machine)
        let known: [(&'static str, &str, &str, &str); 4] = [
            (
                "Open MPI",
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_LOCAL_SIZE",
            ),
            // MPICH and Intel MPI (Hydra), and Slurm's PMI-2.
            ("PMI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"),
            (
                "MVAPICH",
                "MV2_COMM_WORLD_RANK",
                "MV2_COMM_WORLD_SIZE",
                "MV2_COMM_WORLD_LOCAL_SIZE",
            ),
            // srun, even without an MPI plugin; its job step's variables, since a batch
            // script itself also sees SLURM_NTASKS.
            (
                "Slurm",
                "SLURM_PROCID",
                "SLURM_STEP_NUM_TASKS",
                "SLURM_STEP_TASKS_PER_NODE",
            ),
        ];
        known.iter().find_map(|&(launcher, rank, size, local)| {
            let (rank, size) = (num(rank)?, num(size)?);
            (size > 1 && rank < size).then(|| Launch {
                rank,
                size,
                local_size: num(local).unwrap_or(size).clamp(1, size),
                launcher,
            })
        })
    }
}

/// The processes of one training run.
pub struct World {
    inner: Box<dyn Collective>,
}

impl World {
    /// A world of one process.
    pub fn solo() -> Self {
        World {
            inner: Box::new(Solo),
        }
    }

    /// The world this process belongs to: MPI's when a launcher started several
    /// processes (an error without the `mpi` feature), else a world of one.
    pub fn init() -> Result<Self> {
        let Some(launch) = Launch::detect() else {
            return Ok(Self::solo());
        };
        Self::join(&launch)
    }

    #[cfg(feature = "mpi")]
    fn join(launch: &Launch) -> Result<Self> {
        let world = mpi_world::MpiWorld::init()?;
        if world.size() != launch.size {
            return Err(DistError(format!(
                "{} says {} processes, MPI says {}: is this ferrotune built against the MPI that launched it?",
                launch.launcher,
                launch.size,
                world.size()
            )));
        }
        Ok(World {
            inner: Box::new(world),
        })
    }

    #[cfg(not(feature = "mpi"))]
    fn join(launch: &Launch) -> Result<Self> {
        Err(DistError(format!(
            "started by {} as process {} of {}, but this ferrotune was built without MPI, so each process would train alone and write the same outputs: build it with `cargo build --release --features mpi` (needs the MPI headers, e.g. Debian's libopenmpi-dev, and libclang-dev), or run one process",
            launch.launcher, launch.rank, launch.size
        )))
    }

    /// Whether this is rank 0, the one that writes files and prints progress.
    pub fn is_main(&self) -> bool {
        self.inner.rank() == 0
    }
}

impl std::ops::Deref for World {
    type Target = dyn Collective;
    fn deref(&self) -> &Self::Target {
        &*self.inner
    }
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "World(rank {} of {}, {})",
            self.rank(),
            self.size(),
            self.describe()
        )
    }
}

/// Elements of an all-reduce call: buckets keep each call's send copy small and the
/// count within MPI's `int`.
pub const BUCKET: usize = 1 << 22;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn launches_are_read_from_each_launchers_variables() {
        assert_eq!(Launch::from_env(env(&[])), None);
        // One process is not a distributed launch.
        assert_eq!(
            Launch::from_env(env(&[
                ("OMPI_COMM_WORLD_RANK", "0"),
                ("OMPI_COMM_WORLD_SIZE", "1")
            ])),
            None
        );
        assert_eq!(
            Launch::from_env(env(&[
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "4"),
                ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ])),
            Some(Launch {
                rank: 1,
                size: 4,
                local_size: 2,
                launcher: "Open MPI"
            })
        );
        // A batch script's own variables are not a launch of several.
        assert_eq!(
            Launch::from_env(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8")])),
            None
        );
        let slurm =
            Launch::from_env(env(&[("SLURM_PROCID", "3"), ("SLURM_STEP_NUM_TASKS", "8")])).unwrap();
        assert_eq!(
            (slurm.rank, slurm.size, slurm.local_size, slurm.launcher),
            (3, 8, 8, "Slurm")
        );
        let pmi = Launch::from_env(env(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")])).unwrap();
        assert_eq!(pmi.launcher, "PMI");
    }

    #[cfg(not(feature = "mpi"))]
    #[test]
    fn a_launch_of_several_without_mpi_is_refused() {
        let launch = Launch {
            rank: 0,
            size: 2,
            local_size: 2,
            launcher: "Open MPI",
        };
        let e = World::join(&launch).unwrap_err().to_string();
        assert!(
            e.contains("--features mpi") && e.contains("process 0 of 2"),
            "{e}"
        );
    }

    #[test]
    fn a_world_of_one_changes_nothing() {
        let world = World::solo();
        let mut v = [1.5f32, 2.0];
        world.all_reduce_sum_f32(&mut v).unwrap();
        assert_eq!(v, [1.5, 2.0]);
        assert!(world.is_main());
        assert_eq!(world.size(), 1);
    }
}
