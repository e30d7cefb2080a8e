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

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

#[test]
fn cpu_gemm_matches_an_f64_product_on_ragged_shapes() {
    use engram_model::cpu::{sgemm, supported};
    if !supported() {
        eprintln!(
            "skipped: this CPU lacks AVX-512F, so the CPU GEMM is off and burn's matmul runs"
        );
        return;
    }
    // Shapes that hit every edge: one row, partial register tiles (rows % 12, cols % 32),
    // more than one KC (256) block and NC (512) block, and rows split over threads.
    for (i, &(m, n, k)) in [
        (1, 1, 1),
        (1, 33, 7),
        (5, 576, 576),
        (13, 47, 300),
        (25, 65, 513),
        (37, 16, 257),
        (100, 1100, 40),
        (64, 192, 576),
    ]
    .iter()
    .enumerate()
    {
        let a = values(m * k, 3 * i as u64);
        let b = values(k * n, 3 * i as u64 + 1);
        let bias = values(n, 3 * i as u64 + 2);
        for with_bias in [false, true] {
            let mut c = vec![f32::NAN; m * n];
            assert!(sgemm(
                m,
                n,
                k,
                &a,
                &b,
                with_bias.then_some(&bias[..]),
                &mut c
            ));
            for r in 0..m {
                for j in 0..n {
                    let mut want = if with_bias { f64::from(bias[j]) } else { 0.0 };
                    let mut scale = 1.0f64;
                    for p in 0..k {
                        let t = f64::from(a[r * k + p]) * f64::from(b[p * n + j]);
                        want += t;
                        scale += t.abs();
                    }
                    let got = f64::from(c[r * n + j]);
                    // f32 accumulation: error grows with the sum of |terms|.
                    assert!(
                        (got - want).abs() <= 1e-6 * scale,
                        "{m}x{n}x{k} bias={with_bias} c[{r},{j}] = {got}, want {want}"
                    );
                }
            }
        }
    }
    let mut c = vec![0.0; 4];
    assert!(
        !sgemm(2, 2, 2, &[0.0; 3], &[0.0; 4], None, &mut c),
        "a length mismatch is refused"
    );
}

#[test]
fn linear_gives_the_same_result_through_the_cpu_gemm_and_burn() {
    use engram_model::cpu::{linear, supported};
    use engram_model::layers::Linear;
    if !supported() {
        eprintln!(
            "skipped: this CPU lacks AVX-512F, so the CPU GEMM is off and burn's matmul runs"
        );
        return;
    }
    let device = Default::default();
    let (b, s, d_in, d_out) = (3, 11, 70, 45);
    let x = Tensor::<Cpu, 3>::from_data(
        TensorData::new(values(b * s * d_in, 7), [b, s, d_in]),
        &device,
    );
    let layer = Linear {
        weight: Tensor::from_data(
            TensorData::new(values(d_in * d_out, 8), [d_in, d_out]),
            &device,
        ),
        bias: Some(Tensor::from_data(
            TensorData::new(values(d_out, 9), [d_out]),
            &device,
        )),
    };
    let fast = linear(&x, &layer.weight, layer.bias.as_ref())
        .expect("the fast path applies to f32 CPU tensors");
    let slow = x.matmul(layer.weight.clone().unsqueeze::<3>())
        + layer.bias.clone().expect("bias").unsqueeze::<3>();
    assert_eq!(fast.dims(), [b, s, d_out]);
    let diff: f32 = (fast - slow).abs().max().into_scalar();
    assert!(diff < 1e-5, "fast and burn paths differ by {diff}");
}
