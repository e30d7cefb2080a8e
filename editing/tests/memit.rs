//! MEMIT on the demo model.

use std::sync::OnceLock;

use engram_editing::memit::compute_z::compute_zs;
use engram_editing::memit::update::{layer_update, LayerMom2};
use engram_editing::memit::{apply_memit, check_batch, MemitHparams};
use engram_editing::rome::compute_u::{subject_keys, KeyCovariance};
use engram_editing::rome::context::{context_template_groups, MEMIT_STARTS};
use engram_editing::rome::EditRequest;
use engram_editing::stats::{cached_stats_layers, StatsOptions};
use engram_editing::{EditError, Ledger};
use engram_model::device::Cpu;
use engram_model::LanguageModel;

use super::{demo, edit, facts, new_target, out_proj_bits, request, setup, top1};

fn memit_hparams() -> MemitHparams {
    MemitHparams::builtin("demo").expect("demo MEMIT hparams")
}

/// C for each of the demo hparams' layers (one pass), and MEMIT's template groups.
fn memit_setup() -> &'static (Vec<LayerMom2>, Vec<Vec<String>>) {
    static S: OnceLock<(Vec<LayerMom2>, Vec<Vec<String>>)> = OnceLock::new();
    S.get_or_init(|| {
        let lm = demo();
        let hp = memit_hparams();
        let dir = std::env::temp_dir().join(format!("engram-memit-stats-{}", std::process::id()));
        // The corpus and count `engram` uses for the demo model (its whole corpus).
        let text = engram_datasets::demo::demo_corpus(&facts(), 400, 0).join("\n\n");
        let opts = StatsOptions {
            max_tokens: 100_000,
            seq_len: 32,
            ..StatsOptions::new(0)
        };
        let stats = cached_stats_layers(
            &dir,
            &lm.model,
            &lm.tokenizer,
            &text,
            "demo",
            &hp.layers,
            &opts,
            &mut |_, _| true,
        )
        .expect("stats");
        let _ = std::fs::remove_dir_all(&dir);
        let covs = stats.iter().map(|(s, _)| LayerMom2::new(s)).collect();
        let groups = context_template_groups(
            &lm.model,
            &lm.tokenizer,
            &MEMIT_STARTS,
            &hp.context_template_length_params,
            0,
        )
        .expect("templates");
        (covs, groups)
    })
}

/// Run AlphaEdit (MEMIT's z and keys, the null-space solve) on `requests`.
fn alphaedit(
    lm: &mut LanguageModel<Cpu>,
    ledger: &mut Ledger<Cpu>,
    requests: &[EditRequest],
    hp: &MemitHparams,
    threshold: f64,
) -> engram_editing::memit::MemitOutcome {
    use engram_editing::memit::update::Solver;
    let (covs, groups) = memit_setup();
    let covs: Vec<LayerMom2> = hp
        .layers
        .iter()
        .map(|l| covs.iter().find(|c| c.layer == *l).expect("stats").clone())
        .collect();
    let spaces: Vec<_> = covs
        .iter()
        .map(|c| engram_editing::alphaedit::null_space(c, threshold).expect("null space"))
        .collect();
    let flat: Vec<String> = groups.iter().flatten().cloned().collect();
    let (zs, _) = compute_zs(lm, requests, hp, &flat, 32, 1, &mut |_, _| true).expect("z");
    let solver = Solver::AlphaEdit {
        spaces: &spaces,
        l2: 1.0,
    };
    apply_memit(
        lm,
        ledger,
        requests,
        &zs,
        hp,
        &covs,
        groups,
        &solver,
        &mut |_, _| true,
    )
    .expect("alphaedit")
}

