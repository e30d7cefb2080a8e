//! Analysis tests, in one binary. Tests that need `../shared` skip where it is absent.

use std::path::PathBuf;

use engram_analysis::lens::{logit_lens, LensSite};
use engram_model::device::Cpu;
use engram_model::{Batch, LanguageModel};

fn tiny(arch: &str) -> Option<LanguageModel<Cpu>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/tiny")
        .join(arch);
    if !dir.is_dir() {
        eprintln!("SKIP: ../shared is absent");
        return None;
    }
    Some(LanguageModel::load(&dir, &Default::default()).expect("load"))
}

/// The lens at the last layer's resid_post is the model's own output distribution.
#[test]
#[ignore = "needs ../shared"]
fn lens_at_last_layer_equals_model_output() {
    for arch in ["gpt2", "llama", "gpt_neox"] {
        let Some(lm) = tiny(arch) else { return };
        let ids = lm
            .encode_prompt("The river runs through the old town")
            .expect("encode");
        let lens = logit_lens(&lm.model, &ids, LensSite::Post).expect("lens");
        assert_eq!(lens.probs.len(), lm.model.config.n_layers);
        let probs = lm
            .model
            .next_token_probs(&Batch::single(&ids))
            .expect("probs");
        let want: Vec<f32> = probs.into_data().into_vec().expect("v");
        let got = &lens.probs[lm.model.config.n_layers - 1][ids.len() - 1];
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-6, "{arch}: {diff}");
        // resid_pre of layer l+1 is resid_post of layer l.
        let pre = logit_lens(&lm.model, &ids, LensSite::Pre).expect("lens");
        assert_eq!(pre.probs[1], lens.probs[0]);
    }
}

#[test]
#[ignore = "needs ../shared"]
fn first_top1_layer_reads_ranks() {
    let Some(lm) = tiny("gpt2") else { return };
    let ids = lm.encode_prompt("The river").expect("encode");
    let lens = logit_lens(&lm.model, &ids, LensSite::Post).expect("lens");
    let last = ids.len() - 1;
    let top_final = lens.top_k(last, 1)[lm.model.config.n_layers - 1][0].0;
    let ranks = lens.rank_by_layer(last, top_final);
    assert_eq!(*ranks.last().expect("ranks"), 0);
    let first = lens
        .first_top1_layer(last, top_final)
        .expect("top-1 at the end");
    assert!(ranks[first..].iter().all(|&r| r == 0));
    assert!(first == 0 || ranks[first - 1] != 0);
    assert!(logit_lens(&tiny("gptj").expect("gptj").model, &ids, LensSite::Mid).is_err());
}

mod trace {
    use std::path::PathBuf;

    use engram_analysis::trace::{
        default_window, embedding_std, token_groups, trace_fact, trace_naive, trace_with_patch,
        window_layers, Noise, TraceConfig, TraceError, TraceInput, TraceKind,
    };
    use engram_model::device::Cpu;
    use engram_model::{HookPoint, LanguageModel};

