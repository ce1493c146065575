//! Preference tuning against LLaMA-Factory 0.9.5's CustomDPOTrainer on TRL 0.24
//! (tests/data/preference, written by scripts/make_preference_fixture.py): the tiny
//! Qwen2 fixture model with its PEFT LoRA adapter as the policy and the base (adapter
//! off) as the reference, 8 pairs. Sequence log-probabilities, each `pref_loss`'s loss,
//! metrics and LoRA gradients, and a 6-step trajectory (constant learning rate, 2 pairs a
//! micro-batch, 2 micro-batches a step, fixed order); and KTO against CustomKTOTrainer.
//!
//! LLaMA-Factory 0.9.5 calls TRL's `dpo_loss` without its loss type, so its `hinge` and
//! `ipo` compute the sigmoid loss (on mean log-probabilities for ipo). ferrotune computes
//! the losses those names stand for; the fixture records their values
//! (`trl_intended_loss_f64_not_what_lf_computes`), which are checked here, and their
//! gradients are checked against torch in ferrotune-model's tests/preference_losses.rs.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use ferrotune_model::ops::preference::{
    kto_kl, kto_metrics, KtoConfig, PrefConfig, PrefLoss, PREF_METRICS,
};
use ferrotune_model::tuning::load_peft_adapter;
use ferrotune_model::weights::load_model;
use ferrotune_model::{Batch, CausalLm, Example, Param};
use ferrotune_testing::shared;
use ferrotune_train::grads::clip;
use ferrotune_train::parallel::{Objective, Pass, Share, Workers};
use ferrotune_train::{AdamW, AdamWConfig};
use serde_json::Value;

const MODEL: &str = "fixtures/models/qwen2_bias_tied";
const SETTINGS: [&str; 7] = [
    "sigmoid",
    "sigmoid_smooth",
    "hinge",
    "ipo",
    "orpo",
    "simpo",
    "sigmoid_ftx",
];

fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/preference")
}

fn dpo() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("dpo.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir().join("tensors.safetensors"), &Device::Cpu).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-3)
}

