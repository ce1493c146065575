//! The EWC penalty's gradient equals the autograd gradient of its formula.

use candle_core::{DType, Device, Tensor};
use ferrotune_model::check::{max_abs_diff, reference_batch};
use ferrotune_model::tuning::train_everything;
use ferrotune_model::weights::load_model;
use ferrotune_model::Param;
use ferrotune_testing::shared;
use ferrotune_train::ewc::Ewc;

#[test]
fn penalty_gradient_matches_autograd_and_round_trips() {
    let dir = shared("fixtures/models/qwen3_qknorm_tied");
    let mut model = load_model(&dir, DType::F32, &Device::Cpu).unwrap();
    train_everything(&mut model).unwrap();
    let r = candle_core::safetensors::load(dir.join("parity.safetensors"), &Device::Cpu).unwrap();
    let batch = reference_batch(&r, &Device::Cpu).unwrap();
    let ewc = Ewc::estimate(&model, &[batch], 3.0, &ferrotune_dist::Solo).unwrap();
    // At the anchor the penalty is zero; move the weights away from it.
    for p in model.params_mut() {
        let shifted = (p.tensor().unwrap() + 0.01).unwrap();
        p.set(&shifted).unwrap();
    }
    let params: Vec<&Param> = model.params();
    let mut ours: Vec<Tensor> = params
        .iter()
        .map(|p| p.tensor().unwrap().zeros_like().unwrap())
        .collect();
    ewc.add_gradient(&params, &mut ours).unwrap();
    // The formula through candle's autograd.
    let mut total: Option<Tensor> = None;
    for ((p, f), a) in params.iter().zip(&ewc.fisher).zip(&ewc.anchor) {
        let term = (f * (p.tensor().unwrap() - a).unwrap().sqr().unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        total = Some(match total {
            Some(t) => (t + term).unwrap(),
            None => term,
        });
    }
    let penalty = total.unwrap().affine(0.5 * 3.0, 0.0).unwrap();
    let value = penalty.to_scalar::<f32>().unwrap() as f64;
    assert!(value > 0.0);
    assert!((ewc.penalty(&params).unwrap() - value).abs() <= 1e-6 * value.max(1.0));
    let grads = penalty.backward().unwrap();
    for (p, g) in params.iter().zip(&ours) {
        let reference = grads.get(p.tensor().unwrap()).unwrap();
        assert!(max_abs_diff(g, reference).unwrap() <= 1e-6, "{}", p.name());
    }
    // Save and load by name.
    let tmp = ferrotune_testing::TempDir::new("ewc");
    let path = tmp.path().join("fisher.safetensors");
    ewc.save(&params, &path).unwrap();
    let loaded = Ewc::load(&params, &path, 3.0).unwrap();
    assert_eq!(
        max_abs_diff(&loaded.fisher[0], &ewc.fisher[0]).unwrap(),
        0.0
    );
}
