//! `engram probe`: linear probes per layer with control tasks, stored as a `probe` run.

use super::prelude::*;

/// Linear probes per layer with control tasks; stored as a `probe` run with its figure (CPU).
#[derive(Args)]
pub(crate) struct ProbeArgs {
    pub model: PathBuf,
    /// Labelled prompts: CSV with a header, a JSON array (e.g. known_1000.json) or JSON lines.
    #[arg(long)]
    pub data: PathBuf,
    /// The label field (e.g. relation_id).
    #[arg(long)]
    pub label: String,
    /// The text field.
    #[arg(long, default_value = "prompt")]
    pub text: String,
    /// The subject field: groups the folds, and `--position subject` reads its last token.
    #[arg(long)]
    pub subject: Option<String>,
    /// The hook site, e.g. resid_post, resid_pre, mlp_out, attn_out, mlp.hook_post.
    #[arg(long, default_value = "resid_post")]
    pub hook: String,
    /// Which token is a sample: the last, the subject's last, or every token.
    #[arg(long, value_enum, default_value = "last")]
    pub position: PositionArg,
    /// Probe every N-th layer, from the K-th: this machine's share of a study
    /// spread over N; `engram runs merge` joins the shards' layers.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<engram_datasets::merge::Shard>,
    /// Also fit Hewitt & Liang's control task and report selectivity.
    #[arg(long)]
    pub control: bool,
    #[arg(value_parser = crate::cmd::range::folds, long, default_value_t = 5)]
    pub folds: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep labels with at least this many samples.
    #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 30)]
    pub min_count: usize,
    /// The label is a number: fit ridge probes and report R² per layer.
    #[arg(long)]
    pub regress: bool,
    #[arg(long)]
    pub runs: Option<PathBuf>,
}

/// Where `engram probe` reads activations.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum PositionArg {
    Last,
    Subject,
    Every,
}

impl PositionArg {
    fn name(self) -> &'static str {
        match self {
            PositionArg::Last => "last",
            PositionArg::Subject => "subject",
            PositionArg::Every => "every",
        }
    }
}

pub(crate) fn run(a: ProbeArgs) -> Result<()> {
    let lm = load::<engram_model::Cpu>(&a.model, &Default::default())?;
    let store =
        engram_datasets::RunStore::open(a.runs.clone().unwrap_or_else(|| settings().runs.clone()))?;
    let args = engram_analysis::jobs::probe::ProbeArgs {
        data: &a.data,
        label: &a.label,
        text: &a.text,
        subject: a.subject.as_deref(),
        hook: &a.hook,
        position: a.position.name(),
        control: a.control,
        folds: a.folds,
        seed: a.seed,
        min_count: a.min_count,
        regress: a.regress,
        shard: a.shard,
    };
    run_probe(&lm, &a.model, &args, &store)
}

/// `engram probe`: probe, store, and print the per-layer table.
pub(crate) fn run_probe(
    lm: &LanguageModel<engram_model::Cpu>,
    model: &Path,
    a: &engram_analysis::jobs::probe::ProbeArgs<'_>,
    store: &engram_datasets::RunStore,
) -> Result<()> {
    let r = engram_analysis::jobs::probe::probe_report(
        lm,
        &model.display().to_string(),
        a,
        store,
        settings(),
        &stderr_control(),
    )?;
    outln!(
        "{} samples, {} labels of `{}` with >= {} samples ({} records skipped: subject not found)",
        r.samples,
        r.classes.len(),
        a.label,
        a.min_count,
        r.skipped
    );
    outln!(
        "activations {}",
        if r.cached {
            "read from the cache"
        } else {
            "collected and cached"
        }
    );
    outln!(
        "{:>6} {:>18} {:>10} {:>18} {:>12}",
        "layer",
        if a.regress {
            "R² [95% CI]"
        } else {
            "accuracy [95% CI]"
        },
        if a.regress { "MSE" } else { "macro-F1" },
        "control",
        "selectivity"
    );
    for l in &r.layers {
        let [acc, low, high, f1, control, selectivity] = l.figures();
        outln!(
            "{:>6} {acc:>7.3} [{low:.3},{high:.3}] {f1:>10.3} {control:>18.3} {selectivity:>12.3}",
            l.layer
        );
    }
    outln!(
        "{:.1} s; stored as run {} ({}), figure probe.svg / probe.png",
        r.seconds,
        r.run_id,
        r.run_dir.display()
    );
    Ok(())
}
