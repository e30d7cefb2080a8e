//! `engram stats`: layer statistics in ROME/MEMIT's `.npz` form, to share them
//! with the Python tools (and to use theirs: pass a file or folder of them as
//! `--corpus` to `edit`, `memit` or `eval`).

use super::prelude::*;

#[derive(Args)]
pub(crate) struct StatsArgs {
    #[command(subcommand)]
    pub which: StatsCommand,
}

#[derive(Subcommand)]
pub(crate) enum StatsCommand {
    /// Write a layer's key statistics (computed, or from the cache) as ROME's `.npz`.
    Export {
        model: PathBuf,
        #[arg(long)]
        layer: usize,
        /// Text for the statistics (default for the demo model: its corpus).
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 100_000)]
        stats_tokens: usize,
        /// The `.npz` to write (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Read a ROME/MEMIT `.npz` and check it against a model's layer: width, count, trace.
    Import {
        file: PathBuf,
        model: PathBuf,
        #[arg(long)]
        layer: usize,
    },
}

pub(crate) fn run(a: StatsArgs) -> Result<()> {
    let lm = load::<engram_model::Cpu>(
        match &a.which {
            StatsCommand::Export { model, .. } | StatsCommand::Import { model, .. } => model,
        },
        &Default::default(),
    )?;
    match a.which {
        StatsCommand::Export {
            model,
            layer,
            corpus,
            stats_tokens,
            out,
        } => {
            if out.exists() {
                bail!("--out {}: already exists; choose a new file", out.display());
            }
            if layer >= lm.model.config.n_layers {
                bail!(
                    "--layer {layer}: the model has {} layers",
                    lm.model.config.n_layers
                );
            }
            let (text, name) =
                engram_editing::jobs::setup::corpus_text(&model, corpus.as_deref(), settings())?;
            let hash = engram_model::source::model_hash(&lm.source)?;
            let opts = engram_editing::StatsOptions {
                max_tokens: stats_tokens,
                ..engram_editing::StatsOptions::new(layer)
            };
            let ctl = stderr_control();
            let (stats, cached) = engram_editing::stats::cached_stats(
                &settings().stats,
                &lm.model,
                &lm.tokenizer,
                &text,
                &hash,
                &opts,
                &mut |done, total| ctl.tick("statistics", done, total),
            )?;
            engram_model::save::write_file_atomic(
                &out,
                &engram_editing::npz::stats_to_npz(&stats),
            )?;
            outln!(
                "layer {layer}: {} key vectors of {name}{} written to {} (mom2.mom2 {d} x {d}, float32)",
                stats.key.tokens,
                if cached { " (cached)" } else { "" },
                out.display(),
                d = stats.dim
            );
        }
        StatsCommand::Import { file, layer, .. } => {
            let hash = engram_model::source::model_hash(&lm.source)?;
            let (stats, name) =
                engram_editing::jobs::setup::npz_stats(&lm, &hash, layer, Some(&file))?
                    .context("give an .npz file or a folder of them")?;
            let trace: f64 = (0..stats.dim)
                .map(|i| stats.sum_outer[i * stats.dim + i])
                .sum::<f64>()
                / stats.key.tokens as f64;
            outln!(
                "{name}: layer {layer}, {d} x {d}, trace of E[k kᵀ] {trace:.4}; use it with --corpus {}",
                file.display(),
                d = stats.dim
            );
        }
    }
    Ok(())
}