    fn demo() -> LanguageModel<Cpu> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../app/assets/demo-model");
        LanguageModel::load(&dir, &Default::default()).expect("demo model")
    }

    fn input(lm: &LanguageModel<Cpu>, prompt: &str, subject: &str, target: &str) -> TraceInput {
        let (enc, span) = lm.tokenizer.subject_span(prompt, subject).expect("subject");
        TraceInput {
            target: lm.target_tokens(prompt, target).expect("target")[0],
            ids: enc.ids,
            subject: span,
        }
    }

    fn small(scale: f32) -> TraceConfig {
        TraceConfig {
            samples: 3,
            window: 3,
            max_rows: 7,
            ..TraceConfig::rome(scale)
        }
    }

    fn scale(lm: &LanguageModel<Cpu>, subjects: &[&str]) -> f32 {
        let ids: Vec<Vec<u32>> = subjects
            .iter()
            .map(|s| lm.tokenizer.encode(s).expect("encode"))
            .collect();
        3.0 * embedding_std(&lm.model, &ids).expect("std")
    }

    /// ROME traces a fact only when the top token is the whole answer
    /// (`--whole-answer`); by default the answer's first token suffices.
    #[test]
    fn whole_answer_test_skips_an_answer_longer_than_the_top_token() {
        use engram_analysis::jobs::trace::{trace_facts, Outcome, TraceOptions};
        use engram_datasets::facts::UserFact;
        let lm = demo();
        let fact = |target: &str| UserFact {
            subject: "Quinford Belvale".into(),
            prompt: "Quinford Belvale lives in the city of".into(),
            target: target.into(),
            relation: None,
        };
        let facts = [fact("Quarnholm"), fact("Quarnholm city")];
        let traced = |whole_answer: bool| -> Vec<bool> {
            let opts = TraceOptions {
                kinds: vec![TraceKind::Mlp],
                samples: 2,
                whole_answer,
                ..TraceOptions::default()
            };
            trace_facts(&lm, &facts, &opts, 0.1, &engram_model::Control::new())
                .expect("trace")
                .iter()
                .map(|o| matches!(o.outcome, Outcome::Traced(_)))
                .collect()
        };
        assert_eq!(traced(false), [true, true]);
        assert_eq!(traced(true), [true, false]);
    }

    #[test]
    fn restoring_every_state_gives_back_the_clean_probability() {
        let lm = demo();
        let x = input(
            &lm,
            "Quinford Belvale lives in the city of",
            "Quinford Belvale",
            "Quarnholm",
        );
        let cfg = small(scale(&lm, &["Quinford Belvale", "Belvale Quinford"]));
        let t = trace_fact(&lm.model, &x, &cfg, &mut |_, _| true).expect("trace");
        assert_eq!(t.predicted, x.target, "the demo model knows this fact");
        assert!(
            t.corrupted_prob < t.clean_prob - 0.05,
            "noise did nothing: {t:?}"
        );
        for layer in [0, lm.model.config.n_layers - 1] {
            let all: Vec<(HookPoint, usize)> = (0..x.ids.len())
                .map(|tok| (HookPoint::resid_post(layer), tok))
                .collect();
            let p = trace_with_patch(&lm.model, &x, &cfg, &all).expect("patch");
            assert!(
                (p - t.clean_prob).abs() < 1e-5,
                "layer {layer}: {p} vs clean {}",
                t.clean_prob
            );
        }
        let none = trace_with_patch(&lm.model, &x, &cfg, &[]).expect("patch");
        assert!(
            (none - t.corrupted_prob).abs() < 1e-6,
            "{none} vs {}",
            t.corrupted_prob
        );
        // Restoring the whole subject at the embedding-adjacent block undoes the noise too.
        let subject: Vec<(HookPoint, usize)> = x
            .subject
            .clone()
            .map(|tok| (HookPoint::resid_pre(0), tok))
            .collect();
        let p = trace_with_patch(&lm.model, &x, &cfg, &subject).expect("patch");
        assert!((p - t.clean_prob).abs() < 1e-5);
    }

    /// The batched, prefix-reusing path gives the reference path's numbers (1e-5).
    #[test]
    #[ignore = "needs ../shared"]
    fn fast_path_equals_one_restoration_at_a_time() {
        let mut cases = vec![(demo(), "Belvale Quinford works as a", "Belvale Quinford")];
        for arch in ["gpt2", "llama", "gpt_neox"] {
            if let Some(lm) = super::tiny(arch) {
                cases.push((
                    lm,
                    "The Eiffel Tower is located in the city of",
                    "The Eiffel Tower",
                ));
            }
        }
        for (lm, prompt, subject) in cases {
            let (enc, span) = lm.tokenizer.subject_span(prompt, subject).expect("subject");
            let x = TraceInput {
                target: 5,
                ids: enc.ids,
                subject: span,
            };
            for noise in [
                Noise::Gaussian { scale: 0.5 },
                Noise::Uniform { scale: 0.5 },
            ] {
                let cfg = TraceConfig {
                    noise,
                    ..small(0.5)
                };
                let fast = trace_fact(&lm.model, &x, &cfg, &mut |_, _| true).expect("fast");
                let naive = trace_naive(&lm.model, &x, &cfg, &mut |_, _| true).expect("naive");
                assert!((fast.corrupted_prob - naive.corrupted_prob).abs() < 1e-5);
                assert_eq!(fast.kinds.len(), 3);
                for (f, n) in fast.kinds.iter().zip(&naive.kinds) {
                    assert_eq!(f.kind, n.kind);
                    for (fr, nr) in f.scores.iter().zip(&n.scores) {
                        for (a, b) in fr.iter().zip(nr) {
                            assert!(
                                (a - b).abs() < 1e-5,
                                "{:?} {:?}: {a} vs {b}",
                                f.kind,
                                lm.model.config.arch
                            );
                        }
                    }
                }
            }
        }
    }

    /// ROME's finding holds on the demo model: with the subject corrupted, restoring
    /// the MLP output at the last subject token in an early layer brings back much
    /// of the answer, far more than at the first subject token. Averaged over the
    /// first 12 demo facts, 5 noisy samples each.
    #[test]
    fn demo_model_recalls_facts_at_the_last_subject_token() {
        let lm = demo();
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../datasets/demo/facts.jsonl");
        let text = std::fs::read_to_string(&path).expect("demo facts");
        let facts: Vec<serde_json::Value> = text
            .lines()
            .take(12)
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let field = |f: &serde_json::Value, k: &str| f[k].as_str().expect(k).to_string();
        let subjects: Vec<String> = facts.iter().map(|f| field(f, "subject")).collect();
        let refs: Vec<&str> = subjects.iter().map(String::as_str).collect();
        let n_layers = lm.model.config.n_layers;
        let cfg = TraceConfig {
            samples: 5,
            window: default_window(n_layers),
            kinds: vec![TraceKind::Mlp],
            ..TraceConfig::rome(scale(&lm, &refs))
        };
        let (mut first, mut last) = (vec![0f32; n_layers], vec![0f32; n_layers]);
        for f in &facts {
            let x = input(
                &lm,
                &field(f, "prompt"),
                &field(f, "subject"),
                &field(f, "target"),
            );
            let t = trace_fact(&lm.model, &x, &cfg, &mut |_, _| true).expect("trace");
            assert_eq!(t.predicted, x.target, "the demo model knows {f}");
            let mlp = &t.kinds[0].scores;
            for l in 0..n_layers {
                first[l] += (mlp[x.subject.start][l] - t.corrupted_prob) / facts.len() as f32;
                last[l] += (mlp[x.subject.end - 1][l] - t.corrupted_prob) / facts.len() as f32;
            }
        }
        eprintln!("MLP indirect effect, first subject token: {first:?}");
        eprintln!("MLP indirect effect, last subject token:  {last:?}");
        let (peak, size) = last
            .iter()
            .copied()
            .enumerate()
            .fold((0, f32::MIN), |a, (l, v)| if v > a.1 { (l, v) } else { a });
        assert!(peak < n_layers / 2, "peak at layer {peak}: {last:?}");
        assert!(size > 0.15, "peak effect {size}");
        assert!(size > 2.0 * first.iter().copied().fold(f32::MIN, f32::max));
    }

    #[test]
    fn cancelling_stops_a_trace() {
        let lm = demo();
        let x = input(
            &lm,
            "Quinford Belvale works as a",
            "Quinford Belvale",
            "weaver",
        );
        let mut calls = 0;
        let r = trace_fact(&lm.model, &x, &small(0.3), &mut |_, _| {
            calls += 1;
            calls < 2
        });
        assert!(matches!(r, Err(TraceError::Cancelled(_))));
        assert_eq!(calls, 2);
    }

    #[test]
    fn windows_and_token_groups_follow_rome() {
        // ROME: range(max(0, l - w // 2), min(n, l - (-w // 2)))
        assert_eq!(window_layers(TraceKind::Mlp, 0, 10, 48), 0..5);
        assert_eq!(window_layers(TraceKind::Mlp, 20, 10, 48), 15..25);
        assert_eq!(window_layers(TraceKind::Attn, 47, 10, 48), 42..48);
        assert_eq!(window_layers(TraceKind::Mlp, 3, 3, 6), 2..5);
        assert_eq!(window_layers(TraceKind::Hidden, 7, 10, 48), 7..8);
        // ROME's 10 on its models; the same share of depth on shallow ones.
        assert_eq!(default_window(48), 10);
        assert_eq!(default_window(28), 10);
        assert_eq!(default_window(12), 2);
        assert_eq!(default_window(4), 1);
        let s = 2..5;
        let groups: Vec<Vec<usize>> = (0..9).map(|t| token_groups(t, &s, 9)).collect();
        assert_eq!(
            groups,
            vec![
                vec![],
                vec![],
                vec![0],
                vec![1],
                vec![2],
                vec![3],
                vec![4],
                vec![4],
                vec![5]
            ]
        );
        // A subject right before the last token: that token is both "first subsequent" and "last".
        assert_eq!(token_groups(5, &(0..5), 6), vec![3, 5]);
        assert_eq!(token_groups(0, &(0..1), 6), vec![0, 2]);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let lm = demo();
        let mut x = input(
            &lm,
            "Quinford Belvale works as a",
            "Quinford Belvale",
            "weaver",
        );
        x.subject = 3..3;
        let cfg = small(0.3);
        assert!(matches!(
            trace_fact(&lm.model, &x, &cfg, &mut |_, _| true),
            Err(TraceError::EmptySubject)
        ));
        x.subject = 3..40;
        assert!(matches!(
            trace_fact(&lm.model, &x, &cfg, &mut |_, _| true),
            Err(TraceError::SubjectOutOfRange { .. })
        ));
        x.subject = 0..2;
        x.target = 1 << 30;
        assert!(matches!(
            trace_fact(&lm.model, &x, &cfg, &mut |_, _| true),
            Err(TraceError::TargetOutOfRange(_))
        ));
        assert!(lm
            .tokenizer
            .subject_span("Quinford Belvale works as a", "Nobody")
            .is_err());
        assert!(lm
            .target_tokens("Quinford Belvale works as a", " ")
            .is_err());
    }
}

