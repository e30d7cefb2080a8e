//! End-to-end tests of the `engram` binary on the tiny HF fixtures.

use std::path::PathBuf;
use std::process::Command;

fn shared() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIP: ../shared is absent (fixtures live there)");
        None
    }
}

fn engram(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run engram");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs ../shared"]
fn info_lists_hook_points() {
    let Some(sh) = shared() else { return };
    let dir = sh.join("fixtures/tiny/llama");
    let (ok, out, err) = engram(&["info", dir.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    assert!(out.contains("architecture  llama"), "{out}");
    for hook in [
        "blocks.0.hook_resid_pre",
        "blocks.2.mlp.hook_post",
        "blocks.1.attn.hook_pattern",
        "ln_final.hook_normalized",
    ] {
        assert!(out.lines().any(|l| l.trim() == hook), "missing {hook}");
    }
    let (ok, out, _) = engram(&["info", dir.to_str().expect("utf8"), "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["hooks"].as_array().expect("hooks").len(), 56);
    assert_eq!(v["config"]["n_kv_heads"], 2);
}

/// `engram run --ids` probabilities equal the softmax of HF's logits (reference.safetensors).
#[test]
#[ignore = "needs ../shared"]
fn run_probabilities_match_hf_for_every_arch() {
    let Some(sh) = shared() else { return };
    for arch in ["gpt2", "gptj", "gpt_neox", "llama"] {
        let dir = sh.join("fixtures/tiny").join(arch);
        let bytes = std::fs::read(dir.join("reference.safetensors")).expect("reference");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
        let ids: Vec<i64> = st
            .tensor("input_ids")
            .expect("ids")
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let logits: Vec<f32> = st
            .tensor("logits")
            .expect("logits")
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        // Row 1 of the reference batch, last position.
        let (s, v) = (7, 512);
        let row: Vec<String> = ids[s..2 * s].iter().map(|i| i.to_string()).collect();
        let last = &logits[(s + s - 1) * v..(2 * s) * v];
        let max = last.iter().copied().fold(f32::MIN, f32::max) as f64;
        let z: f64 = last.iter().map(|&l| (l as f64 - max).exp()).sum();

        let (ok, out, err) = engram(&[
            "run",
            dir.to_str().expect("utf8"),
            "--ids",
            &row.join(","),
            "--top-k",
            "5",
            "--json",
        ]);
        assert!(ok, "{arch}: {err}");
        let json: serde_json::Value = serde_json::from_str(&out).expect("json");
        let top = json["top_k"].as_array().expect("top_k");
        assert_eq!(top.len(), 5);
        for t in top {
            let id = t["id"].as_u64().expect("id") as usize;
            let want = ((last[id] as f64 - max).exp() / z) as f32;
            let got = t["prob"].as_f64().expect("prob") as f32;
            assert!(
                (got - want).abs() < 1e-4,
                "{arch} token {id}: {got} vs HF {want}"
            );
        }
    }
}

#[test]
#[ignore = "needs ../shared"]
fn run_prints_a_table_for_a_prompt() {
    let Some(sh) = shared() else { return };
    let dir = sh.join("fixtures/tiny/gpt_neox");
    let (ok, out, err) = engram(&[
        "run",
        dir.to_str().expect("utf8"),
        "--prompt",
        "The river flows",
        "--top-k",
        "3",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("rank") && out.contains("prob"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        3,
        "{out}"
    );
}

#[test]
#[ignore = "needs ../shared"]
fn bad_input_exits_with_a_clear_error() {
    let Some(sh) = shared() else { return };
    let dir = sh.join("fixtures/tiny/gpt2");
    let d = dir.to_str().expect("utf8");
    let (ok, _, err) = engram(&["run", d, "--prompt", ""]);
    assert!(!ok && err.contains("the prompt is empty"), "{err}");
    let long = "word ".repeat(100);
    let (ok, _, err) = engram(&["run", d, "--prompt", &long]);
    assert!(
        !ok && err.contains("longer than the model's context of 64"),
        "{err}"
    );
    let (ok, _, err) = engram(&["info", "/nonexistent/model"]);
    assert!(!ok && err.contains("/nonexistent/model"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn hub_ids_offline_give_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["info", "openai-community/gpt2"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run engram");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("local model directory"),
        "{err}"
    );
    assert!(engram_model::source::looks_like_hub_id("gpt2-xl"));
    assert!(engram_model::source::looks_like_hub_id(
        "openai-community/gpt2"
    ));
    assert!(!engram_model::source::looks_like_hub_id("./models/gpt2"));
    assert!(!engram_model::source::looks_like_hub_id("a/b/c"));
    assert!(!engram_model::source::looks_like_hub_id("model.gguf"));
}

/// `engram runs list|show|export|plot|compare` over a store written through the datasets API.
#[test]
fn runs_commands_work_on_a_stored_run() {
    use engram_datasets::figures::TraceCell;
    use engram_datasets::{RunParams, RunStore};

    let dir = std::env::temp_dir().join(format!("engram-cli-runs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = RunStore::open(dir.join("runs")).expect("store");
    #[derive(serde::Serialize)]
    struct Case {
        case_id: i64,
        es: f64,
        ps: f64,
    }
    let mut ids = Vec::new();
    for (k, shift) in [("eval-rome", 0.0), ("eval-memit", 0.1)] {
        let run = store
            .create(
                k,
                RunParams {
                    model: "tiny/gpt2".into(),
                    ..Default::default()
                },
            )
            .expect("run");
        let cases: Vec<Case> = (0..10)
            .map(|i| Case {
                case_id: i,
                es: 0.5 + shift + i as f64 * 0.01,
                ps: 0.3,
            })
            .collect();
        run.write_rows("cases", &cases).expect("cases");
        let cells: Vec<TraceCell> = (0..3)
            .flat_map(|t| {
                (0..4).map(move |l| TraceCell {
                    fact: "f".into(),
                    kind: "mlp".into(),
                    token_index: t,
                    token: format!("t{t}"),
                    is_subject: t == 1,
                    layer: l,
                    score: (t * l) as f64 * 0.1,
                })
            })
            .collect();
        run.write_rows("trace", &cells).expect("trace");
        ids.push(run.finish().expect("finish").id);
    }
    let runs = dir.join("runs");
    let r = runs.to_str().expect("utf8");
    let (ok, out, err) = engram(&["runs", "--runs", r, "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("eval-rome") && out.contains("eval-memit") && out.contains("cases,trace"),
        "{out}"
    );
    let (ok, out, err) = engram(&["runs", "--runs", r, "show", &ids[0]]);
    assert!(ok, "{err}");
    assert!(
        out.contains("table cases: 10 rows") && out.contains("es") && out.contains("mean 0.5450"),
        "{out}"
    );

    let tex = dir.join("t.tex");
    let (ok, _, err) = engram(&[
        "runs",
        "--runs",
        r,
        "export",
        &ids[0],
        "--format",
        "latex",
        "--out",
        tex.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    let tex = std::fs::read_to_string(&tex).expect("tex");
    assert!(
        tex.contains("es & 10 & 0.5450 $\\pm$") && !tex.contains("case\\_id &"),
        "{tex}"
    );
    let csv = dir.join("t.csv");
    let (ok, _, err) = engram(&[
        "runs",
        "--runs",
        r,
        "export",
        &ids[0],
        "--format",
        "csv",
        "--out",
        csv.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(&csv)
        .expect("csv")
        .starts_with("case_id,es,ps\n0,0.5,0.3"));

    let svg = dir.join("trace.svg");
    let (ok, _, err) = engram(&[
        "runs",
        "--runs",
        r,
        "plot",
        &ids[1],
        "--out",
        svg.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(&svg).expect("svg").contains("t1*"));

    let (ok, out, err) = engram(&["runs", "--runs", r, "compare", &ids[0], &ids[1]]);
    assert!(ok, "{err}");
    let es = out.lines().find(|l| l.starts_with("es ")).expect("es row");
    assert!(es.contains("0.5450") && es.contains("0.6450"), "{out}");

    let (ok, _, err) = engram(&["runs", "--runs", r, "show", "nope"]);
    assert!(!ok && err.contains("no run \"nope\""), "{err}");
}

/// The demo fact set as committed (`datasets/demo/facts.jsonl`).
fn demo_fact_records() -> Vec<engram_datasets::facts::UserFact> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/demo/facts.jsonl");
    engram_datasets::facts::load_user_facts(&path, engram_datasets::OnBadRecord::Fail)
        .expect("demo facts")
        .records
}

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("app/assets/demo-model")
}

/// The committed demo model knows its facts (≥95% top-1 over every phrasing), and the
/// logit lens shows at which layer the answer becomes top-1 (printed for the README).
#[test]
fn demo_model_knows_its_facts() {
    use engram_analysis::lens::{logit_lens, LensSite};
    use engram_datasets::facts::load_user_facts;
    use engram_datasets::OnBadRecord;
    use engram_model::device::Cpu;
    use engram_model::LanguageModel;

    let lm = LanguageModel::<Cpu>::load(&demo_dir(), &Default::default()).expect("demo model");
    let facts_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/demo/facts.jsonl");
    let facts = load_user_facts(&facts_path, OnBadRecord::Fail).expect("demo facts");
    assert_eq!(facts.records.len(), 450);
    let demo = engram_datasets::demo::demo_facts(engram_datasets::demo::DEMO_SUBJECTS, 0);
    let (right, total) = engram_editing::demo::fact_accuracy(&lm, &demo).expect("accuracy");
    let acc = right as f64 / total as f64;
    eprintln!("demo fact accuracy: {right}/{total} = {acc:.4}");
    assert!(acc >= 0.95, "demo accuracy {acc}");

    let mut layers = Vec::new();
    for f in &facts.records {
        let ids = lm.encode_prompt(&f.prompt).expect("encode");
        let target = lm.tokenizer.encode(&f.target).expect("target")[0];
        let lens = logit_lens(&lm.model, &ids, LensSite::Post).expect("lens");
        if let Some(l) = lens.first_top1_layer(ids.len() - 1, target) {
            layers.push(l as f64);
        }
    }
    let mean = layers.iter().sum::<f64>() / layers.len() as f64;
    eprintln!(
        "logit lens: answer first top-1 (and stays) at layer {mean:.2} on average over {} facts",
        layers.len()
    );
    assert!(layers.len() as f64 >= 0.95 * facts.records.len() as f64);
}

/// `train-demo` is reproducible from its seed: two short runs write the same facts and the
/// same weights up to the summation order of threaded reductions (a few f16 ulps after 8 steps).
#[test]
fn train_demo_is_reproducible() {
    let base = std::env::temp_dir().join(format!("engram-demo-repro-{}", std::process::id()));
    let mut weights = Vec::new();
    for run in ["a", "b"] {
        let dir = base.join(run);
        let report = engram_editing::demo::train_demo(
            &dir,
            &dir.join("facts.jsonl"),
            8,
            0,
            &mut |_, _, _| {},
        )
        .expect("train");
        assert_eq!(report.facts, 450);
        let bytes = std::fs::read(dir.join("model.safetensors")).expect("weights");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        let values: Vec<f32> = names
            .iter()
            .flat_map(|n| {
                st.tensor(n)
                    .expect("tensor")
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect::<Vec<_>>()
            })
            .collect();
        weights.push(values);
    }
    assert_eq!(weights[0].len(), weights[1].len());
    let diff = weights[0]
        .iter()
        .zip(&weights[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "two runs from one seed differ by {diff}");
    let committed = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/demo/facts.jsonl"),
    )
    .expect("facts");
    assert_eq!(
        std::fs::read_to_string(base.join("a/facts.jsonl")).expect("facts"),
        committed,
        "committed facts differ from the seed's"
    );
    std::fs::remove_dir_all(&base).ok();
}

/// `engram lens` prints the grid, stores a run, and `runs plot` draws it.
#[test]
fn lens_command_stores_a_plottable_run() {
    let dir = std::env::temp_dir().join(format!("engram-cli-lens-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runs = dir.join("runs");
    let model = demo_dir();
    let fact = demo_fact_records().swap_remove(0);
    let (ok, out, err) = engram(&[
        "lens",
        model.to_str().expect("utf8"),
        "--prompt",
        &fact.prompt,
        "--runs",
        runs.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    // The demo model knows the fact; the lens shows it at the last layer, last position.
    let last_row = out
        .lines()
        .find(|l| l.trim_start().starts_with("3 "))
        .expect("layer 3 row");
    assert!(
        last_row
            .split_whitespace()
            .last()
            .expect("cell")
            .starts_with(&format!("{}:", fact.target)),
        "{out}"
    );
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("stored as run "))
        .expect("run id")
        .split(' ')
        .next()
        .expect("id")
        .to_string();
    let store = engram_datasets::RunStore::open(&runs).expect("store");
    let info = store.find(&id).expect("run");
    assert_eq!(
        info.params.model_hash,
        engram_model::source::model_hash(&model).expect("hash")
    );
    assert!(info.params.model_hash.starts_with("fnv1a64:"));
    let svg = dir.join("lens.svg");
    let (ok, _, err) = engram(&[
        "runs",
        "--runs",
        runs.to_str().expect("utf8"),
        "plot",
        &id,
        "--out",
        svg.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(&svg)
        .expect("svg")
        .contains(&fact.target));
}

/// `demo` names the embedded demo model, from any working directory, offline.
#[test]
fn demo_alias_opens_the_embedded_model() {
    let dir = std::env::temp_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .current_dir(&dir)
        .args(["info", "demo", "--json"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run engram");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let on_disk = std::fs::read_to_string(demo_dir().join("config.json")).expect("config");
    let cfg: serde_json::Value = serde_json::from_str(&on_disk).expect("config json");
    assert_eq!(v["config"]["n_layers"], cfg["n_layer"]);
    assert_eq!(v["config"]["vocab_size"], cfg["vocab_size"]);
}

/// A reader that stops early (`engram ... | head`) ends engram quietly: no panic.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["info", "demo", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run engram");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

/// `engram trace` on the demo model: a fact set with one unknown fact, stored as a
/// run with its figures; and the bad inputs the issue names.
#[test]
fn trace_command_stores_a_run_and_rejects_bad_input() {
    let dir = std::env::temp_dir().join(format!("engram-cli-trace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let facts = dir.join("facts.csv");
    // Two true demo facts around one with a wrong answer (another profession).
    let demo = demo_fact_records();
    let (city, language, job) = (&demo[0], &demo[1], &demo[2]);
    let wrong = if job.target == "baker" {
        "pilot"
    } else {
        "baker"
    };
    let csv = [
        format!("{},{},{}", city.subject, city.prompt, city.target),
        format!("{},{},{wrong}", job.subject, job.prompt),
        format!(
            "{},{},{}",
            language.subject, language.prompt, language.target
        ),
    ];
    std::fs::write(
        &facts,
        format!("subject,prompt,target\n{}\n", csv.join("\n")),
    )
    .expect("write facts");
    let runs = dir.join("runs");
    let (ok, out, err) = engram(&[
        "trace",
        "demo",
        "--facts",
        facts.to_str().unwrap_or_default(),
        "--samples",
        "3",
        "--runs",
        runs.to_str().unwrap_or_default(),
    ]);
    assert!(ok, "{err}");
    // The wrong profession is skipped, as ROME skips facts the model does not know.
    assert!(out.contains("traced 2 facts, skipped 1"), "{out}");
    let run_dir = out
        .lines()
        .find_map(|l| l.strip_prefix("run ").and_then(|r| r.split(" in ").nth(1)))
        .map(PathBuf::from)
        .expect("run directory");
    for f in [
        "trace.parquet",
        "facts.parquet",
        "effects.parquet",
        "average.parquet",
        "effects.svg",
        "first-fact.png",
    ] {
        assert!(run_dir.join(f).is_file(), "missing {f}");
    }
    let r = runs.to_str().unwrap_or_default();
    let bad = [
        (
            vec![
                "--prompt",
                &job.prompt,
                "--subject",
                "Nobody",
                "--target",
                &job.target,
            ],
            "Nobody",
        ),
        (
            vec![
                "--prompt",
                &job.prompt,
                "--subject",
                &job.subject,
                "--target",
                "",
            ],
            "target is empty",
        ),
    ];
    for (args, needle) in bad {
        let mut all = vec!["trace", "demo", "--runs", r];
        all.extend(args);
        let (ok, _, err) = engram(&all);
        assert!(!ok && err.contains(needle), "{all:?}: {err}");
    }
    let wrong_csv = dir.join("wrong.csv");
    std::fs::write(
        &wrong_csv,
        format!(
            "subject,prompt,target\n{},{},{wrong}\n",
            job.subject, job.prompt
        ),
    )
    .expect("write");
    let (ok, _, err) = engram(&[
        "trace",
        "demo",
        "--facts",
        wrong_csv.to_str().unwrap_or_default(),
        "--runs",
        r,
    ]);
    assert!(!ok && err.contains("gets none of them right"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram patch`: symmetric subject replacement on the demo model, stored as a run;
/// a corrupted prompt of another length is refused with both lengths named.
#[test]
fn patch_command_stores_a_run() {
    let dir = std::env::temp_dir().join(format!("engram-cli-patch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runs = dir.join("runs");
    let r = runs.to_str().unwrap_or_default();
    // Demo names come in both word orders: the swapped name is another person,
    // with another city, and the same token length.
    let demo = demo_fact_records();
    let (fact, swapped) = (&demo[0], &demo[3]);
    let words: Vec<&str> = fact.subject.split(' ').rev().collect();
    assert_eq!(swapped.subject, words.join(" "));
    assert_ne!(fact.target, swapped.target);
    let base = [
        "patch",
        "demo",
        "--prompt",
        &fact.prompt,
        "--subject",
        &fact.subject,
        "--target",
        &fact.target,
        "--runs",
        r,
    ];
    let mut args = base.to_vec();
    args.extend([
        "--corrupt-subject",
        &swapped.subject,
        "--sites",
        "resid_pre,head_out",
        "--attribution",
    ]);
    let (ok, out, err) = engram(&args);
    assert!(ok, "{err}");
    let pair = format!("({:?} vs {:?})", fact.target, swapped.target);
    assert!(out.contains(&pair), "{out}");
    let run_dir = out
        .lines()
        .find_map(|l| l.strip_prefix("run ").and_then(|r| r.split(" in ").nth(1)))
        .map(PathBuf::from)
        .expect("run directory");
    assert!(run_dir.join("patch.parquet").is_file() && run_dir.join("patch.svg").is_file());
    // Attribution patching beside it: its own table and heatmaps, and its rank
    // correlation against the exact resid_pre patches.
    assert!(
        run_dir.join("attribution.parquet").is_file() && run_dir.join("attribution.png").is_file(),
        "{}",
        run_dir.display()
    );
    assert!(
        out.contains("Spearman rho against exact patching over")
            && out.contains("best estimated recovery"),
        "{out}"
    );
    let params: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("params.json")).unwrap_or_default(),
    )
    .expect("params");
    let rho = params["params"]["hyperparameters"]["attribution"]["spearman"]
        .as_f64()
        .expect("the stored rho");
    assert!(
        rho > 0.3,
        "Spearman rho {rho} over the demo's resid_pre sites"
    );
    // `engram bench patch`: both times, both floors and the rank correlation.
    let (ok, out, err) = engram(&[
        "bench",
        "patch",
        "demo",
        "--prompt",
        &fact.prompt,
        "--subject",
        &fact.subject,
        "--target",
        &fact.target,
        "--corrupt-subject",
        &swapped.subject,
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("exact (one row per site")
            && out.contains("attribution (2 forwards, 1 backward)")
            && out.contains("Spearman rho, estimate vs exact"),
        "{out}"
    );
    let mut args = base.to_vec();
    let longer = swapped.prompt.replace(" the city", " the old city");
    args.extend(["--corrupted-prompt", &longer]);
    let (ok, _, err) = engram(&args);
    assert!(
        !ok && err.contains("has 7 tokens") || err.contains("7 tokens"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram edit demo`: the new answer becomes top-1, the ledger is written, and
/// bad requests are refused with the offending input named.
#[test]
fn edit_command_rewrites_a_fact_and_refuses_bad_requests() {
    let dir = std::env::temp_dir().join(format!("engram-cli-edit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let demo = demo_fact_records();
    let (fact, other) = (&demo[0], &demo[3]);
    assert_ne!(fact.target, other.target);
    let ledger = dir.join("ledger.json");
    let saved = dir.join("saved");
    let run = |target: &str, subject: &str, save: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_engram"));
        cmd.env("ENGRAM_STATS_DIR", dir.join("stats")).args([
            "edit",
            "demo",
            "--prompt",
            &fact.prompt,
            "--subject",
            subject,
            "--target",
            target,
            "--ledger",
            ledger.to_str().unwrap_or_default(),
        ]);
        if save {
            cmd.arg("--save").arg(&saved);
        }
        let out = cmd.output().expect("run engram");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&other.target, &fact.subject, true);
    assert!(ok, "{err}");
    let after = out
        .lines()
        .find(|l| l.trim_start().starts_with("after"))
        .expect("after line");
    let first = after.split("->").nth(1).expect("answers");
    assert!(
        first
            .trim_start()
            .starts_with(&format!("{:?}", other.target)),
        "{out}"
    );
    assert!(ledger.is_file());
    assert!(out.contains("edited model saved as"), "{out}");
    assert!(
        saved.join("model.safetensors").is_file() && saved.join("engram-ledger.json").is_file()
    );
    let (ok, _, err) = run(&other.target, &fact.subject, true);
    assert!(!ok && err.contains("already exists"), "{err}");
    // `--ledger` continues the ledger: its edit is applied first, so the
    // edited answer is now the model's own.
    let (ok, _, err) = run(&other.target, &fact.subject, false);
    assert!(!ok && err.contains("already the model's answer"), "{err}");
    assert!(err.contains("1 edit(s) applied first"), "{err}");
    let (ok, _, err) = run(&other.target, "Nobody", false);
    assert!(!ok && err.contains("Nobody"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram eval counterfact demo`: edits each case on fresh weights, prints ROME's
/// metrics and EasyEdit's under their names, and stores the run.
#[test]
fn eval_command_scores_demo_cases() {
    let dir = std::env::temp_dir().join(format!("engram-cli-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .env("ENGRAM_STATS_DIR", dir.join("stats"))
        .args(["eval", "counterfact", "demo", "--n", "3", "--runs"])
        .arg(dir.join("runs"))
        .output()
        .expect("run engram");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    for name in [
        "ES ",
        "PS ",
        "NS ",
        "easyedit_reliability",
        "easyedit_locality",
        "S (harmonic",
    ] {
        assert!(stdout.contains(name), "{name} missing: {stdout}");
    }
    assert!(stdout.contains("3 cases evaluated"), "{stdout}");
    let run_dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run ").and_then(|r| r.split(" in ").nth(1)))
        .map(PathBuf::from)
        .expect("run directory");
    assert!(run_dir.join("cases.parquet").is_file() && run_dir.join("summary.parquet").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram eval zsre`: ROME's zsRE metric names, the edit raising efficacy, and
/// a journal that lets an interrupted run resume without redoing cases.
#[test]
fn eval_zsre_names_its_metrics_and_resumes_from_a_journal() {
    let dir = std::env::temp_dir().join(format!("engram-cli-zsre-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // zsRE records (MEND's form) from demo cases: question, rephrasing, a new
    // answer, and another person's fact as the unrelated question.
    let cases = engram_editing::jobs::setup::demo_eval_cases();
    let records: Vec<serde_json::Value> = cases
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, c)| {
            let other = &cases[(i + 7) % cases.len()];
            serde_json::json!({
                "subject": c.subject, "src": c.prompt, "rephrase": c.paraphrases[0],
                "answers": [c.target_new], "alt": c.target_new, "pred": "",
                "loc": other.prompt, "loc_ans": other.target_true,
            })
        })
        .collect();
    let data = dir.join("zsre.json");
    std::fs::write(&data, serde_json::to_string(&records).expect("json")).expect("write");
    let journal = dir.join("journal.jsonl");
    let run = |n: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_engram"))
            .env("ENGRAM_STATS_DIR", dir.join("stats"))
            .args(["eval", "zsre", "demo", "--n", n, "--data"])
            .arg(&data)
            .arg("--journal")
            .arg(&journal)
            .arg("--runs")
            .arg(dir.join("runs"))
            .output()
            .expect("run engram");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (first, _) = run("2");
    assert!(first.contains("2 cases evaluated"), "{first}");
    let (second, progress) = run("3");
    assert!(second.contains("3 cases evaluated"), "{second}");
    // The resumed run starts from the two journaled cases.
    assert!(
        progress.contains("cases: 2/3") && !progress.contains("cases: 0/3"),
        "{progress}"
    );
    assert_eq!(
        std::fs::read_to_string(&journal)
            .expect("journal")
            .lines()
            .count(),
        3
    );
    let mean = |name: &str| -> f64 {
        second
            .lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(name)).then(|| w.next().and_then(|x| x.parse().ok()))?
            })
            .unwrap_or_else(|| panic!("{name} missing: {second}"))
    };
    assert!(second.contains("zsre_specificity"), "{second}");
    assert!(!second.contains("S (harmonic"), "{second}");
    assert!(
        mean("zsre_efficacy") > mean("pre_zsre_efficacy") + 0.5,
        "{second}"
    );
    assert!(
        mean("zsre_paraphrase") > mean("pre_zsre_paraphrase"),
        "{second}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram memories` on the demo model: top memories, the fact lens,
/// knowledge neurons whose suppression lowers the answer, triggers over a
/// corpus file, and clear errors for bad memory names.
#[test]
fn memories_commands_run_on_the_demo_model() {
    let dir = std::env::temp_dir().join(format!("engram-cli-mem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let demo = demo_fact_records();
    let fact = &demo[0];
    let runs = dir.join("runs");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_engram"))
            .arg("memories")
            .args(args)
            .arg("--runs")
            .arg(&runs)
            .output()
            .expect("run engram");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&[
        "top",
        "demo",
        "--prompt",
        &fact.prompt,
        "--subject",
        &fact.subject,
        "--target",
        &fact.target,
        "--zero",
        "0:1,1:2",
        "--set",
        "2:5=3.5",
        "--generate",
        "4",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("layer 0: before the MLP target rank") && out.contains("memory"),
        "{out}"
    );
    assert!(out.contains("with 3 intervention(s)"), "{out}");
    assert!(
        out.contains("continuation without interventions: ")
            && out.contains("continuation with 3 intervention(s):"),
        "{out}"
    );
    let stored = out
        .lines()
        .find_map(|l| l.strip_prefix("stored as run "))
        .and_then(|l| l.split_once(" (").map(|(_, d)| d.trim_end_matches(')')))
        .map(PathBuf::from)
        .expect("the stored run");
    assert!(stored.join("continuations.parquet").is_file(), "{out}");
    let (ok, out, err) = run(&[
        "lens",
        "demo",
        "--prompt",
        &fact.prompt,
        "--target",
        &fact.target,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("is first top-1 after layer"), "{out}");
    let (ok, out, err) = run(&[
        "attribute",
        "demo",
        "--prompt",
        &fact.prompt,
        "--target",
        &fact.target,
    ]);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("suppressed"))
        .expect("effect line");
    let num = |key: &str| -> f64 {
        let rest = &line[line.find(key).expect(key) + key.len()..];
        rest.trim_start()
            .split(|c: char| c == ',' || c.is_whitespace())
            .next()
            .and_then(|x| x.parse().ok())
            .expect("number")
    };
    let clean = num("p clean");
    assert!(
        num("suppressed") < clean && num("amplified x2") > num("suppressed"),
        "{line}"
    );
    let corpus = dir.join("corpus.txt");
    let text: Vec<String> = demo
        .iter()
        .take(60)
        .map(|f| format!("{} {} .", f.prompt, f.target))
        .collect();
    std::fs::write(&corpus, text.join("\n\n")).expect("corpus");
    let (ok, out, err) = run(&[
        "triggers",
        "demo",
        "--corpus",
        corpus.to_str().unwrap_or_default(),
        "--layer",
        "1",
        "--top",
        "3",
        "--seq-len",
        "16",
        "--show",
        "5",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("tokens of") && out.contains("layer 1 memory 5 #0"),
        "{out}"
    );
    let (ok, _, err) = run(&["top", "demo", "--prompt", &fact.prompt, "--zero", "1-3"]);
    assert!(!ok && err.contains("LAYER:INDEX"), "{err}");
    let (ok, _, err) = run(&["values", "demo", "--layer", "0", "--memory", "99999"]);
    assert!(!ok && err.contains("memory 99999 does not exist"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram probe demo`: the relation, read at the subject's last token of
/// prompts that name it before the subject, is decodable well above the
/// control task; a second run reads the cached activations.
#[test]
fn probe_decodes_the_demo_relation_above_control() {
    let dir = std::env::temp_dir().join(format!("engram-cli-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // "The home of {} is the city of": the relation comes before the subject.
    let lines: Vec<String> = engram_datasets::demo::demo_facts(150, 0)
        .iter()
        .map(|f| {
            serde_json::json!({"prompt": f.prompts()[1], "subject": f.subject, "relation": f.relation})
                .to_string()
        })
        .collect();
    let data = dir.join("relations.jsonl");
    std::fs::write(&data, lines.join("\n")).expect("data");
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_engram"))
            .env("ENGRAM_ACTS_DIR", dir.join("acts"))
            .args([
                "probe",
                "demo",
                "--label",
                "relation",
                "--subject",
                "subject",
            ])
            .args(["--position", "subject", "--control", "--data"])
            .arg(&data)
            .arg("--runs")
            .arg(dir.join("runs"))
            .output()
            .expect("run engram");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run();
    assert!(first.contains("collected and cached"), "{first}");
    // Rows: layer, accuracy, [lo,hi], macro-F1, control, selectivity.
    let best = first
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 6 && w[0].parse::<usize>().is_ok()).then(|| {
                (
                    w[1].parse::<f64>().unwrap_or(0.0),
                    w[5].parse::<f64>().unwrap_or(0.0),
                )
            })
        })
        .fold((0.0, 0.0), |a: (f64, f64), b| if b.0 > a.0 { b } else { a });
    assert!(
        best.0 > 0.8 && best.1 > 0.2,
        "best layer (accuracy, selectivity) {best:?}: {first}"
    );
    let second = run();
    assert!(second.contains("read from the cache"), "{second}");
    let table = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with("     "))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        table(&first),
        table(&second),
        "the same seed gives the same numbers"
    );
    // --shard K/N probes every N-th layer; the shards merged equal the whole run.
    let id_of = |out: &str| {
        out.lines()
            .find_map(|l| l.split("stored as run ").nth(1))
            .and_then(|r| r.split(' ').next())
            .expect("run id")
            .to_string()
    };
    let shard = |k: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_engram"))
            .env("ENGRAM_ACTS_DIR", dir.join("acts"))
            .args([
                "probe",
                "demo",
                "--label",
                "relation",
                "--subject",
                "subject",
            ])
            .args(["--position", "subject", "--control", "--shard", k, "--data"])
            .arg(&data)
            .arg("--runs")
            .arg(dir.join("runs"))
            .output()
            .expect("run engram");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        id_of(&String::from_utf8_lossy(&out.stdout))
    };
    let (a, b) = (shard("1/2"), shard("2/2"));
    let runs = dir.join("runs");
    let (ok, out, err) = engram(&[
        "runs",
        "merge",
        &a,
        &b,
        "--runs",
        runs.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    let merged = out
        .lines()
        .find_map(|l| l.strip_prefix("merged 2 shards into run "))
        .and_then(|l| l.split(' ').next())
        .expect("merged id")
        .to_string();
    let store = engram_datasets::RunStore::open(&runs).expect("store");
    let read = |id: &str, t: &str| {
        let run = store.find(id).expect("run");
        store.read_table(&run, t).expect("table")
    };
    let whole = id_of(&second);
    for t in ["folds", "curve"] {
        let (x, y) = (read(&whole, t), read(&merged, t));
        assert!(x.equals_missing(&y), "{t}: whole\n{x}\nmerged\n{y}");
    }
    assert!(store
        .find(&merged)
        .expect("merged")
        .dir
        .join("probe.png")
        .is_file());
    // --regress: a numeric label gets ridge probes and R² per layer; a
    // label that is not a number is named in the error.
    let numeric: Vec<String> = engram_datasets::demo::demo_facts(150, 0)
        .iter()
        .map(|f| {
            serde_json::json!({"prompt": f.prompts()[1], "subject": f.subject,
                               "length": f.subject.len(), "relation": f.relation})
            .to_string()
        })
        .collect();
    let data2 = dir.join("lengths.jsonl");
    std::fs::write(&data2, numeric.join("\n")).expect("data");
    let regress = |label: &str| {
        Command::new(env!("CARGO_BIN_EXE_engram"))
            .env("ENGRAM_ACTS_DIR", dir.join("acts"))
            .args([
                "probe",
                "demo",
                "--subject",
                "subject",
                "--position",
                "subject",
            ])
            .args(["--regress", "--control", "--label", label, "--data"])
            .arg(&data2)
            .arg("--runs")
            .arg(dir.join("runs"))
            .output()
            .expect("run engram")
    };
    let out = regress("length");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("R² [95% CI]"),
        "{text}"
    );
    let out = regress("relation");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not a number"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// MEMIT and sequential ROME through `engram eval` on the demo: the curve of
/// metrics against edits, a sequential run resumed from its journal and
/// ledger, and `runs curve` drawing both runs.
#[test]
fn eval_memit_and_sequential_rome_draw_a_curve_and_resume() {
    let dir = std::env::temp_dir().join(format!("engram-cli-memit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runs = dir.join("runs");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_engram"))
            .env("ENGRAM_STATS_DIR", dir.join("stats"))
            .args(args)
            .arg("--runs")
            .arg(&runs)
            .output()
            .expect("run engram");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run_id = |stdout: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("run ").and_then(|r| r.split(' ').next()))
            .map(String::from)
            .expect("run id")
    };
    let (ok, memit, err) = run(&[
        "eval",
        "counterfact",
        "demo",
        "--method",
        "memit",
        "--n",
        "6",
        "--checkpoints",
        "3,6",
    ]);
    assert!(ok, "{err}");
    assert!(
        memit.contains("after     3 edits") && memit.contains("after     6 edits"),
        "{memit}"
    );
    assert!(memit.contains("6 cases evaluated"), "{memit}");
    // Same-subject cases are skipped, with the reason.
    let skipped: usize = memit
        .lines()
        .find_map(|l| l.split(" cases evaluated, ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("skipped count");
    assert!(skipped > 0, "{memit}");
    // Sequential r-ROME, interrupted after 2 cases, then resumed to 3.
    let journal = dir.join("seq.jsonl");
    let j = journal.to_str().expect("path");
    let seq = [
        "eval",
        "counterfact",
        "demo",
        "--method",
        "r-rome",
        "--sequential",
        "--distinct-subjects",
        "--fluency-tokens",
        "0",
        "--checkpoints",
        "1,3",
        "--journal",
        j,
    ];
    let (ok, _, err) = run(&[&seq[..], &["--n", "2"]].concat());
    assert!(ok, "{err}");
    // Each case's line carries its edit (no ledger rewritten per case).
    let text = std::fs::read_to_string(&journal).expect("journal");
    let with_edit = text.lines().filter(|l| l.contains("\"edit\":{")).count();
    assert_eq!(with_edit, 2, "{text}");
    assert!(!std::path::Path::new(&format!("{j}.ledger.json")).exists());
    let (ok, rome, err) = run(&[&seq[..], &["--n", "3"]].concat());
    assert!(ok, "{err}");
    assert!(err.contains("resumed: 2 edits restored"), "{err}");
    assert!(rome.contains("3 cases evaluated"), "{rome}");
    assert!(
        rome.contains("after     1 edits") && rome.contains("after     3 edits"),
        "{rome}"
    );
    // The curve's drift after one edit is that edit's own norm, which the
    // cases table has from the ROME factors (‖u‖‖r‖), not from the weights.
    let store = engram_datasets::RunStore::open(&runs).expect("store");
    let seq_run = store.find(&run_id(&rome)).expect("run");
    let col = |table: &str, name: &str| -> Vec<Option<f64>> {
        let df = store.read_table(&seq_run, table).expect("table");
        let c = df
            .column(name)
            .expect(name)
            .cast(&engram_datasets::polars::prelude::DataType::Float64);
        let c = c.expect("f64");
        c.f64().expect("f64").iter().collect()
    };
    let drift = col("curve", "drift_fro");
    let own = col("cases", "delta_fro")[0].expect("first edit's norm");
    assert_eq!(drift.len(), 2, "{drift:?}");
    let first = drift[0].expect("drift after one edit");
    assert!(
        (first - own).abs() <= 1e-4 * own,
        "drift {first} vs ‖ΔW‖ {own}"
    );
    assert!(col("curve", "drift_relative")
        .iter()
        .all(|d| d.is_some_and(|d| d > 0.0)));
    let figs = dir.join("figs");
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["runs", "curve", &run_id(&memit), &run_id(&rome), "--out"])
        .arg(&figs)
        .args(["--metrics", "ES,PS,NS,S,drift_relative,delta_fro"])
        .arg("--runs")
        .arg(&runs)
        .output()
        .expect("run engram");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for m in ["ES", "PS", "NS", "S", "drift_relative", "delta_fro"] {
        assert!(figs.join(format!("edits-{m}.png")).is_file(), "{m}");
    }
    // The drift on a log scale; a log metric not drawn is named.
    let log = |metrics: &str, out: &str| {
        run(&[
            "runs",
            "curve",
            &run_id(&memit),
            &run_id(&rome),
            "--out",
            dir.join(out).to_str().expect("utf8"),
            "--metrics",
            metrics,
            "--log-y",
            "drift_relative",
        ])
    };
    let (ok, out, err) = log("ES,drift_relative", "log");
    assert!(ok, "{err}");
    assert!(out.contains("edits-drift_relative.png"), "{out}");
    let linear = std::fs::read(figs.join("edits-drift_relative.png")).expect("png");
    let logged = std::fs::read(dir.join("log/edits-drift_relative.png")).expect("png");
    assert_ne!(linear, logged, "the log figure is another drawing");
    let (ok, _, err) = log("ES", "log2");
    assert!(
        !ok && err.contains("drift_relative") && err.contains("log scale"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--shard 1/2` and `--shard 2/2` take every other demo case; `engram runs
/// merge` joins them into one run whose per-case rows equal the unsharded
/// run's (timing columns aside), with the summary recomputed over all cases.
#[test]
fn eval_shards_merge_into_the_unsharded_run() {
    let dir = std::env::temp_dir().join(format!("engram-cli-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runs = dir.join("runs");
    let eval = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_engram"))
            .env("ENGRAM_STATS_DIR", dir.join("stats"))
            .args(["eval", "counterfact", "demo", "--n", "5", "--runs"])
            .arg(&runs)
            .args(extra)
            .output()
            .expect("run engram");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("run ").and_then(|r| r.split(" in ").next()))
            .expect("run id")
            .to_string()
    };
    let whole = eval(&[]);
    let first = eval(&["--shard", "1/2"]);
    let second = eval(&["--shard", "2/2"]);
    let store = engram_datasets::RunStore::open(&runs).expect("store");
    let (ok, out, err) = engram(&[
        "runs",
        "merge",
        &second,
        &first,
        "--runs",
        runs.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    let merged = out
        .lines()
        .find_map(|l| l.strip_prefix("merged 2 shards into run "))
        .and_then(|l| l.split(' ').next())
        .expect("merged run id")
        .to_string();
    let table = |id: &str, name: &str| {
        let run = store.find(id).expect("run");
        let df = store.read_table(&run, name).expect("table");
        df.drop_many(["edit_seconds"])
    };
    let (a, b) = (table(&whole, "cases"), table(&merged, "cases"));
    assert_eq!(a.height(), 5);
    assert!(a.equals_missing(&b), "unsharded:\n{a}\nmerged:\n{b}");
    let (a, b) = (table(&whole, "summary"), table(&merged, "summary"));
    assert!(a.equals_missing(&b), "unsharded:\n{a}\nmerged:\n{b}");
    // A shard of another study, or a shard given twice, is refused.
    let (ok, _, err) = engram(&[
        "runs",
        "merge",
        &first,
        &first,
        "--runs",
        runs.to_str().expect("utf8"),
    ]);
    assert!(!ok && err.contains("each of 1/2"), "{err}");
    let (ok, _, err) = engram(&[
        "runs",
        "merge",
        &whole,
        &first,
        "--runs",
        runs.to_str().expect("utf8"),
    ]);
    assert!(!ok && err.contains("not made with --shard"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `trace --facts … --shard K/N` traces every N-th fact with ν measured over
/// all of them; the shards merged equal the unsharded run: the per-fact rows,
/// and the averaged effects computed again over every fact.
#[test]
fn trace_shards_merge_into_the_unsharded_run() {
    let dir = std::env::temp_dir().join(format!("engram-cli-trace-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let facts = dir.join("facts.jsonl");
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/demo/facts.jsonl"),
    )
    .expect("demo facts");
    std::fs::write(&facts, text.lines().take(5).collect::<Vec<_>>().join("\n")).expect("write");
    let runs = dir.join("runs");
    let trace = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(["trace", "demo", "--samples", "2", "--facts"])
            .arg(&facts)
            .arg("--runs")
            .arg(&runs)
            .args(extra)
            .output()
            .expect("run engram");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("run ").and_then(|r| r.split(' ').next()))
            .expect("run id")
            .to_string()
    };
    let whole = trace(&[]);
    let first = trace(&["--shard", "1/2"]);
    let second = trace(&["--shard", "2/2"]);
    let r = runs.to_str().expect("utf8");
    let (ok, out, err) = engram(&["runs", "merge", &first, &second, "--runs", r]);
    assert!(ok, "{err}");
    let merged = out
        .lines()
        .find_map(|l| l.strip_prefix("merged 2 shards into run "))
        .and_then(|l| l.split(' ').next())
        .expect("merged run id")
        .to_string();
    let store = engram_datasets::RunStore::open(&runs).expect("store");
    let table = |id: &str, name: &str| {
        let run = store.find(id).expect("run");
        store.read_table(&run, name).expect("table")
    };
    for name in ["trace", "facts", "effects", "effects_by_group", "average"] {
        let (a, b) = (table(&whole, name), table(&merged, name));
        assert!(a.height() > 0, "{name} is empty");
        assert!(a.equals_missing(&b), "{name}: unsharded\n{a}\nmerged\n{b}");
    }
    let m = store.find(&merged).expect("merged");
    assert!(
        m.dir.join("average.png").is_file(),
        "the figures are drawn again"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sequential AlphaEdit batches through `engram eval --journal`, interrupted
/// after its second of three batches (the journal cut back to them, the
/// ledger already holding the third: a kill between the two writes), resume
/// to the same cases and curve as a run made at once, AlphaEdit's keys
/// restored with the ledger; resuming with another batch size is refused,
/// naming --batch.
#[test]
fn eval_batches_resume_from_their_journal() {
    let dir = std::env::temp_dir().join(format!("engram-cli-batch-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runs = dir.join("runs");
    let journal = dir.join("alphaedit.jsonl");
    let j = journal.to_str().expect("utf8");
    let eval = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_engram"))
            .env("ENGRAM_STATS_DIR", dir.join("stats"))
            .args([
                "eval",
                "counterfact",
                "demo",
                "--method",
                "alphaedit",
                "--sequential",
                "--fluency-tokens",
                "0",
                "--checkpoints",
                "2,4,6",
            ])
            .args(extra)
            .arg("--runs")
            .arg(&runs)
            .output()
            .expect("run engram");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stdout, stderr)
    };
    let id_of = |stdout: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("run ").and_then(|r| r.split(' ').next()))
            .map(String::from)
            .expect("run id")
    };
    let (ok, whole, err) = eval(&["--n", "6", "--batch", "2"]);
    assert!(ok, "{err}");
    // The null space each layer's updates live in is reported and stored.
    assert!(err.contains("AlphaEdit null space at layer 0: "), "{err}");
    let (ok, _, err) = eval(&["--n", "6", "--batch", "2", "--journal", j]);
    assert!(ok, "{err}");
    assert!(std::path::Path::new(&format!("{j}.ledger.json")).is_file());
    // Batch by batch: two rows, then the curve point; keep two batches.
    let text = std::fs::read_to_string(&journal).expect("journal");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 9, "{text}");
    assert!(lines[2].starts_with("{\"curve\"") && lines[5].starts_with("{\"curve\""));
    std::fs::write(&journal, lines[..6].join("\n") + "\n").expect("cut the journal");
    let (ok, _, err) = eval(&["--n", "6", "--batch", "3", "--journal", j]);
    assert!(!ok && err.contains("--batch"), "{err}");
    let (ok, resumed, err) = eval(&["--n", "6", "--batch", "2", "--journal", j]);
    assert!(ok, "{err}");
    assert!(
        err.contains("resumed: 4 cases in 2 batches")
            || resumed.contains("resumed: 4 cases in 2 batches"),
        "{resumed}\n{err}"
    );
    assert_same_eval(&runs, &id_of(&whole), &id_of(&resumed), 6, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two eval runs' `cases` (but their edit times) and `curve` tables hold the
/// same values, journalled rows' columns compared by name.
fn assert_same_eval(runs: &std::path::Path, a: &str, b: &str, cases: usize, points: usize) {
    let store = engram_datasets::RunStore::open(runs).expect("store");
    let table = |id: &str, name: &str| {
        let run = store.find(id).expect("run");
        let df = store.read_table(&run, name).expect("table");
        match name {
            "cases" => df.drop_many(["edit_seconds"]),
            _ => df,
        }
    };
    for name in ["cases", "curve"] {
        let (x, y) = (table(a, name), table(b, name));
        let want = if name == "cases" { cases } else { points };
        assert_eq!(x.height(), want, "{name}\n{x}");
        let names: Vec<String> = x.get_column_names().iter().map(|c| c.to_string()).collect();
        let y = y
            .select(names.iter().map(String::as_str))
            .expect("the same columns");
        let show = |s: &engram_datasets::polars::prelude::Column| {
            format!(
                "{:?}",
                s.as_materialized_series()
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
            )
        };
        for c in &names {
            let (p, q) = (x.column(c).expect("a"), y.column(c).expect("b"));
            assert!(
                p.equals_missing(q),
                "{name}.{c}: at once {}, resumed {}",
                show(p),
                show(q)
            );
        }
    }
}

/// Sequential FT-L through `engram eval --journal`, stopped after two of
/// three cases, resumes from the edits in the journal's lines (dense changes
/// packed bit for bit) to the same cases and curve as a run made at once.
#[test]
fn eval_single_edits_resume_from_their_journal() {
    let dir = std::env::temp_dir().join(format!("engram-ft-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let runs = dir.join("runs");
    let r = runs.to_str().expect("utf8").to_string();
    let journal = dir.join("ft.jsonl");
    let j = journal.to_str().expect("utf8").to_string();
    let args = [
        "eval",
        "counterfact",
        "demo",
        "--method",
        "ft-l",
        "--sequential",
        "--fluency-tokens",
        "0",
        "--checkpoints",
        "1,3",
        "--runs",
        &r,
    ];
    let eval = |extra: &[&str]| {
        let (ok, out, err) = engram(&[&args[..], extra].concat());
        assert!(ok, "{err}");
        let id = out
            .lines()
            .find_map(|l| l.strip_prefix("run ").and_then(|r| r.split(' ').next()))
            .map(String::from)
            .expect("run id");
        (id, err)
    };
    let (whole, _) = eval(&["--n", "3"]);
    eval(&["--n", "2", "--journal", &j]);
    // Edits journalled on another model are refused, naming it.
    let text = std::fs::read_to_string(&journal).expect("journal");
    let other = dir.join("other.jsonl");
    let (base, n) = (r#""edit_base":""#, 2);
    assert_eq!(text.matches(base).count(), n, "each line names its model");
    std::fs::write(&other, text.replace(base, r#""edit_base":"another model"#)).expect("write");
    let refused = ["--n", "3", "--journal", other.to_str().expect("utf8")];
    let (ok, _, err) = engram(&[&args[..], &refused[..]].concat());
    assert!(!ok && err.contains("another model"), "{err}");
    let (resumed, err) = eval(&["--n", "3", "--journal", &j]);
    assert!(err.contains("resumed: 2 edits restored"), "{err}");
    assert_same_eval(&runs, &whole, &resumed, 3, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram bench gemm`: each instruction set this CPU has (AVX-512, AVX2) and
/// (where the CPU has it) AMX on each shape, with their errors against an f64
/// product; a malformed shape is named before any work.
#[test]
fn bench_gemm_prints_every_kernel_and_checks_its_shapes() {
    let isas = engram_model::cpu::isas();
    if isas.is_empty() {
        eprintln!(
            "skipped: this CPU has neither AVX2/FMA nor AVX-512F, so there is no CPU GEMM to time"
        );
        return;
    }
    let (ok, out, err) = engram(&["bench", "gemm", "--shape", "40,70,50;33,64,64"]);
    assert!(ok, "{err}");
    for shape in ["40 x 70 x 50:", "33 x 64 x 64:"] {
        let line = out
            .lines()
            .find(|l| l.contains(shape))
            .unwrap_or_else(|| panic!("no {shape} in {out}"));
        for isa in &isas {
            assert!(line.contains(&format!(" {} ", isa.name())), "{line}");
        }
    }
    assert!(
        out.contains("AMX bf16x6") || out.contains("AMX: not on this CPU"),
        "{out}"
    );
    let (ok, _, err) = engram(&["bench", "gemm", "--shape", "40,70"]);
    assert!(!ok && err.contains("--shape \"40,70\""), "{err}");
}

/// `ENGRAM_CPU_GEMM`: `avx2` runs the kernels on AVX2 (the same predictions as
/// the default), `burn` on burn's ops; an unknown value is refused before any
/// work, naming it and the values allowed.
#[test]
fn engram_cpu_gemm_picks_the_kernels_and_refuses_unknown_values() {
    // `None`: the variable unset.
    let run = |value: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_engram"));
        cmd.env_remove("ENGRAM_CPU_GEMM");
        if let Some(v) = value {
            cmd.env("ENGRAM_CPU_GEMM", v);
        }
        let prompt = "Quinford Belvale lives in the city of";
        let out = cmd
            .args(["run", "demo", "--prompt", prompt, "--top-k", "3"])
            .output()
            .expect("engram runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(Some("fastest"));
    assert!(!ok, "an unknown value is refused");
    assert!(
        err.contains("ENGRAM_CPU_GEMM=\"fastest\"") && err.contains("allowed here: burn"),
        "{err}"
    );
    let (ok, default, err) = run(None);
    assert!(ok, "{err}");
    let (ok, burn, err) = run(Some("burn"));
    assert!(ok, "{err}");
    // (token, probability) of each ranked line.
    let ranked = |out: &str| -> Vec<(String, f64)> {
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first()?.parse::<usize>().ok()?;
                Some((f.get(1)?.to_string(), f.get(3)?.parse().ok()?))
            })
            .collect()
    };
    let same = |a: &str, b: &str| {
        let (a, b) = (ranked(a), ranked(b));
        a.len() == 3
            && a.len() == b.len()
            && a.iter()
                .zip(&b)
                .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() <= 1e-5)
    };
    assert!(same(&burn, &default), "burn:\n{burn}\ndefault:\n{default}");
    if engram_model::cpu::Isa::Avx2.available() {
        let (ok, avx2, err) = run(Some("avx2"));
        assert!(ok, "{err}");
        assert!(same(&avx2, &default), "avx2:\n{avx2}\ndefault:\n{default}");
    } else {
        let (ok, _, err) = run(Some("avx2"));
        assert!(!ok && err.contains("lacks AVX2"), "{err}");
    }
}

/// `engram memit --method alphaedit`: the batch lands in the ledger as
/// AlphaEdit entries carrying their keys, and a second batch on the same
/// ledger continues it; AlphaEdit's options without the method are refused.
#[test]
fn memit_alphaedit_keeps_its_keys_in_the_ledger() {
    let dir = std::env::temp_dir().join(format!("engram-cli-alphaedit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let demo = demo_fact_records();
    let other = |i: usize| demo[(i + 3) % demo.len()].target.clone();
    let write = |name: &str, idx: &[usize]| {
        let reqs: Vec<serde_json::Value> = idx
            .iter()
            .map(|&i| {
                serde_json::json!({"prompt": demo[i].prompt, "subject": demo[i].subject,
                                   "target": other(i)})
            })
            .collect();
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_string(&reqs).expect("json")).expect("write");
        p
    };
    let (a, b) = (write("a.json", &[0, 6]), write("b.json", &[12]));
    let ledger = dir.join("ledger.json");
    let run = |requests: &std::path::Path, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_engram"))
            .env("ENGRAM_STATS_DIR", dir.join("stats"))
            .env("ENGRAM_RUNS", dir.join("runs"))
            .args(["memit", "demo", "--requests"])
            .arg(requests)
            .args(extra)
            .arg("--ledger")
            .arg(&ledger)
            .output()
            .expect("run engram")
    };
    let out = run(&a, &["--method", "alphaedit"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("AlphaEdit: null spaces below 0.02 (layer 0 "),
        "{stdout}"
    );
    let entries = |p: &std::path::Path| -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p).expect("ledger")).expect("json");
        v["edits"].as_array().expect("edits").clone()
    };
    let first = entries(&ledger);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["method"], "alphaedit");
    let keys = first[0]["edit"]["cache_keys"]
        .as_array()
        .expect("cache_keys")
        .len();
    assert_eq!(keys % 2, 0, "two requests' keys");
    assert!(first[0]["norms"]["delta_fro"].as_f64().expect("norm") > 0.0);
    let out = run(&b, &["--method", "alphaedit"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 edit(s) applied first"));
    assert_eq!(entries(&ledger).len(), 2);
    // --runs stores the run there, not under $ENGRAM_RUNS.
    let elsewhere = dir.join("elsewhere");
    let out = run(
        &b,
        &[
            "--method",
            "alphaedit",
            "--runs",
            elsewhere.to_str().expect("path"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = std::fs::read_dir(elsewhere.join("alphaedit")).map_or(0, |d| d.count());
    assert_eq!(stored, 1, "one alphaedit run under --runs");
    let out = run(&b, &["--l2", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("add --method alphaedit"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram stats export` writes ROME's `.npz`; `edit --corpus FILE.npz` and
/// `memit --corpus DIR` read such files instead of text.
#[test]
fn statistics_files_export_and_feed_an_edit() {
    let dir = std::env::temp_dir().join(format!("engram-cli-npz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("npz")).expect("dir");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_engram"))
            .env("ENGRAM_STATS_DIR", dir.join("stats"))
            .env("ENGRAM_RUNS", dir.join("runs"))
            .args(args)
            .output()
            .expect("run engram");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {err}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), err)
    };
    // ROME's own name for the file, so that a folder of them serves MEMIT.
    let file = dir.join("npz/transformer.h.0.mlp.c_proj_float32_mom2_100000.npz");
    let f = file.to_str().expect("utf-8");
    let (out, _) = run(&["stats", "export", "demo", "--layer", "0", "--out", f]);
    assert!(out.contains("15223 key vectors"), "{out}");
    let fact = &demo_fact_records()[0];
    let other = &demo_fact_records()[3].target;
    let (_, err) = run(&[
        "edit",
        "demo",
        "--prompt",
        &fact.prompt,
        "--subject",
        &fact.subject,
        "--target",
        other,
        "--corpus",
        f,
    ]);
    assert!(
        err.contains("15223 key vectors from") && err.contains(".npz"),
        "{err}"
    );
    let requests = dir.join("r.json");
    let body =
        serde_json::json!([{"prompt": fact.prompt, "subject": fact.subject, "target": other}]);
    std::fs::write(&requests, body.to_string()).expect("requests");
    let folder = dir.join("npz");
    run(&[
        "memit",
        "demo",
        "--requests",
        requests.to_str().expect("utf-8"),
        "--corpus",
        folder.to_str().expect("utf-8"),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram edit --method ft-l`: the demo fact moves within the bound, the
/// run stores its losses, and the ledger holds a dense `ft-l` entry.
#[test]
fn edit_ft_l_fine_tunes_within_its_bound() {
    let dir = std::env::temp_dir().join(format!("engram-cli-ftl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let fact = &demo_fact_records()[0];
    let other = &demo_fact_records()[3].target;
    let ledger = dir.join("ledger.json");
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .env("ENGRAM_RUNS", dir.join("runs"))
        .args([
            "edit",
            "demo",
            "--method",
            "ft-l",
            "--prompt",
            &fact.prompt,
            "--subject",
            &fact.subject,
            "--target",
            other,
            "--ledger",
        ])
        .arg(&ledger)
        .output()
        .expect("run engram");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(bound 2.00e-2)"), "{stdout}");
    let prompt_line = stdout
        .lines()
        .find(|l| l.starts_with("prompt"))
        .expect("prompt probe");
    assert!(
        prompt_line.contains(&format!("-> {other:?}")),
        "{prompt_line}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ledger).expect("ledger")).expect("json");
    assert_eq!(v["edits"][0]["method"], "ft-l");
    // The dense change, packed: base64 of its f32 bytes.
    assert!(v["edits"][0]["edit"]["delta"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram eval --method ft-l` scores FT-L edits like any other method.
#[test]
fn eval_ft_l_scores_demo_cases() {
    let dir = std::env::temp_dir().join(format!("engram-cli-eval-ftl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .env("ENGRAM_RUNS", dir.join("runs"))
        .args([
            "eval",
            "counterfact",
            "demo",
            "--method",
            "ft-l",
            "--n",
            "3",
        ])
        .output()
        .expect("run engram");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3 cases evaluated") && stdout.contains("ES "),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Progress goes to stderr as plain count lines when stderr is not a terminal,
/// and `--quiet` silences it.
#[test]
fn progress_is_plain_off_a_terminal_and_quiet_silences_it() {
    let dir = std::env::temp_dir().join(format!("engram-cli-quiet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_engram"))
            .env("ENGRAM_RUNS", dir.join("runs"))
            .env("ENGRAM_STATS_DIR", dir.join("stats"))
            .args(["eval", "counterfact", "demo", "--n", "1"])
            .args(extra)
            .output()
            .expect("run engram");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let plain = run(&[]);
    // Whole lines for a log: no carriage returns, each count on a line of its own.
    assert!(plain.lines().any(|l| l == "cases: 1/1"), "{plain}");
    assert!(!plain.contains('\r'), "{plain}");
    let quiet = run(&["--quiet"]);
    assert!(
        !quiet.contains("cases:") && !quiet.contains("statistics"),
        "{quiet}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram steer build` stores a vector run; `apply` reads it back by id and
/// stores both continuations; a bad hook point is named.
#[test]
fn steer_build_and_apply_store_runs() {
    let dir = std::env::temp_dir().join(format!("engram-cli-steer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runs = dir.join("runs");
    let engram = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(args)
            .args(["--runs", runs.to_str().expect("utf-8")])
            .output()
            .expect("run engram")
    };
    let out = engram(&[
        "steer",
        "build",
        "demo",
        "--positive",
        "Quinford Belvale lives in the city of",
        "--negative",
        "Quinford Salin speaks the language",
        "--point",
        "blocks.2.hook_resid_pre",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("stored as run "))
        .and_then(|l| l.split_whitespace().next())
        .expect("a run id")
        .to_string();
    let out = engram(&[
        "steer",
        "apply",
        "demo",
        "--vector",
        &id,
        "--coef",
        "-2",
        "--prompt",
        "Zusin Belvale works as a",
        "--tokens",
        "4",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("coef 0:") && text.contains("coef -2:"),
        "{text}"
    );
    assert!(runs.join("steer-apply").is_dir());
    let out = engram(&[
        "steer",
        "build",
        "demo",
        "--positive",
        "a",
        "--negative",
        "b",
        "--point",
        "blocks.x.hook_nothing",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("--point"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
