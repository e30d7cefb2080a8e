//! Editing tests, in one binary, on the embedded demo model (no `../shared` needed).

use std::path::PathBuf;
use std::sync::OnceLock;

use engram_datasets::demo::{demo_facts, DemoFact, RELATIONS};
use engram_editing::rome::compute_u::{fill_template, subject_keys, subject_rows, KeyCovariance};
use engram_editing::rome::context::context_templates;
use engram_editing::rome::{rome_edit, EditRequest, RomeEdit, RomeHparams};
use engram_editing::stats::{cached_stats, collect_stats, LayerStats, StatsOptions};
use engram_editing::{EditError, Ledger};
use engram_model::device::Cpu;
use engram_model::LanguageModel;

mod alphaedit;
mod ft;
mod memit;
mod npz;
mod teacher;

fn demo() -> LanguageModel<Cpu> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../app/assets/demo-model");
    LanguageModel::load(&dir, &Default::default()).expect("demo model")
}

fn facts() -> Vec<DemoFact> {
    demo_facts(150, 0)
}

/// The demo corpus's fact sentences: the statistics text for the demo model.
fn corpus() -> String {
    facts()
        .iter()
        .flat_map(|f| {
            f.prompts()
                .into_iter()
                .map(move |p| format!("{p} {} .", f.target))
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn hparams() -> RomeHparams {
    RomeHparams::builtin("demo").expect("demo hparams")
}

/// The demo model's layer statistics and context templates, computed once.
fn setup() -> &'static (LayerStats, Vec<String>) {
    static S: OnceLock<(LayerStats, Vec<String>)> = OnceLock::new();
    S.get_or_init(|| {
        let lm = demo();
        let hp = hparams();
        let opts = StatsOptions {
            max_tokens: 20_000,
            seq_len: 32,
            ..StatsOptions::new(hp.layer().expect("layer"))
        };
        let stats = collect_stats(
            &lm.model,
            &lm.tokenizer,
            &corpus(),
            "demo",
            &opts,
            &mut |_, _| true,
        )
        .expect("stats");
        let templates = context_templates(
            &lm.model,
            &lm.tokenizer,
            &hp.context_template_length_params,
            0,
        )
        .expect("templates");
        (stats, templates)
    })
}

fn request(f: &DemoFact, target: &str) -> EditRequest {
    EditRequest {
        prompt: f.prompts()[0].clone(),
        subject: f.subject.clone(),
        target: target.into(),
    }
}

/// Another answer of the same relation.
fn new_target(f: &DemoFact, k: usize) -> String {
    let targets = RELATIONS
        .iter()
        .find(|r| r.id == f.relation)
        .expect("relation")
        .targets;
    let i = targets.iter().position(|t| *t == f.target).expect("target");
    targets[(i + 1 + k % (targets.len() - 1)) % targets.len()].to_string()
}

fn top1(lm: &LanguageModel<Cpu>, prompt: &str) -> String {
    let t = lm.top_k(prompt, 1).expect("top")[0].id;
    lm.tokenizer
        .decode(&[t])
        .expect("decode")
        .trim()
        .to_string()
}

fn edit(lm: &LanguageModel<Cpu>, req: &EditRequest) -> RomeEdit {
    let (stats, templates) = setup();
    let cov = KeyCovariance::new(stats).expect("C is positive definite");
    rome_edit(lm, req, &hparams(), &cov, templates, &mut |_, _| true).expect("edit")
}

#[test]
fn u_is_a_solve_of_the_key_second_moment() {
    let lm = demo();
    let (stats, templates) = setup();
    let cov = KeyCovariance::new(stats).expect("cholesky");
    let f = &facts()[0];
    let keys = subject_keys(&lm, &f.prompts()[0], &f.subject, templates, 0).expect("keys");
    let u = cov.solve(&keys.k_star).expect("solve");
    // C u = k*, with C from its definition: Σ k kᵀ / n.
    let c = stats.mom2();
    let n = stats.dim;
    let mut worst = 0f64;
    let scale = keys
        .k_star
        .iter()
        .map(|x| f64::from(x.abs()))
        .fold(0.0, f64::max);
    for i in 0..n {
        let cu: f64 = (0..n).map(|j| c[i * n + j] * u[j]).sum();
        worst = worst.max((cu - f64::from(keys.k_star[i])).abs());
    }
    assert!(worst < 1e-6 * scale.max(1.0), "residual {worst}");
    // ROME's prefixes: "{}" plus 10 samples of up to 5 tokens and 10 of up to 10.
    let rome = templates;
    assert_eq!(rome.len(), 21, "{rome:?}");
    assert_eq!(rome[0], "{}");
    assert!(rome[1..]
        .iter()
        .all(|t| t.starts_with("The") && t.ends_with(" . {}")));
    // Word-level tokens: at most `len` generated, then "." and "{}".
    let words = |t: &str| t.split_whitespace().count();
    assert!(rome[1..11].iter().all(|t| words(t) <= 5 + 2), "{rome:?}");
    assert!(rome[11..].iter().all(|t| words(t) <= 10 + 2), "{rome:?}");
}

/// A generated prefix that itself names the subject: the key is read at the
/// prompt's subject (the `{}` slot), never inside the prefix.
#[test]
fn a_subject_named_in_the_prefix_is_not_taken_for_the_prompts() {
    let lm = demo();
    let f = &facts()[0];
    let prompt = f.prompts()[0].clone();
    let template = format!("{} and {} . {{}}", f.subject, f.subject);
    let (text, from) = fill_template(&template, &prompt);
    assert_eq!(&text[from..], prompt);
    let rows = subject_rows(&lm, &[(text, from)], &f.subject).expect("templated");
    let plain = subject_rows(&lm, &[(prompt.clone(), 0)], &f.subject).expect("plain");
    let (ids, at) = &rows[0];
    let (plain_ids, plain_at) = &plain[0];
    // Same distance from the end as in the bare prompt, so past the prefix.
    assert_eq!(ids.len() - at, plain_ids.len() - plain_at, "{ids:?} {at}");
    assert!(*at >= ids.len() - plain_ids.len());
}

#[test]
fn statistics_cache_reloads() {
    let lm = demo();
    let dir = std::env::temp_dir().join(format!("engram-stats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = StatsOptions {
        max_tokens: 2_000,
        seq_len: 32,
        ..StatsOptions::new(1)
    };
    let text = corpus();
    let load = |progress: &mut dyn FnMut(u64, u64) -> bool| {
        cached_stats(
            &dir,
            &lm.model,
            &lm.tokenizer,
            &text,
            "demo",
            &opts,
            progress,
        )
    };
    let (a, cached) = load(&mut |_, _| true).expect("collect");
    assert!(!cached);
    assert!(
        a.key.tokens >= 1_900 && a.key.tokens <= 2_000,
        "{}",
        a.key.tokens
    );
    let (b, cached) = load(&mut |_, _| panic!("the cache was not used")).expect("reload");
    assert!(cached);
    assert_eq!(a, b);
    // A truncated cache file is an error naming the file, not a panic.
    let path = LayerStats::cache_path(&dir, &a.key);
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = LayerStats::load(&path).expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The bits of layer `l`'s MLP output projection.
fn out_proj_bits(model: &engram_model::Transformer<Cpu>, l: usize) -> Vec<u32> {
    let w: Vec<f32> = model.blocks[l]
        .mlp
        .fc_out
        .weight
        .to_data()
        .into_vec()
        .expect("weights");
    w.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn apply_then_revert_restores_every_weight_bit_for_bit() {
    let mut lm = demo();
    let n_layers = lm.model.blocks.len();
    let before: Vec<Vec<u32>> = (0..n_layers).map(|l| out_proj_bits(&lm.model, l)).collect();
    let fs = facts();
    let e1 = edit(&lm, &request(&fs[0], &new_target(&fs[0], 0)));
    let e2 = edit(&lm, &request(&fs[4], &new_target(&fs[4], 0)));
    let mut ledger = Ledger::new("demo");
    let a = ledger.push(&mut lm.model, e1).expect("push");
    let b = ledger.push(&mut lm.model, e2).expect("push");
    assert_ne!(out_proj_bits(&lm.model, 0), before[0]);
    // Revert in the order applied, then re-apply one and revert everything.
    ledger
        .set_applied(&mut lm.model, a, false)
        .expect("revert a");
    ledger
        .set_applied(&mut lm.model, b, false)
        .expect("revert b");
    assert_eq!(out_proj_bits(&lm.model, 0), before[0]);
    ledger.set_applied(&mut lm.model, b, true).expect("apply b");
    ledger.revert_all(&mut lm.model);
    for (l, want) in before.iter().enumerate() {
        assert_eq!(&out_proj_bits(&lm.model, l), want, "layer {l}");
    }
    // Export and re-apply on a fresh copy of the same model: the same weights.
    ledger.set_applied(&mut lm.model, a, true).expect("apply a");
    let path = std::env::temp_dir().join(format!("engram-ledger-{}.json", std::process::id()));
    ledger.export(&path).expect("export");
    let mut fresh = demo();
    Ledger::<Cpu>::import(&path, &mut fresh.model, "demo").expect("import");
    assert_eq!(out_proj_bits(&fresh.model, 0), out_proj_bits(&lm.model, 0));
    assert!(matches!(
        Ledger::<Cpu>::import(&path, &mut fresh.model, "another"),
        Err(EditError::WrongBase { .. })
    ));
    // A hand-edited ledger with a repeated id, or a factor past f32's range,
    // is refused by name before any weight changes.
    let text = std::fs::read_to_string(&path).expect("read");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let entry = v["edits"][0].clone();
    v["edits"].as_array_mut().expect("edits").push(entry);
    std::fs::write(&path, v.to_string()).expect("write");
    let mut clean = demo();
    let before = out_proj_bits(&clean.model, 0);
    match Ledger::<Cpu>::import(&path, &mut clean.model, "demo") {
        Err(e) => assert!(e.to_string().contains("appears twice"), "{e}"),
        Ok(_) => panic!("a repeated edit id was accepted"),
    }
    v["edits"].as_array_mut().expect("edits").pop();
    v["edits"][0]["edit"]["u"][0] = serde_json::json!(1e39);
    std::fs::write(&path, v.to_string()).expect("write");
    match Ledger::<Cpu>::import(&path, &mut clean.model, "demo") {
        Err(e) => assert!(e.to_string().contains("non-finite factor"), "{e}"),
        Ok(_) => panic!("a factor of 1e39 was accepted"),
    }
    assert_eq!(out_proj_bits(&clean.model, 0), before);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let lm = demo();
    let f = &facts()[0];
    let (stats, templates) = setup();
    let cov = KeyCovariance::new(stats).expect("cov");
    let hp = hparams();
    let run = |req: EditRequest| rome_edit(&lm, &req, &hp, &cov, templates, &mut |_, _| true);
    let mut req = request(f, &f.target);
    assert!(matches!(
        run(req.clone()),
        Err(EditError::TargetIsCurrent { .. })
    ));
    req.target = " ".into();
    assert!(run(req.clone()).is_err());
    req.target = new_target(f, 0);
    req.subject = "Nobody".into();
    let err = run(req).expect_err("subject not in prompt");
    assert!(err.to_string().contains("Nobody"), "{err}");
}

/// ROME on the demo model, over 60 facts (one edit at a time, reverted after each):
/// efficacy (the new target is top-1 for the edited prompt), generalisation (for
/// the relation's two other phrasings) and locality (12 facts of other subjects
/// keep the model's own answers).
#[test]
fn demo_edits_take_generalise_and_stay_local() {
    let mut lm = demo();
    let fs = facts();
    let probes: Vec<(String, String)> = fs
        .iter()
        .skip(300)
        .step_by(12)
        .map(|f| {
            let p = f.prompts()[0].clone();
            let a = top1(&lm, &p);
            (p, a)
        })
        .collect();
    let (mut efficacy, mut para, mut para_n, mut local, mut local_n) = (0, 0, 0, 0, 0);
    let n = 60;
    let mut ledger = Ledger::new("demo");
    for (i, f) in fs.iter().step_by(5).take(n).enumerate() {
        let target = new_target(f, i);
        let e = edit(&lm, &request(f, &target));
        let id = ledger.push(&mut lm.model, e).expect("push");
        let prompts = f.prompts();
        efficacy += usize::from(top1(&lm, &prompts[0]) == target);
        for p in &prompts[1..] {
            para += usize::from(top1(&lm, p) == target);
            para_n += 1;
        }
        for (p, a) in &probes {
            if !p.starts_with(&f.subject) {
                local += usize::from(&top1(&lm, p) == a);
                local_n += 1;
            }
        }
        ledger
            .set_applied(&mut lm.model, id, false)
            .expect("revert");
    }
    let (e, p, l) = (
        efficacy as f64 / n as f64,
        para as f64 / para_n as f64,
        local as f64 / local_n as f64,
    );
    eprintln!(
        "demo ROME over {n} edits: efficacy {e:.3}, paraphrases {p:.3} ({para}/{para_n}), locality {l:.3} ({local}/{local_n})"
    );
    assert!(e >= 0.9, "efficacy {e}");
    assert!(p >= 0.5, "paraphrases {p}");
    assert!(l >= 0.9, "locality {l}");
}

/// CounterFact metrics as ROME computes them: the mean token NLL equals −ln p of
/// the next-token distribution (single-token targets), and an edit flips ES/PS
/// on its case while the neighbours keep their answer (NS).
#[test]
fn counterfact_metrics_follow_rome_and_move_with_an_edit() {
    use engram_editing::eval::{rome_score, score_case, teacher_force, EvalCase};
    let mut lm = demo();
    let fs = facts();
    let f = &fs[0];
    let prompts = f.prompts();
    let forced = teacher_force(&lm, &prompts[..1], &f.target).expect("forced");
    let logits = lm.next_logits(&prompts[0]).expect("logits");
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let z: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let t = lm.target_tokens(&prompts[0], &f.target).expect("target")[0] as usize;
    let want = -(f64::from(logits[t] - max) - z.ln());
    assert!(
        (forced[0].nll() - want).abs() < 1e-4,
        "{} vs {want}",
        forced[0].nll()
    );
    assert_eq!(
        forced[0].accuracy(),
        1.0,
        "the demo model knows its first fact"
    );

    let target_new = new_target(f, 0);
    let neighbours: Vec<String> = fs
        .iter()
        .filter(|g| g.subject != f.subject && g.relation == f.relation && g.target == f.target)
        .take(5)
        .map(|g| g.prompts()[0].clone())
        .collect();
    assert!(!neighbours.is_empty());
    let case = EvalCase {
        case_id: 0,
        subject: f.subject.clone(),
        prompt: prompts[0].clone(),
        target_new: target_new.clone(),
        target_true: f.target.clone(),
        paraphrases: prompts[1..].to_vec(),
        neighborhood: neighbours,
        neighborhood_target: f.target.clone(),
        generation_prompts: Vec::new(),
    };
    let (pre, before) = score_case(&lm, &case, None).expect("pre");
    assert_eq!((pre.es, pre.ps, pre.ns, pre.locality), (0.0, 0.0, 1.0, 1.0));
    let e = edit(&lm, &request(f, &target_new));
    let mut ledger = Ledger::new("demo");
    ledger.push(&mut lm.model, e).expect("push");
    let (post, _) = score_case(&lm, &case, Some(&before)).expect("post");
    eprintln!("before {pre:?}\nafter  {post:?}");
    assert_eq!(post.es, 1.0);
    assert!(post.em > 0.5, "EM {}", post.em);
    assert_eq!(post.reliability, 1.0);
    assert!(post.ns >= 0.8 && post.locality >= 0.8, "{post:?}");
    assert!((rome_score(1.0, 0.5, 1.0) - 0.75).abs() < 1e-12);
}

/// Raw bytes of every tensor of a safetensors file, by name.
fn tensor_bytes(path: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).expect("read safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec()))
        .collect()
}

#[test]
fn saving_writes_a_new_checkpoint_that_loads_with_the_edit() {
    let mut lm = demo();
    let src = lm.source.join("model.safetensors");
    let src_before = std::fs::read(&src).expect("source");
    let fs = facts();
    let req = request(&fs[0], &new_target(&fs[0], 0));
    let e = edit(&lm, &req);
    let mut ledger = Ledger::new("demo");
    ledger.push(&mut lm.model, e).expect("push");
    assert_eq!(top1(&lm, &req.prompt), req.target);
    let out = std::env::temp_dir().join(format!("engram-saved-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let path = ledger.save(&lm, &out).expect("save");
    assert_eq!(path, out);
    // The source is untouched; the copy differs only in the edited projection.
    assert_eq!(std::fs::read(&src).expect("source"), src_before);
    let (old, new) = (
        tensor_bytes(&src),
        tensor_bytes(&out.join("model.safetensors")),
    );
    assert_eq!(
        old.keys().collect::<Vec<_>>(),
        new.keys().collect::<Vec<_>>()
    );
    let changed: Vec<&String> = old.keys().filter(|k| old[*k] != new[*k]).collect();
    assert_eq!(
        changed,
        ["transformer.h.0.mlp.c_proj.weight"],
        "only the edited layer changes"
    );
    assert!(out.join("config.json").is_file() && out.join("tokenizer.json").is_file());
    assert!(out.join(engram_editing::ledger::LEDGER_FILE).is_file());
    // The saved model answers with the new target, in its stored dtype (f16).
    let saved = LanguageModel::<Cpu>::load(&out, &Default::default()).expect("reload");
    assert_eq!(top1(&saved, &req.prompt), req.target);
    for f in fs.iter().skip(1).take(10) {
        assert_eq!(top1(&saved, &f.prompts()[0]), top1(&lm, &f.prompts()[0]));
    }
    // Saving again onto the same path is refused and leaves it as it was.
    let err = ledger.save(&lm, &out).expect_err("exists");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(tensor_bytes(&out.join("model.safetensors")), new);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
#[ignore = "needs ../shared"]
fn saving_a_gguf_model_keeps_its_quantized_tensors() {
    use engram_model::gguf::{GgmlType, GgufFile};
    use engram_model::save::{save_checkpoint, Replaced};
    use engram_model::weights::HostTensor;
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/models/smollm2-135m-instruct");
    let src = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !src.is_file() {
        eprintln!(
            "skipped: {} is absent (../shared not checked out)",
            src.display()
        );
        return;
    }
    let lm = LanguageModel::<Cpu>::load(&src, &Default::default()).expect("load");
    let layer = 4;
    let w = HostTensor::from_tensor(&lm.model.blocks[layer].mlp.fc_out.weight).expect("w");
    let mut edited = w.clone();
    for (i, x) in edited.data.iter_mut().enumerate() {
        *x += ((i % 7) as f32 - 3.0) * 1e-3;
    }
    let out = std::env::temp_dir().join(format!("engram-saved-gguf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let replaced = [Replaced {
        layer,
        weight: edited.clone(),
    }];
    let path = save_checkpoint(&src, &lm.model.config, &replaced, &[], &out).expect("save");
    assert_eq!(path, out.join("model.gguf"));
    let (a, b) = (
        GgufFile::open(&src).expect("src"),
        GgufFile::open(&path).expect("out"),
    );
    assert_eq!(a.metadata, b.metadata);
    assert_eq!(a.order, b.order);
    for name in &a.order {
        let (ta, tb) = (&a.tensors[name], &b.tensors[name]);
        assert_eq!(ta.shape, tb.shape, "{name}");
        if name == "blk.4.ffn_down.weight" {
            assert_eq!(tb.ggml_type, GgmlType::F32);
        } else {
            assert_eq!(ta.ggml_type, tb.ggml_type, "{name}");
            assert_eq!(a.bytes(ta.range), b.bytes(tb.range), "{name}");
        }
    }
    // The directory loads; the edited projection comes back exactly.
    let saved = LanguageModel::<Cpu>::load(&out, &Default::default()).expect("reload");
    let back = HostTensor::from_tensor(&saved.model.blocks[layer].mlp.fc_out.weight).expect("w");
    assert_eq!(back.data, edited.data);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn generation_entropy_follows_rome_n_gram_formula() {
    use engram_editing::eval::ngram_entropy;
    // "a b a b a b": bigrams ab×3, ba×2; trigrams aba×2, bab×2.
    let h2 = -(0.6f64 * 0.6f64.log2() + 0.4 * 0.4f64.log2());
    let want = (2.0 / 3.0 * h2 + 4.0 / 3.0 * 1.0) / 2.0;
    assert!((ngram_entropy("a b a b a b") - want).abs() < 1e-12);
    // Punctuation is its own word; a loop of one phrase scores below varied text.
    assert!((ngram_entropy("a, b") - ngram_entropy("a , b")).abs() < 1e-12);
    let looped = "the city of Rome. ".repeat(10);
    let varied = "The tower stands in a city by the river, where markets open at dawn and boats carry grain north to the hills beyond the old wall.";
    assert!(ngram_entropy(&looped) < ngram_entropy(varied));
}
