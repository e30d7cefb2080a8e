//! `engram memit`: one MEMIT batch over several layers, stored as a `memit` run.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct MemitArgs {
    pub model: PathBuf,
    /// Requests: CounterFact JSON (its requested rewrites) or subject/prompt/target
    /// records (CSV with a header, JSON, JSON lines).
    #[arg(long)]
    pub requests: PathBuf,
    /// Use the first N requests.
    #[arg(value_parser = crate::cmd::range::positive, long)]
    pub n: Option<usize>,
    /// Checked-in hyperparameters (demo, smollm2-135m, gpt2-xl, gpt-j-6b) or a JSON file.
    #[arg(long)]
    pub hparams: Option<String>,
    /// Edit these layers instead of the hyperparameters' (comma-separated, increasing).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
    /// λ, the weight of the key statistics.
    #[arg(value_parser = crate::cmd::range::non_negative, long)]
    pub lambda: Option<f64>,
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 100_000)]
    pub stats_tokens: usize,
    /// Requests per z optimisation batch.
    #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 16)]
    pub z_chunk: usize,
    /// Threads optimising z chunks at once (0: every core on the CPU, 1 on a GPU).
    #[arg(long, default_value_t = 0)]
    pub z_workers: usize,
    /// Show the top answers before and after for this many requests.
    #[arg(long, default_value_t = 5)]
    pub show: usize,
    /// MEMIT, or AlphaEdit (Fang et al. 2025): each update confined to the null
    /// space of the layer's key statistics, with earlier AlphaEdit batches' keys kept.
    #[arg(long, value_enum, default_value = "memit")]
    pub method: BatchMethod,
    /// AlphaEdit: eigenvalues of C below this span the null space (default:
    /// the hyperparameters', AlphaEdit's 2e-2).
    #[arg(value_parser = crate::cmd::range::non_negative, long)]
    pub nullspace_threshold: Option<f64>,
    /// AlphaEdit: the ridge term of its solve (default: the hyperparameters' `L2`).
    #[arg(value_parser = crate::cmd::range::non_negative, long)]
    pub l2: Option<f64>,
    #[command(flatten)]
    pub output: EditOutput,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// The run store (default: $ENGRAM_RUNS, else ./runs).
    #[arg(long)]
    pub runs: Option<PathBuf>,
}

/// How a batch's updates are solved.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BatchMethod {
    Memit,
    Alphaedit,
}

impl MemitArgs {
    /// The batch's hyperparameters, and AlphaEdit's two settings where it is chosen.
    fn hparams(
        &self,
    ) -> Result<(
        engram_editing::MemitHparams,
        Option<engram_editing::jobs::memit::AlphaEditOptions>,
    )> {
        use engram_editing::jobs::setup::{resolve_alphaedit_hparams, resolve_memit_hparams};
        if self.method == BatchMethod::Memit {
            if self.nullspace_threshold.is_some() || self.l2.is_some() {
                bail!("--nullspace-threshold and --l2 are AlphaEdit's; add --method alphaedit");
            }
            let hp = resolve_memit_hparams(&self.model, self.hparams.as_deref(), settings())?;
            return Ok((hp, None));
        }
        let hp = resolve_alphaedit_hparams(&self.model, self.hparams.as_deref(), settings())?;
        let options = engram_editing::jobs::memit::AlphaEditOptions {
            threshold: self.nullspace_threshold.unwrap_or(hp.nullspace_threshold),
            l2: self.l2.unwrap_or(hp.l2),
        };
        if !(options.threshold > 0.0 && options.l2 > 0.0) {
            bail!("--nullspace-threshold and --l2 must be above 0");
        }
        Ok((hp.memit, Some(options)))
    }
}

pub(crate) fn run(args: MemitArgs) -> Result<()> {
    let backend = args.backend;
    backend.run(MemitJob(args))
}

struct MemitJob(MemitArgs);

