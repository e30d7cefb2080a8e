//! Headless tests of the workbench with egui_kittest: the real app, the real
//! worker thread and the real demo model, driven through accessibility queries.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eframe::egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use engram_app::{AppOptions, EngramApp, PanelKind};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn demo_model() -> String {
    repo().join("app/assets/demo-model").display().to_string()
}

/// The first demo fact, read from the fact list the model was trained on.
fn first_demo_fact() -> (String, String) {
    let text = std::fs::read_to_string(repo().join("datasets/demo/facts.jsonl"))
        .expect("datasets/demo/facts.jsonl is in the repository");
    let line = text.lines().next().expect("fact list is not empty");
    let v: serde_json::Value = serde_json::from_str(line).expect("valid JSON line");
    (
        v["prompt"].as_str().expect("prompt").to_string(),
        v["target"].as_str().expect("target").to_string(),
    )
}

fn harness(mut options: AppOptions) -> Harness<'static, EngramApp> {
    // Runs the tests store go to a temporary store, never the checkout's ./runs.
    if options.paths.is_none() {
        let mut paths = engram_model::Settings::from_vars(|k| std::env::var_os(k));
        // Named apart from every test's own directory, which it removes.
        paths.runs =
            std::env::temp_dir().join(format!("engram-app-default-runs-{}", std::process::id()));
        options.paths = Some(paths);
    }
    Harness::builder()
        .with_size([1280.0, 800.0])
        .build_eframe(move |cc| EngramApp::new(&cc.egui_ctx, options))
}

/// One statistics cache for every test in this binary, set once: tests run on
/// parallel threads, and a per-test directory in the environment would be
/// swapped (and deleted) under another test's worker.
fn shared_stats_dir() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = std::env::temp_dir().join(format!("engram-app-stats-{}", std::process::id()));
        std::env::set_var("ENGRAM_STATS_DIR", dir);
    });
}

/// Step the app (the worker runs on its own thread) until `done` holds.
fn wait_for(
    h: &mut Harness<'static, EngramApp>,
    what: &str,
    done: impl Fn(&Harness<'static, EngramApp>) -> bool,
) {
    let start = Instant::now();
    loop {
        h.step();
        if done(h) {
            return;
        }
        if !h.state().is_busy() {
            if let Some(e) = h.state().panel_errors().first() {
                panic!("waiting for {what}, a panel shows an error: {e}");
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The demo model loaded directly through the facade, independently of the app.
fn demo_lm() -> engram_model::LanguageModel<engram_model::Cpu> {
    engram_model::LanguageModel::load(Path::new(&demo_model()), &Default::default())
        .expect("demo model loads")
}

fn has_label(h: &Harness<'static, EngramApp>, text: &str) -> bool {
    h.query_all_by_label_contains(text).next().is_some()
}

fn loaded(options: AppOptions) -> Harness<'static, EngramApp> {
    let mut h = harness(options);
    wait_for(&mut h, "the model to load", |h| {
        h.state().card().is_some() && !h.state().is_busy()
    });
    h
}

#[test]
fn typing_a_demo_fact_shows_its_attribute_top1() {
    let (prompt, target) = first_demo_fact();
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        prompt: Some(String::new()),
        panel: Some(PanelKind::Playground),
        ..Default::default()
    });
    let input = h.get_by_role(Role::TextInput);
    input.focus();
    input.type_text(&prompt);
    h.step();
    h.get_by_label("Run").click();
    wait_for(&mut h, "the next-token table", |h| {
        has_label(h, "top-1:") && !h.state().is_busy()
    });
    assert_eq!(h.state().settings().prompt, prompt);
    let top = h
        .get_by_label_contains("top-1:")
        .value()
        .unwrap_or_default();
    assert!(
        top.contains(&format!("'{target}'")),
        "prompt {prompt:?}: expected {target:?} top-1, the app shows {top:?}"
    );
}

#[test]
fn model_card_counts_the_models_hook_points() {
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        panel: Some(PanelKind::Model),
        ..Default::default()
    });
    h.step();
    // Independently of the app: the facade loads the same checkpoint.
    let lm = demo_lm();
    let n = lm.model.hook_points().len();
    assert!(
        has_label(&h, &format!("Hook points ({n})")),
        "card lacks `Hook points ({n})`"
    );
    let c = &lm.model.config;
    assert!(has_label(
        &h,
        &format!("{} (model_type {})", c.arch.name(), c.model_type)
    ));
    assert!(has_label(
        &h,
        &format!(
            "{} ({} key/value), d_head {}",
            c.n_heads, c.n_kv_heads, c.d_head
        )
    ));
}

#[test]
fn lens_and_attention_panels_show_results_for_the_prompt() {
    let (prompt, target) = first_demo_fact();
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        prompt: Some(prompt),
        panel: Some(PanelKind::Playground),
        ..Default::default()
    });
    h.get_by_label("Logit lens").click();
    wait_for(&mut h, "the lens", |h| has_label(h, "is top-1 from layer"));
    let summary = h
        .get_by_label_contains("is top-1 from layer")
        .value()
        .unwrap_or_default();
    assert!(summary.contains(&format!("'{target}'")), "{summary}");
    // The resid_pre toggle reruns the lens: layer 0's resid_pre is the embedding.
    h.get_by_label("resid_pre").click();
    wait_for(&mut h, "the resid_pre lens", |h| {
        !h.state().is_busy() && has_label(h, "top-1")
    });
    h.get_by_label("Attention").click();
    wait_for(&mut h, "attention patterns", |h| {
        has_label(h, "blocks.0.attn.hook_pattern, head 0")
    });
}

