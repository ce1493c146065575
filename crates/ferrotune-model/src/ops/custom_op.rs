//! What the fused CPU ops have in common: how their work is split over rayon's pool, how
//! they read a tensor's f32 elements, and how an op whose value was computed outside the
//! graph hands it over to candle.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// Elements per parallel task: below this, handing work to another thread costs more
/// than it saves.
pub(crate) const TASK_ELEMS: usize = 16 * 1024;

/// Rows of `width` elements per parallel task.
pub(crate) fn rows_per_task(width: usize) -> usize {
    (TASK_ELEMS / width.max(1)).max(1)
}

/// The f32 elements of a contiguous CPU storage, as a custom op's forward pass gets it.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expects a contiguous tensor"),
    }
}

/// Runs `f` on the elements of a CPU f32 tensor, made contiguous first.
pub(crate) fn with_data<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout, op)?),
        _ => candle_core::bail!("{op}: expects a CPU tensor"),
    }
}

/// The state a fused op keeps from its forward pass for its backward pass.
pub(crate) fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg("fused op state lock poisoned".into()))
}

/// The value a custom op computed outside the graph, taken (once) by its forward call.
pub(crate) fn take(value: &Mutex<Option<Tensor>>) -> Result<Tensor> {
    value
        .lock()
        .map_err(|_| candle_core::Error::Msg("custom op value lock poisoned".into()))?
        .take()
        .ok_or_else(|| candle_core::Error::Msg("custom op applied twice".into()))
}

/// The storage of a tensor computed outside the graph, copied out for a custom op.
pub(crate) fn cpu_storage(value: &Tensor) -> Result<(CpuStorage, candle_core::Shape)> {
    let (storage, layout) = value.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
        _ => candle_core::bail!("expected a CPU tensor"),
    }
}

#[cfg(feature = "cuda")]
pub(crate) fn cuda_storage(
    value: &Tensor,
) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
    let (storage, layout) = value.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
        _ => candle_core::bail!("expected a CUDA tensor"),
    }
}

/// The forward pass of a three-input op whose value was computed outside the graph (with
/// detached tensors) and stored in its `value` field: it only hands the value over, so
/// the op contributes just its backward pass.
macro_rules! precomputed_forward {
    () => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            $crate::ops::custom_op::cpu_storage(&$crate::ops::custom_op::take(&self.value)?)
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            _: &candle_core::CudaStorage,
            _: &candle_core::Layout,
            _: &candle_core::CudaStorage,
            _: &candle_core::Layout,
            _: &candle_core::CudaStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            $crate::ops::custom_op::cuda_storage(&$crate::ops::custom_op::take(&self.value)?)
        }
    };
}
pub(crate) use precomputed_forward;