mod patching {
    use std::path::PathBuf;

    use engram_analysis::patching::{patch_sweep, replace_subject, PatchError, PatchSite};
    use engram_model::device::Cpu;
    use engram_model::{fn_hook, Activation, Batch, HookPoint, LanguageModel};

    fn demo() -> LanguageModel<Cpu> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../app/assets/demo-model");
        LanguageModel::load(&dir, &Default::default()).expect("demo model")
    }

    /// Logit difference of the corrupted run with one activation patched in by a plain hook.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        lm: &LanguageModel<Cpu>,
        clean: &[u32],
        corrupted: &[u32],
        point: HookPoint,
        index: usize,
        per_head: bool,
        answer: u32,
        wrong: u32,
    ) -> f32 {
        let mut cache = engram_model::ActivationCache::<Cpu>::new(move |p| p == point);
        lm.model
            .forward(&Batch::single(clean), &mut cache)
            .expect("clean");
        let clean_act = cache.get(point).cloned().expect("cached");
        let mut hook = fn_hook([point], move |_, act: &Activation<Cpu>| {
            match (act, &clean_act) {
                (Activation::Rank3(x), Activation::Rank3(c)) => {
                    let [b, s, d] = x.dims();
                    let mut x = x.clone();
                    let c = c.clone().slice([0..1, index..index + 1, 0..d]);
                    x = x.slice_assign([0..b, index..index + 1, 0..d], c);
                    let _ = s;
                    Some(Activation::Rank3(x))
                }
                (Activation::Rank4(x), Activation::Rank4(c)) if per_head => {
                    let [b, s, _, d] = x.dims();
                    let c = c.clone().slice([0..1, 0..s, index..index + 1, 0..d]);
                    Some(Activation::Rank4(
                        x.clone()
                            .slice_assign([0..b, 0..s, index..index + 1, 0..d], c),
                    ))
                }
                _ => None,
            }
        });
        let logits = lm
            .model
            .forward(&Batch::single(corrupted), &mut hook)
            .expect("patched");
        let v: Vec<f32> = logits.into_data().into_vec().expect("vec");
        let vocab = lm.model.config.vocab_size;
        let last = &v[(corrupted.len() - 1) * vocab..];
        last[answer as usize] - last[wrong as usize]
    }

    #[test]
    fn sweep_equals_patching_one_activation_at_a_time() {
        let lm = demo();
        let prompt = "Quinford Belvale lives in the city of";
        let (corrupt_prompt, other) = replace_subject(
            &lm.tokenizer,
            prompt,
            "Quinford Belvale",
            &["Belvale Quinford".to_string()],
        )
        .expect("tokenize")
        .expect("same length");
        assert_eq!(other, "Belvale Quinford");
        let clean = lm.encode_prompt(prompt).expect("clean");
        let corrupted = lm.encode_prompt(&corrupt_prompt).expect("corrupted");
        let answer = lm.target_tokens(prompt, "Quarnholm").expect("answer")[0];
        let wrong = lm.top_k(&corrupt_prompt, 1).expect("top")[0].id;
        let report = patch_sweep(
            &lm.model,
            &clean,
            &corrupted,
            answer,
            wrong,
            &PatchSite::ALL,
        )
        .expect("sweep");
        assert!(report.clean_logit_diff > 0.0 && report.corrupted_logit_diff < 0.0);
        for s in &report.sites {
            for layer in 0..lm.model.config.n_layers {
                let point = HookPoint::block(
                    layer,
                    match s.site {
                        PatchSite::ResidPre => engram_model::BlockSite::ResidPre,
                        PatchSite::AttnOut => engram_model::BlockSite::AttnOut,
                        PatchSite::MlpOut => engram_model::BlockSite::MlpOut,
                        PatchSite::HeadOut => engram_model::BlockSite::Z,
                    },
                );
                for (i, &got) in s.logit_diff[layer].iter().enumerate() {
                    let want = reference(
                        &lm,
                        &clean,
                        &corrupted,
                        point,
                        i,
                        s.site == PatchSite::HeadOut,
                        answer,
                        wrong,
                    );
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{:?} layer {layer} #{i}: {got} vs {want}",
                        s.site
                    );
                }
            }
        }
        // Patching resid_pre of layer 0 at every subject position, one at a time, leaves
        // other positions inert: recovery 0 where the prompts agree.
        let resid = &report.sites[0];
        for p in 2..clean.len() {
            assert!(resid.recovery[0][p].abs() < 1e-4);
        }
    }

    #[test]
    fn one_differing_token_patched_at_the_embedding_recovers_fully() {
        let lm = demo();
        let prompt = "Quinford Belvale lives in the city of";
        let corrupt_prompt = "Quinford Quinford lives in the city of";
        let clean = lm.encode_prompt(prompt).expect("clean");
        let corrupted = lm.encode_prompt(corrupt_prompt).expect("corrupted");
        let answer = lm.target_tokens(prompt, "Quarnholm").expect("answer")[0];
        // The corrupted run's best answer other than the clean one.
        let wrong = lm
            .top_k(corrupt_prompt, 2)
            .expect("top")
            .into_iter()
            .find(|t| t.id != answer)
            .expect("two candidates")
            .id;
        let r = patch_sweep(
            &lm.model,
            &clean,
            &corrupted,
            answer,
            wrong,
            &[PatchSite::ResidPre],
        )
        .expect("sweep");
        assert!((r.sites[0].recovery[0][1] - 1.0).abs() < 1e-4);
        assert!(matches!(
            patch_sweep(
                &lm.model,
                &clean,
                &clean[..3],
                answer,
                wrong,
                &[PatchSite::ResidPre]
            ),
            Err(PatchError::LengthMismatch {
                clean: 7,
                corrupted: 3
            })
        ));
    }
}