/// The fixture's pairs as (chosen, rejected) examples.
fn pairs(d: &Value) -> Vec<[Example; 2]> {
    let seq = |p: &Value, which: &str| Example {
        input_ids: p[format!("{which}_input_ids")]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect(),
        labels: p[format!("{which}_labels")]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect(),
        weights: None,
        reference_logp: None,
        desirable: None,
    };
    d["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| [seq(p, "chosen"), seq(p, "rejected")])
        .collect()
}

/// Each pair packed into one row, chosen then rejected, as training lays them out.
fn batch(pairs: &[[Example; 2]]) -> Batch {
    let rows: Vec<Vec<&Example>> = pairs.iter().map(|p| p.iter().collect()).collect();
    Batch::packed(&rows, 0, 8, &Device::Cpu).unwrap()
}

fn base() -> CausalLm {
    load_model(&shared(MODEL), DType::F32, &Device::Cpu).unwrap()
}

fn policy() -> CausalLm {
    let mut model = base();
    load_peft_adapter(&mut model, &shared(&format!("{MODEL}/lora"))).unwrap();
    model
}

fn sequence_logps(model: &CausalLm, pairs: &[[Example; 2]]) -> Vec<f64> {
    sequence_logps_of(model, &batch(pairs))
}

/// The pairs with the base model's log-probabilities as their reference.
fn with_reference(pairs: &[[Example; 2]]) -> Vec<[Example; 2]> {
    let reference = sequence_logps(&base(), pairs);
    let mut out = pairs.to_vec();
    for (k, pair) in out.iter_mut().enumerate() {
        pair[0].reference_logp = Some(reference[2 * k]);
        pair[1].reference_logp = Some(reference[2 * k + 1]);
    }
    out
}

fn config(setting: &Value) -> PrefConfig {
    let a = &setting["finetuning_args"];
    let loss = match a["pref_loss"].as_str().unwrap() {
        "sigmoid" => PrefLoss::Sigmoid,
        "hinge" => PrefLoss::Hinge,
        "ipo" => PrefLoss::Ipo,
        "orpo" => PrefLoss::Orpo,
        "simpo" => PrefLoss::Simpo,
        other => panic!("{other}"),
    };
    PrefConfig {
        loss,
        beta: a["pref_beta"].as_f64().unwrap(),
        label_smoothing: a["dpo_label_smoothing"].as_f64().unwrap(),
        simpo_gamma: a["simpo_gamma"].as_f64().unwrap(),
        ftx: a["pref_ftx"].as_f64().unwrap(),
    }
}

/// ||a - b|| / ||b||.
fn relative_l2(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap();
    let norm = b.sqr().unwrap().sum_all().unwrap();
    (diff.to_scalar::<f64>().unwrap() / norm.to_scalar::<f64>().unwrap().max(1e-30)).sqrt()
}

/// The fixture's name of a trainable parameter (PEFT's, with its model prefix).
fn peft_name(p: &Param) -> String {
    format!("base_model.model.{}", p.name())
}

#[test]
fn sequence_log_probabilities_match_llamafactory() {
    let d = dpo();
    let pairs = pairs(&d);
    for (model, prefix) in [(policy(), "policy"), (base(), "reference")] {
        let got = sequence_logps(&model, &pairs);
        for (k, which) in ["chosen", "rejected"].iter().enumerate() {
            let want = floats(&d[format!("{prefix}_{which}_logps_sum")]);
            for (i, w) in want.iter().enumerate() {
                let g = got[2 * i + k];
                assert!(
                    close(g, *w, 1e-5),
                    "{prefix} {which} pair {i}: {g} against {w}"
                );
            }
        }
    }
}

#[test]
fn losses_metrics_and_gradients_match_llamafactory() {
    let d = dpo();
    let t = tensors();
    let pairs = with_reference(&pairs(&d));
    let workers = Workers::with_threads(1).unwrap();
    for name in SETTINGS {
        let setting = &d["settings"][name];
        let cfg = config(setting);
        for pass in [Pass::Plain, Pass::Checkpointed] {
            let model = policy();
            let params: Vec<&Param> = model.trainable_params();
            let n = pairs.len() as f64;
            let part = workers
                .step_gradients(
                    &model,
                    &[batch(&pairs)],
                    &params,
                    (1.0 / n, Objective::Preference(&cfg)),
                    pass,
                    Share::WHOLE,
                )
                .unwrap();
            let what = format!("{name} ({pass:?})");
            let lf_is_sigmoid = matches!(cfg.loss, PrefLoss::Hinge | PrefLoss::Ipo);
            let want = if lf_is_sigmoid {
                setting["trl_intended_loss_f64_not_what_lf_computes"]
                    .as_f64()
                    .unwrap()
            } else {
                setting["loss"].as_f64().unwrap()
            };
            let loss = part.loss_sum / n;
            assert!(
                close(loss, want, 1e-5),
                "{what}: loss {loss} against {want}"
            );
            assert_eq!(
                part.metric_sums.len(),
                PREF_METRICS.len(),
                "{what}: metrics"
            );
            // The last metric is ferrotune's own (the mean log-probability's preference).
            for (metric, sum) in PREF_METRICS.iter().zip(&part.metric_sums).take(6) {
                let want = setting["metrics"][*metric].as_f64().unwrap();
                let got = sum / n;
                assert!(
                    close(got, want, 1e-5) || (got - want).abs() < 1e-6,
                    "{what}: {metric} {got} against {want}"
                );
            }
            let (c, r) = (
                floats(&d["policy_chosen_logps_sum"]),
                floats(&d["policy_rejected_logps_sum"]),
            );
            let (cn, rn) = (floats(&d["chosen_lengths"]), floats(&d["rejected_lengths"]));
            let prefers = (0..c.len())
                .filter(|&i| c[i] / cn[i] > r[i] / rn[i])
                .count() as f64
                / n;
            assert!(
                close(part.metric_sums[6] / n, prefers, 1e-9),
                "{what}: mean_logps/accuracies"
            );
            if lf_is_sigmoid {
                continue;
            }
            let grads = part.grads.finish(&params).unwrap();
            assert_eq!(grads.len(), 28, "{what}: every LoRA parameter trains");
            for (p, g) in params.iter().zip(&grads) {
                let key = format!("grad.{name}.{}", peft_name(p));
                let want = t
                    .get(&key)
                    .unwrap_or_else(|| panic!("{key} in the fixture"));
                let err = relative_l2(g, want);
                assert!(err <= 1e-4, "{what}: {key} relative error {err}");
            }
        }
    }
}

#[test]
fn six_step_trajectory_matches_llamafactory() {
    let d = dpo();
    let t = tensors();
    let trajectory = &d["trajectory"];
    let cfg = config(&d["settings"][trajectory["setting"].as_str().unwrap()]);
    let c = &trajectory["config"];
    let lr = c["learning_rate"].as_f64().unwrap();
    let pairs = with_reference(&pairs(&d));
    let model = policy();
    let params: Vec<&Param> = model.trainable_params();
    let mut optimizer = AdamW::new(AdamWConfig {
        weight_decay: c["weight_decay"].as_f64().unwrap(),
        ..AdamWConfig::default()
    });
    let workers = Workers::with_threads(1).unwrap();
    for step in trajectory["steps"].as_array().unwrap() {
        let micro: Vec<Batch> = step["micro_batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let chosen: Vec<[Example; 2]> = m
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| pairs[i.as_u64().unwrap() as usize].clone())
                    .collect();
                batch(&chosen)
            })
            .collect();
        let n: usize = micro.iter().map(|b| b.batch).sum();
        let part = workers
            .step_gradients(
                &model,
                &micro,
                &params,
                (1.0 / n as f64, Objective::Preference(&cfg)),
                Pass::Checkpointed,
                Share::WHOLE,
            )
            .unwrap();
        let mut grads = part.grads.finish(&params).unwrap();
        let norm = clip(&mut grads, c["max_grad_norm"].as_f64().unwrap()).unwrap();
        let at = step["step"].as_u64().unwrap();
        let (loss, want_loss) = (part.loss_sum / n as f64, step["loss"].as_f64().unwrap());
        assert!(
            close(loss, want_loss, 1e-4),
            "step {at}: loss {loss} against {want_loss}"
        );
        let want_norm = step["grad_norm"].as_f64().unwrap();
        assert!(
            close(norm, want_norm, 1e-4),
            "step {at}: grad norm {norm} against {want_norm}"
        );
        optimizer.step(&params, &grads, lr).unwrap();
    }
    for p in &params {
        let key = format!("final.{}", peft_name(p));
        let err = relative_l2(p.tensor().unwrap(), &t[&key]);
        assert!(err <= 1e-4, "{key}: relative error {err}");
    }
}

