//! The training objectives of [`CausalLm`]: the summed token loss (chunked head), the
//! evaluation loss, sequence log-probabilities for preference losses, and the
//! checkpointed backward pass they share (activations kept at layer inputs only, each
//! layer recomputed in turn from the top).

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

use super::CausalLm;
use crate::batch::{Batch, Example, IGNORE_INDEX};
use crate::loss::{
    causal_lm_loss, causal_lm_token_losses, causal_lm_token_losses_chunked, chunked_loss_applies,
    sequence_logps, HeadWeight, LossSum, SequenceLogps, LOGITS_BUDGET,
};
use crate::ops::dropout::{pass_seed, with_layer_masks};
use crate::ops::rms_norm;

impl CausalLm {
    /// The summed loss of a batch with targets, without returning its logits: the
    /// training step's forward pass. With a large vocabulary the head and the loss then
    /// run in chunks that never hold all the logits (`loss::causal_lm_loss_chunked`).
    pub fn loss(&self, batch: &Batch, train: bool) -> Result<LossSum> {
        self.head_loss(&self.batch_hidden_states(batch, train)?, batch, train)
    }

    /// The final hidden states of a training or evaluation batch.
    fn batch_hidden_states(&self, batch: &Batch, train: bool) -> Result<Tensor> {
        self.hidden_states(
            &batch.input_ids,
            &batch.position_ids,
            &batch.segment_ids,
            &batch.segment_ids,
            None,
            train,
        )
    }

    /// Teacher-forced loss over `examples` in padded batches of `batch_size`, without
    /// gradients: the summed loss and the supervised tokens it covers (training's
    /// evaluation and `eval predict` both use it).
    pub fn eval_loss(
        &self,
        examples: &[Example],
        batch_size: usize,
        pad: u32,
    ) -> Result<(f64, usize)> {
        self.eval_loss_part(examples, batch_size, pad, (0, 1))
    }

    /// [`Self::eval_loss`] over batch `part.0`, `part.0 + part.1`, ... of the batches: one
    /// process's part of an evaluation split over `part.1` processes, whose sums add up
    /// to the whole.
    pub fn eval_loss_part(
        &self,
        examples: &[Example],
        batch_size: usize,
        pad: u32,
        part: (usize, usize),
    ) -> Result<(f64, usize)> {
        // Without gradients: on a copy whose weights are all plain tensors, candle keeps no
        // graph, and each layer's activations are freed as the next is computed.
        let model = self.detached()?;
        let (mut sum, mut tokens) = (0f64, 0usize);
        let (index, parts) = (part.0, part.1.max(1));
        for chunk in examples
            .chunks(batch_size.max(1))
            .skip(index)
            .step_by(parts)
        {
            let batch = Batch::padded(chunk, pad, 8, self.device())?;
            if batch.supervised_tokens == 0 {
                continue;
            }
            let loss = model.loss(&batch, false)?;
            sum += f64::from(loss.sum.to_scalar::<f32>()?);
            tokens += batch.supervised_tokens;
        }
        Ok((sum, tokens))
    }

    /// The summed loss from the final hidden states.
    fn head_loss(&self, x: &Tensor, batch: &Batch, train: bool) -> Result<LossSum> {
        let (values, _) = self.head_token_losses(x, batch, train)?;
        Ok(LossSum {
            sum: values.sum_all()?,
            tokens: batch.supervised_tokens,
        })
    }