mod memories {
    use std::path::PathBuf;

    use engram_analysis::memories::{
        integrated_gradients, knowledge_neurons, top_memories, value_projections, Intervention,
        MemoryHook, Setting, TriggerSearch,
    };
    use engram_model::burn_tensor::Tensor;
    use engram_model::device::Cpu;
    use engram_model::hooks::{Activation, BlockSite};
    use engram_model::{fn_hook, ActivationCache, Batch, HookPoint, LanguageModel, NoHooks};

    fn demo() -> LanguageModel<Cpu> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../app/assets/demo-model");
        LanguageModel::load(&dir, &Default::default()).expect("demo model")
    }

    /// (subject, prompt, target) of the demo fact list.
    fn demo_facts() -> Vec<(String, String, String)> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../datasets/demo/facts.jsonl");
        std::fs::read_to_string(path)
            .expect("facts")
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                let f = |k: &str| v[k].as_str().expect("field").to_string();
                (f("subject"), f("prompt"), f("target"))
            })
            .collect()
    }

    /// The workbench's memory toggles act on a generated continuation: none
    /// leaves greedy generation unchanged token for token; switching every
    /// memory off changes it, and the cached continuation equals one
    /// generated without the KV cache (the hook then sees every position at
    /// every step).
    #[test]
    fn memory_interventions_apply_to_a_continuation() {
        use engram_analysis::jobs::memories::continuation;
        use engram_model::{generate_hooked, GenerateConfig, Sampling};
        let lm = demo();
        let (_, prompt, _) = demo_facts().swap_remove(0);
        let ids = lm.encode_prompt(&prompt).expect("prompt");
        let n = 6;
        let unhooked = |hook: &mut MemoryHook, kv_cache: bool| {
            let cfg = GenerateConfig {
                max_new_tokens: n,
                sampling: Sampling::Greedy,
                stop_at_eos: true,
                kv_cache,
            };
            let out = generate_hooked(&lm.model, std::slice::from_ref(&ids), &cfg, hook, |_| true)
                .expect("generate");
            lm.tokenizer.decode(&out[0]).expect("decode")
        };
        let none = continuation(&lm, &ids, n, &[]).expect("continuation");
        assert_eq!(none.plain, none.intervened);
        assert_eq!(none.plain, unhooked(&mut MemoryHook::new(&[], None), true));
        let c = &lm.model.config;
        // Every MLP switched off.
        let off: Vec<Intervention> = (0..c.n_layers)
            .flat_map(|layer| {
                (0..c.d_mlp).map(move |memory| Intervention {
                    layer,
                    memory,
                    setting: Setting::Zero,
                })
            })
            .collect();
        let with = continuation(&lm, &ids, n, &off).expect("continuation");
        assert_eq!(with.plain, none.plain);
        assert_ne!(with.intervened, with.plain, "{with:?}");
        assert_eq!(
            with.intervened,
            unhooked(&mut MemoryHook::new(&off, None), false)
        );
    }

    fn host(t: Tensor<Cpu, 3>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().expect("host")
    }

    /// Σᵢ aᵢ vᵢ + b equals hook_mlp_out at every position (plain and gated MLPs).
    #[test]
    #[ignore = "needs ../shared"]
    fn memory_sub_updates_sum_to_the_mlp_output() {
        let mut models = vec![("demo", demo())];
        if let Some(l) = super::tiny("llama") {
            models.push(("llama (gated)", l));
        }
        for (name, lm) in models {
            let ids = lm
                .tokenizer
                .encode("Quinford Belvale lives in the city of")
                .expect("ids");
            for layer in 0..lm.model.config.n_layers {
                let (post, out) = (
                    HookPoint::block(layer, BlockSite::MlpPost),
                    HookPoint::block(layer, BlockSite::MlpOut),
                );
                let mut cache = ActivationCache::<Cpu>::new(move |p| p == post || p == out);
                lm.model
                    .forward(&Batch::single(&ids), &mut cache)
                    .expect("forward");
                let a = host(cache.rank3(post).expect("post"));
                let y = host(cache.rank3(out).expect("out"));
                let fc = &lm.model.blocks[layer].mlp.fc_out;
                let w: Vec<f32> = fc.weight.clone().into_data().into_vec().expect("w");
                let bias: Vec<f32> = match &fc.bias {
                    Some(b) => b.clone().into_data().into_vec().expect("b"),
                    None => vec![0.0; lm.model.config.d_model],
                };
                let (m, d) = (lm.model.config.d_mlp, lm.model.config.d_model);
                for pos in 0..ids.len() {
                    for j in 0..d {
                        let sum: f32 =
                            (0..m).map(|i| a[pos * m + i] * w[i * d + j]).sum::<f32>() + bias[j];
                        let got = y[pos * d + j];
                        assert!(
                            (sum - got).abs() < 1e-4,
                            "{name} layer {layer} pos {pos}: {sum} vs {got}"
                        );
                    }
                }
            }
        }
    }

    /// Zeroing every memory of a layer equals replacing its MLP output by the
    /// bias alone (zero ablation where the MLP has no bias).
    #[test]
    fn zeroing_every_memory_ablates_the_mlp() {
        let lm = demo();
        let ids = lm
            .tokenizer
            .encode("Quinford Belvale lives in the city of")
            .expect("ids");
        let layer = 1;
        let all: Vec<Intervention> = (0..lm.model.config.d_mlp)
            .map(|memory| Intervention {
                layer,
                memory,
                setting: Setting::Zero,
            })
            .collect();
        let zeroed = lm
            .model
            .forward(&Batch::single(&ids), &mut MemoryHook::new(&all, None))
            .expect("forward");
        let bias = lm.model.blocks[layer]
            .mlp
            .fc_out
            .bias
            .clone()
            .expect("gpt2 bias");
        let mut ablate = fn_hook::<Cpu, _>(
            [HookPoint::block(layer, BlockSite::MlpOut)],
            move |_, act: &Activation<Cpu>| {
                act.as_rank3()
                    .map(|x| Activation::Rank3(x.zeros_like() + bias.clone().unsqueeze::<3>()))
            },
        );
        let ablated = lm
            .model
            .forward(&Batch::single(&ids), &mut ablate)
            .expect("forward");
        let clean = lm
            .model
            .forward(&Batch::single(&ids), &mut NoHooks)
            .expect("forward");
        let (z, a, c) = (host(zeroed), host(ablated), host(clean));
        let diff = z
            .iter()
            .zip(&a)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "{diff}");
        assert!(
            z.iter().zip(&c).any(|(x, y)| (x - y).abs() > 1e-2),
            "the ablation did nothing"
        );
        // An empty hook changes nothing.
        let none = lm
            .model
            .forward(&Batch::single(&ids), &mut MemoryHook::new(&[], None))
            .expect("forward");
        assert_eq!(host(none), c);
    }

    /// MaxPlus sets a memory to the layer's largest coefficient + ε at the chosen position only.
    #[test]
    fn interventions_set_coefficients_where_asked() {
        let lm = demo();
        let ids = lm
            .tokenizer
            .encode("Quinford Belvale lives in the city of")
            .expect("ids");
        let (layer, p) = (2, ids.len() - 1);
        let post = HookPoint::block(layer, BlockSite::MlpPost);
        let run = |hook: MemoryHook| {
            let mut both = (hook, ActivationCache::<Cpu>::new(move |q| q == post));
            lm.model
                .forward(&Batch::single(&ids), &mut both)
                .expect("forward");
            host(both.1.rank3(post).expect("post"))
        };
        let m = lm.model.config.d_mlp;
        let clean = run(MemoryHook::new(&[], None));
        let set = [
            Intervention {
                layer,
                memory: 7,
                setting: Setting::MaxPlus(0.5),
            },
            Intervention {
                layer,
                memory: 9,
                setting: Setting::Value(-2.0),
            },
        ];
        let after = run(MemoryHook::new(&set, Some(p)));
        let max = clean[p * m..(p + 1) * m]
            .iter()
            .copied()
            .fold(f32::MIN, f32::max);
        assert!((after[p * m + 7] - (max + 0.5)).abs() < 1e-5);
        assert_eq!(after[p * m + 9], -2.0);
        assert_eq!(after[..p * m], clean[..p * m], "other positions untouched");
        assert_eq!(after[p * m + 8], clean[p * m + 8]);
    }

    /// Completeness: with 20 steps the attributions sum to p(clean) − p(zero baseline).
    #[test]
    fn integrated_gradients_are_complete() {
        let lm = demo();
        for (subject, prompt, target) in demo_facts().into_iter().take(3) {
            let ids = lm.tokenizer.encode(&prompt).expect("ids");
            let t = lm.target_tokens(&prompt, &target).expect("target")[0];
            for layer in 0..lm.model.config.n_layers {
                let a =
                    integrated_gradients(&lm.model, &ids, ids.len() - 1, t, layer, 20).expect("ig");
                let sum: f32 = a.scores.iter().sum();
                let delta = a.prob - a.baseline_prob;
                eprintln!("{subject} layer {layer}: sum {sum:.4}, p - p0 = {delta:.4}");
                assert!(
                    (sum - delta).abs() <= 0.1 * delta.abs() + 0.02,
                    "{subject} layer {layer}: {sum} vs {delta}"
                );
            }
        }
    }

    /// On the demo model, zeroing a fact's knowledge neurons lowers its
    /// answer's probability more than zeroing as many random neurons of the
    /// same layers (over 50 facts).
    #[test]
    fn knowledge_neurons_matter_more_than_random_ones() {
        let lm = demo();
        let n_layers = lm.model.config.n_layers;
        let m = lm.model.config.d_mlp;
        let (mut kn_drop, mut rand_drop, mut found) = (0f64, 0f64, 0usize);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let facts = demo_facts();
        for (_, prompt, target) in facts.iter().step_by(9).take(50) {
            let ids = lm.tokenizer.encode(prompt).expect("ids");
            let p = ids.len() - 1;
            let t = lm.target_tokens(prompt, target).expect("target")[0];
            let attrs: Vec<_> = (0..n_layers)
                .map(|l| integrated_gradients(&lm.model, &ids, p, t, l, 20).expect("ig"))
                .collect();
            let kn = knowledge_neurons(&[attrs], 0.2, 0.7);
            let prob = |set: &[(usize, usize)]| -> f64 {
                let iv: Vec<Intervention> = set
                    .iter()
                    .map(|&(layer, memory)| Intervention {
                        layer,
                        memory,
                        setting: Setting::Zero,
                    })
                    .collect();
                let logits = lm
                    .model
                    .forward(&Batch::single(&ids), &mut MemoryHook::new(&iv, Some(p)))
                    .expect("forward");
                let v = logits.dims()[2];
                let probs = host(engram_model::burn_tensor::activation::softmax(logits, 2));
                f64::from(probs[p * v + t as usize])
            };
            let base = prob(&[]);
            let random: Vec<(usize, usize)> = kn
                .iter()
                .map(|&(layer, _)| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (layer, (seed % m as u64) as usize)
                })
                .collect();
            kn_drop += base - prob(&kn);
            rand_drop += base - prob(&random);
            found += kn.len();
        }
        eprintln!(
            "50 demo facts: {found} knowledge neurons (t = 0.2); mean p drop zeroing them {:.4}, zeroing as many random ones {:.4}",
            kn_drop / 50.0,
            rand_drop / 50.0
        );
        assert!(found > 0);
        assert!(
            kn_drop > 2.0 * rand_drop && kn_drop / 50.0 > 0.05,
            "{kn_drop} vs {rand_drop}"
        );
    }

    /// The top memories at a fact's last subject token: scores sorted, each
    /// memory's projection and sub-update reported; trigger search keeps the
    /// highest coefficients, best first.
    #[test]
    fn top_memories_and_triggers_on_a_demo_fact() {
        let lm = demo();
        let (subject, prompt, target) = demo_facts().remove(0);
        let (enc, span) = lm.tokenizer.subject_span(&prompt, &subject).expect("span");
        let t = lm.target_tokens(&prompt, &target).expect("target")[0];
        let layers =
            top_memories(&lm.model, &enc.ids, span.end - 1, Some(t), 5, 5, NoHooks).expect("top");
        assert_eq!(layers.len(), lm.model.config.n_layers);
        for l in &layers {
            assert_eq!(l.memories.len(), 5);
            assert!(l.memories.windows(2).all(|w| w[0].score >= w[1].score));
            assert!(l
                .memories
                .iter()
                .all(|h| h.value.top.len() == 5 && h.target_with.is_some()));
        }
        let v = value_projections(&lm.model, 0, &[0, 3], 4).expect("values");
        assert_eq!((v[0].memory, v[1].memory, v[0].top.len()), (0, 3, 4));
        assert!(v[0].top[0].score >= v[0].bottom[0].score);
        let rows: Vec<Vec<u32>> = demo_facts()
            .iter()
            .take(8)
            .map(|(_, p, _)| lm.tokenizer.encode(p).expect("ids"))
            .filter(|r| r.len() == 7)
            .collect();
        let mut search = TriggerSearch::new(&lm.model, &[1], 3).expect("search");
        search.feed(&lm.model, &rows).expect("feed");
        let found = search.finish();
        assert_eq!(found[0].len(), lm.model.config.d_mlp);
        for list in &found[0] {
            assert_eq!(list.len(), 3);
            assert!(list
                .windows(2)
                .all(|w| w[0].coefficient >= w[1].coefficient));
        }
    }
}