#[test]
fn cancel_stops_a_fact_check_and_the_ui_keeps_answering() {
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        panel: Some(PanelKind::Facts),
        ..Default::default()
    });
    h.step();
    h.get_by_label("Check facts").click();
    wait_for(&mut h, "the job to start", |h| has_label(h, "Cancel"));
    // While the worker checks facts, the UI switches panels.
    h.get_by_label("Model").click();
    h.step();
    assert!(has_label(&h, "Model card"));
    h.get_by_label("Cancel").click();
    wait_for(&mut h, "the job to stop", |h| !h.state().is_busy());
    assert!(
        has_label(&h, "cancelled"),
        "status bar does not say cancelled"
    );
    // A full run afterwards completes: the demo model knows its facts.
    h.get_by_label("Facts").click();
    h.step();
    h.get_by_label("Check facts").click();
    wait_for(&mut h, "the fact check", |h| {
        has_label(h, "facts right at top-1")
    });
    let line = h
        .get_by_label_contains("facts right at top-1")
        .value()
        .unwrap_or_default();
    let right: usize = line
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let total: usize = line
        .split(' ')
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    assert!(
        total >= 200 && right as f64 >= 0.95 * total as f64,
        "{line}"
    );
}

#[test]
fn settings_persist_between_launches() {
    let dir = std::env::temp_dir().join(format!("engram-app-settings-{}", std::process::id()));
    let path = dir.join("app.json");
    let _ = std::fs::remove_file(&path);
    {
        let mut h = loaded(AppOptions {
            model: Some(demo_model()),
            prompt: Some("Belvale Quinford works as a".into()),
            panel: Some(PanelKind::Attention),
            settings_path: Some(path.clone()),
            ..Default::default()
        });
        h.step();
    }
    let mut h = harness(AppOptions {
        settings_path: Some(path.clone()),
        ..Default::default()
    });
    h.step();
    let s = h.state().settings();
    assert_eq!(s.prompt, "Belvale Quinford works as a");
    assert_eq!(s.panel, PanelKind::Attention);
    assert_eq!(s.model, demo_model());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_model_is_a_clear_error_not_a_crash() {
    let mut h = harness(AppOptions {
        model: Some("/nonexistent/engram-model".into()),
        panel: Some(PanelKind::Model),
        ..Default::default()
    });
    wait_for(&mut h, "the load to fail", |h| !h.state().is_busy());
    assert!(h.state().card().is_none());
    assert!(has_label(&h, "/nonexistent/engram-model"));
    // The demo model still opens afterwards.
    h.get_by_label("Open the demo model").click();
    wait_for(&mut h, "the demo model", |h| h.state().card().is_some());
}

#[test]
fn locate_traces_a_fact_from_the_facts_panel() {
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        panel: Some(PanelKind::Facts),
        ..Default::default()
    });
    h.step();
    h.get_by_label("Check facts").click();
    wait_for(&mut h, "the fact check", |h| {
        has_label(h, "facts right at top-1")
    });
    // The first fact's "locate" button traces it on the Locate panel.
    let (prompt, target) = first_demo_fact();
    h.get_all_by_label("locate")
        .next()
        .expect("a locate button")
        .click();
    wait_for(&mut h, "the trace", |h| {
        !h.state().is_busy() && has_label(h, "clean p =")
    });
    assert_eq!(h.state().settings().prompt, prompt);
    // The clean probability shown is the model's own next-token probability.
    let lm = demo_lm();
    let id = lm.target_tokens(&prompt, &target).expect("target")[0];
    let p = lm
        .top_k(&prompt, 5)
        .expect("top")
        .into_iter()
        .find(|t| t.id == id)
        .expect("target in top 5")
        .prob;
    let line = h
        .get_by_label_contains("clean p =")
        .value()
        .unwrap_or_default();
    assert!(
        line.contains(&format!("clean p = {p:.4}")),
        "{line} vs {p:.4}"
    );
    // Either verdict names the best MLP window's layer.
    let verdict = h
        .get_by_label_contains("MLP window at the last subject token")
        .value()
        .unwrap_or_default();
    assert!(verdict.contains("layer "), "{verdict}");
    for title in [
        "single restored layer (hidden state)",
        "restored MLP window",
        "restored attention window",
    ] {
        assert!(has_label(&h, title), "missing heatmap {title}");
    }
}

/// The n-th line of the demo fact list: (subject, prompt, target).
fn demo_fact(n: usize) -> (String, String, String) {
    let text = std::fs::read_to_string(repo().join("datasets/demo/facts.jsonl")).expect("facts");
    let v: serde_json::Value =
        serde_json::from_str(text.lines().nth(n).expect("fact")).expect("JSON line");
    let f = |k: &str| v[k].as_str().expect("field").to_string();
    (f("subject"), f("prompt"), f("target"))
}

fn playground_top1(h: &mut Harness<'static, EngramApp>) -> String {
    h.get_by_label("Playground").click();
    wait_for(h, "the next-token table", |h| {
        !h.state().is_busy() && has_label(h, "top-1:")
    });
    h.get_by_label_contains("top-1:")
        .value()
        .unwrap_or_default()
}

