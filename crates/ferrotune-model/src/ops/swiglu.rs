//! SwiGLU's gated activation, `y = silu(gate) * up`, element by element.
//!
//! Shapes: gate, up, y (..., I), I the MLP's intermediate size.
//!
//! * `swiglu`: the entry point; the fused kernel for f32 CPU tensors, else composed.
//! * `swiglu_composed`: candle primitives (any device and dtype), candle's backward.
//! * `swiglu_fused`: one parallel pass forward (AVX-512 where the CPU has it, the same
//!   bits as the baseline loop), and one backward giving both gradients.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::custom_op::{slice, with_data, TASK_ELEMS};
use super::fused_kernels_apply;
use super::lanes::{all_written, output_buffer, sigmoid};
use crate::wide_where_available;

/// `silu(gate) * up`, the gated activation of the SwiGLU MLP.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused_kernels_apply(&[gate, up]) {
        return swiglu_fused(gate, up);
    }
    swiglu_composed(gate, up)
}

/// `swiglu` from candle ops, for every device and dtype.
pub fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `silu(gate) * up`, the SwiGLU activation; the backward pass gives the gradients of
/// `gate` and `up` in one pass.
pub fn swiglu_fused(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!(
            "swiglu: gate {:?} and up {:?} differ in shape",
            gate.dims(),
            up.dims()
        );
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct SwiGlu;

wide_where_available! {
    /// `out = silu(g) * u`, every element written.
    fn swiglu_chunk(out: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            o.write(g * sigmoid(g) * u);
        }
    }
}

wide_where_available! {
    /// The gradients of `silu(g) * u` for the output's gradient `gr`, every element of
    /// `dg` and `du` written.
    fn swiglu_grad_chunk(
        dg: &mut [MaybeUninit<f32>],
        du: &mut [MaybeUninit<f32>],
        g: &[f32],
        u: &[f32],
        gr: &[f32],
    ) {
        for ((((dg, du), &g), &u), &gr) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(gr) {
            let s = sigmoid(g);
            du.write(gr * g * s);
            // silu'(g) = s (1 + g (1 - s))
            dg.write(gr * u * s * (1.0 + g * (1.0 - s)));
        }
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = slice(gs, gl, self.name())?;
        let u = slice(us, ul, self.name())?;
        let mut out = output_buffer(g.len());
        out.par_chunks_mut(TASK_ELEMS)
            .zip(g.par_chunks(TASK_ELEMS))
            .zip(u.par_chunks(TASK_ELEMS))
            .for_each(|((o, g), u)| swiglu_chunk(o, g, u));
        // SAFETY: the chunks cover `out`, and each element was written above.
        let out = unsafe { all_written(out) };
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_g, want_u) = (gate.track_op(), up.track_op());
        if !want_g && !want_u {
            return Ok((None, None));
        }
        let name = self.name();
        let (dg, du) = with_data(gate, name, |g| {
            with_data(up, name, |u| {
                with_data(grad, name, |gr| {
                    let mut dg = output_buffer(g.len());
                    let mut du = output_buffer(g.len());
                    dg.par_chunks_mut(TASK_ELEMS)
                        .zip(du.par_chunks_mut(TASK_ELEMS))
                        .zip(g.par_chunks(TASK_ELEMS))
                        .zip(u.par_chunks(TASK_ELEMS))
                        .zip(gr.par_chunks(TASK_ELEMS))
                        .for_each(|((((dg, du), g), u), gr)| swiglu_grad_chunk(dg, du, g, u, gr));
                    // SAFETY: the chunks cover both buffers, every element written above.
                    Ok(unsafe { (all_written(dg), all_written(du)) })
                })
            })
        })?;
        let dg = if want_g {
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?)
        } else {
            None
        };
        let du = if want_u {
            Some(Tensor::from_vec(du, up.shape(), up.device())?)
        } else {
            None
        };
        Ok((dg, du))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `lanes::tests::the_avx512_builds_give_the_baseline_bits`, for SwiGLU's loops.
    #[test]
    fn the_avx512_swiglu_builds_give_the_baseline_bits() {
        let x: Vec<f32> = (0..1001)
            .map(|i| ((i * 37 % 401) as f32 - 200.0) * 0.07)
            .collect();
        let u: Vec<f32> = x.iter().map(|v| v * 0.5 - 1.0).collect();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();

        let written_all = |f: &dyn Fn(&mut [MaybeUninit<f32>])| {
            let mut v = output_buffer(x.len());
            f(&mut v);
            // SAFETY: every function under test writes its whole output.
            unsafe { all_written(v) }
        };
        let a = written_all(&|o| swiglu_chunk(o, &x, &u));
        let b = written_all(&|o| swiglu_chunk::body(o, &x, &u));
        assert_eq!(bits(&a), bits(&b));

        let grads = |wide: bool| {
            let (mut dg, mut du) = (output_buffer(x.len()), output_buffer(x.len()));
            if wide {
                swiglu_grad_chunk(&mut dg, &mut du, &x, &u, &u);
            } else {
                swiglu_grad_chunk::body(&mut dg, &mut du, &x, &u, &u);
            }
            // SAFETY: both gradients are written in full.
            unsafe { (all_written(dg), all_written(du)) }
        };
        let ((dga, dua), (dgb, dub)) = (grads(true), grads(false));
        assert_eq!(bits(&dga), bits(&dgb));
        assert_eq!(bits(&dua), bits(&dub));
    }
}