mod probe {
    use engram_analysis::probe::{
        grouped_folds, probe_layer, ridge_probe, LogisticOptions, ProbeTask, Rng,
    };
    use engram_model::device::Cpu;

    /// 4 "layers" of 16-d activations for 300 samples of 3 classes (60
    /// subjects × 5); only layer 2 carries the label, linearly.
    fn planted() -> (Vec<Vec<f32>>, Vec<usize>, Vec<usize>) {
        let mut rng = Rng::new(7);
        let mut noise = || ((rng.next_u64() % 2001) as f32 / 1000.0) - 1.0;
        let (n, d) = (300, 16);
        let groups: Vec<usize> = (0..n).map(|i| i / 5).collect();
        let labels: Vec<usize> = (0..n).map(|i| (i * 7 + i / 5) % 3).collect();
        let layers = (0..4)
            .map(|layer| {
                let mut x = Vec::with_capacity(n * d);
                for &label in &labels {
                    for j in 0..d {
                        let signal = if layer == 2 && j == label { 2.0 } else { 0.0 };
                        x.push(signal + noise());
                    }
                }
                x
            })
            .collect();
        (layers, labels, groups)
    }

    fn task<'a>(labels: &'a [usize], groups: &'a [usize], seed: u64) -> ProbeTask<'a> {
        ProbeTask {
            labels,
            n_classes: 3,
            types: groups,
            groups,
            folds: 5,
            seed,
            control: true,
            opts: LogisticOptions::default(),
        }
    }

