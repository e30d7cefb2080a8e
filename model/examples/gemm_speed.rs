//! GFLOP/s of the CPU GEMM against burn's matmul on SmolLM2's projection shapes.
//!
//! `cargo run --release -p engram-model --example gemm_speed`

use std::time::Instant;

use engram_model::burn_tensor::{Tensor, TensorData};
use engram_model::cpu;
use engram_model::device::Cpu;

fn main() {
    println!("cpu supported: {}", cpu::supported());
    let device = Default::default();
    println!(
        "{:>6} {:>6} {:>6} {:>12} {:>12} {:>7}",
        "m", "n", "k", "ours GF/s", "burn GF/s", "ratio"
    );
    for (m, n, k) in [
        (1024, 576, 576),
        (1024, 192, 576),
        (1024, 1536, 576),
        (1024, 576, 1536),
        (1024, 49152, 576),
        (64, 1536, 576),
        (64, 49152, 576),
        (8, 1536, 576),
        (1, 1536, 576),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0)
            .collect();
        let mut c = vec![0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64;
        let reps = ((2e10 / flop) as usize).clamp(3, 2000);
        cpu::sgemm(m, n, k, &a, &b, None, &mut c);
        let t = Instant::now();
        for _ in 0..reps {
            cpu::sgemm(m, n, k, &a, &b, None, &mut c);
        }
        let ours = flop * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
        let ta = Tensor::<Cpu, 2>::from_data(TensorData::new(a, [m, k]), &device);
        let tb = Tensor::<Cpu, 2>::from_data(TensorData::new(b, [k, n]), &device);
        let _ = ta.clone().matmul(tb.clone()).into_data();
        let t = Instant::now();
        for _ in 0..reps {
            let _ = ta.clone().matmul(tb.clone()).into_data();
        }
        let burn = flop * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!(
            "{m:>6} {n:>6} {k:>6} {ours:>12.1} {burn:>12.1} {:>6.2}x",
            ours / burn
        );
    }
}