/// AlphaEdit on the demo model: each batch's update lies in its layer's null
/// space, the batch's keys join K_p for the next batch and leave it when the
/// batch is reverted, and reverting is bit-exact.
#[test]
fn alphaedit_batches_stay_in_the_null_space_and_revert_bit_for_bit() {
    let mut lm = demo();
    let mut hp = memit_hparams();
    hp.v_num_grad_steps = 4;
    let fs = facts();
    let n_layers = lm.model.blocks.len();
    let original: Vec<Vec<u32>> = (0..n_layers).map(|l| out_proj_bits(&lm.model, l)).collect();
    let (covs, _) = memit_setup();
    // The demo's C: a threshold at 1e-3 of its largest eigenvalue.
    let max_eig = engram_editing::alphaedit::null_space(&covs[0], f64::INFINITY)
        .expect("whole space")
        .max_eigenvalue;
    let threshold = 1e-3 * max_eig;
    let mut ledger = Ledger::new("demo");
    let first: Vec<EditRequest> = [5, 9]
        .iter()
        .map(|&i| request(&fs[i], &new_target(&fs[i], 1)))
        .collect();
    let a = alphaedit(&mut lm, &mut ledger, &first, &hp, threshold);
    assert!(ledger.edits().iter().all(|e| e.method == "alphaedit"));
    let d_mlp = lm.model.config.d_mlp;
    for (&layer, c) in hp.layers.iter().zip(covs) {
        assert_eq!(ledger.alphaedit_keys(layer).len(), first.len());
        // u_i ∈ null space: ‖P u‖ = ‖u‖ and u's energy along C is below the threshold.
        let space = engram_editing::alphaedit::null_space(c, threshold).expect("space");
        let entry = ledger
            .edits()
            .iter()
            .find(|e| e.edit.layer() == layer)
            .expect("entry");
        let (rank, u, _) = entry.edit.factors();
        for i in 0..rank {
            let ui: Vec<f64> = u[i * d_mlp..(i + 1) * d_mlp]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let coords = space.coords(&ui, 1);
            let back = space.lift(&coords, 1);
            let (norm, off): (f64, f64) =
                ui.iter().zip(&back).fold((0.0, 0.0), |(n, o), (x, y)| {
                    (n + x * x, o + (x - y) * (x - y))
                });
            assert!(off.sqrt() < 1e-4 * norm.sqrt(), "u leaves the null space");
        }
    }
    let after_first: Vec<Vec<u32>> = (0..n_layers).map(|l| out_proj_bits(&lm.model, l)).collect();
    let second: Vec<EditRequest> = [13]
        .iter()
        .map(|&i| request(&fs[i], &new_target(&fs[i], 2)))
        .collect();
    let b = alphaedit(&mut lm, &mut ledger, &second, &hp, threshold);
    assert_eq!(ledger.alphaedit_keys(hp.layers[0]).len(), 3);
    // Reverting the first batch takes its keys out of K_p.
    ledger
        .set_applied(&mut lm.model, a.ids[0], false)
        .expect("off");
    assert_eq!(ledger.alphaedit_keys(hp.layers[0]).len(), 1);
    ledger
        .set_applied(&mut lm.model, a.ids[0], true)
        .expect("on");
    ledger.remove(&mut lm.model, b.ids[0]).expect("remove");
    for (l, want) in after_first.iter().enumerate() {
        assert_eq!(
            &out_proj_bits(&lm.model, l),
            want,
            "layer {l} after removing b"
        );
    }
    ledger.remove(&mut lm.model, a.ids[0]).expect("remove");
    for (l, want) in original.iter().enumerate() {
        assert_eq!(&out_proj_bits(&lm.model, l), want, "layer {l} original");
    }
    assert!(ledger.alphaedit_keys(hp.layers[0]).is_empty());
}

/// Run MEMIT on `requests` through `ledger`.
fn memit(
    lm: &mut LanguageModel<Cpu>,
    ledger: &mut Ledger<Cpu>,
    requests: &[EditRequest],
    hp: &MemitHparams,
) -> engram_editing::memit::MemitOutcome {
    let (covs, groups) = memit_setup();
    let covs: Vec<LayerMom2> = hp
        .layers
        .iter()
        .map(|l| covs.iter().find(|c| c.layer == *l).expect("stats").clone())
        .collect();
    let flat: Vec<String> = groups.iter().flatten().cloned().collect();
    let (zs, _) = compute_zs(lm, requests, hp, &flat, 32, 1, &mut |_, _| true).expect("z");
    let memit = engram_editing::memit::update::Solver::Memit;
    apply_memit(
        lm,
        ledger,
        requests,
        &zs,
        hp,
        &covs,
        groups,
        &memit,
        &mut |_, _| true,
    )
    .expect("memit")
}