    #[test]
    fn probe_finds_the_planted_layer_and_control_stays_near_chance() {
        let (layers, labels, groups) = planted();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let mut acc = Vec::new();
        for (layer, x) in layers.iter().enumerate() {
            let folds = probe_layer::<Cpu>(
                x,
                16,
                layer,
                &task(&labels, &groups, 1),
                &Default::default(),
            )
            .expect("probe");
            // Every held-out sample is counted once in the confusion matrix.
            let counted: usize = folds.confusion.iter().flatten().sum();
            assert_eq!(counted, labels.len());
            let folds = folds.folds;
            assert_eq!(folds.len(), 5);
            let a = mean(&folds.iter().map(|f| f.accuracy).collect::<Vec<_>>());
            let c = mean(&folds.iter().map(|f| f.control_accuracy).collect::<Vec<_>>());
            eprintln!("layer {layer}: accuracy {a:.3}, control {c:.3}");
            assert!(c < 0.5, "layer {layer}: control {c}");
            acc.push(a);
        }
        assert!(acc[2] > 0.9, "{acc:?}");
        assert!(
            acc.iter().enumerate().all(|(l, &a)| l == 2 || a < 0.5),
            "{acc:?}"
        );
    }

    #[test]
    fn grouped_folds_never_split_a_group() {
        let groups: Vec<usize> = (0..500).map(|i| (i * 31) % 97).collect();
        let folds = grouped_folds(&groups, 5, 3);
        for g in 0..97 {
            let mut seen: Vec<usize> = (0..500)
                .filter(|&i| groups[i] == g)
                .map(|i| folds[i])
                .collect();
            seen.dedup();
            assert_eq!(seen.len(), 1, "group {g} in folds {seen:?}");
        }
        let sizes: Vec<usize> = (0..5)
            .map(|f| folds.iter().filter(|&&x| x == f).count())
            .collect();
        assert!(sizes.iter().all(|&s| s > 50), "{sizes:?}");
    }

    #[test]
    fn a_seed_fixes_every_number() {
        let (layers, labels, groups) = planted();
        let run = |seed| {
            probe_layer::<Cpu>(
                &layers[2],
                16,
                2,
                &task(&labels, &groups, seed),
                &Default::default(),
            )
            .expect("probe")
        };
        assert_eq!(run(5), run(5));
        assert_ne!(grouped_folds(&groups, 5, 5), grouped_folds(&groups, 5, 6));
    }

    #[test]
    fn ridge_recovers_a_linear_target() {
        let (layers, _, _) = planted();
        let x = &layers[0];
        let y: Vec<f64> = (0..300)
            .map(|i| 2.0 * f64::from(x[i * 16]) - f64::from(x[i * 16 + 3]) + 0.5)
            .collect();
        let train: Vec<usize> = (0..250).collect();
        let test: Vec<usize> = (250..300).collect();
        let pred = ridge_probe(x, 16, &y, &train, &test, 1e-3).expect("ridge");
        let err = test
            .iter()
            .zip(&pred)
            .map(|(&i, p)| (p - y[i]).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-2, "{err}");
    }
}

mod steer {
    use std::path::PathBuf;

    use engram_analysis::jobs::steer::{
        load_vector, run_apply, run_build, ApplyRequest, BuildRequest,
    };
    use engram_analysis::steer::{mean_activation, Reduce, Steer};
    use engram_model::{
        generate_hooked, ActivationCache, Batch, Cpu, GenerateConfig, HookPoint, LanguageModel,
        NoHooks, Sampling,
    };

