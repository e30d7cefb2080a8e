//! Gradients flow through hooks: d(log p(target)) / dδ for δ added at
//! `blocks.{l}.hook_mlp_out` (last position) matches central finite differences.

use burn_tensor::{Tensor, TensorData};
use engram_model::device::CpuAutodiff;
use engram_model::{fn_hook, Activation, Batch, HookPoint, LanguageModel};

use crate::common::shared;

/// log p(target | ids) with `delta` added to the MLP output of `layer` at the last position.
fn log_prob(
    lm: &LanguageModel<CpuAutodiff>,
    ids: &[u32],
    layer: usize,
    target: usize,
    delta: Tensor<CpuAutodiff, 1>,
) -> Tensor<CpuAutodiff, 1> {
    let batch = Batch::single(ids);
    let s = ids.len();
    let mut add = fn_hook::<CpuAutodiff, _>([HookPoint::mlp_out(layer)], move |_, act| {
        let t = act.as_rank3()?.clone();
        let [_, _, d] = t.dims();
        let last = t.clone().slice([0..1, s - 1..s, 0..d]) + delta.clone().reshape([1, 1, d]);
        Some(Activation::Rank3(
            t.slice_assign([0..1, s - 1..s, 0..d], last),
        ))
    });
    let logits = lm.model.forward(&batch, &mut add).expect("forward");
    let [_, _, v] = logits.dims();
    let last = logits.slice([0..1, s - 1..s, 0..v]).reshape([v]);
    let logp = burn_tensor::activation::log_softmax(last, 0);
    logp.narrow(0, target, 1)
}

fn check(arch: &str) {
    let Some(sh) = shared(&format!("autodiff {arch}")) else {
        return;
    };
    let dir = sh.join("fixtures/tiny").join(arch);
    let device = Default::default();
    let lm = LanguageModel::<CpuAutodiff>::load(&dir, &device).expect("load");
    let ids = [17u32, 93, 250, 4, 61];
    let (layer, target) = (1, 42);
    let d = lm.model.config.d_model;

    // A fixed, non-zero starting δ and two probe directions, all deterministic.
    let base: Vec<f32> = (0..d).map(|i| ((i as f32) * 0.37).sin() * 0.05).collect();
    let delta = Tensor::<CpuAutodiff, 1>::from_data(TensorData::new(base.clone(), [d]), &device)
        .require_grad();
    let lp = log_prob(&lm, &ids, layer, target, delta.clone());
    let grads = lp.backward();
    let grad: Vec<f32> = delta
        .grad(&grads)
        .expect("δ has a gradient")
        .into_data()
        .into_vec()
        .expect("v");
    assert!(
        grad.iter().any(|g| g.abs() > 1e-4),
        "{arch}: gradient is zero"
    );

    let eval = |v: &[f32]| -> f64 {
        let t = Tensor::<CpuAutodiff, 1>::from_data(TensorData::new(v.to_vec(), [d]), &device);
        log_prob(&lm, &ids, layer, target, t).into_scalar() as f64
    };
    let eps = 1e-2f32;
    for k in 0..3 {
        let dir: Vec<f32> = (0..d)
            .map(|i| ((i * (k + 2)) as f32 * 1.3 + k as f32).cos())
            .collect();
        let plus: Vec<f32> = base.iter().zip(&dir).map(|(b, u)| b + eps * u).collect();
        let minus: Vec<f32> = base.iter().zip(&dir).map(|(b, u)| b - eps * u).collect();
        let fd = (eval(&plus) - eval(&minus)) / (2.0 * eps as f64);
        let an: f64 = grad
            .iter()
            .zip(&dir)
            .map(|(g, u)| (*g as f64) * (*u as f64))
            .sum();
        let err = (fd - an).abs();
        assert!(
            err <= 1e-3 + 1e-2 * an.abs(),
            "{arch} direction {k}: autodiff {an} vs finite difference {fd}"
        );
    }
}

#[test]
#[ignore = "needs ../shared"]
fn gradient_through_hook_matches_finite_differences_gpt2() {
    check("gpt2");
}

#[test]
#[ignore = "needs ../shared"]
fn gradient_through_hook_matches_finite_differences_llama() {
    check("llama");
}
