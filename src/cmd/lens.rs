//! `engram lens`: the logit lens for a prompt, printed and stored as a `lens` run.

use super::prelude::*;

/// The logit lens for a prompt: each layer's residual decoded; stored as a `lens` run.
#[derive(Args)]
pub(crate) struct LensArgs {
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// Which residual stream: before the block, between attention and MLP, or after it.
    #[arg(long, value_enum, default_value = "post")]
    pub site: LensSiteArg,
    #[arg(long)]
    pub runs: Option<PathBuf>,
}

/// Where the lens reads the residual stream.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LensSiteArg {
    Pre,
    Mid,
    Post,
}

impl From<LensSiteArg> for engram_analysis::lens::LensSite {
    fn from(s: LensSiteArg) -> Self {
        match s {
            LensSiteArg::Pre => Self::Pre,
            LensSiteArg::Mid => Self::Mid,
            LensSiteArg::Post => Self::Post,
        }
    }
}

pub(crate) fn run(a: LensArgs) -> Result<()> {
    let site = a.site.into();
    let lm = load::<engram_model::Cpu>(&a.model, &Default::default())?;
    let store = engram_datasets::RunStore::open(a.runs.unwrap_or_else(|| settings().runs.clone()))?;
    let req = engram_analysis::jobs::lens::LensRequest {
        prompt: a.prompt,
        site,
        k: 1,
    };
    let report =
        engram_analysis::jobs::lens::run_lens(&lm, &a.model.display().to_string(), &req, &store)?;
    print_lens(&report, site)
}

/// The lens grid: top token per layer (rows) and position (columns).
pub(crate) fn print_lens(
    report: &engram_analysis::jobs::lens::LensReport,
    site: engram_analysis::lens::LensSite,
) -> Result<()> {
    let clip = |s: &str| -> String { s.chars().take(12).collect() };
    outln!("logit lens ({site:?}), top token per layer (rows) and position (columns):");
    out!("{:>6}", "");
    for t in &report.tokens {
        out!(" {:>12}", clip(t));
    }
    outln!();
    for layer in 0..report.n_layers {
        out!("{layer:>6}");
        for position in 0..report.tokens.len() {
            if let Some(c) = report.cell(position, layer) {
                out!(
                    " {:>12}",
                    clip(&format!("{}:{:.2}", c.top_token.trim(), c.prob))
                );
            }
        }
        outln!();
    }
    outln!(
        "stored as run {} ({})",
        report.run.id,
        report.run.dir.display()
    );
    Ok(())
}