    fn demo() -> LanguageModel<Cpu> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../app/assets/demo-model");
        LanguageModel::load(&dir, &Default::default()).expect("demo model")
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The vector is the difference of the two sides' mean activations, as read
    /// by hand from the activation cache; coefficient 0 changes nothing; a
    /// stored vector loads back the same.
    #[test]
    fn a_steering_vector_is_the_mean_difference_and_zero_is_the_identity() {
        let lm = demo();
        let point = HookPoint::resid_pre(2);
        let pos = strings(&[
            "Quinford Belvale lives in the city of",
            "Zusin Belvale works as a",
        ]);
        let neg = strings(&["Quinford Salin speaks the language"]);
        let last = |prompt: &str| -> Vec<f32> {
            let ids = lm.encode_prompt(prompt).expect("encode");
            let mut cache = ActivationCache::<Cpu>::new(move |p| p == point);
            lm.model
                .forward(&Batch::single(&ids), &mut cache)
                .expect("forward");
            let act = cache.rank3(point).expect("cached");
            let [_, s, d] = act.dims();
            let v: Vec<f32> = act.into_data().into_vec().expect("v");
            v[(s - 1) * d..].to_vec()
        };
        let (a, b, c) = (last(&pos[0]), last(&pos[1]), last(&neg[0]));
        let dir = std::env::temp_dir().join(format!("engram-steer-{}", std::process::id()));
        let store = engram_datasets::RunStore::open(&dir).expect("store");
        let req = BuildRequest {
            positive: pos.clone(),
            negative: neg.clone(),
            point,
            reduce: Reduce::Last,
        };
        let built = run_build(&lm, "demo", &req, &store).expect("build");
        for i in 0..a.len() {
            let want = (a[i] + b[i]) / 2.0 - c[i];
            assert!((built.vector.values[i] - want).abs() < 1e-5, "[{i}]");
        }
        // Mean over tokens differs from the last token's.
        let mean = mean_activation(&lm, &neg, point, Reduce::Mean).expect("mean");
        assert!(mean
            .iter()
            .zip(&c)
            .any(|(m, l)| (*m as f32 - l).abs() > 1e-3));
        let loaded = load_vector(&built.run.dir, None).expect("load the run");
        assert_eq!(loaded, built.vector);

        let ids = lm
            .encode_prompt("Quinford Belvale lives in the city of")
            .expect("encode");
        let plain = lm
            .model
            .forward(&Batch::single(&ids), &mut NoHooks)
            .expect("forward");
        let mut zero = Steer::<Cpu>::new(&built.vector, 0.0, &lm.model.device);
        let zeroed = lm
            .model
            .forward(&Batch::single(&ids), &mut zero)
            .expect("forward");
        assert_eq!(
            plain.clone().into_data().to_vec::<f32>().expect("v"),
            zeroed.into_data().to_vec::<f32>().expect("v"),
            "coefficient 0 is the identity"
        );
        let mut strong = Steer::<Cpu>::new(&built.vector, 4.0, &lm.model.device);
        let steered = lm
            .model
            .forward(&Batch::single(&ids), &mut strong)
            .expect("forward");
        let diff = (plain - steered).abs().max().into_scalar();
        assert!(
            diff > 1e-3,
            "a steering vector of coefficient 4 moved nothing"
        );
        let cfg = GenerateConfig {
            max_new_tokens: 8,
            sampling: Sampling::Greedy,
            stop_at_eos: false,
            kv_cache: true,
        };
        let prompts = std::slice::from_ref(&ids);
        let g0 = generate_hooked(&lm.model, prompts, &cfg, &mut NoHooks, |_| true).expect("gen");
        let mut zero = Steer::<Cpu>::new(&built.vector, 0.0, &lm.model.device);
        let g1 = generate_hooked(&lm.model, prompts, &cfg, &mut zero, |_| true).expect("gen");
        assert_eq!(g0, g1);

        // Applied: stored with both continuations; a vector of another width is refused.
        let applied = run_apply(
            &lm,
            "demo",
            &ApplyRequest {
                vector: built.vector.clone(),
                coef: 0.0,
                prompt: "Quinford Belvale lives in the city of".into(),
                max_new_tokens: 5,
            },
            &store,
        )
        .expect("apply");
        assert_eq!(applied.before, applied.after);
        let mut short = built.vector.clone();
        short.values.pop();
        let err = run_apply(
            &lm,
            "demo",
            &ApplyRequest {
                vector: short,
                coef: 1.0,
                prompt: "x".into(),
                max_new_tokens: 1,
            },
            &store,
        )
        .expect_err("a vector of the wrong width");
        assert!(err.to_string().contains("does not fit"), "{err}");
        // A point of another width (mlp.hook_post: d_mlp) builds and applies too.
        let post = run_build(
            &lm,
            "demo",
            &BuildRequest {
                point: HookPoint::mlp_post(1),
                ..req
            },
            &store,
        )
        .expect("build at mlp.hook_post");
        assert_eq!(post.vector.values.len(), lm.model.config.d_mlp);
        run_apply(
            &lm,
            "demo",
            &ApplyRequest {
                vector: post.vector,
                coef: 1.0,
                prompt: "Zusin Belvale works as a".into(),
                max_new_tokens: 2,
            },
            &store,
        )
        .expect("a d_mlp-wide vector applies at mlp.hook_post");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

mod attribution {
    use std::path::PathBuf;

    use engram_analysis::attribution::attribution_patch;
    use engram_model::burn_tensor::{Tensor, TensorData};
    use engram_model::{
        fn_hook, Activation, ActivationCache, Batch, BlockSite, Cpu, HookPoint, LanguageModel,
        NoHooks,
    };

    fn demo() -> LanguageModel<Cpu> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../app/assets/demo-model");
        LanguageModel::load(&dir, &Default::default()).expect("demo model")
    }

    fn last_logits(
        lm: &LanguageModel<Cpu>,
        ids: &[u32],
        hooks: &mut dyn engram_model::Hook<Cpu>,
    ) -> Vec<f32> {
        let logits = lm
            .model
            .forward(&Batch::single(ids), hooks)
            .expect("forward");
        let [_, s, v] = logits.dims();
        logits
            .slice([0..1, s - 1..s, 0..v])
            .into_data()
            .into_vec()
            .expect("v")
    }

    /// The estimate at a site and position equals the derivative of the metric
    /// along the clean-minus-corrupted direction there (central differences).
    #[test]
    fn attribution_matches_finite_differences_of_a_small_patch() {
        let lm = demo();
        let clean = lm
            .encode_prompt("Quinford Belvale lives in the city of")
            .expect("encode");
        let corrupted = lm
            .encode_prompt("Quinford Salin lives in the city of")
            .expect("encode");
        assert_eq!(
            clean.len(),
            corrupted.len(),
            "the pair must align token for token"
        );
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .expect("vocab")
        };
        let answer = argmax(&last_logits(&lm, &clean, &mut NoHooks));
        let wrong = argmax(&last_logits(&lm, &corrupted, &mut NoHooks));
        assert_ne!(answer, wrong, "the two prompts must disagree");
        let a =
            attribution_patch(&lm.model, &clean, &corrupted, answer, wrong).expect("attribution");
        let big = a
            .resid_pre
            .iter()
            .chain(&a.mlp_out)
            .flatten()
            .fold(0f32, |m, x| m.max(x.abs()));
        assert!(big > 1e-2, "the estimates are all zero");
        let s = clean.len();
        let metric = |point: HookPoint, pos: usize, eps: f32| -> f32 {
            let mut cache = ActivationCache::<Cpu>::new(move |p| p == point);
            lm.model
                .forward(&Batch::single(&clean), &mut cache)
                .expect("clean");
            let c = cache.rank3(point).expect("cached");
            let d = c.dims()[2];
            let mut m = vec![0f32; s];
            m[pos] = eps;
            let mask =
                Tensor::<Cpu, 3>::from_data(TensorData::new(m, [1, s, 1]), &Default::default());
            let mut patch = fn_hook([point], move |_, act: &Activation<Cpu>| {
                let x = act.as_rank3()?.clone();
                let _ = d;
                Some(Activation::Rank3(
                    x.clone() + (c.clone() - x) * mask.clone(),
                ))
            });
            let l = last_logits(&lm, &corrupted, &mut patch);
            l[answer as usize] - l[wrong as usize]
        };
        let eps = 1e-2f32;
        for (site, layer, pos) in [
            (BlockSite::ResidPre, 1, 1),
            (BlockSite::MlpOut, 0, 1),
            (BlockSite::AttnOut, 2, s - 1),
            (BlockSite::MlpOut, 1, s - 1),
        ] {
            let point = HookPoint::block(layer, site);
            let fd = (metric(point, pos, eps) - metric(point, pos, -eps)) / (2.0 * eps);
            let est = match site {
                BlockSite::ResidPre => a.resid_pre[layer][pos],
                BlockSite::AttnOut => a.attn_out[layer][pos],
                _ => a.mlp_out[layer][pos],
            };
            assert!(
                (fd - est).abs() <= 1e-3 * est.abs().max(0.1 * big),
                "{point} at {pos}: estimate {est} vs finite difference {fd}"
            );
        }
        // Against exact patching of every (site, layer, position): Spearman's rank correlation.
        let base = a.corrupted_metric;
        let (mut est, mut exact) = (Vec::new(), Vec::new());
        for layer in 0..lm.model.config.n_layers {
            for (site, row) in [
                (BlockSite::ResidPre, &a.resid_pre),
                (BlockSite::AttnOut, &a.attn_out),
                (BlockSite::MlpOut, &a.mlp_out),
            ] {
                for (pos, &e) in row[layer].iter().enumerate() {
                    est.push(e);
                    exact.push(metric(HookPoint::block(layer, site), pos, 1.0) - base);
                }
            }
        }
        let rho = engram_analysis::attribution::spearman(&est, &exact);
        let n = est.len();
        eprintln!(
            "attribution vs exact patching on the demo: Spearman rho = {rho:.3} over {n} sites"
        );
        assert!(rho > 0.5, "rank correlation {rho}");
        // Heads: one estimate per head, all finite.
        assert_eq!(a.heads[0][0].len(), lm.model.config.n_heads);
        assert!(a.heads.iter().flatten().flatten().all(|x| x.is_finite()));
    }
}

