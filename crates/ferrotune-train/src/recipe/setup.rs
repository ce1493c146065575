//! Setup, in the order it runs: the output folder, the data, the model and what trains,
//! the plan (batches, steps, schedule), the optimizer and the resume point.

use std::path::{Path, PathBuf};

use candle_core::Device;
use ferrotune_dist::World;
use ferrotune_model::ops::bf16::has_avx512_bf16;
use ferrotune_model::ModelError;

use super::data::{sanity_warnings, TrainingData};
use super::memory_check;
use super::reference;
use super::step::Loss;
use super::tuning::{ModelSource, Tuned};
use super::{dist_error, metrics, Result, Run};
use crate::checkpoint::{self, TrainerState};
use crate::config::{Choice, FinetuningType, TrainArgs};
use crate::optim::{AdamW, AdamWConfig};
use crate::schedule::Schedule;

/// Everything the loop and the outputs work with.
pub(super) struct Setup {
    pub output_dir: PathBuf,
    pub device: Device,
    pub data: TrainingData,
    pub tuned: Tuned,
    pub plan: Plan,
    pub optimizer: AdamW,
    /// The position: steps taken and micro-batches consumed (from a checkpoint on resume).
    pub state: TrainerState,
    /// What the steps minimise: tokens' cross-entropy, or a preference loss (each row
    /// then a pair, or a KTO example with its KL sequence).
    pub loss: Loss,
}

pub(super) fn setup(run: &Run, world: &World) -> Result<Setup> {
    let t = &run.train;
    if world.size() > 1 && run.data.streaming {
        return Err(ModelError::invalid(format!(
            "streaming: true with {} processes: each would prepare the data on its own; prepare it once with `ferrotune data prepare` and train from the cache (streaming: false)",
            world.size()
        )));
    }
    let unsupported = t.unsupported();
    if !unsupported.is_empty() {
        return Err(ModelError::invalid(format!(
            "not supported yet: {}",
            unsupported.join("; ")
        )));
    }
    let quantization = t.quantization_plan().map_err(ModelError::invalid)?;
    if quantization.quantization.is_some() && t.finetuning_type != FinetuningType::Lora {
        return Err(ModelError::invalid(format!(
            "quantization_bit {} with finetuning_type {}: a quantized base trains adapters only \
             (finetuning_type: lora)",
            t.quantization_bit.unwrap_or(0),
            t.finetuning_type.name()
        )));
    }
    for note in &quantization.notes {
        eprintln!("note: {note}");
    }
    // Rank 0 makes (or clears) the folder and prepares the data's cache entries; the
    // others find both ready.
    let output_dir = main_first(world, || {
        if world.is_main() {
            output_folder(t)
        } else {
            configured_output_dir(t)
        }
    })?;
    let device = Device::Cpu;
    if t.bf16 && !has_avx512_bf16() {
        eprintln!(
            "note: bf16 requested, but this CPU has no AVX512-BF16: the products stay f32 (the \
             portable bf16 kernel computes the same sums, slower than f32)"
        );
    }
    let source = ModelSource::resolve(&run.data)?;
    if quantization.quantization.is_some()
        && ferrotune_model::gguf::GgufSource::of_folder(&source.dir)?.is_some()
    {
        eprintln!(
            "note: quantization_bit is not applied to a GGUF base: its tensors train in the \
             file's own types"
        );
    }
    memory_check::check(t, &run.data, &source.dir, &quantization)?;
    let mut data = main_first(world, || TrainingData::prepare(&run.data, t, &source.dir))?;
    let loss = Loss::of(data.args.stage, t);
    // A reference model of its own is loaded, used and dropped before the policy loads:
    // never two models at once.
    let other_reference = reference::other_model(t, &source)?;
    if let (true, Some(other)) = (loss.needs_reference(), &other_reference) {
        let model = other.load()?;
        reference::attach(&model, &mut data, &other.identity(), t, &**world)?;
    }
    let tuned = Tuned::load(
        source,
        t,
        &data.args,
        &output_dir,
        &device,
        &quantization,
        world,
    )?;
    if let Loss::Kto(_) = loss {
        if t.per_device_train_batch_size < 2 {
            eprintln!("warning: stage kto with per_device_train_batch_size 1: the KL term of each step is estimated from one mismatched sequence, which makes it noisy; KTO wants batches of 2 or more");
        }
    }
    if loss.needs_reference() && other_reference.is_none() {
        // Before a checkpoint's weights are loaded: the reference is the starting model.
        let mut identity = Vec::new();
        reference::files_identity(&tuned.source.dir, &mut identity);
        if let Some(adapter) = &t.adapter_name_or_path {
            reference::files_identity(adapter, &mut identity);
        }
        identity.extend(format!("{:?} bf16 {}", quantization.quantization, t.bf16).bytes());
        reference::attach(&tuned.model, &mut data, &identity, t, &**world)?;
    }
    let plan = Plan::new(t, data.rows.len(), world.size());
    announce(run, &data, &tuned, &plan, world);
    let (optimizer, state) =
        optimizer_and_resume(t, &tuned, &output_dir, run.data.seed, world.is_main())?;
    Ok(Setup {
        output_dir,
        device,
        data,
        tuned,
        plan,
        optimizer,
        state,
        loss,
    })
}

