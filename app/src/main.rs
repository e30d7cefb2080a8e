//! `engram-app`: open the workbench, on the demo model unless told otherwise.

use anyhow::{anyhow, Result};
use clap::Parser;
use engram_app::{AppOptions, EngramApp, PanelKind};

#[derive(Parser, Debug)]
#[command(name = "engram-app", about = "The Engram workbench", version)]
struct Args {
    /// Model to open: a HF directory, a .gguf file, a hub id, or `demo`
    /// (default: the last model opened, else the demo model).
    #[arg(long)]
    model: Option<String>,
    /// cpu, cuda[:N] (--features cuda), or wgpu, wgpu:N, wgpu:cpu (--features wgpu).
    #[arg(long)]
    device: Option<String>,
    /// f32, f16 or bf16.
    #[arg(long)]
    dtype: Option<String>,
    /// Start with this prompt.
    #[arg(long)]
    prompt: Option<String>,
    /// Start on this panel: model, playground, lens, attention, facts, locate, memories, probe, edit, runs.
    #[arg(long)]
    panel: Option<String>,
    /// The subject to trace on the Locate panel.
    #[arg(long)]
    subject: Option<String>,
    /// The answer to trace on the Locate panel.
    #[arg(long)]
    target: Option<String>,
    /// dark or light.
    #[arg(long)]
    theme: Option<String>,
    /// Check this fact set (known_1000, CounterFact, CSV/JSONL) once the model is loaded.
    #[arg(long)]
    facts: Option<std::path::PathBuf>,
    /// Do not read or write the saved settings.
    #[arg(long)]
    no_settings: bool,
    /// Open this stored run (an id, or a unique prefix or suffix) on the Runs panel.
    #[arg(long)]
    run: Option<String>,
    /// And compare it with this one.
    #[arg(long, requires = "run")]
    compare: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let panel = match &args.panel {
        Some(p) => Some(PanelKind::from_key(p).ok_or_else(|| {
            anyhow!("unknown panel `{p}`; use model, playground, lens, attention, facts, locate, memories, probe, edit or runs")
        })?),
        None => None,
    };
    let dark = match args.theme.as_deref() {
        None => None,
        Some("dark") => Some(true),
        Some("light") => Some(false),
        Some(t) => return Err(anyhow!("unknown theme `{t}`; use dark or light")),
    };
    let options = AppOptions {
        subject: args.subject,
        target: args.target,
        dark,
        model: args.model,
        device: args.device,
        dtype: args.dtype,
        prompt: args.prompt,
        panel,
        facts: args.facts,
        settings_path: if args.no_settings {
            None
        } else {
            engram_app::settings::default_path()
        },
        paths: Some(engram_model::Settings::from_vars(|k| std::env::var_os(k))),
        run: args.run,
        compare: args.compare,
    };
    if let Some(v) = std::env::var_os("ENGRAM_CPU_GEMM") {
        engram_model::cpu::choose(&v.to_string_lossy()).map_err(anyhow::Error::msg)?;
    }
    if let Some(p) = std::env::var_os("LD_LIBRARY_PATH") {
        engram_model::device::add_library_dirs(std::env::split_paths(&p));
    }
    let native = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("Engram")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([720.0, 480.0]),
        ..Default::default()
    };
    eframe::run_native(
        "Engram",
        native,
        Box::new(move |cc| Ok(Box::new(EngramApp::new(&cc.egui_ctx, options)))),
    )
    .map_err(|e| anyhow!("could not open the window: {e}"))
}