    /// Sequence log-probabilities of every sample of `batch` from the final hidden states.
    fn head_sequence_logps(&self, x: &Tensor, batch: &Batch, train: bool) -> Result<SequenceLogps> {
        let (values, positions) = self.head_token_losses(x, batch, train)?;
        let (samples, owner) = batch.sample_of_positions();
        let targets = batch
            .targets
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("batch has no targets".into()))?
            .flatten_all()?
            .to_vec1::<i64>()?;
        let counted: Vec<bool> = positions
            .iter()
            .map(|&p| targets[p as usize] != IGNORE_INDEX)
            .collect();
        sequence_logps(&values, &positions, &owner, samples, &counted)
    }

    /// Each supervised position's weighted cross-entropy from the final hidden states,
    /// with the flat positions (into the batch) the values belong to.
    fn head_token_losses(
        &self,
        x: &Tensor,
        batch: &Batch,
        train: bool,
    ) -> Result<(Tensor, Vec<u32>)> {
        let targets = batch
            .targets
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("batch has no targets".into()))?;
        // Only the supervised positions need logits: a prompt or padding position adds
        // nothing to the loss or its gradient, and in SFT it is often half the batch.
        let (x, targets, weights, positions) =
            &supervised_positions(x, targets, batch.target_weights.as_ref())?;
        let weights = weights.as_ref();
        // A plain head weight: the tied embeddings, or an untied head without bias.
        let w = match &self.lm_head {
            None => Some(&self.embed_tokens),
            Some(head) if head.bias.is_none() && head.lora.is_none() => Some(&head.weight),
            Some(_) => None,
        };
        let w = match w {
            Some(p) if p.is_trainable() => Some(HeadWeight::Trainable(p.tensor()?)),
            Some(p) => Some(HeadWeight::Frozen(p.frozen_weight())),
            None => None,
        };
        let values = match w.filter(|w| chunked_loss_applies(x, w, LOGITS_BUDGET)) {
            Some(w) => {
                causal_lm_token_losses_chunked(x, &w, targets, weights, LOGITS_BUDGET, train)?
            }
            None => {
                let logits = self.head(x)?.to_dtype(DType::F32)?;
                causal_lm_token_losses(&logits, targets, weights)?
            }
        };
        Ok((values, positions.clone()))
    }

    /// Logits (batch, seq, vocab) in f32. `train` enables LoRA dropout.
    pub fn forward(&self, batch: &Batch, train: bool) -> Result<Tensor> {
        self.run(
            &batch.input_ids,
            &batch.position_ids,
            &batch.segment_ids,
            &batch.segment_ids,
            None,
            train,
        )
    }

    /// Logits and the summed loss of a batch with targets.
    pub fn forward_loss(&self, batch: &Batch, train: bool) -> Result<(Tensor, LossSum)> {
        let logits = self.forward(batch, train)?;
        let targets = batch
            .targets
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("batch has no targets".into()))?;
        let loss = causal_lm_loss(
            &logits,
            targets,
            batch.target_weights.as_ref(),
            batch.supervised_tokens,
        )?;
        Ok((logits, loss))
    }

    /// Forward and backward of `scale * loss.sum` with gradient checkpointing: only each
    /// decoder layer's input is kept from the forward pass, and a layer's activations are
    /// recomputed, one layer at a time, when its backward pass runs. The peak then holds
    /// one layer's activations instead of all of them, for one more forward pass of the
    /// layers. Gradients arrive in parts (the head, then each layer from the last, then
    /// the embeddings): `on_grads` is called with each part and may sum them (a parameter
    /// can appear in two parts, e.g. tied embeddings). The returned loss is detached.
    ///
    /// Each layer's backward is started from the surrogate `sum(output * d_output)`, whose
    /// gradient with respect to the layer's input and weights is exactly the chain rule's.
    /// LoRA dropout draws the same masks in the recomputation as in the first pass
    /// (`ops::dropout`: each layer's masks come from the pass's seed and the layer).
    pub fn backward_checkpointed(
        &self,
        batch: &Batch,
        scale: f64,
        train: bool,
        on_grads: impl FnMut(&GradStore) -> Result<()>,
    ) -> Result<LossSum> {
        let loss = self.backward_checkpointed_with(
            batch,
            train,
            |model, x| {
                let loss = model.head_loss(x, batch, true)?;
                Ok((loss.sum.affine(scale, 0.0)?, loss))
            },
            on_grads,
        )?;
        Ok(LossSum {
            sum: loss.sum.detach(),
            tokens: loss.tokens,
        })
    }

    /// Sequence log-probabilities of every sample of `batch` (see [`SequenceLogps`]); with
    /// tracked weights, differentiable.
    pub fn sequence_logps(&self, batch: &Batch, train: bool) -> Result<SequenceLogps> {
        self.head_sequence_logps(&self.batch_hidden_states(batch, train)?, batch, train)
    }

    /// [`Self::backward_checkpointed`] for an objective of the batch's sequence
    /// log-probabilities (preference tuning): `objective` takes them and returns the
    /// scalar to differentiate (already scaled) and what the caller keeps.
    pub fn backward_sequences_checkpointed<T>(
        &self,
        batch: &Batch,
        train: bool,
        objective: impl FnOnce(&SequenceLogps) -> Result<(Tensor, T)>,
        on_grads: impl FnMut(&GradStore) -> Result<()>,
    ) -> Result<T> {
        self.backward_checkpointed_with(
            batch,
            train,
            |model, x| objective(&model.head_sequence_logps(x, batch, true)?),
            on_grads,
        )
    }

    /// The checkpointed forward and backward passes around `head`, which maps the final
    /// hidden states to the scalar to differentiate and a value returned to the caller.
    fn backward_checkpointed_with<T>(
        &self,
        batch: &Batch,
        train: bool,
        head: impl FnOnce(&Self, &Tensor) -> Result<(Tensor, T)>,
        mut on_grads: impl FnMut(&GradStore) -> Result<()>,
    ) -> Result<T> {
        if batch.targets.is_none() {
            candle_core::bail!("batch has no targets");
        }
        let (b, s) = batch.input_ids.dims2()?;
        let rope = self.rope(&batch.position_ids, b, s)?;
        let mask = self.attention_bias(&batch.segment_ids, &batch.segment_ids, b, 0)?;
        let eps = self.config.rms_norm_eps;

        // Forward: keep each layer's input, detached, and nothing else.
        let seed = pass_seed();
        let mut inputs = Vec::with_capacity(self.layers.len() + 1);
        inputs.push(self.embed(&batch.input_ids)?.detach());
        for (i, layer) in self.layers.iter().enumerate() {
            let x = inputs.last().expect("the embeddings are pushed first");
            let out =
                with_layer_masks(seed, i, || layer.forward(x, &rope, &mask, None, train, eps))?;
            inputs.push(out.detach());
        }

        // The head and the objective, from the last hidden state as a leaf with a gradient.
        let last = Var::from_tensor(&inputs.pop().expect("one output per layer"))?;
        let x = rms_norm(last.as_tensor(), self.norm.tensor()?, eps)?;
        let (objective, kept) = head(self, &x)?;
        let grads = objective.backward()?;
        on_grads(&grads)?;
        let mut d_out = take_grad(&grads, last.as_tensor())?;
        drop((grads, x, objective));

        // The layers from the last: recompute, then backward from the surrogate.
        for (i, (layer, input)) in self.layers.iter().zip(inputs).enumerate().rev() {
            let input = Var::from_tensor(&input)?;
            let out = with_layer_masks(seed, i, || {
                layer.forward(input.as_tensor(), &rope, &mask, None, train, eps)
            })?;
            let grads = (out * d_out)?.sum_all()?.backward()?;
            on_grads(&grads)?;
            d_out = take_grad(&grads, input.as_tensor())?;
        }

        // The embeddings, when they train.
        if self.embed_tokens.is_trainable() {
            let x = self.embed(&batch.input_ids)?;
            on_grads(&(x * d_out)?.sum_all()?.backward()?)?;
        }
        Ok(kept)
    }
}