/// `work` on rank 0, then, once it is done, on the other processes (which find what rank
/// 0 wrote); in a world of one, just `work`.
fn main_first<T>(world: &World, work: impl FnOnce() -> Result<T>) -> Result<T> {
    if !world.is_main() {
        world.barrier().map_err(dist_error)?;
    }
    let out = work()?;
    if world.is_main() {
        world.barrier().map_err(dist_error)?;
    }
    Ok(out)
}

fn configured_output_dir(t: &TrainArgs) -> Result<PathBuf> {
    t.output_dir
        .clone()
        .ok_or_else(|| ModelError::invalid("output_dir is not set"))
}

/// Creates the output folder. A non-empty one is refused unless the config says to
/// overwrite it or resume in it; a fresh run clears the old metrics and checkpoints so
/// they cannot mix into its own.
fn output_folder(t: &TrainArgs) -> Result<PathBuf> {
    let output_dir = configured_output_dir(t)?;
    let resuming = t.resume_from_checkpoint.is_some();
    let has_content = std::fs::read_dir(&output_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if has_content && !t.overwrite_output_dir && !resuming {
        return Err(ModelError::invalid(format!(
            "output_dir {} exists and is not empty: set overwrite_output_dir: true, or resume_from_checkpoint",
            output_dir.display()
        )));
    }
    std::fs::create_dir_all(&output_dir)
        .map_err(|e| ModelError::file(&output_dir, e.to_string()))?;
    if !resuming {
        let _ = std::fs::remove_file(output_dir.join("metrics.jsonl"));
        for (_, dir) in checkpoint::list(&output_dir) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(output_dir)
}

/// How the rows become optimizer steps, and the learning rate of each.
pub(super) struct Plan {
    /// Rows per micro-batch, over all processes (`per_device_train_batch_size` each).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    pub micro_per_epoch: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    pub schedule: Schedule,
}

impl Plan {
    fn new(t: &TrainArgs, rows: usize, processes: usize) -> Self {
        let batch_size = t.per_device_train_batch_size.max(1) * processes.max(1);
        let accumulation = t.gradient_accumulation_steps.max(1);
        let micro_per_epoch = rows.div_ceil(batch_size);
        let steps_per_epoch = micro_per_epoch.div_ceil(accumulation);
        let total_steps = if t.max_steps > 0 {
            t.max_steps as usize
        } else {
            (t.num_train_epochs * steps_per_epoch as f64).ceil() as usize
        };
        let schedule = Schedule {
            kind: t.lr_scheduler_type.kind(),
            base_lr: t.learning_rate,
            warmup_steps: Schedule::warmup_from(t.warmup_steps, t.warmup_ratio, total_steps),
            total_steps,
        };
        Plan {
            batch_size,
            accumulation,
            micro_per_epoch,
            steps_per_epoch,
            total_steps,
            schedule,
        }
    }
}

/// The run in one line, and warnings for settings outside the usual ranges.
fn announce(run: &Run, data: &TrainingData, tuned: &Tuned, plan: &Plan, world: &World) {
    let t = &run.train;
    let processes = world.size();
    let threads = if t.cpu_data_parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    if processes > 1 {
        eprintln!("data parallel: {}", world.describe());
    }
    let es = if processes == 1 { "" } else { "es" };
    eprintln!(
        "training {} rows ({} examples for evaluation); effective batch {} x {} accumulation x {processes} process{es} = {} (each micro-batch split over {processes} process{es} x {threads} thread{}); {} steps per epoch, {} steps; {:.2}M trainable parameters ({})",
        data.rows.len(),
        data.eval_examples.len(),
        plan.batch_size / processes.max(1),
        plan.accumulation,
        plan.batch_size * plan.accumulation,
        if threads == 1 { "" } else { "s" },
        plan.steps_per_epoch,
        plan.total_steps,
        tuned.model.trainable_count() as f64 / 1e6,
        t.finetuning_type.name()
    );
    for w in sanity_warnings(t, data.args.stage, run.data.cutoff_len, &data.prepared) {
        eprintln!("warning: {w}");
    }
}

/// AdamW, and the position to start from: the beginning, or the checkpoint that
/// `resume_from_checkpoint` names (`auto`: the newest in the output folder).
fn optimizer_and_resume(
    t: &TrainArgs,
    tuned: &Tuned,
    output_dir: &Path,
    seed: u64,
    writes: bool,
) -> Result<(AdamW, TrainerState)> {
    let mut optimizer = AdamW::new(AdamWConfig {
        weight_decay: t.weight_decay,
        ..AdamWConfig::default()
    });
    let fresh = TrainerState {
        global_step: 0,
        micro_batches: 0,
        seed,
    };
    let Some(spec) = &t.resume_from_checkpoint else {
        return Ok((optimizer, fresh));
    };
    let dir = if spec == "auto" {
        checkpoint::list(output_dir).pop().map(|(_, d)| d)
    } else {
        Some(PathBuf::from(spec))
    };
    let Some(dir) = dir else {
        eprintln!(
            "resume_from_checkpoint: auto found no checkpoint in {}; starting fresh",
            output_dir.display()
        );
        return Ok((optimizer, fresh));
    };
    let params = tuned.model.trainable_params();
    let state = checkpoint::load(&dir, &params, &mut optimizer)?;
    eprintln!(
        "resumed from {} at step {}",
        dir.display(),
        state.global_step
    );
    if writes {
        metrics::truncate(&output_dir.join("metrics.jsonl"), state.global_step)?;
    }
    Ok((optimizer, state))
}
