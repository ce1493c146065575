//! The preference losses (ops/preference.rs) against torch: loss, gradients with respect
//! to the policy's sequence log-probabilities, and TRL's metrics, for every `pref_loss`,
//! with label smoothing, SimPO's margin and the `pref_ftx` term
//! (tests/data/preference_losses.json, from scripts/make_preference_loss_fixture.py).

use candle_core::{DType, Device, Tensor, Var};
use ferrotune_model::ops::preference::{
    preference_loss, PairLogps, PrefConfig, PrefLoss, PREF_METRICS,
};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * a.abs().max(b.abs()).max(1e-12)
}

fn check(dtype: DType, tolerance: f64) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/preference_losses.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cpu = Device::Cpu;
    let tensor = |key: &str| {
        Tensor::new(floats(&fixture[key]), &cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let name = case["pref_loss"].as_str().unwrap();
        let loss = match name {
            "sigmoid" => PrefLoss::Sigmoid,
            "hinge" => PrefLoss::Hinge,
            "ipo" => PrefLoss::Ipo,
            "orpo" => PrefLoss::Orpo,
            "simpo" => PrefLoss::Simpo,
            other => panic!("unknown {other}"),
        };
        let cfg = PrefConfig {
            loss,
            beta: case["beta"].as_f64().unwrap(),
            label_smoothing: case["label_smoothing"].as_f64().unwrap(),
            simpo_gamma: case["simpo_gamma"].as_f64().unwrap(),
            ftx: case["ftx"].as_f64().unwrap(),
        };
        let chosen = Var::from_tensor(&tensor("chosen_logps")).unwrap();
        let rejected = Var::from_tensor(&tensor("rejected_logps")).unwrap();
        let (ref_chosen, ref_rejected) = (tensor("ref_chosen_logps"), tensor("ref_rejected_logps"));
        let (chosen_tokens, rejected_tokens) = (tensor("chosen_tokens"), tensor("rejected_tokens"));
        let out = preference_loss(
            &cfg,
            &PairLogps {
                chosen: chosen.as_tensor(),
                rejected: rejected.as_tensor(),
                chosen_tokens: &chosen_tokens,
                rejected_tokens: &rejected_tokens,
                reference: loss
                    .needs_reference()
                    .then_some((&ref_chosen, &ref_rejected)),
            },
        )
        .unwrap();
        let what = format!("{name} {cfg:?} ({dtype:?})");
        let loss_mean = out.loss_sum.affine(1.0 / out.pairs as f64, 0.0).unwrap();
        let value = loss_mean
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            close(value, case["loss"].as_f64().unwrap(), tolerance),
            "{what}: loss {value} against {}",
            case["loss"]
        );
        for (got, key) in out.metric_means().into_iter().zip(PREF_METRICS).take(6) {
            let want = case[key].as_f64().unwrap();
            assert!(
                close(got, want, tolerance),
                "{what}: {key} {got} against {want}"
            );
        }
        let grads = loss_mean.backward().unwrap();
        for (var, key) in [(&chosen, "grad_chosen"), (&rejected, "grad_rejected")] {
            let got: Vec<f64> = grads
                .get(var.as_tensor())
                .expect("a gradient")
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            for (g, w) in got.iter().zip(floats(&case[key])) {
                assert!(
                    close(*g, w, tolerance),
                    "{what}: {key} {got:?} against {}",
                    case[key]
                );
            }
        }
    }
}

#[test]
fn losses_gradients_and_metrics_match_torch_in_f64() {
    check(DType::F64, 1e-9);
}

#[test]
fn and_in_f32_within_training_tolerance() {
    check(DType::F32, 1e-5);
}