/// Locate → "Edit this fact" → Apply edit: the new answer is top-1 on the
/// prompt, a neighbour keeps its answer, the ledger toggles the edit off and
/// on, and Save writes a new model directory.
#[test]
fn edit_panel_rewrites_a_fact_from_locate_and_toggles_it() {
    let (subject, prompt, target) = demo_fact(0);
    let (_, _, new_target) = demo_fact(3);
    let (_, neighbour, neighbour_target) = demo_fact(6);
    assert_ne!(target, new_target);
    let dir = std::env::temp_dir().join(format!("engram-app-edit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let saved = dir.join("saved-model");
    let settings = serde_json::json!({
        "prompt": prompt,
        "panel": "Locate",
        "trace": {"subject": subject, "target": target},
        "edit": {"prompt": "", "subject": "", "target": new_target, "paraphrases": "",
                 "neighbours": neighbour, "save_to": saved.display().to_string()},
    });
    let settings_path = dir.join("app.json");
    std::fs::write(&settings_path, settings.to_string()).expect("settings");
    shared_stats_dir();
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        settings_path: Some(settings_path),
        ..Default::default()
    });
    h.get_by_label("Trace").click();
    wait_for(&mut h, "the trace", |h| {
        !h.state().is_busy() && has_label(h, "clean p =")
    });
    h.get_by_label("Edit this fact ->").click();
    h.step();
    h.step();
    let form = h.state().settings().edit.clone();
    assert_eq!(h.state().settings().panel, PanelKind::Edit);
    assert_eq!(
        (form.prompt.as_str(), form.subject.as_str()),
        (prompt.as_str(), subject.as_str())
    );
    h.get_by_label("Apply edit").click();
    wait_for(&mut h, "the edit", |h| {
        !h.state().is_busy() && h.state().last_edit().is_some()
    });
    let view = h.state().last_edit().expect("edit").clone();
    let row = |i: usize| &view.probes[i];
    assert_eq!(row(0).before_top.trim(), target);
    assert_eq!(row(0).after_top.trim(), new_target, "{view:?}");
    assert!(
        row(0).after_target > 0.5 && row(0).before_target < 0.1,
        "{view:?}"
    );
    assert_eq!(row(1).before_top.trim(), neighbour_target);
    assert_eq!(
        row(1).after_top.trim(),
        neighbour_target,
        "the neighbour moved"
    );
    assert!(has_label(
        &h,
        &format!("Edit #{} at layer {}", view.id, view.layer)
    ));
    assert!(has_label(&h, "before") && has_label(&h, "after"));
    assert_eq!(h.state().ledger().len(), 1);
    // Save while the edit is applied: a new directory with the ledger.
    h.get_by_label("Save").click_accesskit();
    wait_for(&mut h, "the save", |h| {
        !h.state().is_busy() && h.state().saved_model().is_some()
    });
    assert!(saved.join("model.safetensors").is_file());
    assert!(saved.join("engram-ledger.json").is_file());
    // The Playground sees the edited weights, then the original ones once the
    // ledger's checkbox turns the edit off.
    assert!(playground_top1(&mut h).contains(&format!("'{new_target}'")));
    h.get_by_label("Edit").click();
    h.step();
    h.step();
    h.get_by_label(&format!("#{}", view.id)).click_accesskit();
    wait_for(&mut h, "the ledger update", |h| {
        !h.state().is_busy() && h.state().ledger().first().is_some_and(|e| !e.applied)
    });
    assert!(playground_top1(&mut h).contains(&format!("'{target}'")));
    // Saving onto an existing directory is refused, in the panel.
    h.get_by_label("Edit").click();
    h.step();
    h.step();
    h.get_by_label("Save").click_accesskit();
    wait_for(&mut h, "the refused save", |h| {
        !h.state().is_busy() && has_label(h, "already exists")
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A MEMIT batch from the Edit panel: three demo facts rewritten at once,
/// reviewed per request, then reverted as one unit (every layer entry off).
#[test]
fn edit_panel_runs_a_memit_batch_and_reverts_it_as_a_unit() {
    let dir = std::env::temp_dir().join(format!("engram-app-memit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let rows: Vec<(String, String, String)> =
        [0usize, 7, 14].iter().map(|&i| demo_fact(i)).collect();
    // Each fact's new target: another fact's answer of the same relation.
    let facts = std::fs::read_to_string(repo().join("datasets/demo/facts.jsonl")).expect("facts");
    let all: Vec<serde_json::Value> = facts
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let relation = |prompt: &str| {
        all.iter()
            .find(|v| v["prompt"] == prompt)
            .and_then(|v| v["relation"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let batch: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|(subject, prompt, target)| {
            let rel = relation(prompt);
            let new = all
                .iter()
                .filter(|v| v["relation"] == rel.as_str())
                .filter_map(|v| v["target"].as_str())
                .find(|t| t != target)
                .expect("another answer")
                .to_string();
            (subject.clone(), prompt.clone(), target.clone(), new)
        })
        .collect();
    let text: Vec<String> = batch
        .iter()
        .map(|(s, p, _, new)| format!("{s} | {p} | {new}"))
        .collect();
    let settings = serde_json::json!({
        "prompt": batch[0].1,
        "panel": "Edit",
        "edit": {"batch": text.join("\n")},
    });
    let settings_path = dir.join("app.json");
    std::fs::write(&settings_path, settings.to_string()).expect("settings");
    shared_stats_dir();
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        settings_path: Some(settings_path),
        ..Default::default()
    });
    h.get_by_label("Run MEMIT").click_accesskit();
    wait_for(&mut h, "the MEMIT batch", |h| {
        !h.state().is_busy() && h.state().last_batch().is_some()
    });
    let view = h.state().last_batch().expect("batch").clone();
    assert_eq!(view.rows.len(), 3);
    let took = view
        .rows
        .iter()
        .filter(|r| r.after_top.trim() == r.target.trim())
        .count();
    eprintln!("MEMIT batch in the app: {took}/3 new targets top-1; {view:?}");
    assert!(took >= 2, "{view:?}");
    for (r, (_, _, target, _)) in view.rows.iter().zip(&batch) {
        assert_eq!(
            r.before_top.trim(),
            target,
            "before: the model's own answer"
        );
        assert!(r.after_target > r.before_target, "{r:?}");
    }
    assert!(has_label(
        &h,
        &format!("MEMIT batch {}: 3 requests", view.batch)
    ));
    let entries = h.state().ledger().to_vec();
    assert_eq!(entries.len(), view.ids.len());
    assert!(entries
        .iter()
        .all(|e| e.batch == Some(view.batch) && e.applied));
    assert!(playground_top1(&mut h).contains(&format!("'{}'", batch[0].3)));
    h.get_by_label("Edit").click();
    h.step();
    h.step();
    // The button sits below the 1280 x 800 view: press it through AccessKit.
    h.get_by_label("Revert batch").click_accesskit();
    wait_for(&mut h, "the revert", |h| {
        !h.state().is_busy() && h.state().ledger().iter().all(|e| !e.applied)
    });
    assert!(playground_top1(&mut h).contains(&format!("'{}'", batch[0].2)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An AlphaEdit batch from the Edit panel (the method chosen in the form):
/// the report names each layer's null space and the ledger's entries are
/// AlphaEdit's, with their weight-change norms.
#[test]
fn alphaedit_batch_from_the_edit_panel() {
    let dir = std::env::temp_dir().join(format!("engram-app-alphaedit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let settings = serde_json::json!({
        "panel": "Edit",
        "edit": {"batch_method": "alphaedit"},
    });
    let settings_path = dir.join("app.json");
    std::fs::write(&settings_path, settings.to_string()).expect("settings");
    shared_stats_dir();
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        settings_path: Some(settings_path),
        ..Default::default()
    });
    h.get_by_label("Run AlphaEdit").click_accesskit();
    wait_for(&mut h, "the AlphaEdit batch", |h| {
        !h.state().is_busy() && h.state().last_batch().is_some()
    });
    let view = h.state().last_batch().expect("batch").clone();
    assert_eq!(view.rows.len(), 3);
    assert!(!view.null_space.is_empty(), "{view:?}");
    assert!(
        view.rows.iter().all(|r| r.after_target > r.before_target),
        "{view:?}"
    );
    let entries = h.state().ledger().to_vec();
    assert!(entries
        .iter()
        .all(|e| e.method == "alphaedit" && e.norms.is_some_and(|n| n.delta_fro > 0.0)));
    assert!(has_label(&h, "AlphaEdit: updates kept in the null spaces"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// FT-L from the Edit panel (the method chosen in the form): the default
/// demo request fine-tuned in, within its bound, as a dense ledger entry.
#[test]
fn ft_l_edit_from_the_edit_panel() {
    let dir = std::env::temp_dir().join(format!("engram-app-ftl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let settings = serde_json::json!({"panel": "Edit", "edit": {"edit_method": "ft-l"}});
    let settings_path = dir.join("app.json");
    std::fs::write(&settings_path, settings.to_string()).expect("settings");
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        settings_path: Some(settings_path),
        ..Default::default()
    });
    h.get_by_label("Apply edit").click_accesskit();
    wait_for(&mut h, "the FT-L edit", |h| {
        !h.state().is_busy() && h.state().last_ft_edit().is_some()
    });
    let view = h.state().last_ft_edit().expect("FT-L").clone();
    let bound = engram_editing::ft::FtHparams::builtin("demo")
        .expect("demo FT-L")
        .norm_constraint as f32;
    assert!(view.report.delta_max <= bound * 1.001, "{view:?}");
    let prompt = &view.report.probes[0];
    assert!(prompt.after_target > prompt.before_target, "{prompt:?}");
    let entries = h.state().ledger().to_vec();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].method, "ft-l");
    assert!(has_label(&h, "FT-L edit #"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Memories: the demo fact's memories per layer, a memory switched off and
/// the prompt re-run, trigger contexts, and knowledge neurons whose
/// suppression lowers the answer.
#[test]
fn memories_panel_finds_switches_and_attributes_memories() {
    let (subject, prompt, target) = demo_fact(0);
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        prompt: Some(prompt.clone()),
        subject: Some(subject.clone()),
        target: Some(target.clone()),
        panel: Some(PanelKind::Memories),
        ..Default::default()
    });
    wait_for(&mut h, "the memories", |h| {
        !h.state().is_busy() && h.state().memories_view().is_some()
    });
    let view = h.state().memories_view().expect("view").clone();
    assert_eq!(view.layers.len(), 4);
    assert_eq!(view.next_clean[0].text.trim(), target);
    let (enc, span) = demo_lm()
        .tokenizer
        .subject_span(&prompt, &subject)
        .expect("span");
    assert_eq!(view.position, span.end - 1);
    assert!(enc.ids.len() > view.position);
    let top = &view.layers[3].memories[0];
    h.get_by_label(&format!("off 3:{}", top.memory)).click();
    wait_for(&mut h, "the re-run", |h| {
        !h.state().is_busy()
            && h.state()
                .memories_view()
                .is_some_and(|v| v.request.interventions.len() == 1)
    });
    assert!(has_label(&h, "With the interventions"));
    // The toggles act on the continuation too: the same as the library's
    // continuation under the same intervention.
    let view = h.state().memories_view().expect("view").clone();
    let (plain, intervened) = view.continuation.clone().expect("a continuation");
    let lm = demo_lm();
    let ids = lm.encode_prompt(&prompt).expect("prompt");
    let off = [engram_analysis::memories::Intervention {
        layer: 3,
        memory: top.memory,
        setting: engram_analysis::memories::Setting::Zero,
    }];
    let expected =
        engram_analysis::jobs::memories::continuation(&lm, &ids, view.request.generate, &off)
            .expect("continuation");
    assert!(view.request.generate > 0);
    assert_eq!((plain, intervened), (expected.plain, expected.intervened));
    assert!(has_label(&h, "with the interventions"));
    h.get_by_label("Clear").click();
    wait_for(&mut h, "the cleared re-run", |h| {
        !h.state().is_busy()
            && h.state()
                .memories_view()
                .is_some_and(|v| v.request.interventions.is_empty())
    });
    h.get_by_label(&format!("triggers 3:{}", top.memory))
        .click();
    wait_for(&mut h, "the trigger search", |h| {
        !h.state().is_busy() && h.state().triggers_view().is_some()
    });
    let t = h.state().triggers_view().expect("triggers").clone();
    assert_eq!(t.contexts.len(), 10);
    assert!(t.contexts.windows(2).all(|w| w[0].0 >= w[1].0));
    h.get_by_label("Knowledge neurons").click();
    wait_for(&mut h, "the attribution", |h| {
        !h.state().is_busy() && h.state().attribution().is_some()
    });
    let a = h.state().attribution().expect("attribution").clone();
    assert!(!a.neurons.is_empty() && a.suppressed < a.prob, "{a:?}");
    assert!(has_label(&h, "Knowledge neurons of"));
}

/// Probe: the demo relation set, probed at the subject's last token, gives a
/// curve above the control; clicking a layer shows its confusion matrix.
#[test]
fn probe_panel_runs_a_probe_and_shows_a_layer() {
    let dir = std::env::temp_dir().join(format!("engram-app-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::env::set_var("ENGRAM_ACTS_DIR", dir.join("acts"));
    std::env::set_var("ENGRAM_RUNS", dir.join("runs"));
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        panel: Some(PanelKind::Probe),
        ..Default::default()
    });
    assert_eq!(
        h.state().settings().probe.data,
        "demo",
        "the compiled-in demo set"
    );
    h.get_by_label("Run probe").click();
    wait_for(&mut h, "the probe", |h| {
        !h.state().is_busy() && h.state().probe_view().is_some()
    });
    let v = h.state().probe_view().expect("probe").clone();
    assert_eq!(v.report.layers.len(), 4);
    assert_eq!(v.report.classes.len(), 3);
    let best = v
        .report
        .layers
        .iter()
        .max_by(|a, b| a.accuracy.mean.total_cmp(&b.accuracy.mean))
        .expect("layers");
    assert!(
        best.accuracy.mean > 0.8 && best.selectivity.mean > 0.2,
        "{best:?}"
    );
    assert!(v.report.run_dir.join("probe.png").is_file());
    h.get_by_label("0").click();
    h.step();
    h.step();
    assert!(has_label(&h, "Layer 0: accuracy"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `engram` CLI built beside this test binary (`cargo test --workspace`
/// builds it for the CLI's own tests).
fn engram_cli() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let cli = dir.join(format!("engram{}", std::env::consts::EXE_SUFFIX));
    cli.is_file().then_some(cli)
}

/// The one run of `kind` in the store at `root`.
fn only_run(root: &Path, kind: &str) -> engram_datasets::RunInfo {
    let store = engram_datasets::RunStore::open(root).expect("store");
    let runs: Vec<_> = store
        .list()
        .expect("list")
        .into_iter()
        .filter(|r| r.kind == kind)
        .collect();
    assert_eq!(runs.len(), 1, "{kind} runs in {}: {runs:?}", root.display());
    runs.into_iter().next().expect("one run")
}

/// Two stored tables are the same: equal shapes and column names, strings
/// equal, numbers within 1e-6 (NaN where the other has NaN).
fn assert_same_table(a: &engram_datasets::RunInfo, b: &engram_datasets::RunInfo, table: &str) {
    use engram_datasets::polars::prelude::*;
    let read = |r: &engram_datasets::RunInfo| {
        engram_datasets::store::read_parquet(&r.dir.join(format!("{table}.parquet")))
            .expect("table reads")
    };
    let (x, y) = (read(a), read(b));
    assert_eq!(x.shape(), y.shape(), "table {table}");
    assert!(x.height() > 0, "table {table} is empty");
    assert_eq!(x.get_column_names(), y.get_column_names(), "table {table}");
    for (cx, cy) in x.columns().iter().zip(y.columns()) {
        let name = cx.name().to_string();
        if cx.dtype().is_numeric() {
            let fx = cx.cast(&DataType::Float64).expect("cast");
            let fy = cy.cast(&DataType::Float64).expect("cast");
            let (vx, vy) = (fx.f64().expect("f64"), fy.f64().expect("f64"));
            for (i, (p, q)) in vx.iter().zip(vy.iter()).enumerate() {
                let (p, q) = (p.unwrap_or(f64::NAN), q.unwrap_or(f64::NAN));
                assert!(
                    (p.is_nan() && q.is_nan()) || (p - q).abs() <= 1e-6,
                    "table {table}, column {name}, row {i}: GUI {p} vs CLI {q}"
                );
            }
        } else {
            assert_eq!(
                cx.as_materialized_series(),
                cy.as_materialized_series(),
                "table {table}, column {name}"
            );
        }
    }
}

/// A trace and a ROME edit made in the workbench each store a run, and the
/// CLI given the same request (same seed, same statistics) stores the same
/// tables: both front ends call the same jobs.
#[test]
fn gui_trace_and_edit_store_the_runs_the_cli_stores() {
    let Some(cli) = engram_cli() else {
        eprintln!(
            "SKIP: the engram CLI is not built beside this test (run cargo test --workspace)"
        );
        return;
    };
    let (subject, prompt, target) = demo_fact(0);
    let (_, _, new_target) = demo_fact(3);
    let (_, neighbour, _) = demo_fact(6);
    let dir = std::env::temp_dir().join(format!("engram-app-runs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut paths = engram_model::Settings::under(&dir);
    paths.runs = dir.join("gui-runs");
    paths.stats = dir.join("stats");
    let paraphrase = prompt.replacen(&subject, &format!("The person {subject}"), 1);
    let settings = serde_json::json!({
        "prompt": prompt,
        "panel": "Locate",
        "trace": {"subject": subject, "target": target},
        "edit": {"prompt": "", "subject": "", "target": new_target,
                 "paraphrases": paraphrase, "neighbours": neighbour},
    });
    let settings_path = dir.join("app.json");
    std::fs::write(&settings_path, settings.to_string()).expect("settings");
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        settings_path: Some(settings_path),
        paths: Some(paths.clone()),
        ..Default::default()
    });
    h.get_by_label("Trace").click();
    wait_for(&mut h, "the trace", |h| {
        !h.state().is_busy() && has_label(h, "clean p =")
    });
    let status = h.state().status_line().unwrap_or_default();
    let gui_trace = only_run(&paths.runs, "trace");
    assert!(
        status.contains(&gui_trace.id),
        "the status bar names the run: {status}"
    );
    h.get_by_label("Edit this fact ->").click();
    h.step();
    h.step();
    h.get_by_label("Apply edit").click();
    wait_for(&mut h, "the edit", |h| {
        !h.state().is_busy() && h.state().last_edit().is_some()
    });
    let gui_edit = only_run(&paths.runs, "edit");
    let layer = h.state().last_edit().expect("edit").layer;

    let cli_runs = dir.join("cli-runs");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&cli)
            .args(args)
            .env("ENGRAM_STATS_DIR", &paths.stats)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .expect("the CLI runs");
        assert!(
            out.status.success(),
            "engram {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let model = demo_model();
    let runs = cli_runs.display().to_string();
    run(&[
        "trace",
        &model,
        "--prompt",
        &prompt,
        "--subject",
        &subject,
        "--target",
        &target,
        "--samples",
        "10",
        "--noise",
        "3sigma",
        "--seed",
        "1",
        "--runs",
        &runs,
    ]);
    let layer = layer.to_string();
    run(&[
        "edit",
        &model,
        "--prompt",
        &prompt,
        "--subject",
        &subject,
        "--target",
        &new_target,
        "--also",
        &paraphrase,
        "--neighbour",
        &neighbour,
        "--layer",
        &layer,
        "--generate",
        "20",
        "--runs",
        &runs,
    ]);
    let cli_trace = only_run(&cli_runs, "trace");
    for table in ["trace", "facts", "effects", "effects_by_group"] {
        assert_same_table(&gui_trace, &cli_trace, table);
    }
    let cli_edit = only_run(&cli_runs, "edit");
    for table in ["probes", "steps"] {
        assert_same_table(&gui_edit, &cli_edit, table);
    }
    assert_eq!(gui_edit.params.model_hash, cli_edit.params.model_hash);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Runs panel lists a store's runs (a broken one with its problem), opens
/// a run's table, compares two eval runs and exports a table as CSV.
#[test]
fn runs_panel_lists_opens_compares_and_exports() {
    use engram_datasets::{RunParams, RunStore};
    let dir = std::env::temp_dir().join(format!("engram-app-runspanel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut paths = engram_model::Settings::under(&dir);
    paths.stats = dir.join("stats");
    let store = RunStore::open(&paths.runs).expect("store");
    let mut ids = Vec::new();
    for (method, es) in [("rome", [1.0, 0.0, 1.0]), ("memit", [1.0, 1.0, 1.0])] {
        let params = RunParams {
            model: "demo".into(),
            hyperparameters: serde_json::json!({"method": method}),
            ..Default::default()
        };
        let run = store.create("eval", params).expect("create");
        let cases: Vec<serde_json::Value> = es
            .iter()
            .enumerate()
            .map(|(i, e)| serde_json::json!({"case_id": i, "subject": format!("s{i}"), "ES": e}))
            .collect();
        let cases: Vec<serde_json::Map<String, serde_json::Value>> = cases
            .into_iter()
            .filter_map(|v| v.as_object().cloned())
            .collect();
        run.write_rows("cases", &cases).expect("rows");
        // A curve; only the newer run records the weights' drift.
        let mut point = serde_json::json!({"edits": 3, "ES": es[1], "NS": 1.0, "S": 0.9});
        if method == "memit" {
            point["drift_relative"] = serde_json::json!(0.05);
        }
        let point = point.as_object().cloned().expect("object");
        run.write_rows("curve", &[point]).expect("curve");
        ids.push(run.finish().expect("finish").id);
    }
    let broken = paths.runs.join("trace/20990101T000000Z-badbad");
    std::fs::create_dir_all(&broken).expect("dir");
    std::fs::write(broken.join("params.json"), "{").expect("write");
    let mut h = harness(AppOptions {
        model: Some(demo_model()),
        panel: Some(PanelKind::Runs),
        paths: Some(paths.clone()),
        ..Default::default()
    });
    h.run_steps(4);
    for id in &ids {
        assert!(has_label(&h, id), "run {id} is listed");
    }
    assert!(
        has_label(&h, "20990101T000000Z-badbad"),
        "the broken run is listed"
    );
    assert!(has_label(&h, "broken: "), "and says what is wrong");
    // Rows as the panel orders them: newest first.
    let order: Vec<String> = store
        .list()
        .expect("list")
        .into_iter()
        .rev()
        .map(|r| r.id)
        .collect();
    let row = |id: &str| order.iter().position(|x| x == id).expect("listed");
    h.get_all_by_label("open")
        .nth(row(&ids[1]))
        .expect("an open button per run")
        .click();
    h.run_steps(3);
    assert_eq!(
        h.state_mut().runs_panel().selected.as_deref(),
        Some(ids[1].as_str())
    );
    assert!(
        has_label(&h, "cases: 3 rows x 3 columns"),
        "the table is shown"
    );
    h.get_all_by_label("compare")
        .nth(row(&ids[0]))
        .expect("a compare button per run")
        .click();
    h.run_steps(3);
    assert!(has_label(
        &h,
        &format!("Comparing {} with {}", ids[1], ids[0])
    ));
    assert!(has_label(&h, "0.6667"), "rome's ES mean is compared");
    // Their curves, one figure per metric, the drift from the run that has it.
    let figures: Vec<String> = h
        .state_mut()
        .runs_panel()
        .curve_figures()
        .filter_map(|p| p.file_name()?.to_str().map(String::from))
        .collect();
    assert_eq!(
        figures,
        [
            "edits-ES.png",
            "edits-NS.png",
            "edits-S.png",
            "edits-drift_relative.png"
        ],
        "{figures:?}"
    );
    // All four lie within the window, wrapped into rows.
    for name in &figures {
        let r = h.get_by_label(name).rect();
        assert!(r.max.x <= 1280.0, "{name} ends at x = {}", r.max.x);
    }
    let out = dir.join("cases.csv");
    h.state_mut().runs_panel().export_path = out.display().to_string();
    h.run_steps(1);
    h.get_by_label("Export").click_accesskit();
    h.run_steps(2);
    let text = std::fs::read_to_string(&out).expect("the CSV was written");
    assert_eq!(text.lines().next(), Some("case_id,subject,ES"));
    assert_eq!(text.lines().count(), 4);
    assert!(has_label(&h, &format!("wrote {}", out.display())));
    let _ = std::fs::remove_dir_all(&dir);
}

/// "Evaluate" on the Edit panel runs the evaluation job on the demo facts and
/// stores an `eval` run whose cases equal those `engram eval counterfact`
/// stores for the same request (timings aside).
#[test]
fn edit_panel_evaluates_and_stores_the_cli_run() {
    let Some(cli) = engram_cli() else {
        eprintln!(
            "SKIP: the engram CLI is not built beside this test (run cargo test --workspace)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("engram-app-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut paths = engram_model::Settings::under(&dir);
    paths.runs = dir.join("gui-runs");
    paths.stats = dir.join("stats");
    let settings_path = dir.join("app.json");
    let settings = serde_json::json!({
        "panel": "Edit",
        "edit": {"eval_method": "r-rome", "eval_cases": 3},
    });
    std::fs::write(&settings_path, settings.to_string()).expect("settings");
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        settings_path: Some(settings_path),
        paths: Some(paths.clone()),
        ..Default::default()
    });
    h.get_by_label("Evaluate").click_accesskit();
    wait_for(&mut h, "the evaluation", |h| {
        !h.state().is_busy() && h.state().last_eval().is_some()
    });
    let view = h.state().last_eval().expect("eval").clone();
    assert_eq!(view.cases, 3, "{view:?}");
    assert!(view.summary.iter().any(|s| s.metric == "ES"), "{view:?}");
    let gui = only_run(&paths.runs, "eval");
    assert_eq!(gui.id, view.run_id);
    let cli_runs = dir.join("cli-runs");
    let out = std::process::Command::new(&cli)
        .args([
            "eval",
            "counterfact",
            &demo_model(),
            "--n",
            "3",
            "--method",
            "r-rome",
        ])
        .arg("--runs")
        .arg(&cli_runs)
        .env("ENGRAM_STATS_DIR", &paths.stats)
        .output()
        .expect("the CLI runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_run = only_run(&cli_runs, "eval");
    let strip = |r: &engram_datasets::RunInfo| {
        engram_datasets::store::read_parquet(&r.dir.join("cases.parquet"))
            .expect("cases")
            .drop_many(["edit_seconds"])
    };
    let (a, b) = (strip(&gui), strip(&cli_run));
    assert!(a.equals_missing(&b), "GUI\n{a}\nCLI\n{b}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Activation patching on Locate stores a `patch` run whose table equals the
/// one `engram patch` stores for the same fact and corrupted subject.
#[test]
fn locate_patches_a_fact_and_stores_the_cli_run() {
    let Some(cli) = engram_cli() else {
        eprintln!(
            "SKIP: the engram CLI is not built beside this test (run cargo test --workspace)"
        );
        return;
    };
    let (subject, prompt, target) = demo_fact(0);
    let (other, _, _) = demo_fact(6);
    let dir = std::env::temp_dir().join(format!("engram-app-patch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut paths = engram_model::Settings::under(&dir);
    paths.runs = dir.join("gui-runs");
    let settings_path = dir.join("app.json");
    let settings = serde_json::json!({
        "prompt": prompt,
        "panel": "Locate",
        "trace": {"subject": subject, "target": target, "corrupt_subject": other},
    });
    std::fs::write(&settings_path, settings.to_string()).expect("settings");
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        settings_path: Some(settings_path),
        paths: Some(paths.clone()),
        ..Default::default()
    });
    h.get_by_label("Activation patching").click_accesskit();
    h.run_steps(2);
    h.get_by_label("Patch").click_accesskit();
    wait_for(&mut h, "the patching", |h| {
        !h.state().is_busy() && h.state().last_patch().is_some()
    });
    let view = h.state().last_patch().expect("patch").clone();
    assert_eq!(view.sites.len(), 4, "{view:?}");
    // Attribution patching beside it, every site, ranked like the exact patches.
    assert_eq!(view.attribution.len(), 4, "{view:?}");
    let rho = view.spearman.expect("a rank correlation");
    assert!(rho > 0.3, "Spearman rho {rho}");
    for ((site, exact), (same, estimate)) in view.sites.iter().zip(&view.attribution) {
        assert_eq!(site, same);
        assert_eq!(
            (exact.len(), exact[0].len()),
            (estimate.len(), estimate[0].len())
        );
    }
    let gui = only_run(&paths.runs, "patch");
    assert_eq!(gui.id, view.run_id);
    let cli_runs = dir.join("cli-runs");
    let out = std::process::Command::new(&cli)
        .args([
            "patch",
            &demo_model(),
            "--prompt",
            &prompt,
            "--subject",
            &subject,
        ])
        .args(["--target", &target, "--corrupt-subject", &other])
        .args([
            "--sites",
            "resid_pre,attn_out,mlp_out,head_out",
            "--attribution",
        ])
        .arg("--runs")
        .arg(&cli_runs)
        .output()
        .expect("the CLI runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_run = only_run(&cli_runs, "patch");
    assert_same_table(&gui, &cli_run, "patch");
    assert_same_table(&gui, &cli_run, "attribution");
    // Attribution only: no exact sites, every estimate, a second run.
    h.get_by_label("Attribution only").click_accesskit();
    wait_for(&mut h, "attribution patching", |h| {
        !h.state().is_busy()
            && h.state()
                .last_patch()
                .is_some_and(|p| p.run_id != view.run_id)
    });
    let only = h.state().last_patch().expect("patch").clone();
    assert!(only.sites.is_empty() && only.spearman.is_none(), "{only:?}");
    assert_eq!(only.attribution, view.attribution);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stored edit run opens on Edit: "Open ledger on Edit" applies the run's
/// ledger to the loaded model, and the Playground sees the edit.
#[test]
fn runs_panel_applies_an_edit_runs_ledger() {
    let Some(cli) = engram_cli() else {
        eprintln!(
            "SKIP: the engram CLI is not built beside this test (run cargo test --workspace)"
        );
        return;
    };
    let (subject, prompt, target) = demo_fact(0);
    let (_, _, new_target) = demo_fact(3);
    let dir = std::env::temp_dir().join(format!("engram-app-ledger-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut paths = engram_model::Settings::under(&dir);
    paths.stats = dir.join("stats");
    let out = std::process::Command::new(&cli)
        .args([
            "edit",
            &demo_model(),
            "--prompt",
            &prompt,
            "--subject",
            &subject,
        ])
        .args(["--target", &new_target, "--runs"])
        .arg(&paths.runs)
        .env("ENGRAM_STATS_DIR", &paths.stats)
        .output()
        .expect("the CLI runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = only_run(&paths.runs, "edit");
    assert!(
        run.dir.join("ledger.json").is_file(),
        "the edit run keeps its ledger"
    );
    let mut h = loaded(AppOptions {
        model: Some(demo_model()),
        prompt: Some(prompt.clone()),
        run: Some(run.id.clone()),
        paths: Some(paths.clone()),
        ..Default::default()
    });
    assert!(playground_top1(&mut h).contains(&format!("'{target}'")));
    h.get_by_label("Runs").click();
    h.run_steps(2);
    h.get_by_label("Open ledger on Edit").click_accesskit();
    wait_for(&mut h, "the ledger", |h| {
        !h.state().is_busy() && h.state().ledger().len() == 1
    });
    assert!(h.state().ledger()[0].applied);
    assert!(playground_top1(&mut h).contains(&format!("'{new_target}'")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Playground's Steer section: a vector from the form's prompts, the
/// continuation without and with it side by side; coefficient 0 changes nothing.
#[test]
fn playground_steers_a_continuation() {
    let dir = std::env::temp_dir().join(format!("engram-app-steer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    for (coef, same) in [(0.0, true), (8.0, false)] {
        let settings = serde_json::json!({"panel": "Playground", "steer": {"coef": coef, "layer": 1, "tokens": 6}});
        let settings_path = dir.join("app.json");
        std::fs::write(&settings_path, settings.to_string()).expect("settings");
        let mut h = loaded(AppOptions {
            model: Some(demo_model()),
            settings_path: Some(settings_path),
            ..Default::default()
        });
        h.get_by_label("Apply steering").click_accesskit();
        wait_for(&mut h, "the steered continuation", |h| {
            !h.state().is_busy() && h.state().last_steer().is_some()
        });
        let v = h.state().last_steer().expect("steered").clone();
        assert_eq!(v.before == v.after, same, "coef {coef}: {v:?}");
        assert!(v.norm > 0.0 && !v.vector_run.is_empty() && !v.apply_run.is_empty());
        assert!(has_label(&h, &format!("with coefficient {coef:.1}")));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