impl BackendJob for MemitJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        a.output.refuse_existing()?;
        let mut requests = engram_editing::jobs::setup::load_requests(&a.requests)?;
        if let Some(n) = a.n {
            requests.truncate(n);
        }
        let mut lm = load::<B>(&a.model, &device)?;
        // Refused before the statistics; its warnings print with the report.
        engram_editing::memit::check_batch(&lm, &requests)?;
        let (mut ledger, ledger_file) = a.output.ledger(&mut lm)?;
        let (mut hp, alphaedit) = a.hparams()?;
        if !a.layers.is_empty() {
            hp.layers = a.layers.clone();
        }
        if let Some(l) = a.lambda {
            hp.mom2_update_weight = l;
        }
        let shown: Vec<_> = requests.iter().take(a.show).cloned().collect();
        let show = |lm: &LanguageModel<B>, when: &str| -> Result<()> {
            for r in &shown {
                let top = lm.top_k(&r.prompt, 3)?;
                let cells: Vec<String> = top
                    .iter()
                    .map(|t| format!("{:?} {:.4}", t.token, t.prob))
                    .collect();
                outln!("{when:>6}  {:?} -> {}", r.prompt, cells.join(", "));
            }
            Ok(())
        };
        show(&lm, "before")?;
        let z_workers = engram_editing::jobs::setup::z_workers(a.z_workers, &a.backend.device);
        let (r, stats_seconds) = memit_batch(
            &mut lm,
            &a.model,
            &mut ledger,
            requests.clone(),
            hp.clone(),
            (a.corpus.as_deref(), a.stats_tokens),
            (a.z_chunk, z_workers),
            alphaedit,
            a.runs.as_deref(),
        )?;
        let (out, t) = (&r, r.times);
        show(&lm, "after")?;
        if let Some(o) = alphaedit {
            let dims: Vec<String> = r
                .null_space
                .iter()
                .map(|(l, q, d)| format!("layer {l} {q}/{d}"))
                .collect();
            outln!(
                "AlphaEdit: null spaces below {} ({}), L2 {}",
                o.threshold,
                dims.join(", "),
                o.l2
            );
        }
        let method = match alphaedit {
            Some(_) => "AlphaEdit".to_string(),
            None => format!("MEMIT (λ {})", hp.mom2_update_weight),
        };
        outln!(
            "{method}: {} requests over layers {:?}: mean |z - h| {}",
            requests.len(),
            hp.layers,
            out.residual_norms
                .iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" -> ")
        );
        outln!(
            "time: statistics {:.1} s, z {:.1} s, keys {:.1} s, solve {:.1} s, total {:.1} s",
            stats_seconds,
            t.z_seconds,
            t.keys_seconds,
            t.solve_seconds,
            t.total_seconds
        );
        outln!("stored as run {} ({})", r.run.id, r.run.dir.display());
        a.output.write(&ledger, ledger_file.as_ref(), &lm)?;
        Ok(())
    }
}

/// One MEMIT batch from the command line: C of each layer and the prefixes,
/// then the batch job, stored as a run. Also returns the statistics' seconds.
#[allow(clippy::too_many_arguments)]
pub(crate) fn memit_batch<B: Backend>(
    lm: &mut LanguageModel<B>,
    model: &Path,
    ledger: &mut engram_editing::Ledger<B>,
    requests: Vec<engram_editing::EditRequest>,
    hparams: engram_editing::MemitHparams,
    (corpus, stats_tokens): (Option<&Path>, usize),
    (z_chunk, z_workers): (usize, usize),
    alphaedit: Option<engram_editing::jobs::memit::AlphaEditOptions>,
    runs: Option<&Path>,
) -> Result<(engram_editing::jobs::memit::MemitReport, f64)> {
    use engram_editing::jobs::memit::{run_memit, MemitRequest};
    if requests.is_empty() {
        bail!("no requests to edit");
    }
    if z_chunk == 0 {
        bail!("--z-chunk 0: optimise at least one request per chunk");
    }
    for w in engram_editing::memit::check_batch(lm, &requests)? {
        eprintln!("warning: {w}");
    }
    let store = engram_datasets::RunStore::open(
        runs.map_or_else(|| settings().runs.clone(), Path::to_path_buf),
    )?;
    let ctl = stderr_control();
    let t = std::time::Instant::now();
    let (covs, groups) = engram_editing::jobs::setup::memit_setup(
        lm,
        &hparams,
        corpus,
        stats_tokens,
        settings(),
        &ctl,
    )?;
    let stats_seconds = t.elapsed().as_secs_f64();
    let req = MemitRequest {
        requests,
        hparams,
        z_chunk,
        z_workers,
        alphaedit,
    };
    let report = run_memit(
        lm,
        &model.display().to_string(),
        ledger,
        &req,
        &covs,
        &groups,
        &store,
        &ctl,
    )?;
    Ok((report, stats_seconds))
}
