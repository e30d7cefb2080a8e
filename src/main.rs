//! The `engram` command line: one file per command in [`cmd`] (its arguments,
//! the call to the job in `engram-analysis` / `engram-editing` / `engram-datasets`,
//! and the printing); this file parses the command line and reads the
//! environment into one [`engram_model::Settings`].

use std::path::Path;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use engram_model::backend::Dtype;
use engram_model::burn_tensor::backend::Backend;
use engram_model::LanguageModel;

/// `print!` to standard output that fails with an error, rather than a panic,
/// when the write fails (a full disk, `> /dev/full`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        anyhow::Context::context(
            write!(std::io::stdout().lock(), $($t)*),
            "writing to standard output",
        )?
    }};
}

/// `println!` that fails with an error, rather than a panic, when the write fails.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        anyhow::Context::context(
            writeln!(std::io::stdout().lock(), $($t)*),
            "writing to standard output",
        )?
    }};
}

mod cmd;

// Tensor work allocates and frees many large buffers; glibc returns them to the
// OS each time (page faults on every reuse), mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's option setter (in the library `mimalloc` links; its Rust binding
    /// sits behind a feature whose dependency is not vendored here).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e`.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// mimalloc hands freed pages back to the OS after 10 ms, and the kernel zeroes
/// them again on reuse (`clear_page_erms` was 19% of a ROME edit's profile). One
/// command is one job, so its pages are kept until it ends; `MIMALLOC_PURGE_DELAY`,
/// where set, still decides.
fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        #[allow(unsafe_code)]
        // SAFETY: a plain option store in the allocator this binary links.
        unsafe {
            mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}

/// The version, with the build's optional features: what `--version` prints.
#[cfg(all(feature = "cuda", feature = "wgpu"))]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (features: cuda, wgpu; devices: cpu, cuda, wgpu)"
);
#[cfg(all(feature = "cuda", not(feature = "wgpu")))]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (features: cuda; devices: cpu, cuda)"
);
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (features: wgpu; devices: cpu, wgpu)"
);
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (features: none; devices: cpu; build with --features cuda or wgpu for a GPU)"
);

#[derive(Parser)]
#[command(
    name = "engram",
    version = VERSION,
    about = "Locate and edit facts in transformer language models"
)]
struct Cli {
    /// No progress on stderr (errors and warnings still print).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// `--quiet`, set once before the command runs.
static QUIET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Command {
    /// Architecture, sizes, parameter count and hook points of a model.
    Info(cmd::info::InfoArgs),
    /// The most likely next tokens after a prompt, and optionally a generated continuation.
    Run(cmd::run::RunArgs),
    /// Benchmarks that print figures measured side by side.
    Bench(cmd::bench::BenchArgs),
    /// The logit lens for a prompt: each layer's residual decoded; stored as a `lens` run.
    Lens(cmd::lens::LensArgs),
    /// Causal tracing (ROME): corrupt the subject, restore one state at a time; stored as a run.
    Trace(cmd::trace::TraceArgs),
    /// Activation patching (clean into corrupted) for one fact; stored as a `patch` run.
    Patch(cmd::patch::PatchArgs),
    /// ROME: rewrite one fact (never the checkpoint on disk); stored as an `edit` run.
    Edit(cmd::edit::EditArgs),
    /// MEMIT: rewrite a batch of facts over several layers; stored as a `memit` run.
    Memit(cmd::memit::MemitArgs),
    /// Edit each case on fresh weights and score it (CounterFact conventions; stored as a run).
    Eval(cmd::eval::EvalArgs),
    /// Linear probes per layer with control tasks; stored as a `probe` run with its figure (CPU).
    Probe(cmd::probe::ProbeArgs),
    /// FFN key-value memories: values, top memories, triggers, knowledge neurons (CPU).
    Memories(cmd::memories::MemoriesArgs),
    /// Train the embedded demo model from its seed (CPU).
    TrainDemo(cmd::train_demo::TrainDemoArgs),
    /// Stored runs: list, show, export, plot, compare, curve, merge.
    Runs(cmd::runs::RunsArgs),
    /// Layer statistics as ROME/MEMIT's .npz files: export Engram's, check theirs.
    Stats(cmd::stats::StatsArgs),
    /// Steering vectors: build one from two prompt sets, apply it while generating; stored as runs.
    Steer(cmd::steer::SteerArgs),
    /// The shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(cmd::completions::CompletionsArgs),
    /// The CLI reference in Markdown (docs/reference/cli.md).
    HelpMarkdown(cmd::help_markdown::HelpMarkdownArgs),
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info(a) => cmd::info::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Lens(a) => cmd::lens::run(a),
        Command::Steer(a) => cmd::steer::run(a),
        Command::Trace(a) => cmd::trace::run(a),
        Command::Patch(a) => cmd::patch::run(a),
        Command::Edit(a) => cmd::edit::run(a),
        Command::Memit(a) => cmd::memit::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Probe(a) => cmd::probe::run(a),
        Command::Memories(a) => cmd::memories::run(a),
        Command::TrainDemo(a) => cmd::train_demo::run(a),
        Command::Runs(a) => cmd::runs::run(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Completions(a) => cmd::completions::run(a, Cli::command()),
        Command::HelpMarkdown(a) => cmd::help_markdown::run(a, Cli::command()),
    }
}

/// The update's key in ROME's edit.
#[derive(Clone, Copy, ValueEnum)]
enum KeyArg {
    Consistent,
    Original,
}

impl From<KeyArg> for engram_editing::KeyChoice {
    fn from(k: KeyArg) -> Self {
        match k {
            KeyArg::Consistent => Self::Consistent,
            KeyArg::Original => Self::Original,
        }
    }
}

/// Compute precision.
#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl From<DtypeArg> for Dtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F16 => Dtype::F16,
            DtypeArg::Bf16 => Dtype::BF16,
        }
    }
}

