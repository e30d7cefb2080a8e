//! The documentation against the binary: the CLI reference is what
//! `engram help-markdown` prints, and every `engram … demo …` command in a
//! ```sh block of README.md or docs/ runs as written (from the repository
//! root, with its runs and caches in a temporary directory).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engram(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .output()
        .expect("run engram");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_reference_is_what_help_markdown_prints() {
    let (ok, generated, err) = engram(&["help-markdown"]);
    assert!(ok, "{err}");
    let path = root().join("docs/reference/cli.md");
    let committed = std::fs::read_to_string(&path).expect("docs/reference/cli.md");
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{} differs from `engram help-markdown` from line {} on: regenerate it with \
             `cargo run --release -- help-markdown > docs/reference/cli.md`",
            path.display(),
            line + 1
        );
    }
    // It documents every command the parser has.
    for cmd in [
        "patch",
        "bench patch",
        "memories top",
        "steer apply",
        "completions",
    ] {
        assert!(generated.contains(&format!("`engram {cmd}`")), "{cmd}");
    }
}

#[test]
fn completions_and_version() {
    let (ok, out, err) = engram(&["completions", "bash"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("_engram()") && out.contains("help-markdown"),
        "{out}"
    );
    let (ok, out, _) = engram(&["completions", "fish"]);
    assert!(ok && out.contains("complete -c engram"), "{out}");
    let (ok, _, err) = engram(&["completions", "tcsh"]);
    assert!(!ok && err.contains("possible values"), "{err}");
    let (ok, out, err) = engram(&["--version"]);
    assert!(ok, "{err}");
    let features = if cfg!(feature = "cuda") {
        "cuda"
    } else {
        "none"
    };
    assert!(
        out.starts_with("engram ") && out.contains(&format!("features: {features}")),
        "{out}"
    );
}

/// Markdown files of the README and the book.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "md") {
                out.push(p);
            }
        }
    }
    let mut files = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut files);
    files
}

/// `engram …` lines inside ```sh blocks whose arguments name the demo model.
fn demo_commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(fence) = t.strip_prefix("```") {
            in_sh = !in_sh && matches!(fence, "sh" | "bash" | "console");
            continue;
        }
        if in_sh && t.starts_with("engram ") && t.split_whitespace().any(|w| w == "demo") {
            out.push(t.to_string());
        }
    }
    out
}

#[test]
fn documented_demo_commands_run_as_written() {
    let mut commands: Vec<(String, String)> = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).expect("markdown");
        let name = file
            .strip_prefix(root())
            .unwrap_or(&file)
            .display()
            .to_string();
        for c in demo_commands(&text) {
            if !commands.iter().any(|(_, seen)| *seen == c) {
                commands.push((name.clone(), c));
            }
        }
    }
    assert!(
        commands.len() >= 20,
        "only {} demo commands found in the docs",
        commands.len()
    );
    let tmp = std::env::temp_dir().join(format!("engram-docs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let bin = env!("CARGO_BIN_EXE_engram");
    // Two at a time: the commands are small and mostly single-threaded.
    let next = std::sync::Mutex::new(commands.iter());
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some((file, command)) = next.lock().ok().and_then(|mut i| i.next()) else {
                    return;
                };
                let line = format!("\"$ENGRAM_BIN\"{}", &command["engram".len()..]);
                let out = Command::new("sh")
                    .arg("-c")
                    .arg(&line)
                    .current_dir(root())
                    .env("ENGRAM_BIN", bin)
                    .env("ENGRAM_RUNS", tmp.join("runs"))
                    .env("XDG_CACHE_HOME", tmp.join("cache"))
                    .env_remove("ENGRAM_STATS_DIR")
                    .env_remove("ENGRAM_ACTS_DIR")
                    .env("HF_HUB_OFFLINE", "1")
                    .output()
                    .expect("sh runs");
                if !out.status.success() {
                    if let Ok(mut f) = failures.lock() {
                        f.push(format!(
                            "{file}: {command}\n{}",
                            String::from_utf8_lossy(&out.stderr)
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!(
        "{} documented demo commands, {} failed",
        commands.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
