//! Parity on the wgpu backend (Vulkan; Mesa's lavapipe in CI): the four tiny
//! fixtures' logits within 1e-4 of HF in f32 (as on the CPU) and 5e-2 in f16
//! (10 mantissa bits over a few layers; lavapipe: 1.1e-2 to 2.9e-2); SmolLM2's GGUF last-position logits
//! within the fixture's 2e-3 in f32. Compiled with `--features wgpu`; the
//! adapter is `ENGRAM_TEST_WGPU` (default `wgpu`, the best one wgpu finds).
#![cfg(feature = "wgpu")]

use burn_tensor::backend::Backend;
use engram_model::device::{Wgpu, WgpuF16};
use engram_model::{Batch, DeviceSpec, LanguageModel};

use crate::common::{claim_precision, in_child_process, shared, tiny_parity, Reference};

fn device() -> burn_wgpu::WgpuDevice {
    let spec: DeviceSpec = std::env::var("ENGRAM_TEST_WGPU")
        .unwrap_or_else(|_| "wgpu".into())
        .parse()
        .expect("ENGRAM_TEST_WGPU names a wgpu device");
    match spec {
        DeviceSpec::Wgpu(a) => engram_model::device::wgpu_device(a),
        other => panic!("ENGRAM_TEST_WGPU={other} is not a wgpu device"),
    }
}

fn logits<B: Backend>(lm: &LanguageModel<B>, rows: &[Vec<u32>]) -> Vec<f32> {
    lm.model
        .logits(&Batch::uniform(rows).expect("batch"))
        .expect("forward")
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("logits")
}

#[test]
#[ignore = "needs ../shared"]
fn wgpu_tiny_parity_f32() {
    tiny_parity::<Wgpu>(device(), 1e-4, "wgpu f32");
}

/// In its own process: the device's precision is fixed for a process.
#[test]
#[ignore = "needs ../shared"]
fn wgpu_tiny_parity_f16() {
    if !in_child_process("wgpu::wgpu_tiny_parity_f16") {
        return;
    }
    let d = device();
    if !<WgpuF16 as Backend>::supports_dtype(&d, burn_tensor::DType::F16) {
        eprintln!("wgpu f16: this adapter has no f16 support; f16 parity not run");
        return;
    }
    claim_precision::<WgpuF16>(&d, burn_tensor::DType::F16);
    tiny_parity::<WgpuF16>(d, 5e-2, "wgpu f16");
}

#[test]
#[ignore = "needs ../shared"]
fn wgpu_smollm2_gguf_parity_f32() {
    let Some(sh) = shared("wgpu SmolLM2") else {
        return;
    };
    let path = sh.join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lm = LanguageModel::<Wgpu>::load(&path, &device()).expect("load the GGUF on wgpu");
    let reference = Reference::open(&sh.join("fixtures/smollm2/reference.safetensors"));
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sh.join("fixtures/smollm2/reference.json")).expect("json"),
    )
    .expect("json");
    let v = lm.model.config.vocab_size;
    let mut worst = 0f32;
    for p in meta["prompts"].as_array().expect("prompts") {
        let key = p["key"].as_str().expect("key");
        let (_, ids) = reference.i64(&format!("{key}.input_ids"));
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let all = logits(&lm, std::slice::from_ref(&ids));
        let last = &all[(ids.len() - 1) * v..ids.len() * v];
        let (_, want) = reference.f32(&format!("{key}.last_logits"));
        let diff = last
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst = worst.max(diff);
        assert!(
            diff <= 2e-3,
            "{key}: wgpu last logits differ from HF by {diff}"
        );
    }
    eprintln!("wgpu f32 SmolLM2 GGUF: max |logit - HF| over 6 prompts {worst:.3e} (allowed 2e-3)");
}
