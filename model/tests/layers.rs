//! Building blocks checked against their definitions, computed in f64 on the host.

use engram_model::burn_tensor::{Tensor, TensorData};
use engram_model::device::Cpu;
use engram_model::layers::silu;

#[test]
fn silu_matches_its_definition_including_the_tails() {
    on_each_isa(silu_matches_its_definition_including_the_tails_on);
}

fn silu_matches_its_definition_including_the_tails_on() {
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

/// Runs `check` on each instruction set this CPU has for the kernels (AVX-512,
/// AVX2), through [`engram_model::cpu::with_isa`].
fn on_each_isa(check: fn()) {
    let isas = engram_model::cpu::isas();
    if isas.is_empty() {
        eprintln!("skipped: this CPU has neither AVX2/FMA nor AVX-512F, so burn's ops run");
        return;
    }
    for isa in isas {
        eprintln!("on {}", isa.name());
        engram_model::cpu::with_isa(isa, check).expect("the CPU has it");
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
    on_each_isa(cpu_gemm_matches_an_f64_product_on_ragged_shapes_on);
}

fn cpu_gemm_matches_an_f64_product_on_ragged_shapes_on() {
    use engram_model::cpu::sgemm;
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
fn cpu_gemm_with_a_transposed_operand_matches_an_f64_product() {
    on_each_isa(cpu_gemm_with_a_transposed_operand_matches_an_f64_product_on);
}

fn cpu_gemm_with_a_transposed_operand_matches_an_f64_product_on() {
    use engram_model::cpu::sgemm_bt;
    // Small row counts too: a transposed operand is always packed.
    for (i, &(m, n, k)) in [
        (1, 1, 1),
        (3, 33, 7),
        (13, 47, 300),
        (30, 576, 1536),
        (40, 600, 513),
    ]
    .iter()
    .enumerate()
    {
        let a = values(m * k, 7 * i as u64);
        let bt = values(n * k, 7 * i as u64 + 1);
        let mut c = vec![f32::NAN; m * n];
        assert!(sgemm_bt(m, n, k, &a, &bt, &mut c));
        for r in 0..m {
            for j in 0..n {
                let (mut want, mut scale) = (0f64, 1f64);
                for p in 0..k {
                    let t = f64::from(a[r * k + p]) * f64::from(bt[j * k + p]);
                    want += t;
                    scale += t.abs();
                }
                let got = f64::from(c[r * n + j]);
                assert!(
                    (got - want).abs() <= 1e-6 * scale,
                    "{m}x{n}x{k} c[{r},{j}] = {got}, want {want}"
                );
            }
        }
    }
}

/// The AMX path (three bf16 parts per operand, six products) on ragged shapes,
/// both operand layouts, with and without bias: within the bound the f32
/// kernel is held to.
#[test]
#[cfg(target_arch = "x86_64")]
fn amx_gemm_matches_an_f64_product_like_the_f32_kernel() {
    use engram_model::cpu::amx::{available, sgemm_amx};
    if !available() {
        eprintln!("skipped: this CPU (or kernel) gives no AMX-BF16 tiles");
        return;
    }
    let mut worst = 0f64;
    for (i, &(m, n, k)) in [
        (1, 1, 1),
        (3, 33, 7),
        (17, 47, 300),
        (33, 600, 513),
        (64, 192, 576),
        (70, 300, 1536),
    ]
    .iter()
    .enumerate()
    {
        let a = values(m * k, 11 * i as u64);
        let b = values(k * n, 11 * i as u64 + 1);
        let bias = values(n, 11 * i as u64 + 2);
        for (trans, with_bias) in [(false, false), (false, true), (true, false)] {
            // Bᵀ as `[n, k]` for the transposed call.
            let operand: Vec<f32> = if trans {
                (0..n * k).map(|x| b[(x % k) * n + x / k]).collect()
            } else {
                b.clone()
            };
            let mut c = vec![f32::NAN; m * n];
            let bias_arg = with_bias.then_some(&bias[..]);
            assert!(sgemm_amx((m, n, k), &a, &operand, trans, bias_arg, &mut c));
            for r in 0..m {
                for j in 0..n {
                    let mut want = if with_bias { f64::from(bias[j]) } else { 0.0 };
                    let mut scale = 1.0f64;
                    for p in 0..k {
                        let t = f64::from(a[r * k + p]) * f64::from(b[p * n + j]);
                        want += t;
                        scale += t.abs();
                    }
                    let err = (f64::from(c[r * n + j]) - want).abs() / scale;
                    worst = worst.max(err);
                    assert!(
                        err <= 1e-6,
                        "{m}x{n}x{k} trans={trans} bias={with_bias} c[{r},{j}]: error {err:.2e} of the |terms|"
                    );
                }
            }
        }
    }
    eprintln!("AMX bf16x6: worst error {worst:.2e} of the sum of |terms| (allowed 1e-6)");
    let mut c = vec![0.0; 4];
    assert!(!sgemm_amx(
        (2, 2, 2),
        &[0.0; 3],
        &[0.0; 4],
        false,
        None,
        &mut c
    ));
}

#[test]
fn gram_matches_an_f64_sum_of_outer_products() {
    on_each_isa(gram_matches_an_f64_sum_of_outer_products_on);
}

fn gram_matches_an_f64_sum_of_outer_products_on() {
    use engram_model::cpu::gram;
    let (n, d) = (70, 45);
    let x = values(n * d, 99);
    let t = Tensor::<Cpu, 2>::from_data(TensorData::new(x.clone(), [n, d]), &Default::default());
    let g = gram(&t).expect("gram on the fast path");
    for i in 0..d {
        for j in 0..d {
            let (mut want, mut scale) = (0f64, 1f64);
            for r in 0..n {
                let p = f64::from(x[r * d + i]) * f64::from(x[r * d + j]);
                want += p;
                scale += p.abs();
            }
            assert!(
                (f64::from(g[i * d + j]) - want).abs() <= 1e-6 * scale,
                "[{i},{j}]"
            );
        }
    }
}

#[test]
fn linear_gives_the_same_result_through_the_cpu_gemm_and_burn() {
    on_each_isa(linear_gives_the_same_result_through_the_cpu_gemm_and_burn_on);
}

fn linear_gives_the_same_result_through_the_cpu_gemm_and_burn_on() {
    use engram_model::cpu::linear;
    use engram_model::layers::Linear;
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

fn t3(data: Vec<f32>, dims: [usize; 3]) -> Tensor<Cpu, 3> {
    Tensor::from_data(TensorData::new(data, dims), &Default::default())
}

fn t4(data: Vec<f32>, dims: [usize; 4]) -> Tensor<Cpu, 4> {
    Tensor::from_data(TensorData::new(data, dims), &Default::default())
}

fn max_diff<const D: usize>(a: Tensor<Cpu, D>, b: Tensor<Cpu, D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar()
}

#[test]
fn fused_cpu_norms_silu_and_rotary_match_burn_ops() {
    on_each_isa(fused_cpu_norms_silu_and_rotary_match_burn_ops_on);
}

fn fused_cpu_norms_silu_and_rotary_match_burn_ops_on() {
    use engram_model::config::{NormKind, RotaryStyle};
    use engram_model::cpu::ops;
    let device = Default::default();
    let (b, s, d) = (2, 5, 37);
    let x = t3(
        values(b * s * d, 11).iter().map(|v| 3.0 * v).collect(),
        [b, s, d],
    );
    let w = Tensor::<Cpu, 1>::from_data(TensorData::new(values(d, 12), [d]), &device);
    let bias = Tensor::<Cpu, 1>::from_data(TensorData::new(values(d, 13), [d]), &device);
    let eps = 1e-5;

    let rms = ops::norm(&x, NormKind::RmsNorm, eps, &w, None).expect("fast path");
    let ms = x.clone().square().mean_dim(2);
    let want = x.clone() / (ms + eps).sqrt() * w.clone().unsqueeze::<3>();
    assert!(max_diff(rms, want) < 1e-5);

    let ln = ops::norm(&x, NormKind::LayerNorm, eps, &w, Some(&bias)).expect("fast path");
    let (var, mean) = x.clone().var_mean_bias(2);
    let want = (x.clone() - mean) / (var + eps).sqrt() * w.clone().unsqueeze::<3>()
        + bias.clone().unsqueeze::<3>();
    assert!(max_diff(ln, want) < 1e-5);

    let up = t3(values(b * s * d, 14), [b, s, d]);
    let fused = ops::silu_mul(&x, &up).expect("fast path");
    let want = x.clone() / x.clone().neg().exp().add_scalar(1.0) * up;
    assert!(max_diff(fused, want) < 1e-5);

    // Rotary on 4 of 6 dimensions per head, both styles.
    let (h, dh, r) = (3, 6, 4);
    let q = t4(values(b * s * h * dh, 15), [b, s, h, dh]);
    let angles: Vec<f32> = (0..b * s * r).map(|i| 0.37 * i as f32).collect();
    let cos = t4(angles.iter().map(|a| a.cos()).collect(), [b, s, 1, r]);
    let sin = t4(angles.iter().map(|a| a.sin()).collect(), [b, s, 1, r]);
    let qd: Vec<f32> = q.clone().into_data().to_vec().expect("f32");
    let (cd, sd): (Vec<f32>, Vec<f32>) = (
        cos.clone().into_data().to_vec().expect("f32"),
        sin.clone().into_data().to_vec().expect("f32"),
    );
    for style in [RotaryStyle::Half, RotaryStyle::Interleaved] {
        let got: Vec<f32> = ops::rotary(&q, style, &cos, &sin)
            .expect("fast path")
            .into_data()
            .to_vec()
            .expect("f32");
        // The rotation written out by hand: pairs (j, j + r/2) or (2i, 2i + 1).
        for pos in 0..b * s {
            for head in 0..h {
                let base = (pos * h + head) * dh;
                for j in 0..dh {
                    let want = if j >= r {
                        qd[base + j]
                    } else {
                        let partner = match style {
                            RotaryStyle::Half if j < r / 2 => -qd[base + j + r / 2],
                            RotaryStyle::Half => qd[base + j - r / 2],
                            RotaryStyle::Interleaved if j % 2 == 0 => -qd[base + j + 1],
                            RotaryStyle::Interleaved => qd[base + j - 1],
                        };
                        qd[base + j] * cd[pos * r + j] + partner * sd[pos * r + j]
                    };
                    assert!(
                        (got[base + j] - want).abs() < 1e-6,
                        "{style:?} pos {pos} head {head} dim {j}: {} vs {want}",
                        got[base + j]
                    );
                }
            }
        }
    }
}

#[test]
fn fused_cpu_attention_matches_burn_with_grouped_heads_and_padding() {
    on_each_isa(fused_cpu_attention_matches_burn_with_grouped_heads_and_padding_on);
}

fn fused_cpu_attention_matches_burn_with_grouped_heads_and_padding_on() {
    use engram_model::burn_tensor::activation::softmax;
    use engram_model::burn_tensor::Bool;
    use engram_model::cpu::ops;
    let device = Default::default();
    // Two kv heads shared by six query heads; 3 queries after 4 cached keys; row 1
    // left-padded so that its first query sees only padding (a fully masked row).
    let (b, s, t, nh, nkv, dh) = (2, 3, 7, 6, 2, 40);
    let q = t4(values(b * s * nh * dh, 21), [b, s, nh, dh]);
    let k = t4(values(b * t * nkv * dh, 22), [b, t, nkv, dh]);
    let v = t4(values(b * t * nkv * dh, 23), [b, t, nkv, dh]);
    let past = t - s;
    let keep = [vec![true; t], {
        let mut row = vec![false; 5];
        row.extend([true, true]);
        row
    }];
    let mut mask = Vec::new();
    for row in &keep {
        for qi in 0..s {
            for (ki, &kept) in row.iter().enumerate() {
                mask.push(ki > past + qi || !kept);
            }
        }
    }
    let mask = Tensor::<Cpu, 4, Bool>::from_data(TensorData::new(mask, [b, 1, s, t]), &device);

    // burn: repeat kv heads, q kᵀ / √d, masked to f32::MIN, softmax, · v.
    let rep = |x: Tensor<Cpu, 4>| {
        x.unsqueeze_dim::<5>(3)
            .expand([b, t, nkv, nh / nkv, dh])
            .reshape([b, t, nh, dh])
    };
    let scores = q
        .clone()
        .swap_dims(1, 2)
        .matmul(rep(k.clone()).swap_dims(1, 2).swap_dims(2, 3))
        .mul_scalar(1.0 / (dh as f64).sqrt())
        .mask_fill(mask.clone().expand([b, nh, s, t]), f32::MIN);
    let pattern = softmax(scores.clone(), 3);
    let z = pattern
        .clone()
        .matmul(rep(v.clone()).swap_dims(1, 2))
        .swap_dims(1, 2);

    let fused = ops::attention(&q, &k, &v, &mask).expect("fast path");
    assert!(max_diff(fused.clone(), z.clone()) < 1e-5);
    let got_scores = ops::attention_scores(&q, &k, &mask).expect("fast path");
    let finite = |x: Tensor<Cpu, 4>| x.clamp(-1e30, 1e30);
    assert!(max_diff(finite(got_scores.clone()), finite(scores)) < 1e-5);
    let got_pattern = ops::softmax(&got_scores).expect("fast path");
    assert!(max_diff(got_pattern.clone(), pattern) < 1e-6);
    let stepwise = ops::attention_values(&got_pattern, &v).expect("fast path");
    // The fused and step-by-step paths do the same arithmetic, bit for bit.
    let (a, c): (Vec<f32>, Vec<f32>) = (
        fused.into_data().to_vec().expect("f32"),
        stepwise.into_data().to_vec().expect("f32"),
    );
    assert_eq!(a, c);
}

#[test]
fn fused_cpu_softmax_keeps_nan_and_silu_keeps_its_tails() {
    on_each_isa(fused_cpu_softmax_keeps_nan_and_silu_keeps_its_tails_on);
}

fn fused_cpu_softmax_keeps_nan_and_silu_keeps_its_tails_on() {
    use engram_model::cpu::ops;
    let x = t4(
        vec![0.0, 1.0, f32::NAN, 2.0, -1.0, 0.5, 3.0, 100.0],
        [1, 1, 2, 4],
    );
    let p: Vec<f32> = ops::softmax(&x)
        .expect("fast path")
        .into_data()
        .to_vec()
        .expect("f32");
    assert!(
        p[..4].iter().all(|v| v.is_nan()),
        "a NaN score poisons its row: {p:?}"
    );
    assert!((p[4..].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(
        (p[7] - 1.0).abs() < 1e-6,
        "the large score takes the mass: {p:?}"
    );
    let y: Vec<f32> = ops::silu(&t3(vec![f32::NAN, f32::INFINITY, -200.0], [1, 1, 3]))
        .expect("fast path")
        .into_data()
        .to_vec()
        .expect("f32");
    assert!(
        y[0].is_nan() && y[1] == f32::INFINITY && y[2] == 0.0,
        "{y:?}"
    );
    assert!(y[2].is_sign_negative(), "silu(-200) is -0: {y:?}");
}

#[test]
fn fused_cpu_softmax_and_silu_match_their_definitions_on_long_rows() {
    on_each_isa(fused_cpu_softmax_and_silu_match_their_definitions_on_long_rows_on);
}

/// Rows longer than one vector, with ragged tails (8 and 16 lanes), against f64.
fn fused_cpu_softmax_and_silu_match_their_definitions_on_long_rows_on() {
    use engram_model::cpu::ops;
    for len in [9, 17, 100] {
        // Scores over a wide range, so that some exponents underflow.
        let x: Vec<f32> = values(3 * len, len as u64)
            .iter()
            .map(|v| 60.0 * v)
            .collect();
        let p: Vec<f32> = ops::softmax(&t4(x.clone(), [1, 1, 3, len]))
            .expect("fast path")
            .into_data()
            .to_vec()
            .expect("f32");
        for (row, got) in x.chunks(len).zip(p.chunks(len)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = row.iter().map(|&v| f64::from(v - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (j, (&g, &e)) in got.iter().zip(&e).enumerate() {
                let want = e / sum;
                assert!(
                    (f64::from(g) - want).abs() <= 1e-6 * want + 1e-37,
                    "len {len} [{j}]: {g}, want {want}"
                );
            }
        }
        let y: Vec<f32> = ops::silu(&t3(x.clone(), [1, 3, len]))
            .expect("fast path")
            .into_data()
            .to_vec()
            .expect("f32");
        for (j, (&x, &y)) in x.iter().zip(&y).enumerate() {
            let x64 = f64::from(x);
            let want = x64 / (1.0 + (-x64).exp());
            assert!(
                (f64::from(y) - want).abs() <= (want.abs() * 1e-6).max(1e-30),
                "len {len} silu [{j}]({x}) = {y}, want {want}"
            );
        }
    }
}
