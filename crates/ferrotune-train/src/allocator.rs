//! When freed memory should stay in the process. The binary's allocator hands freed pages
//! back to the system after a short delay; a training step frees and reallocates the same
//! large buffers every step, and each page handed back faults in again, zeroed by the
//! kernel, so the training loop asks the allocator to keep what it frees from then on.
//! Loading converts tensor after tensor and frees the transient buffers; handed back, they
//! do not count in the resident size the run then keeps. The library knows no allocator:
//! the binary registers what "keep freed memory" means for its own.

use std::sync::OnceLock;

static KEEP_FREED_MEMORY: OnceLock<fn()> = OnceLock::new();

/// Registers the allocator's "keep freed memory from now on" (once, at start).
pub fn on_keep_freed_memory(hook: fn()) {
    let _ = KEEP_FREED_MEMORY.set(hook);
}

/// From here on a loop frees and reallocates the same buffers: keep freed memory.
pub fn keep_freed_memory() {
    if let Some(hook) = KEEP_FREED_MEMORY.get() {
        hook();
    }
}
