//! Forward, loss and gradients of the three fixture models against transformers
//! (../shared/fixtures/models/*/parity.safetensors), and the packed row.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use ferrotune_model::check::{check, Tolerances};
use ferrotune_model::tuning::train_everything;
use ferrotune_model::weights::load_model;
use ferrotune_testing::shared;

const MODELS: [&str; 3] = ["llama_gqa_untied", "qwen2_bias_tied", "qwen3_qknorm_tied"];

fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        shared(&format!("fixtures/models/{name}/parity.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn logits_loss_every_gradient_and_the_packed_row_match_transformers() {
    for name in MODELS {
        let mut model = load_model(
            &shared(&format!("fixtures/models/{name}")),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        train_everything(&mut model).unwrap();
        let r = reference(name);
        let report = check(&mut model, &r, false).unwrap();
        let failures = report.failures(&Tolerances::default());
        assert!(failures.is_empty(), "{name}: {failures:?}");
        // Every trainable parameter has a reference gradient and received a gradient.
        assert_eq!(report.grads_checked, model.params().len(), "{name}");
        assert!(
            report.packed_loss_rel_diff.is_some() && report.packed_logits_max_abs_diff.is_some()
        );
        eprintln!(
            "{name}: logits {:.2e}, loss {:.2e}, worst gradient {:.2e} ({}), packed loss {:.2e}, packed logits {:.2e}",
            report.logits_max_abs_diff,
            report.loss_rel_diff,
            report.grad_max_rel_diff.as_ref().unwrap().0,
            report.grad_max_rel_diff.as_ref().unwrap().1,
            report.packed_loss_rel_diff.unwrap(),
            report.packed_logits_max_abs_diff.unwrap()
        );
    }
}

#[test]
fn a_wrong_model_fails_the_check() {
    // The Qwen2 reference against the Llama fixture: same sizes, different weights.
    let mut model = load_model(
        &shared("fixtures/models/llama_gqa_untied"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let mut r = reference("qwen2_bias_tied");
    r.retain(|k, _| !k.starts_with("grad."));
    let report = check(&mut model, &r, false).unwrap();
    assert!(!report.failures(&Tolerances::default()).is_empty());
}
