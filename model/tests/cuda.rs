//! Tiny-fixture parity on CUDA: f32 within 1e-4 of HF, bf16 within 0.1 on logits
//! (bf16 keeps 8 mantissa bits). Compiled with `--features cuda`; skips where no driver is found.
#![cfg(feature = "cuda")]

use burn_tensor::backend::Backend;
use engram_model::device::{cuda_available, Cuda, CudaBf16};
use engram_model::{Batch, LanguageModel};

use crate::common::{claim_precision, in_child_process, max_excess, shared, Reference, ARCHS};

fn parity<B: Backend>(device: B::Device, atol: f32, label: &str) {
    let Some(sh) = shared("cuda parity") else {
        return;
    };
    for arch in ARCHS {
        let dir = sh.join("fixtures/tiny").join(arch);
        let lm = LanguageModel::<B>::load(&dir, &device).expect("load on CUDA");
        let reference = Reference::open(&dir.join("reference.safetensors"));
        let (shape, ids) = reference.i64("input_ids");
        let rows: Vec<Vec<u32>> = ids
            .chunks(shape[1])
            .map(|r| r.iter().map(|&i| i as u32).collect())
            .collect();
        let logits = lm
            .model
            .logits(&Batch::uniform(&rows).expect("batch"))
            .expect("forward");
        let got: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("logits");
        let (_, want) = reference.f32("logits");
        let e = max_excess(&got, &want, 1e-4);
        eprintln!("CUDA {label} {arch}: max logit excess over rtol {e:.3e}");
        assert!(
            e <= atol,
            "CUDA {label} {arch}: logits differ from HF by {e}"
        );
    }
}

#[test]
fn cuda_parity_f32() {
    if !cuda_available() {
        eprintln!("SKIP cuda parity: no CUDA driver on this machine");
        return;
    }
    parity::<Cuda>(Default::default(), 1e-4, "f32");
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
    parity::<CudaBf16>(device, 0.1, "bf16");
}
