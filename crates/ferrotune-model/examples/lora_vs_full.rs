//! One training step's forward + backward, full fine-tuning against LoRA, on the same
//! model and batch: time per step and the process's peak memory. Each mode runs in its own
//! process so peak memory is its own:
//!
//!     cargo run --release -p ferrotune-model --example lora_vs_full -- MODEL_DIR full 4 256
//!     cargo run --release -p ferrotune-model --example lora_vs_full -- MODEL_DIR lora 4 256
//!     cargo run --release -p ferrotune-model --example lora_vs_full -- MODEL_DIR lora 4 256 5 --checkpoint
//!
//! `--checkpoint` recomputes each decoder layer in the backward pass
//! (`CausalLm::backward_checkpointed`, the trainer's `gradient_checkpointing: true`).
//!
//! Prints one JSON line: mode, batch, seq_len, median step seconds, tokens/s, peak RSS.

use std::time::Instant;

use candle_core::{DType, Device};
use ferrotune_model::tuning::{add_lora, train_everything, LoraConfig};
use ferrotune_model::weights::load_model;
use ferrotune_model::{Batch, Example};

fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let checkpoint = args.iter().any(|a| a == "--checkpoint");
    args.retain(|a| a != "--checkpoint");
    let usage = "usage: lora_vs_full MODEL_DIR full|lora BATCH SEQ_LEN [STEPS] [--checkpoint]";
    let dir = args.first().ok_or(usage)?;
    let mode = args.get(1).ok_or(usage)?.as_str();
    let batch: usize = args.get(2).ok_or(usage)?.parse()?;
    let seq: usize = args.get(3).ok_or(usage)?.parse()?;
    let steps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let device = Device::Cpu;
    let mut model = load_model(std::path::Path::new(dir), DType::F32, &device)?;
    match mode {
        "full" => train_everything(&mut model)?,
        "lora" => {
            add_lora(
                &mut model,
                &LoraConfig {
                    rank: 8,
                    alpha: 16.0,
                    ..LoraConfig::default()
                },
                0,
            )?;
        }
        other => return Err(format!("unknown mode {other}; {usage}").into()),
    }
    let vocab = model.config.vocab_size as u32;
    let examples: Vec<Example> = (0..batch)
        .map(|b| {
            let ids: Vec<u32> = (0..seq)
                .map(|i| ((i * 31 + b * 17) as u32 * 7919) % vocab)
                .collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < seq / 4 { -100 } else { t as i64 })
                .collect();
            Example {
                input_ids: ids,
                labels,
                weights: None,
                reference_logp: None,
                desirable: None,
            }
        })
        .collect();
    let batch_t = Batch::padded(&examples, 0, 8, &device)?;
    let loaded = rss_mib();
    let mut times = Vec::new();
    for step in 0..steps + 1 {
        let start = Instant::now();
        let trainable: Vec<_> = model.trainable_params();
        let mut with_grad = vec![false; trainable.len()];
        let mut note = |grads: &candle_core::backprop::GradStore| {
            for (seen, p) in with_grad.iter_mut().zip(&trainable) {
                *seen |= grads.get(p.tensor().unwrap()).is_some();
            }
        };
        let scale = 1.0 / batch_t.supervised_tokens as f64;
        if checkpoint {
            model.backward_checkpointed(&batch_t, scale, false, |g| {
                note(g);
                Ok(())
            })?;
            if step == steps {
                eprintln!("{mode} (checkpointed): step {:.2} s; rss after load {loaded:.0} MiB, after the step {:.0} MiB",
                    start.elapsed().as_secs_f64(), rss_mib());
            }
        } else {
            let loss = model.loss(&batch_t, true)?;
            let after_forward = rss_mib();
            let forward_s = start.elapsed().as_secs_f64();
            let grads = loss.sum.affine(scale, 0.0)?.backward()?;
            note(&grads);
            if step == steps {
                eprintln!(
                    "{mode}: forward {forward_s:.2} s, backward {:.2} s; rss after load {loaded:.0} MiB, after forward {after_forward:.0} MiB, after backward {:.0} MiB",
                    start.elapsed().as_secs_f64() - forward_s,
                    rss_mib()
                );
            }
        }
        assert!(
            with_grad.iter().all(|&g| g),
            "a trainable parameter got no gradient"
        );
        if step > 0 {
            // The first step warms up allocations.
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "{{\"mode\": \"{mode}\", \"checkpointed\": {checkpoint}, \"batch\": {batch}, \"seq_len\": {seq}, \"trainable_parameters\": {}, \"step_s\": {median:.3}, \"tokens_per_s\": {:.0}, \"peak_rss_mib\": {:.0}}}",
        model.trainable_count(),
        (batch * seq) as f64 / median,
        peak_rss_mib()
    );
    Ok(())
}
