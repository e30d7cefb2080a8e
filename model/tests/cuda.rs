//! Tiny-fixture parity on CUDA: f32 within 1e-4 of HF, bf16 within 0.1 on logits
//! (bf16 keeps 8 mantissa bits). Compiled with `--features cuda`; skips where no driver is found.
#![cfg(feature = "cuda")]

use engram_model::device::{cuda_available, Cuda, CudaBf16};

use crate::common::{claim_precision, in_child_process, tiny_parity};

#[test]
fn cuda_parity_f32() {
    if !cuda_available() {
        eprintln!("SKIP cuda parity: no CUDA driver on this machine");
        return;
    }
    tiny_parity::<Cuda>(Default::default(), 1e-4, "CUDA f32");
}

/// In its own process: the device's precision is fixed for a process.
#[test]
fn cuda_parity_bf16() {
    if !cuda_available() {
        eprintln!("SKIP cuda parity: no CUDA driver on this machine");
        return;
    }
    if !in_child_process("cuda::cuda_parity_bf16") {
        return;
    }
    let device = Default::default();
    claim_precision::<CudaBf16>(&device, burn_tensor::DType::BF16);
    tiny_parity::<CudaBf16>(device, 0.1, "CUDA bf16");
}
