//! Generation: the KV cache changes nothing, batching changes nothing, sampling is seeded.

use engram_model::generate::{choose, Rng};
use engram_model::{generate, GenerateConfig, Sampling};

use crate::common::{tiny, ARCHS};

fn greedy(n: usize, kv_cache: bool) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
        stop_at_eos: false,
        kv_cache,
    }
}

#[test]
#[ignore = "needs ../shared"]
fn greedy_with_and_without_kv_cache_agree() {
    for arch in ARCHS {
        let Some((_, lm)) = tiny(arch) else { return };
        let prompt = lm.encode_prompt("The history of the city").expect("encode");
        let cached =
            generate(&lm.model, std::slice::from_ref(&prompt), &greedy(20, true)).expect("gen");
        let plain =
            generate(&lm.model, std::slice::from_ref(&prompt), &greedy(20, false)).expect("gen");
        assert_eq!(cached[0].len(), 20);
        assert_eq!(cached, plain, "{arch}");
    }
}

#[test]
#[ignore = "needs ../shared"]
fn batched_left_padded_generation_equals_unbatched() {
    for arch in ARCHS {
        let Some((_, lm)) = tiny(arch) else { return };
        let prompts: Vec<Vec<u32>> = ["In the beginning of the war", "She said", "A river"]
            .iter()
            .map(|p| lm.encode_prompt(p).expect("encode"))
            .collect();
        assert!(prompts[0].len() != prompts[1].len());
        for kv in [true, false] {
            let batched = generate(&lm.model, &prompts, &greedy(12, kv)).expect("gen");
            for (i, p) in prompts.iter().enumerate() {
                let alone =
                    generate(&lm.model, std::slice::from_ref(p), &greedy(12, kv)).expect("gen");
                assert_eq!(batched[i], alone[0], "{arch} row {i} kv_cache={kv}");
            }
        }
    }
}

#[test]
#[ignore = "needs ../shared"]
fn sampling_is_seeded_and_respects_filters() {
    let Some((_, lm)) = tiny("llama") else { return };
    let prompt = lm.encode_prompt("The city").expect("encode");
    let cfg = |seed| GenerateConfig {
        max_new_tokens: 15,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: Some(50),
            top_p: Some(0.95),
            seed,
        },
        stop_at_eos: false,
        kv_cache: true,
    };
    let a = generate(&lm.model, std::slice::from_ref(&prompt), &cfg(7)).expect("gen");
    let b = generate(&lm.model, std::slice::from_ref(&prompt), &cfg(7)).expect("gen");
    let c = generate(&lm.model, std::slice::from_ref(&prompt), &cfg(8)).expect("gen");
    assert_eq!(a, b);
    assert_ne!(a, c, "different seeds gave the same 15 tokens");

    let logits = [0.1f32, 3.0, 2.9, -1.0];
    let mut rng = Rng::new(1);
    let top1 = Sampling::Sample {
        temperature: 1.0,
        top_k: Some(1),
        top_p: None,
        seed: 0,
    };
    let nucleus = Sampling::Sample {
        temperature: 1.0,
        top_k: None,
        top_p: Some(0.01),
        seed: 0,
    };
    for _ in 0..20 {
        assert_eq!(choose(&logits, top1, &mut rng).expect("choose"), 1);
        assert_eq!(choose(&logits, nucleus, &mut rng).expect("choose"), 1);
        let two = Sampling::Sample {
            temperature: 1.0,
            top_k: Some(2),
            top_p: None,
            seed: 0,
        };
        assert!([1, 2].contains(&choose(&logits, two, &mut rng).expect("choose")));
    }
}

#[test]
#[ignore = "needs ../shared"]
fn generation_past_the_context_is_an_error() {
    let Some((_, lm)) = tiny("gpt2") else { return };
    let prompt = lm.encode_prompt("word word word").expect("encode");
    let err = generate(&lm.model, std::slice::from_ref(&prompt), &greedy(100, true))
        .expect_err("too long");
    assert!(
        matches!(
            &err,
            engram_model::ModelError::InvalidOption { option, message }
                if option == "generate" && message.contains("context of 64")
        ),
        "{err:?}"
    );
    // A length near usize::MAX must not wrap the check into "fits".
    let fit = 64 - prompt.len();
    let err = generate(&lm.model, &[prompt], &greedy(usize::MAX, true)).expect_err("huge");
    assert!(
        err.to_string().contains(&format!("at most {fit} fit")),
        "{err}"
    );
}

