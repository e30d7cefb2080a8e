//! Building blocks checked against their definitions, computed in f64 on the host.

use engram_model::burn_tensor::{Tensor, TensorData};
use engram_model::device::Cpu;
use engram_model::layers::silu;

#[test]
fn silu_matches_its_definition_including_the_tails() {
    let xs: Vec<f32> = vec![
        -1000.0, -100.0, -88.0, -30.0, -5.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 5.0, 30.0, 100.0,
        1000.0,
    ];
    let device = Default::default();
    let t = Tensor::<Cpu, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device);
    let got: Vec<f32> = silu(t).into_data().to_vec().expect("f32 data");
    for (&x, &y) in xs.iter().zip(&got) {
        let x64 = f64::from(x);
        let want = x64 / (1.0 + (-x64).exp());
        assert!(y.is_finite(), "silu({x}) = {y}");
        // Relative 1e-6 where the value is not tiny, absolute 1e-30 where it is.
        let tol = (want.abs() * 1e-6).max(1e-30);
        assert!(
            (f64::from(y) - want).abs() <= tol,
            "silu({x}) = {y}, want {want}"
        );
    }
}