/// With one request and one layer, MEMIT's Δ = r kᵀ(λC + k kᵀ)⁻¹ is ROME's
/// rank-one update scaled by s / (λ + s), s = kᵀC⁻¹k (Sherman–Morrison), for
/// the same key k* and the same residual v* − (k*ᵀW + b).
#[test]
fn one_request_one_layer_memit_is_rome_up_to_its_lambda_term() {
    let lm = demo();
    let (stats, templates) = setup();
    let f = &facts()[3];
    let req = request(f, &new_target(f, 0));
    let rome = edit(&lm, &req);
    let keys = subject_keys(&lm, &req.prompt, &req.subject, templates, rome.layer).expect("k*");
    // ROME: Δ = u rᵀ with r = (v* − cur)/(k*ᵀu), so the residual is r·(k*ᵀu).
    let ku: f32 = keys.k_star.iter().zip(&rome.u).map(|(a, b)| a * b).sum();
    let target: Vec<f32> = rome.r.iter().map(|x| x * ku).collect();
    let cov = KeyCovariance::new(stats).expect("C");
    let cinv_k = cov.solve(&keys.k_star).expect("solve");
    let s: f64 = cinv_k
        .iter()
        .zip(&keys.k_star)
        .map(|(a, b)| a * f64::from(*b))
        .sum();
    let mom2 = stats.mom2();
    for lambda in [s, 20.0 * s, 1e-3 * s] {
        let (u, r) = layer_update(
            &mom2,
            stats.dim,
            lambda,
            std::slice::from_ref(&keys.k_star),
            std::slice::from_ref(&target),
            1.0,
        )
        .expect("MEMIT solve");
        let scale = s / (lambda + s);
        let (mut worst, mut largest) = (0f64, 0f64);
        for (um, ur) in u.iter().zip(&rome.u) {
            for (rm, rr) in r.iter().zip(&rome.r) {
                let memit = f64::from(*um) * f64::from(*rm);
                let want = f64::from(*ur) * f64::from(*rr) * scale;
                worst = worst.max((memit - want).abs());
                largest = largest.max(want.abs());
            }
        }
        eprintln!("λ = {:.3e} (s = {s:.3e}): max |Δ_memit − Δ_rome·s/(λ+s)| = {worst:.3e} of {largest:.3e}", lambda);
        assert!(worst <= 1e-4 * largest, "λ {lambda}: {worst} vs {largest}");
    }
}