/// The final hidden states (b, s, h), targets and weights (b, s) of the supervised
/// positions alone, as one row (1, n, ...); unchanged when every position is supervised
/// or none is.
fn supervised_positions(
    x: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Option<Tensor>, Vec<u32>)> {
    let (b, s, h) = x.dims3()?;
    let keep: Vec<u32> = targets
        .flatten_all()?
        .to_vec1::<i64>()?
        .iter()
        .enumerate()
        .filter(|(_, &t)| t != IGNORE_INDEX)
        .map(|(i, _)| i as u32)
        .collect();
    if keep.is_empty() || keep.len() == b * s {
        let all = (0..(b * s) as u32).collect();
        return Ok((x.clone(), targets.clone(), weights.cloned(), all));
    }
    let n = keep.len();
    let index = Tensor::from_vec(keep.clone(), n, x.device())?;
    let pick = |t: &Tensor| -> Result<Tensor> {
        t.flatten_all()?.index_select(&index, 0)?.reshape((1, n))
    };
    Ok((
        x.reshape((b * s, h))?
            .index_select(&index, 0)?
            .reshape((1, n, h))?,
        pick(targets)?,
        weights.map(pick).transpose()?,
        keep,
    ))
}

/// The gradient of `t` in `grads`, detached (it is the next backward pass's constant).
fn take_grad(grads: &GradStore, t: &Tensor) -> Result<Tensor> {
    grads.get(t).map(Tensor::detach).ok_or_else(|| {
        candle_core::Error::Msg("gradient checkpointing: a layer input got no gradient".into())
    })
}
