//! Gradients flow through hooks: d(log p(target)) / dδ for δ added at
//! `blocks.{l}.hook_mlp_out` (last position) matches central finite differences,
//! and equals burn's own autodiff where the CPU kernels carry the linear maps.

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

/// d log p / dδ on the given path.
fn gradient(lm: &LanguageModel<CpuAutodiff>, kernels: bool) -> Vec<f32> {
    engram_model::cpu::set_workflow_paths(kernels);
    let device = Default::default();
    let d = lm.model.config.d_model;
    let base: Vec<f32> = (0..d).map(|i| ((i as f32) * 0.37).sin() * 0.05).collect();
    let delta =
        Tensor::<CpuAutodiff, 1>::from_data(TensorData::new(base, [d]), &device).require_grad();
    let lp = log_prob(lm, &[17, 93, 250, 4, 61, 8, 120], 0, 42, delta.clone());
    let grads = lp.backward();
    engram_model::cpu::set_workflow_paths(true);
    delta
        .grad(&grads)
        .expect("δ has a gradient")
        .into_data()
        .into_vec()
        .expect("v")
}

#[test]
#[ignore = "needs ../shared"]
fn gradients_on_the_cpu_kernels_equal_burns_autodiff() {
    let Some(sh) = shared("autodiff on the CPU kernels") else {
        return;
    };
    if !engram_model::cpu::enabled() {
        eprintln!("skipped: this CPU lacks AVX-512F, so both paths are burn's");
        return;
    }
    for arch in ["gpt2", "gpt_neox", "gptj", "llama"] {
        let lm = LanguageModel::<CpuAutodiff>::load(
            &sh.join("fixtures/tiny").join(arch),
            &Default::default(),
        )
        .expect("load");
        let (fast, burn) = (gradient(&lm, true), gradient(&lm, false));
        let scale = burn.iter().fold(0f32, |m, g| m.max(g.abs()));
        assert!(scale > 1e-4, "{arch}: the gradient is zero");
        for (i, (a, b)) in fast.iter().zip(&burn).enumerate() {
            // Both are f32 sums in different orders.
            assert!(
                (a - b).abs() <= 1e-4 * scale.max(1.0),
                "{arch} ∂/∂δ[{i}]: kernels {a} vs burn {b}"
            );
        }
    }
}

#[test]
fn a_linear_map_under_autodiff_runs_on_the_kernels_with_burns_gradient() {
    use engram_model::cpu::{enabled, linear};
    if !enabled() {
        eprintln!("skipped: this CPU lacks AVX-512F");
        return;
    }
    let device = Default::default();
    // d_in beyond one 256-deep block, d_out not a multiple of the 32-wide tile.
    let (b, s, d_in, d_out) = (3, 7, 300, 45);
    let vals = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32) * k).sin()).collect() };
    let x = || {
        Tensor::<CpuAutodiff, 3>::from_data(
            TensorData::new(vals(b * s * d_in, 0.37), [b, s, d_in]),
            &device,
        )
        .require_grad()
    };
    let w = Tensor::<CpuAutodiff, 2>::from_data(
        TensorData::new(vals(d_in * d_out, 0.11), [d_in, d_out]),
        &device,
    );
    let bias =
        Tensor::<CpuAutodiff, 1>::from_data(TensorData::new(vals(d_out, 0.5), [d_out]), &device);
    let r = Tensor::<CpuAutodiff, 3>::from_data(
        TensorData::new(vals(b * s * d_out, 0.23), [b, s, d_out]),
        &device,
    );
    let read =
        |t: Tensor<engram_model::Cpu, 3>| -> Vec<f32> { t.into_data().into_vec().expect("v") };

    let x1 = x();
    let y1 = linear(&x1, &w, Some(&bias)).expect("the kernels take a linear map under autodiff");
    let g1 = read(
        x1.grad(&(y1.clone() * r.clone()).sum().backward())
            .expect("∂x"),
    );
    let x2 = x();
    let y2 = x2
        .clone()
        .reshape([b * s, d_in])
        .matmul(w.clone())
        .reshape([b, s, d_out])
        + bias.clone().reshape([1, 1, d_out]);
    let g2 = read(x2.grad(&(y2.clone() * r).sum().backward()).expect("∂x"));
    let (v1, v2) = (read(y1.inner()), read(y2.inner()));
    for (a, c) in v1.iter().zip(&v2).chain(g1.iter().zip(&g2)) {
        assert!((a - c).abs() <= 1e-4 * (1.0 + c.abs()), "{a} vs {c}");
    }
}

/// The benchmarks take the CPU GEMM's rate for the floor only on the ndarray backend itself.
#[test]
fn only_the_plain_cpu_backend_counts_as_ndarray() {
    assert!(engram_model::cpu::on_ndarray::<engram_model::device::Cpu>());
    assert!(!engram_model::cpu::on_ndarray::<CpuAutodiff>());
}
