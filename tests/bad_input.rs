//! The bad-input matrix: every class of malformed input (broken configs and
//! checkpoints, out-of-range options, unknown names, broken runs, killed and
//! concurrent writers) ends with exit 1, or 2 for a usage error, and a
//! message naming what is wrong, never a panic (101), and loses nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory for one test, removed first.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("engram-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn shared() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    dir.is_dir().then_some(dir)
}

/// `engram ARGS` with its run store, statistics and cache under `dir`.
fn engram(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .env("ENGRAM_RUNS", dir.join("runs"))
        .env("ENGRAM_STATS_DIR", dir.join("stats"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run engram")
}

/// Assert exit `code` and that stderr carries every one of `words`.
#[track_caller]
fn fails(out: &Output, code: i32, words: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "a panic: {err}");
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    for w in words {
        assert!(err.contains(w), "{w:?} missing from: {err}");
    }
    err
}

#[track_caller]
fn succeeds(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A writable copy of the embedded demo model (GPT-2 architecture).
fn demo_copy(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).expect("model dir");
    for (name, bytes) in engram_model::source::DEMO_FILES {
        std::fs::write(model.join(name), bytes).expect("write demo file");
    }
    model
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    f(v.as_object_mut().expect("object"));
    std::fs::write(path, v.to_string()).expect("write");
}

/// Usage errors: numeric options outside their range exit 2 naming the
/// option and the range, before the model is even loaded.
#[test]
fn options_outside_their_range_are_usage_errors() {
    let dir = scratch("opts");
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["run", "demo", "--prompt", "a", "--top-p", "0"],
            "--top-p",
            "above 0 and at most 1",
        ),
        (
            &["run", "demo", "--prompt", "a", "--top-p", "2"],
            "--top-p",
            "above 0 and at most 1",
        ),
        (
            &["run", "demo", "--prompt", "a", "--top-p", "NaN"],
            "--top-p",
            "not a finite number",
        ),
        (
            &["run", "demo", "--prompt", "a", "--sample-top-k", "0"],
            "--sample-top-k",
            "at least 1",
        ),
        (
            &["run", "demo", "--prompt", "a", "--temperature=-1"],
            "--temperature",
            "at least 0",
        ),
        (
            &[
                "run",
                "demo",
                "--prompt",
                "a",
                "--generate",
                "18446744073709551615",
            ],
            "--generate",
            "at most 1048576",
        ),
        (
            &["memit", "demo", "--requests", "r.json", "--z-chunk", "0"],
            "--z-chunk",
            "at least 1",
        ),
        (
            &["probe", "demo", "--folds", "0"],
            "--folds",
            "from 2 to 100",
        ),
        (
            &["probe", "demo", "--folds", "101"],
            "--folds",
            "from 2 to 100",
        ),
        (
            &[
                "memories",
                "attribute",
                "demo",
                "--prompt",
                "a",
                "--target",
                "b",
                "--steps",
                "0",
            ],
            "--steps",
            "at least 1",
        ),
        (
            &[
                "memories",
                "attribute",
                "demo",
                "--prompt",
                "a",
                "--target",
                "b",
                "--t",
                "2",
            ],
            "--t",
            "from 0 to 1",
        ),
        (
            &["bench", "forward", "demo", "--iters", "0"],
            "--iters",
            "at least 1",
        ),
        (
            &["eval", "counterfact", "demo", "--batch", "0"],
            "--batch",
            "at least 1",
        ),
        (
            &["eval", "counterfact", "demo", "--n", "0"],
            "--n",
            "at least 1",
        ),
        (&["trace", "demo", "--n", "0"], "--n", "at least 1"),
        (
            &["trace", "demo", "--samples", "0"],
            "--samples",
            "at least 1",
        ),
        (
            &[
                "edit",
                "demo",
                "--prompt",
                "a b",
                "--subject",
                "a",
                "--target",
                "c",
                "--stats-tokens",
                "0",
            ],
            "--stats-tokens",
            "at least 1",
        ),
        (
            &["run", "demo", "--prompt", "a", "--top-k=-3"],
            "--top-k",
            "not a whole number",
        ),
        // numpy's RandomState takes 32-bit seeds.
        (
            &["trace", "demo", "--facts", "f.csv", "--seed", "4294967296"],
            "--seed",
            "not in 0..=4294967295",
        ),
    ];
    for (args, option, rule) in cases {
        fails(&engram(&dir, args), 2, &[option, rule]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Values that parse but name nothing, or cannot work, exit 1 before any work.
#[test]
fn values_naming_nothing_are_refused_before_work() {
    let dir = scratch("names");
    let prompt = "Quinford Belvale lives in the city of";
    fails(
        &engram(
            &dir,
            &[
                "memories", "top", "demo", "--prompt", prompt, "--zero", "99:0",
            ],
        ),
        1,
        &["memory 99:0 does not exist", "layers are 0..3"],
    );
    fails(
        &engram(
            &dir,
            &[
                "memories", "top", "demo", "--prompt", prompt, "--boost", "0:99999",
            ],
        ),
        1,
        &["memory 0:99999 does not exist"],
    );
    let corpus = dir.join("corpus.txt");
    std::fs::write(
        &corpus,
        "Quinford Belvale lives in the city of Quarnholm .\n",
    )
    .expect("corpus");
    let corpus_arg = corpus.to_str().expect("utf-8 path");
    fails(
        &engram(
            &dir,
            &[
                "memories", "triggers", "demo", "--corpus", corpus_arg, "--layer", "0", "--show",
                "99999",
            ],
        ),
        1,
        &["memory 0:99999 does not exist"],
    );
    let one_fact = [
        "trace",
        "demo",
        "--prompt",
        prompt,
        "--subject",
        "Quinford Belvale",
        "--target",
        "Quarnholm",
    ];
    for noise in ["--noise=-3sigma", "--noise=0", "--noise=NaN"] {
        fails(
            &engram(&dir, &[&one_fact[..], &[noise]].concat()),
            1,
            &["noise", "must be a finite number above 0"],
        );
    }
    // σ from another fact set means nothing beside a fixed scale; a missing set is named.
    fails(
        &engram(
            &dir,
            &[
                &one_fact[..],
                &["--noise", "0.1", "--noise-subjects", "f.csv"],
            ]
            .concat(),
        ),
        1,
        &["--noise-subjects", "--noise 0.1 is a fixed scale"],
    );
    let err = fails(
        &engram(
            &dir,
            &[&one_fact[..], &["--noise-subjects", "missing.json"]].concat(),
        ),
        1,
        &["missing.json", "No such file"],
    );
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the cause is said once: {err}"
    );
    // A target the word-level demo tokenizer cannot represent: refused
    // before the key statistics, naming the target and the unknown token.
    let err = fails(
        &engram(
            &dir,
            &[
                "edit",
                "demo",
                "--prompt",
                prompt,
                "--subject",
                "Quinford Belvale",
                "--target",
                "Xyzzyplugh",
            ],
        ),
        1,
        &[
            "\"Xyzzyplugh\" is not in the tokenizer's vocabulary",
            "`<unk>`",
        ],
    );
    assert!(!err.contains("statistics:"), "work started: {err}");
    // `runs plot --fact` on a table without facts.
    let lens = succeeds(&engram(&dir, &["lens", "demo", "--prompt", prompt]));
    let id = lens
        .lines()
        .find_map(|l| l.strip_prefix("stored as run "))
        .and_then(|l| l.split_whitespace().next())
        .expect("run id")
        .to_string();
    let svg = dir.join("x.svg");
    fails(
        &engram(
            &dir,
            &[
                "runs",
                "plot",
                &id,
                "--fact",
                "nobody",
                "--out",
                svg.to_str().expect("utf-8"),
            ],
        ),
        1,
        &["fact \"nobody\"", "has no facts to pick"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checkpoints whose config or data cannot be right: exit 1 naming the
/// file and the key or tensor, at load (also from `engram info`).
#[test]
fn broken_checkpoints_name_file_and_key() {
    let dir = scratch("ckpt");
    let model = demo_copy(&dir);
    let m = model.to_str().expect("utf-8").to_string();
    let config = model.join("config.json");
    let original = std::fs::read(&config).expect("config");
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("n_head", 5.into(), "5 heads do not divide the width"),
        ("n_head", 0.into(), "outside the plausible range"),
        (
            "n_positions",
            1_000_000_000_000u64.into(),
            "outside the plausible range",
        ),
        ("layer_norm_epsilon", (-1.0).into(), "at least 0"),
    ];
    for (key, value, rule) in cases {
        std::fs::write(&config, &original).expect("restore");
        edit_json(&config, |c| {
            c.insert(key.into(), value);
        });
        for cmd in [
            &["info", m.as_str()][..],
            &["run", m.as_str(), "--prompt", "a"],
        ] {
            fails(
                &engram(&dir, cmd),
                1,
                &["config.json", &format!("`{key}`"), rule],
            );
        }
    }
    // Special token ids outside the vocabulary: a warning, not silence.
    std::fs::write(&config, &original).expect("restore");
    edit_json(&config, |c| {
        c.insert("eos_token_id".into(), 50256.into());
    });
    let out = engram(&dir, &["info", &m]);
    succeeds(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("`eos_token_id` 50256"),
        "{err}"
    );
    std::fs::write(&config, &original).expect("restore");

    // NaN in a weight: named at load.
    let st = model.join("model.safetensors");
    let bytes = std::fs::read(&st).expect("weights");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut nan = bytes.clone();
    nan[8 + header_len..8 + header_len + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&st, &nan).expect("write");
    fails(
        &engram(&dir, &["run", &m, "--prompt", "a"]),
        1,
        &["model.safetensors", "NaN or infinite values"],
    );
    // Truncated data: the tensor past the end is named.
    std::fs::write(&st, &bytes[..bytes.len() - 100]).expect("write");
    fails(
        &engram(&dir, &["info", &m]),
        1,
        &["model.safetensors", "lies past the end of the data"],
    );
    std::fs::write(&st, &bytes).expect("restore");
    succeeds(&engram(&dir, &["info", &m]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GGUF file whose metadata is impossible (head counts 0, rotary dims 0):
/// the key is named, through the CLI.
#[test]
fn gguf_with_impossible_metadata_names_the_key() {
    let dir = scratch("gguf");
    // The fuzz seed (a 1-block llama), one u32 metadata value set to 0.
    let seed = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/gguf/tiny-llama.gguf"),
    )
    .expect("the GGUF seed");
    let zeroed = |key: &str| -> Vec<u8> {
        // A key is stored as its u64 length and bytes, then its u32 type (4: u32).
        let mut needle = (key.len() as u64).to_le_bytes().to_vec();
        needle.extend(key.as_bytes());
        needle.extend(4u32.to_le_bytes());
        let at = seed
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .unwrap_or_else(|| panic!("{key} in the seed"))
            + needle.len();
        let mut b = seed.clone();
        b[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        b
    };
    let path = dir.join("m.gguf");
    for (key, rule) in [
        ("llama.attention.head_count", "0 heads do not divide"),
        (
            "llama.attention.head_count_kv",
            "do not divide the 4 query heads",
        ),
        ("llama.rope.dimension_count", "must be even, positive"),
    ] {
        std::fs::write(&path, zeroed(key)).expect("gguf");
        fails(
            &engram(&dir, &["info", path.to_str().expect("utf-8")]),
            1,
            &["m.gguf", key, rule],
        );
    }
    std::fs::write(&path, &seed).expect("gguf");
    std::fs::write(
        dir.join("tokenizer.json"),
        engram_model::source::DEMO_FILES
            .iter()
            .find(|(n, _)| *n == "tokenizer.json")
            .expect("demo tokenizer")
            .1,
    )
    .expect("tokenizer");
    succeeds(&engram(&dir, &["info", path.to_str().expect("utf-8")]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config with `rope_theta` 0 would print NaN probabilities: refused at load.
#[test]
#[ignore = "needs ../shared"]
fn rope_theta_zero_is_refused_not_printed_as_nan() {
    let Some(shared) = shared() else { return };
    let dir = scratch("rope");
    let model = dir.join("llama");
    std::fs::create_dir_all(&model).expect("dir");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(shared.join("fixtures/tiny/llama").join(f), model.join(f)).expect("copy");
    }
    edit_json(&model.join("config.json"), |c| {
        c.remove("rope_parameters");
        c.insert("rope_theta".into(), 0.into());
    });
    let out = engram(
        &dir,
        &["run", model.to_str().expect("utf-8"), "--prompt", "hello"],
    );
    let err = fails(&out, 1, &["`rope_theta`", "finite base above 1"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("NaN"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A failed write to stdout is an error with exit 1, not a panic.
#[test]
fn a_full_stdout_is_an_error() {
    if !Path::new("/dev/full").exists() {
        eprintln!("SKIP: no /dev/full");
        return;
    }
    let dir = scratch("full");
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["info", "demo"])
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .stdout(std::fs::File::create("/dev/full").expect("/dev/full"))
        .output()
        .expect("run engram");
    fails(&out, 1, &["writing to standard output", "No space left"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run with a broken `params.json` or a corrupt table is listed and shown
/// with what is broken; the table's error names its file.
#[test]
fn broken_runs_are_shown_with_what_is_broken() {
    let dir = scratch("runs");
    let out = succeeds(&engram(
        &dir,
        &[
            "lens",
            "demo",
            "--prompt",
            "Quinford Belvale lives in the city of",
        ],
    ));
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("stored as run "))
        .and_then(|l| l.split_whitespace().next())
        .expect("run id")
        .to_string();
    let run_dir = out
        .lines()
        .find_map(|l| l.strip_prefix("stored as run "))
        .and_then(|l| l.split_once(" (")?.1.strip_suffix(')'))
        .map(PathBuf::from)
        .expect("run directory");
    let table = std::fs::read_dir(&run_dir)
        .expect("run dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a parquet table");
    std::fs::write(&table, b"PAR1 not really parquet PAR1").expect("corrupt");
    let name = table
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    let stem = name.trim_end_matches(".parquet");
    let csv = dir.join("t.csv");
    fails(
        &engram(
            &dir,
            &[
                "runs",
                "export",
                &id,
                "--table",
                stem,
                "--format",
                "csv",
                "--out",
                csv.to_str().expect("utf-8"),
            ],
        ),
        1,
        &[&name],
    );
    assert!(!csv.exists(), "a failed export left a file");
    // params.json broken: still listed, and `show` says what is broken.
    std::fs::write(run_dir.join("params.json"), b"{ not json").expect("break");
    let list = succeeds(&engram(&dir, &["runs", "list"]));
    assert!(list.contains(&id), "{list}");
    let shown = engram(&dir, &["runs", "show", &id]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&shown.stdout),
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(
        !text.contains("panicked") && text.contains("params.json"),
        "{text}"
    );
    assert!(!text.contains("does not exist"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two edits writing one `--ledger` at once: both edits kept, or the later
/// writer refuses with a clear error; never a silent loss. Then a third,
/// sequential edit continues the ledger.
#[test]
fn concurrent_ledger_writers_lose_no_edit() {
    let dir = scratch("ledger");
    let ledger = dir.join("edits.json");
    let edit = |subject: &str, target: &str| {
        Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(["edit", "demo", "--prompt"])
            .arg(format!("{subject} lives in the city of"))
            .args(["--subject", subject, "--target", target, "--ledger"])
            .arg(&ledger)
            .env("ENGRAM_RUNS", dir.join("runs"))
            .env("ENGRAM_STATS_DIR", dir.join("stats"))
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .spawn()
            .expect("spawn engram")
    };
    let count = || -> usize {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&ledger).expect("ledger")).expect("json");
        v["edits"].as_array().expect("edits").len()
    };
    // The statistics are cached first, so that both edits race on the ledger.
    succeeds(&engram(
        &dir,
        &[
            "edit",
            "demo",
            "--prompt",
            "Quinford Belvale lives in the city of",
            "--subject",
            "Quinford Belvale",
            "--target",
            "Belmoth",
        ],
    ));
    let a = edit("Quinford Belvale", "Tirravel")
        .wait_with_output()
        .expect("a");
    assert!(a.status.success());
    assert_eq!(count(), 1);
    let (b, c) = (
        edit("Belvale Quinford", "Oskadun"),
        edit("Quinford Belvale", "Lirrow"),
    );
    let (b, c) = (
        b.wait_with_output().expect("b"),
        c.wait_with_output().expect("c"),
    );
    for o in [&b, &c] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{err}");
    }
    match (b.status.success(), c.status.success()) {
        (true, true) => assert_eq!(count(), 3, "both succeeded, so both edits are kept"),
        (true, false) | (false, true) => assert_eq!(count(), 2),
        (false, false) => panic!("both writers failed"),
    }
    // A sequential edit continues whatever is there.
    let before = count();
    let d = edit("Belvale Quinford", "Venmarch")
        .wait_with_output()
        .expect("d");
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    assert_eq!(count(), before + 1);
    // Only the ledger and its lock file: no temporary left behind.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with('.') || n.contains("edits"))
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n == "edits.json" || n == "edits.json.lock"),
        "{names:?}"
    );
    // A directory as the ledger: refused before the edit.
    let out = engram(
        &dir,
        &[
            "edit",
            "demo",
            "--prompt",
            "Quinford Belvale lives in the city of",
            "--subject",
            "Quinford Belvale",
            "--target",
            "Belmoth",
            "--ledger",
            dir.to_str().expect("utf-8"),
        ],
    );
    let err = fails(&out, 1, &["is a directory"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("stored as run"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `eval --journal` killed at several moments, then resumed each time: every
/// resume works and the finished run holds each case once.
#[test]
fn a_killed_journal_always_resumes_and_keeps_finished_cases() {
    let dir = scratch("journal");
    let journal = dir.join("journal.jsonl");
    let n = "6";
    let eval = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_engram"));
        c.args(["eval", "counterfact", "demo", "--n", n, "--journal"])
            .arg(&journal)
            .env("ENGRAM_RUNS", dir.join("runs"))
            .env("ENGRAM_STATS_DIR", dir.join("stats"))
            .env("XDG_CACHE_HOME", dir.join("cache"));
        c
    };
    // Kills at staggered moments (the statistics, mid-case, mid-line where
    // the timing falls), each followed by a resume that is killed in turn.
    for ms in [300u64, 900, 1500, 2200] {
        let mut child = eval()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    // A torn last line as a kill mid-write leaves it.
    if journal.is_file() {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .expect("journal");
        f.write_all(b"{\"case_id\": 12, \"efficacy_succ")
            .expect("torn");
    }
    let out = eval().output().expect("resume");
    let stdout = succeeds(&out);
    assert!(stdout.contains(&format!("{n} cases evaluated")), "{stdout}");
    let text = std::fs::read_to_string(&journal).expect("journal");
    let mut ids: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line whole"))
        .filter_map(|v| v.get("case_id").and_then(serde_json::Value::as_u64))
        .collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "a case journaled twice: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}
