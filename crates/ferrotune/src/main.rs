//! The `ferrotune` command: a thin layer over the library crates.

mod cli;

use std::process::ExitCode;

use clap::Parser;

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
/// profile.
fn fixed_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

fn main() -> ExitCode {
    single_threaded_candle_elementwise();
    fixed_thread_count();
    let cli = cli::Cli::parse();
    match cli.freed_memory() {
        cli::FreedMemory::Keep => keep_freed_memory(),
        cli::FreedMemory::KeepFromTrainingLoop => {
            ferrotune_train::allocator::on_keep_freed_memory(keep_freed_memory)
        }
        cli::FreedMemory::HandBack => {}
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `ferrotune data preview | head` closes the pipe early; that is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
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