/// Where runs, caches and the demo model live, from the environment, once.
fn settings() -> &'static engram_model::Settings {
    static SETTINGS: std::sync::OnceLock<engram_model::Settings> = std::sync::OnceLock::new();
    SETTINGS.get_or_init(|| engram_model::Settings::from_vars(|k| std::env::var_os(k)))
}
/// Whether `model` names the demo model.
fn is_demo(model: &Path) -> bool {
    engram_model::source::is_demo(model, settings())
}
/// A job handle that shows progress on stderr, one line per stage.
fn stderr_control() -> engram_model::Control {
    use std::io::IsTerminal;
    if QUIET.get().copied().unwrap_or(false) {
        return engram_model::Control::new();
    }
    if std::io::stderr().is_terminal() {
        return bar_control();
    }
    // Not a terminal (a log, a pipe): plain count lines, as a log reader wants them:
    // a stage's first count, then at most one line per 5 s while it moves, and its last.
    let last: std::sync::Mutex<Option<(String, u64, std::time::Instant)>> =
        std::sync::Mutex::new(None);
    engram_model::Control::with_sink(move |p| {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        if p.total == 0 {
            // A stage without a count: say it on a line of its own.
            let _ = writeln!(err, "{}", p.stage);
            return;
        }
        let Ok(mut last) = last.lock() else { return };
        let due = match &*last {
            Some((stage, done, at)) if *stage == p.stage => {
                p.done >= p.total || (p.done != *done && at.elapsed().as_secs() >= 5)
            }
            _ => true,
        };
        if due {
            let _ = writeln!(err, "{}: {}/{}", p.stage, p.done, p.total);
            *last = Some((p.stage.clone(), p.done, std::time::Instant::now()));
        }
    })
}

/// Progress on a terminal: one `indicatif` bar per stage, with rate and ETA.
fn bar_control() -> engram_model::Control {
    use indicatif::{ProgressBar, ProgressStyle};
    let style = ProgressStyle::with_template(
        "{msg:>14} [{bar:30.cyan/blue}] {pos}/{len} {per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let current: std::sync::Mutex<Option<(String, ProgressBar)>> = std::sync::Mutex::new(None);
    engram_model::Control::with_sink(move |p| {
        let Ok(mut cur) = current.lock() else { return };
        if p.total == 0 {
            match &*cur {
                Some((_, bar)) => bar.println(&p.stage),
                None => eprintln!("{}", p.stage),
            }
            return;
        }
        let same = matches!(&*cur, Some((stage, bar)) if *stage == p.stage && bar.length() == Some(p.total));
        if !same {
            if let Some((_, bar)) = cur.take() {
                bar.finish_and_clear();
            }
            let bar = ProgressBar::new(p.total).with_style(style.clone());
            bar.set_message(p.stage.clone());
            *cur = Some((p.stage.clone(), bar));
        }
        if let Some((_, bar)) = &*cur {
            bar.set_position(p.done);
            if p.done >= p.total {
                // A finished stage leaves one plain line, not a bar that later output runs into.
                bar.finish_and_clear();
                eprintln!(
                    "{}: {}/{} in {:.1} s",
                    p.stage,
                    p.done,
                    p.total,
                    bar.elapsed().as_secs_f64()
                );
                *cur = None;
            }
        }
    })
}

fn parse_shard(text: &str) -> std::result::Result<engram_datasets::merge::Shard, String> {
    engram_datasets::merge::Shard::parse(text).map_err(|e| e.to_string())
}

fn load<B: Backend>(model: &Path, device: &B::Device) -> Result<LanguageModel<B>> {
    let path = engram_model::source::resolve_model(model, settings())?;
    let lm = LanguageModel::<B>::load(&path, device)
        .with_context(|| format!("loading model from {}", path.display()))?;
    for w in &lm.model.config.warnings {
        eprintln!("warning: {w}");
    }
    Ok(lm)
}

fn main() -> std::process::ExitCode {
    // `engram ... | head` ends quietly, as Unix tools do, rather than
    // panicking in `println!` on the closed pipe.
    #[cfg(unix)]
    #[allow(unsafe_code)]
    // SAFETY: called first, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_pages();
    if let Some(v) = std::env::var_os("ENGRAM_CPU_GEMM") {
        if let Err(e) = engram_model::cpu::choose(&v.to_string_lossy()) {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    }
    if let Some(p) = std::env::var_os("LD_LIBRARY_PATH") {
        engram_model::device::add_library_dirs(std::env::split_paths(&p));
    }
    let cli = Cli::parse();
    let _ = QUIET.set(cli.quiet);
    // Whatever is still buffered must reach stdout too, or the run failed.
    let done = dispatch(cli).and_then(|()| {
        use std::io::Write as _;
        std::io::stdout()
            .flush()
            .context("writing to standard output")
    });
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, leaving out a cause the text already holds
/// (library errors often name their source inline).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}