/// A batch is one ledger entry per layer; turning any of them off reverts the
/// whole batch to the bit, and turning it on again gives the same bits.
#[test]
fn a_memit_batch_applies_and_reverts_as_a_unit_bit_for_bit() {
    let mut lm = demo();
    let mut hp = memit_hparams();
    hp.v_num_grad_steps = 4;
    let fs = facts();
    let n_layers = lm.model.blocks.len();
    let original: Vec<Vec<u32>> = (0..n_layers).map(|l| out_proj_bits(&lm.model, l)).collect();
    let mut ledger = Ledger::new("demo");
    // A ROME edit first, on a layer MEMIT also edits.
    let rome = edit(&lm, &request(&fs[1], &new_target(&fs[1], 0)));
    let rome_id = ledger.push(&mut lm.model, rome).expect("push");
    let with_rome: Vec<Vec<u32>> = (0..n_layers).map(|l| out_proj_bits(&lm.model, l)).collect();
    let requests: Vec<EditRequest> = [5, 9, 13]
        .iter()
        .map(|&i| request(&fs[i], &new_target(&fs[i], 1)))
        .collect();
    let out = memit(&mut lm, &mut ledger, &requests, &hp);
    assert_eq!(out.ids.len(), hp.layers.len());
    let applied: Vec<Vec<u32>> = (0..n_layers).map(|l| out_proj_bits(&lm.model, l)).collect();
    for &l in &hp.layers {
        assert_ne!(applied[l], with_rome[l], "layer {l} changed");
    }
    assert_eq!(ledger.edits().len(), 1 + hp.layers.len());
    // Off through the last layer's entry: every layer of the batch goes.
    let last = *out.ids.last().expect("ids");
    ledger.set_applied(&mut lm.model, last, false).expect("off");
    assert!(ledger
        .edits()
        .iter()
        .filter(|e| e.batch.is_some())
        .all(|e| !e.applied));
    for (l, want) in with_rome.iter().enumerate() {
        assert_eq!(&out_proj_bits(&lm.model, l), want, "layer {l} after revert");
    }
    ledger
        .set_applied(&mut lm.model, out.ids[0], true)
        .expect("on");
    for (l, want) in applied.iter().enumerate() {
        assert_eq!(&out_proj_bits(&lm.model, l), want, "layer {l} re-applied");
    }
    // Export, import on a fresh model: the same bits.
    let path =
        std::env::temp_dir().join(format!("engram-memit-ledger-{}.json", std::process::id()));
    ledger.export(&path).expect("export");
    let mut fresh = demo();
    let imported = Ledger::<Cpu>::import(&path, &mut fresh.model, "demo").expect("import");
    // Entries come back with the same identity and factors (f64 timings may
    // differ in the last bit: serde_json's float parsing is not exact).
    let key = |l: &Ledger<Cpu>| -> Vec<_> {
        l.edits()
            .iter()
            .map(|e| {
                let (rank, u, r) = e.edit.factors();
                (
                    e.id,
                    e.method.clone(),
                    e.applied,
                    e.batch,
                    rank,
                    u.to_vec(),
                    r.to_vec(),
                )
            })
            .collect()
    };
    assert_eq!(key(&imported), key(&ledger));
    for (l, want) in applied.iter().enumerate() {
        assert_eq!(&out_proj_bits(&fresh.model, l), want, "layer {l} imported");
    }
    let _ = std::fs::remove_file(&path);
    // Removing one entry removes the batch; the ROME edit stays.
    let gone = ledger.remove(&mut lm.model, out.ids[0]).expect("remove");
    assert_eq!(gone.len(), hp.layers.len());
    for (l, want) in with_rome.iter().enumerate() {
        assert_eq!(&out_proj_bits(&lm.model, l), want, "layer {l} after remove");
    }
    ledger
        .set_applied(&mut lm.model, rome_id, false)
        .expect("rome off");
    for (l, want) in original.iter().enumerate() {
        assert_eq!(&out_proj_bits(&lm.model, l), want, "layer {l} original");
    }
}

/// 100 demo facts rewritten in one batch: ES (p(new) > p(true) on the prompt)
/// and the other demo facts' answers (NS over 150 facts of other subjects).
#[test]
fn a_batch_of_100_demo_edits_takes_and_keeps_other_facts() {
    let mut lm = demo();
    let hp = memit_hparams();
    let fs = facts();
    let edited: Vec<usize> = (0..fs.len()).step_by(3).take(100).collect();
    let subjects: std::collections::HashSet<&str> =
        edited.iter().map(|&i| fs[i].subject.as_str()).collect();
    let others: Vec<(String, String)> = fs
        .iter()
        .filter(|f| !subjects.contains(f.subject.as_str()))
        .take(150)
        .map(|f| {
            let p = f.prompts()[0].clone();
            let a = top1(&lm, &p);
            (p, a)
        })
        .collect();
    let requests: Vec<EditRequest> = edited
        .iter()
        .enumerate()
        .map(|(k, &i)| request(&fs[i], &new_target(&fs[i], k)))
        .collect();
    let warnings = check_batch(&lm, &requests).expect("a valid batch");
    let mut ledger = Ledger::new("demo");
    let out = memit(&mut lm, &mut ledger, &requests, &hp);
    let p = |lm: &LanguageModel<Cpu>, prompt: &str, target: &str| -> f64 {
        let logits = lm.next_logits(prompt).expect("logits");
        let t = lm.target_tokens(prompt, target).expect("target")[0] as usize;
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let z: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        f64::from(logits[t] - max).exp() / z
    };
    let (mut es, mut ps, mut ps_n) = (0usize, 0usize, 0usize);
    for (&i, r) in edited.iter().zip(&requests) {
        let f = &fs[i];
        es += usize::from(p(&lm, &r.prompt, &r.target) > p(&lm, &r.prompt, &f.target));
        for q in &f.prompts()[1..] {
            ps += usize::from(p(&lm, q, &r.target) > p(&lm, q, &f.target));
            ps_n += 1;
        }
    }
    let kept = others.iter().filter(|(q, a)| &top1(&lm, q) == a).count();
    let (es, ps, ns) = (
        es as f64 / requests.len() as f64,
        ps as f64 / ps_n as f64,
        kept as f64 / others.len() as f64,
    );
    eprintln!(
        "demo MEMIT, {} edits in one batch over layers {:?}: ES {es:.3}, PS {ps:.3}, NS {ns:.3} ({kept}/{}); residual {:?}; {} warnings",
        requests.len(),
        hp.layers,
        others.len(),
        out.residual_norms,
        warnings.len()
    );
    assert!(es >= 0.9, "ES {es}");
    // 100 rank-one directions in a 512-wide MLP of a 4-layer model: some
    // other facts move (ROME's one edit at a time keeps all of them).
    assert!(ns >= 0.75, "NS {ns}");
}

