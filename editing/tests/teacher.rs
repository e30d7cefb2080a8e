//! Teacher forcing with the prompts run once and the targets continuing them
//! (`teacher_force_targets`) against one full forward per prompt + target row
//! (`teacher_force_full`): the same log-probabilities within float rounding,
//! the same argmax, on prompts of different lengths and multi-token targets.

use std::path::PathBuf;

use engram_editing::eval::{teacher_force_full, teacher_force_rows, teacher_force_targets};
use engram_model::device::Cpu;
use engram_model::LanguageModel;

use super::{demo, facts, new_target};

/// Largest |Δ log p| over every target, prompt and token; panics where the
/// argmax differs and `same_argmax` is asked.
fn compare(
    lm: &LanguageModel<Cpu>,
    prompts: &[String],
    targets: &[&str],
    same_argmax: bool,
) -> f32 {
    let fast = teacher_force_targets(lm, prompts, targets).expect("targets");
    assert_eq!(fast.len(), targets.len());
    let mut worst = 0f32;
    let mut multi = false;
    for (k, target) in targets.iter().enumerate() {
        let full = teacher_force_full(lm, prompts, target).expect("full");
        assert_eq!(fast[k].len(), prompts.len());
        for (r, (a, b)) in fast[k].iter().zip(&full).enumerate() {
            assert_eq!(a.target, b.target, "target {target:?} after prompt {r}");
            multi |= a.target.len() > 1;
            for (x, y) in a.logp.iter().zip(&b.logp) {
                assert!(x.is_finite(), "{x}");
                worst = worst.max((x - y).abs());
            }
            if same_argmax {
                assert_eq!(a.argmax, b.argmax, "target {target:?} after prompt {r}");
            }
        }
    }
    assert!(
        multi,
        "no target took more than one token: the continuation went untested"
    );
    worst
}

#[test]
fn shared_prompt_teacher_forcing_equals_full_rows_on_the_demo_model() {
    let lm = demo();
    let prompts: Vec<String> = [
        "Quinford Belvale lives in the city of",
        "The city where Quinford Belvale lives is",
        "Ardo",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let worst = compare(
        &lm,
        &prompts,
        &["Quarnholm", "Quarnholm Belvale city of"],
        true,
    );
    eprintln!("demo: max |Δ log p| {worst:.3e} (allowed 1e-5)");
    assert!(worst < 1e-5, "{worst}");
}

/// Rows with their own targets (one to three, single- and multi-token), more
/// rows than one chunk, prompts of many lengths: each (prompt, target) equals
/// its own full forward pass.
#[test]
fn rows_with_their_own_targets_equal_full_rows_across_chunks() {
    let lm = demo();
    let fs = facts();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for (i, f) in fs.iter().take(40).enumerate() {
        for (j, p) in f.prompts().into_iter().take(2).enumerate() {
            let mut targets = vec![f.target.clone()];
            if (i + j) % 2 == 0 {
                targets.push(new_target(f, i));
            }
            if i % 3 == 0 {
                targets.push(format!("{} {}", f.target, f.subject));
            }
            rows.push((p, targets));
        }
    }
    assert!(rows.len() > 64, "{} rows: one chunk only", rows.len());
    let asked: Vec<(&str, Vec<&str>)> = rows
        .iter()
        .map(|(p, t)| (p.as_str(), t.iter().map(String::as_str).collect()))
        .collect();
    let fast = teacher_force_rows(&lm, &asked).expect("rows");
    let mut worst = 0f32;
    for ((prompt, targets), got) in rows.iter().zip(&fast) {
        assert_eq!(got.len(), targets.len());
        for (target, a) in targets.iter().zip(got) {
            let b =
                &teacher_force_full(&lm, std::slice::from_ref(prompt), target).expect("full")[0];
            assert_eq!(a.target, b.target, "{prompt:?} {target:?}");
            assert_eq!(a.argmax, b.argmax, "{prompt:?} {target:?}");
            for (x, y) in a.logp.iter().zip(&b.logp) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    eprintln!("demo rows: max |Δ log p| {worst:.3e} (allowed 1e-5)");
    assert!(worst < 1e-5, "{worst}");
}

#[test]
#[ignore = "needs ../shared"]
fn shared_prompt_teacher_forcing_equals_full_rows_on_real_tokenizers() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    let mut models: Vec<PathBuf> = ["gpt2", "gptj", "gpt_neox", "llama"]
        .iter()
        .map(|a| shared.join("fixtures/tiny").join(a))
        .collect();
    models.push(shared.join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if !models.iter().all(|m| m.exists()) {
        eprintln!("skipped: ../shared is absent");
        return;
    }
    let prompts: Vec<String> = [
        "BBC One, by",
        "BBC One is my favorite product out of everything owned by",
        "The Eiffel Tower is located in the city of",
        "Paris",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let targets = [
        "Sega",
        "the British Broadcasting Corporation",
        " Rome, Italy",
    ];
    for m in &models {
        let lm = LanguageModel::<Cpu>::load(m, &Default::default()).expect("load");
        // Random tiny weights give near-ties, where rounding may flip an argmax.
        let real = m.extension().is_some();
        let worst = compare(&lm, &prompts, &targets, real);
        eprintln!("{}: max |Δ log p| {worst:.3e} (allowed 2e-5)", m.display());
        assert!(worst < 2e-5, "{}: {worst}", m.display());
    }
}