#[test]
fn sampling_settings_outside_their_range_are_refused() {
    let sample = |temperature: f32, top_k: Option<usize>, top_p: Option<f32>| Sampling::Sample {
        temperature,
        top_k,
        top_p,
        seed: 0,
    };
    for (s, option) in [
        (sample(1.0, None, Some(0.0)), "top-p"),
        (sample(1.0, None, Some(2.0)), "top-p"),
        (sample(1.0, None, Some(f32::NAN)), "top-p"),
        (sample(1.0, Some(0), None), "top-k"),
        (sample(f32::NAN, None, None), "temperature"),
        (sample(-1.0, None, None), "temperature"),
    ] {
        let err = s.check().expect_err("out of range");
        assert!(err.to_string().contains(&format!("`{option}`")), "{err}");
    }
    assert!(sample(0.7, Some(5), Some(1.0)).check().is_ok());
    assert!(Sampling::Greedy.check().is_ok());
}

#[test]
#[ignore = "needs ../shared"]
fn generate_with_streams_each_step_and_stops_when_told() {
    let Some((_, lm)) = tiny("gpt2") else { return };
    let prompt = lm.encode_prompt("The history of the city").expect("encode");
    let full = generate(&lm.model, std::slice::from_ref(&prompt), &greedy(10, true)).expect("gen");
    let mut seen = Vec::new();
    let out = engram_model::generate::generate_with(
        &lm.model,
        std::slice::from_ref(&prompt),
        &greedy(10, true),
        |rows| {
            seen.push(rows[0].clone());
            rows[0].len() < 4
        },
    )
    .expect("gen");
    // Stopped after the fourth token, which is the start of the full run.
    assert_eq!(out[0], full[0][..4].to_vec());
    assert_eq!(seen.len(), 4);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s[..], full[0][..=i]);
    }
}

/// Hooks in generation: observing or replacing a value by itself changes no
/// token; a replacement from step k on leaves the tokens before k alone.
#[test]
#[ignore = "needs ../shared"]
fn hooks_in_generation_see_each_step_and_change_only_what_they_replace() {
    use engram_model::{fn_hook, generate_hooked, Activation, ActivationCache, HookPoint};
    for arch in ARCHS {
        let Some((_, lm)) = tiny(arch) else { return };
        let prompt = lm.encode_prompt("The history of the city").expect("encode");
        let prompts = std::slice::from_ref(&prompt);
        for kv in [true, false] {
            let plain = generate(&lm.model, prompts, &greedy(12, kv)).expect("gen");
            let mut cache = ActivationCache::new(|p| p == HookPoint::resid_post(0));
            let seen = generate_hooked(&lm.model, prompts, &greedy(12, kv), &mut cache, |_| true)
                .expect("gen");
            assert_eq!(seen, plain, "{arch} kv={kv}: observing changed the tokens");
            let mut same = fn_hook([HookPoint::mlp_out(0)], |_, act: &Activation<_>| {
                Some(act.clone())
            });
            let replaced =
                generate_hooked(&lm.model, prompts, &greedy(12, kv), &mut same, |_| true)
                    .expect("gen");
            assert_eq!(
                replaced, plain,
                "{arch} kv={kv}: replacing a value by itself changed the tokens"
            );
        }
        // With the cache, call i is step i: the prompt first, then one position per step.
        let plain = generate(&lm.model, prompts, &greedy(12, true)).expect("gen");
        let k = 5;
        let mut widths = Vec::new();
        // Not a constant shift: the next LayerNorm would take that out again.
        let d = lm.model.config.d_model;
        let pattern: Vec<f32> = (0..d)
            .map(|i| if i % 2 == 0 { 50.0 } else { -50.0 })
            .collect();
        let pattern = engram_model::burn_tensor::Tensor::<engram_model::device::Cpu, 3>::from_data(
            engram_model::burn_tensor::TensorData::new(pattern, [1, 1, d]),
            &Default::default(),
        );
        let mut push = fn_hook([HookPoint::resid_post(0)], |_, act: &Activation<_>| {
            let x = act.as_rank3()?.clone();
            widths.push(x.dims()[1]);
            if widths.len() <= k {
                return None;
            }
            Some(Activation::Rank3(x + pattern.clone()))
        });
        let pushed = generate_hooked(&lm.model, prompts, &greedy(12, true), &mut push, |_| true)
            .expect("gen");
        drop(push);
        assert_eq!(
            widths[0],
            prompt.len(),
            "{arch}: the first step sees the prompt"
        );
        assert!(
            widths[1..].iter().all(|&w| w == 1),
            "{arch}: later steps see one position"
        );
        assert_eq!(
            pushed[0][..k],
            plain[0][..k],
            "{arch}: tokens before step {k} moved"
        );
        assert_ne!(
            pushed[0][k..],
            plain[0][k..],
            "{arch}: the replacement from step {k} changed nothing"
        );
    }
}
