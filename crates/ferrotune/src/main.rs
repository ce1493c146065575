//! The `ferrotune` command: a thin layer over the library crates.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use ferrotune_dist::Launch;

// The tokenizer and the training loop allocate many small, short-lived buffers from every
// thread; mimalloc serves those markedly faster than glibc's malloc
// (docs/perf-log/2026-11-26-speed-rounds.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's own C API, linked in through the mimalloc crate (whose Rust binding of it
// needs an extra crate). The option numbers are those of mimalloc 3's `mi_option_t`.
extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keeps freed memory in the process from now on instead of handing it back to the
/// system after 10 ms: a training step frees and reallocates the same large tensors every
/// step, and each page handed back faults in again, zeroed by the kernel (page faults
/// measured in docs/perf-log/2026-11-26-speed-rounds.md). Training loops call it
/// (`ferrotune_train::allocator`) once loading is done, so that what loading freed was
/// handed back and the resident size is what the run holds. `MIMALLOC_PURGE_DELAY` in
/// the environment wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads it when it next frees.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

/// Turns off candle's own element-wise thread pool (sized once per process from
/// `CANDLE_NUM_THREADS`) unless the environment sets it. Training runs one shard of each
/// batch per thread (`ferrotune_train::parallel`), and two shards sharing that pool would
/// queue on its lock; the element-wise work that matters is in our fused kernels, which
/// use rayon's pool, and the matrix products follow `RAYON_NUM_THREADS`.
fn single_threaded_candle_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Set before any other thread exists and before candle reads it.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Fixes RAYON_NUM_THREADS, when unset, to rayon's own default (the logical CPUs), so
/// that candle's matrix products use the threads everything else uses: candle reads the
/// variable before every product and, unset, works out its own default (the physical
/// cores) again from /proc/cpuinfo each time, which showed in a LoRA training step's
/// profile. Processes of a data-parallel launch share the machine's CPUs: each takes
/// its share.
fn fixed_thread_count(launch: Option<&Launch>) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cpus / launch.map_or(1, |l| l.local_size)).max(1);
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// The processes of a data-parallel launch other than rank 0 print only their errors
/// (their progress would repeat rank 0's): their standard error goes to /dev/null, and
/// the stream returned, the original one, takes the errors.
#[cfg(unix)]
fn quiet_unless_main(launch: Option<&Launch>) -> Option<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if launch.is_none_or(|l| l.rank == 0) || std::env::var_os("FERROTUNE_ALL_RANKS_PRINT").is_some()
    {
        return None;
    }
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .ok()?;
    // SAFETY: plain descriptor calls on this process's own descriptors, before any other
    // thread writes to standard error.
    unsafe {
        let saved = libc::dup(2);
        if saved < 0 || libc::dup2(null.as_raw_fd(), 2) < 0 {
            return None;
        }
        Some(std::fs::File::from_raw_fd(saved))
    }
}

#[cfg(not(unix))]
fn quiet_unless_main(_: Option<&Launch>) -> Option<std::fs::File> {
    None
}

/// An error line, to the stream errors go to.
fn report(errors: Option<&mut std::fs::File>, message: &str) {
    match errors {
        Some(stream) => {
            use std::io::Write;
            let _ = writeln!(stream, "{message}");
        }
        None => eprintln!("{message}"),
    }
}

fn main() -> ExitCode {
    let launch = Launch::detect();
    single_threaded_candle_elementwise();
    fixed_thread_count(launch.as_ref());
    let cli = cli::Cli::parse();
    let mut errors = quiet_unless_main(launch.as_ref());
    match cli.freed_memory() {
        cli::FreedMemory::Keep => keep_freed_memory(),
        cli::FreedMemory::KeepFromTrainingLoop => {
            ferrotune_train::allocator::on_keep_freed_memory(keep_freed_memory)
        }
        cli::FreedMemory::HandBack => {}
    }
    // Several processes (mpirun, srun) join one data-parallel run; alone, a world of one.
    let world = if cli.joins_world() {
        match ferrotune_dist::World::init() {
            Ok(world) => world,
            Err(e) => {
                report(errors.as_mut(), &format!("error: {e}"));
                return ExitCode::FAILURE;
            }
        }
    } else {
        ferrotune_dist::World::solo()
    };
    match cli::run(cli, &world) {
        Ok(()) => ExitCode::SUCCESS,
        // `ferrotune data preview | head` closes the pipe early; that is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let rank = launch
                .as_ref()
                .map(|l| format!("rank {} of {}: ", l.rank, l.size))
                .unwrap_or_default();
            report(errors.as_mut(), &format!("error: {rank}{e:#}"));
            if world.size() > 1 {
                // The other processes would wait for this one at their next collective
                // call: end them all (mpirun then names this rank).
                world.abort(1);
            }
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