/// numpy's `RandomState`, the generator of ROME's trace noise, against the
/// values numpy 2.4.6 printed (`numpy.random.RandomState(seed)`).
mod numpy_random {
    use engram_analysis::numpy_random::RandomState;

    #[test]
    fn randn_gives_numpys_values_across_the_twist_and_rejections() {
        // RandomState(1).randn(3, 5, 576), as ROME draws 3 copies of a 5-token subject.
        let mut rs = RandomState::new(1);
        let v: Vec<f64> = (0..3 * 5 * 576).map(|_| rs.randn()).collect();
        let numpy = [
            (0, 1.6243453636632417),
            (1, -0.6117564136500754),
            (2, -0.5281717522634557),
            (575, 0.5135054799885475),
            (576, 0.3724568515114425),
            (2000, 0.4895166181417871),
            (8639, 0.9651056588968244),
        ];
        for (i, want) in numpy {
            assert_eq!(v[i], want, "randn value {i}");
        }
        let sum: f64 = v.iter().sum();
        assert!((sum - 68.10867382794521).abs() < 1e-9, "sum {sum}");
    }

    #[test]
    fn rand_and_uniform_give_numpys_values() {
        let mut rs = RandomState::new(1);
        assert_eq!(rs.rand(), 0.417022004702574);
        assert_eq!(rs.rand(), 0.7203244934421581);
        assert_eq!(rs.rand(), 0.00011437481734488664);
        // RandomState(1).uniform(-1, 1, (2, 3, 4)): first three and last.
        let mut rs = RandomState::new(1);
        let u: Vec<f64> = (0..24).map(|_| rs.uniform(-1.0, 1.0)).collect();
        assert_eq!(
            u[..3],
            [-0.165955990594852, 0.4406489868843162, -0.9997712503653102]
        );
        assert_eq!(u[23], 0.38464523133862816);
    }

    #[test]
    fn other_seeds_and_a_pending_gaussian() {
        let mut rs = RandomState::new(0);
        let v = [rs.randn(), rs.randn(), rs.randn()];
        assert_eq!(
            v,
            [1.764052345967664, 0.4001572083672233, 0.9787379841057392]
        );
        // randn() keeps the pair's second value; rand() does not use it.
        let mut rs = RandomState::new(u32::MAX);
        assert_eq!(rs.randn(), 0.6484086742306527);
        assert_eq!(rs.rand(), 0.01793967398674523);
    }
}