/// Conflicting duplicates are an error naming both requests; exact repeats and
/// a subject asked two things are warnings; a bad request is named by index.
#[test]
fn batch_problems_name_the_requests() {
    let lm = demo();
    let fs = facts();
    let a = request(&fs[0], &new_target(&fs[0], 0));
    let b = request(&fs[3], &new_target(&fs[3], 0));
    let mut clash = a.clone();
    clash.target = new_target(&fs[0], 1);
    assert_ne!(clash.target, a.target);
    match check_batch(&lm, &[a.clone(), b.clone(), clash]) {
        Err(EditError::Conflict { first, second, .. }) => assert_eq!((first, second), (0, 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let other_relation = request(&fs[1], &new_target(&fs[1], 0));
    assert_eq!(
        other_relation.subject, a.subject,
        "facts 0 and 1 share a subject"
    );
    let warnings = check_batch(&lm, &[a.clone(), b.clone(), a.clone(), other_relation])
        .expect("repeats are allowed");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("request 2 repeats request 0")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("share its key")),
        "{warnings:?}"
    );
    let mut missing = b.clone();
    missing.subject = "Nobody Atall".into();
    let err = check_batch(&lm, &[a, b, missing]).expect_err("subject not in prompt");
    assert!(
        matches!(err, EditError::BadRequest { index: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("request 2") && err.to_string().contains("Nobody"),
        "{err}"
    );
}

#[test]
fn memit_hparams_are_checked_in_for_the_published_models() {
    let xl = MemitHparams::builtin("gpt2-xl").expect("gpt2-xl");
    assert_eq!(xl.layers, vec![13, 14, 15, 16, 17]);
    assert_eq!(xl.mom2_update_weight, 20000.0);
    let j = MemitHparams::builtin("gpt-j-6b").expect("gpt-j");
    assert_eq!(j.layers, vec![3, 4, 5, 6, 7, 8]);
    assert_eq!(j.mom2_update_weight, 15000.0);
    for name in ["demo", "smollm2-135m"] {
        let h = MemitHparams::builtin(name).expect(name);
        assert!(!h.source.is_empty() && h.z_layer().is_ok(), "{name}");
    }
    // Values that would run quietly wrong are refused, naming the field.
    let dir = std::env::temp_dir().join(format!("engram-memit-hp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let base = serde_json::to_value(&xl).expect("json");
    for (field, value) in [
        ("clamp_norm_factor", serde_json::json!(-0.75)),
        ("mom2_update_weight", serde_json::json!(0.0)),
        ("kl_factor", serde_json::json!(-1.0)),
        ("v_lr", serde_json::json!(0.0)),
        ("fact_token", serde_json::json!("last")),
    ] {
        let mut v = base.clone();
        v[field] = value;
        let path = dir.join(format!("{field}.json"));
        std::fs::write(&path, v.to_string()).expect("write");
        let err = MemitHparams::load(&path).expect_err(field).to_string();
        assert!(
            err.contains(field) && err.contains(&*path.to_string_lossy()),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Several layers' statistics collected in one pass equal each layer's own.
#[test]
fn statistics_of_several_layers_in_one_pass_equal_single_layers() {
    use engram_editing::stats::collect_stats;
    let lm = demo();
    let text = engram_datasets::demo::demo_corpus(&facts(), 40, 0).join("\n\n");
    let dir = std::env::temp_dir().join(format!("engram-multi-stats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = StatsOptions {
        max_tokens: 3_000,
        seq_len: 32,
        ..StatsOptions::new(0)
    };
    let both = cached_stats_layers(
        &dir,
        &lm.model,
        &lm.tokenizer,
        &text,
        "demo",
        &[0, 2],
        &opts,
        &mut |_, _| true,
    )
    .expect("two layers");
    assert!(both.iter().all(|(_, cached)| !cached));
    for (stats, _) in &both {
        let one = collect_stats(
            &lm.model,
            &lm.tokenizer,
            &text,
            "demo",
            &StatsOptions {
                layer: stats.key.layer,
                ..opts.clone()
            },
            &mut |_, _| true,
        )
        .expect("one layer");
        assert_eq!(one.key.tokens, stats.key.tokens);
        assert_eq!(one.sum_outer, stats.sum_outer, "layer {}", stats.key.layer);
    }
    // Read back from the cache, without collecting.
    let again = cached_stats_layers(
        &dir,
        &lm.model,
        &lm.tokenizer,
        &text,
        "demo",
        &[2, 0],
        &opts,
        &mut |_, _| panic!("the cache was not used"),
    )
    .expect("cached");
    assert_eq!(again[0].0, both[1].0);
    assert!(again.iter().all(|(_, cached)| *cached));
    let _ = std::fs::remove_dir_all(&dir);
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn z_chunks_on_two_threads_equal_one_thread_and_name_a_bad_request() {
    let lm = demo();
    let mut hp = memit_hparams();
    hp.v_num_grad_steps = 3;
    let fs = facts();
    let mut requests: Vec<EditRequest> = [2, 6, 10, 17, 21]
        .iter()
        .map(|&i| request(&fs[i], &new_target(&fs[i], 1)))
        .collect();
    // A three-word target makes the first request's tail the longest, so
    // chunking by tail length moves it to the last chunk.
    requests[0].target = format!(
        "{} {} {}",
        new_target(&fs[2], 1),
        new_target(&fs[2], 2),
        new_target(&fs[2], 3)
    );
    let (_, groups) = memit_setup();
    let flat: Vec<String> = groups.iter().flatten().cloned().collect();
    // Chunks of 2: three chunks, the last with one request.
    let (one, _) = compute_zs(&lm, &requests, &hp, &flat, 2, 1, &mut |_, _| true).expect("z");
    // Each request alone: z comes back in request order, whatever the chunks.
    let (alone, _) = compute_zs(&lm, &requests, &hp, &flat, 1, 1, &mut |_, _| true).expect("z");
    for (i, (a, b)) in alone.iter().zip(&one).enumerate() {
        let diff = max_abs_diff(&a.z, &b.z);
        assert!(
            diff <= 1e-3,
            "request {i}: z alone and in a chunk differ by {diff}"
        );
    }
    let mut seen = Vec::new();
    let (two, _) = compute_zs(&lm, &requests, &hp, &flat, 2, 2, &mut |d, t| {
        seen.push((d, t));
        true
    })
    .expect("z on two threads");
    assert_eq!(one.len(), requests.len());
    assert_eq!(two.len(), requests.len());
    for (i, (a, b)) in one.iter().zip(&two).enumerate() {
        let diff = max_abs_diff(&a.z, &b.z);
        assert!(diff <= 1e-5, "request {i}: z differs by {diff}");
        assert_eq!(a.steps.len(), b.steps.len(), "request {i}");
    }
    assert_eq!(seen.last(), Some(&(5, 5)), "{seen:?}");
    // A bad request in the last chunk fails the batch before any chunk runs.
    let mut bad = requests.clone();
    bad[4].subject = "Nobody Atall".into();
    let mut calls = 0;
    let err = compute_zs(&lm, &bad, &hp, &flat, 2, 2, &mut |_, _| {
        calls += 1;
        true
    })
    .expect_err("subject not in prompt");
    assert!(
        matches!(err, EditError::BadRequest { index: 4, .. }),
        "{err}"
    );
    assert_eq!(calls, 0, "no optimisation ran");
    // Cancelling from the progress callback stops both threads.
    let err =
        compute_zs(&lm, &requests, &hp, &flat, 2, 2, &mut |_, _| false).expect_err("cancelled");
    assert!(matches!(err, EditError::Cancelled(_)), "{err}");
}
