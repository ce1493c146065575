//! Schedules and the optimizer trajectory against transformers / torch references.

use candle_core::{DType, Device};
use ferrotune_model::weights::load_model;
use ferrotune_testing::{read_json, shared};
use ferrotune_train::schedule::{Schedule, ScheduleKind};
use ferrotune_train::trajectory::replay;

#[test]
fn cosine_and_linear_schedules_match_transformers_exactly() {
    let fixtures = read_json(&shared("fixtures/optim/schedules.json"));
    for (name, kind) in [
        ("cosine", ScheduleKind::Cosine),
        ("linear", ScheduleKind::Linear),
    ] {
        let f = &fixtures[name];
        let schedule = Schedule {
            kind,
            base_lr: f["base_lr"].as_f64().unwrap(),
            warmup_steps: f["warmup_steps"].as_u64().unwrap() as usize,
            total_steps: f["total_steps"].as_u64().unwrap() as usize,
        };
        let expected = f["lr_per_step"].as_array().unwrap();
        assert_eq!(expected.len(), 100);
        for (step, lr) in expected.iter().enumerate() {
            assert_eq!(
                schedule.lr(step),
                lr.as_f64().unwrap(),
                "{name} step {step}"
            );
        }
    }
}

#[test]
fn other_schedules_follow_their_formulas() {
    let s = |kind| Schedule {
        kind,
        base_lr: 1.0,
        warmup_steps: 4,
        total_steps: 20,
    };
    let constant = s(ScheduleKind::Constant);
    assert_eq!(
        (
            constant.lr(0),
            constant.lr(2),
            constant.lr(4),
            constant.lr(19)
        ),
        (0.0, 0.5, 1.0, 1.0)
    );
    let min = s(ScheduleKind::CosineWithMinLr { min_lr_rate: 0.1 });
    assert_eq!(min.lr(4), 1.0);
    assert!(
        (min.lr(12) - (0.5 * 0.9 + 0.1)).abs() < 1e-12,
        "halfway: {}",
        min.lr(12)
    );
    assert!((min.lr(20) - 0.1).abs() < 1e-12);
    assert_eq!(Schedule::warmup_from(0, 0.1, 95), 10, "ceil(0.1 * 95)");
    assert_eq!(Schedule::warmup_from(7, 0.1, 95), 7);
    assert!("cosine_with_restarts".parse::<ScheduleKind>().is_err());
}

#[test]
fn twelve_steps_of_adamw_match_torch_for_every_fixture_model() {
    for name in ["llama_gqa_untied", "qwen2_bias_tied", "qwen3_qknorm_tied"] {
        let dir = shared(&format!("fixtures/models/{name}"));
        let mut model = load_model(&dir, DType::F32, &Device::Cpu).unwrap();
        let report = replay(&mut model, &dir).unwrap();
        assert_eq!(report.steps.len(), 12);
        let mut failures = report.failures();
        // One known exception: the k-projection biases of the Qwen2 fixture. A bias on k
        // before rope barely changes attention, so some of its gradient elements are at
        // float-noise level (2e-8 against a median of 8e-5), and Adam normalises that noise
        // into lr-sized steps: torch's rounding and ours walk apart there (up to 2.9e-4
        // relative after 12 steps), while every other weight stays within 1e-4.
        const K_BIASES: [&str; 2] = [
            "model.layers.0.self_attn.k_proj.bias",
            "model.layers.1.self_attn.k_proj.bias",
        ];
        if name == "qwen2_bias_tied" {
            for (n, d) in report
                .final_weight_diffs
                .iter()
                .filter(|(n, _)| K_BIASES.contains(&n.as_str()))
            {
                assert!(*d < 5e-4, "{n}: {d}");
            }
            failures.retain(|f| !f.starts_with("final weights"));
            let others = report.final_weights_excluding(&K_BIASES);
            assert!(others.0 <= 1e-4, "{name}: {others:?}");
            eprintln!("qwen2_bias_tied: worst final weight other than the k biases {others:?}");
        }
        assert!(
            failures.is_empty(),
            "{name}: {failures:?} worst final weight {:?}",
            report.final_weights
        );
        eprintln!(
            "{name}: loss {:.2e}, lr {:.2e}, grad_norm {:.2e}, final weights {:.2e} ({})",
            report.max_loss_rel_diff,
            report.max_lr_rel_diff,
            report.max_grad_norm_rel_diff,
            report.final_weights.0,
            report.final_weights.1
        );
    }
}
