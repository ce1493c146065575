//! Checkpoints that a run can resume from exactly: the trainable weights, AdamW's moments
//! and step, and the position in the data order (which is a pure function of the seed, so
//! no RNG state needs saving). Written to a temporary folder and renamed into place, so a
//! crash never leaves a half-written checkpoint behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ferrotune_model::{ModelError, Param};
use serde::{Deserialize, Serialize};

use crate::optim::AdamW;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub global_step: usize,
    /// Micro-batches consumed (the position in the data order).
    pub micro_batches: usize,
    pub seed: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |e| ModelError::file(path, e.to_string())
}

/// Writes `checkpoint-{step}` in `output_dir` and keeps only the newest `keep` of them.
pub fn save(
    output_dir: &Path,
    params: &[&Param],
    optimizer: &AdamW,
    state: &TrainerState,
    keep: Option<usize>,
) -> Result<PathBuf, ModelError> {
    let final_dir = output_dir.join(format!("checkpoint-{}", state.global_step));
    let tmp = output_dir.join(format!(".checkpoint-{}.tmp", state.global_step));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).and_then(|t| t.contiguous());
    let mut weights = HashMap::new();
    let mut moments = HashMap::new();
    for (i, p) in params.iter().enumerate() {
        weights.insert(p.name().to_string(), cpu(p.tensor()?)?);
        if let Some((m, v)) = optimizer.moments.get(i) {
            moments.insert(format!("m.{}", p.name()), cpu(m)?);
            moments.insert(format!("v.{}", p.name()), cpu(v)?);
        }
    }
    let path = tmp.join("trainable.safetensors");
    candle_core::safetensors::save(&weights, &path)
        .map_err(|e| ModelError::file(&path, e.to_string()))?;
    let path = tmp.join("optimizer.safetensors");
    candle_core::safetensors::save(&moments, &path)
        .map_err(|e| ModelError::file(&path, e.to_string()))?;
    let json = serde_json::json!({"state": state, "optimizer_step": optimizer.step});
    let path = tmp.join("trainer_state.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).map_err(io(&path))?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    if let Some(keep) = keep {
        let mut all = list(output_dir);
        while all.len() > keep.max(1) {
            let (_, oldest) = all.remove(0);
            let _ = std::fs::remove_dir_all(oldest);
        }
    }
    Ok(final_dir)
}

/// Complete checkpoints in `output_dir`, oldest first.
pub fn list(output_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(output_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join("trainer_state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Restores weights and optimizer state; returns the trainer state.
pub fn load(
    dir: &Path,
    params: &[&Param],
    optimizer: &mut AdamW,
) -> Result<TrainerState, ModelError> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::file(&state_path, e.to_string()))?;
    let state: TrainerState = serde_json::from_value(json["state"].clone())
        .map_err(|e| ModelError::file(&state_path, e.to_string()))?;
    let device = params
        .first()
        .and_then(|p| p.tensor().ok().map(|t| t.device().clone()))
        .unwrap_or(Device::Cpu);
    let weights = candle_core::safetensors::load(dir.join("trainable.safetensors"), &device)?;
    let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), &device)?;
    optimizer.moments.clear();
    for p in params {
        let missing = |what: &str| {
            ModelError::file(
                dir,
                format!(
                    "checkpoint has no {what} for {}: was it written by another configuration?",
                    p.name()
                ),
            )
        };
        let w = weights.get(p.name()).ok_or_else(|| missing("weights"))?;
        let var = p
            .var()
            .ok_or_else(|| ModelError::invalid(format!("{} is not trainable", p.name())))?;
        var.set(w)?;
        let m = moments
            .get(&format!("m.{}", p.name()))
            .ok_or_else(|| missing("optimizer moments"))?;
        let v = moments
            .get(&format!("v.{}", p.name()))
            .ok_or_else(|| missing("optimizer moments"))?;
        optimizer.moments.push((m.clone(), v.clone()));
    }
    if weights.len() != params.len() {
        return Err(ModelError::file(
            dir,
            format!(
                "checkpoint holds {} weights, the run trains {}",
                weights.len(),
                params.len()
            ),
        ));
    }
    optimizer.step = json["optimizer_step"]
        .as_u64()
        .unwrap_or(state.global_step as u64) as usize;
    Ok(state)
}
