//! Every tensor of `reference.safetensors` (HF transformers, fp32, eager) against
//! Engram's forward pass with an activation cache: atol 1e-4, rtol 1e-4, on each
//! instruction set this CPU has for the kernels (AVX-512, AVX2), or burn's ops.

use engram_model::device::Cpu;
use engram_model::{ActivationCache, Batch};

use crate::common::{max_excess, tiny, Reference, ARCHS};

const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-4;

fn parity(arch: &str) {
    let isas = engram_model::cpu::isas();
    if isas.is_empty() {
        return parity_on(arch, "burn's ops");
    }
    for isa in isas {
        engram_model::cpu::with_isa(isa, || parity_on(arch, isa.name())).expect("the CPU has it");
    }
}

fn parity_on(arch: &str, on: &str) {
    let Some((dir, lm)) = tiny(arch) else { return };
    let reference = Reference::open(&dir.join("reference.safetensors"));
    let (shape, ids) = reference.i64("input_ids");
    let rows: Vec<Vec<u32>> = ids
        .chunks(shape[1])
        .map(|r| r.iter().map(|&i| i as u32).collect())
        .collect();
    let batch = Batch::uniform(&rows).expect("batch");

    let names: Vec<String> = reference
        .names()
        .into_iter()
        .filter(|n| n != "input_ids" && n != "logits")
        .collect();
    let mut cache = ActivationCache::<Cpu>::with_names(&names).expect("hook names");
    let logits = lm.model.forward(&batch, &mut cache).expect("forward");

    let (lshape, lref) = reference.f32("logits");
    assert_eq!(logits.dims().to_vec(), lshape);
    let got: Vec<f32> = logits.into_data().into_vec().expect("logits");
    let e = max_excess(&got, &lref, RTOL);
    assert!(e <= ATOL, "{arch} logits differ from HF by {e} on {on}");

    let mut checked = 1;
    for name in &names {
        let act = cache
            .get_name(name)
            .unwrap_or_else(|| panic!("{arch}: hook {name} never ran"));
        let (rshape, rdata) = reference.f32(name);
        assert_eq!(act.dims(), rshape, "{arch} {name} shape");
        let e = max_excess(&act.to_vec().expect("data"), &rdata, RTOL);
        assert!(e <= ATOL, "{arch} {name} differs from HF by {e} on {on}");
        checked += 1;
    }
    assert!(
        checked >= 5 * lm.model.config.n_layers,
        "{arch}: only {checked} tensors compared"
    );
}

#[test]
#[ignore = "needs ../shared"]
fn parity_gpt2_matches_hf() {
    parity("gpt2");
}

#[test]
#[ignore = "needs ../shared"]
fn parity_gptj_matches_hf() {
    parity("gptj");
}

#[test]
#[ignore = "needs ../shared"]
fn parity_gpt_neox_matches_hf() {
    parity("gpt_neox");
}

#[test]
#[ignore = "needs ../shared"]
fn parity_llama_matches_hf() {
    parity("llama");
}

#[test]
#[ignore = "needs ../shared"]
fn parity_covers_every_fixture() {
    let Some(shared) = crate::common::shared("fixture list") else {
        return;
    };
    let mut found: Vec<String> = std::fs::read_dir(shared.join("fixtures/tiny"))
        .expect("fixtures/tiny")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    found.sort();
    let mut ours: Vec<String> = ARCHS.iter().map(|s| s.to_string()).collect();
    ours.sort();
    assert_eq!(found, ours, "a fixture has no parity test");
}