fn kto() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("kto.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// KTO against LLaMA-Factory's CustomKTOTrainer: 8 examples (4 desirable), each with its
/// KL sequence, the reference the base model (adapter off): the KL term, the loss, the
/// logged metrics and the LoRA gradients, for two weightings.
#[test]
fn kto_kl_term_loss_metrics_and_gradients_match_llamafactory() {
    let d = kto();
    let t = tensors();
    let ints = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let example = |ids: &Value, labels: &Value, desirable: bool| Example {
        input_ids: ints(ids).into_iter().map(|x| x as u32).collect(),
        labels: ints(labels),
        weights: None,
        reference_logp: None,
        desirable: Some(desirable),
    };
    let rows: Vec<[Example; 2]> = d["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let tag = e["kto_tags"].as_bool().unwrap();
            [
                example(&e["input_ids"], &e["labels"], tag),
                example(&e["kl_input_ids"], &e["kl_labels"], tag),
            ]
        })
        .collect();
    let rows = with_reference(&rows);
    let batch = batch(&rows);
    let workers = Workers::with_threads(1).unwrap();
    for name in ["kto", "kto_weighted"] {
        let setting = &d["settings"][name];
        let a = &setting["finetuning_args"];
        let cfg = KtoConfig {
            beta: a["pref_beta"].as_f64().unwrap(),
            desirable_weight: a["kto_chosen_weight"].as_f64().unwrap(),
            undesirable_weight: a["kto_rejected_weight"].as_f64().unwrap(),
        };
        let model = policy();
        let targets = batch.sample_batch(0).unwrap();
        let kl_sequences = batch.sample_batch(1).unwrap();
        // Log-probabilities of the targets and KL sequences, policy and reference.
        let got = sequence_logps_of(&model, &targets);
        for (i, w) in floats(&setting["policy_logps"]).iter().enumerate() {
            assert!(
                close(got[i], *w, 1e-5),
                "{name}: policy logp {i}: {} against {w}",
                got[i]
            );
        }
        let policy_kl = sequence_logps_of(&model, &kl_sequences);
        for (i, w) in floats(&setting["policy_kl_logps"]).iter().enumerate() {
            assert!(close(policy_kl[i], *w, 1e-5), "{name}: KL logp {i}");
        }
        let reference_kl = kl_sequences.reference.concat();
        for (i, w) in floats(&setting["reference_kl_logps"]).iter().enumerate() {
            assert!(
                close(reference_kl[i], *w, 1e-5),
                "{name}: reference KL logp {i}"
            );
        }
        let kl = kto_kl(&policy_kl, &reference_kl);
        let want_kl = setting["kl"].as_f64().unwrap();
        assert!(
            close(kl, want_kl, 1e-5),
            "{name}: KL {kl} against {want_kl}"
        );

        let params: Vec<&Param> = model.trainable_params();
        let n = targets.batch as f64;
        let kls = [kl];
        let part = workers
            .step_gradients(
                &model,
                &[targets],
                &params,
                (1.0 / n, Objective::Kto(&cfg, &kls)),
                Pass::Checkpointed,
                Share::WHOLE,
            )
            .unwrap();
        let loss = part.loss_sum / n;
        let want = setting["loss"].as_f64().unwrap();
        assert!(
            close(loss, want, 1e-5),
            "{name}: loss {loss} against {want}"
        );
        let metrics = kto_metrics(&part.metric_sums);
        assert_eq!(metrics.len(), 6);
        for (key, got) in metrics {
            // Rewards are differences of log-probabilities near -100 (float32): compared
            // to 1e-5 absolute as well.
            let want = setting["logged"][key].as_f64().unwrap();
            assert!(
                close(got, want, 1e-5) || (got - want).abs() < 1e-5,
                "{name}: {key} {got} against {want}"
            );
        }
        let grads = part.grads.finish(&params).unwrap();
        assert_eq!(grads.len(), 28);
        for (p, g) in params.iter().zip(&grads) {
            let key = format!("grad.{name}.{}", peft_name(p));
            let err = relative_l2(g, &t[&key]);
            assert!(err <= 1e-4, "{name}: {key} relative error {err}");
        }
    }
}

fn sequence_logps_of(model: &CausalLm, batch: &Batch) -> Vec<f64> {
    model
        .detached()
        .unwrap()
        .sequence_logps(batch, false)
        .unwrap()
        .logps
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}
