//! `engram eval`: edit each benchmark case and score it (CounterFact and zsRE conventions), stored as an `eval` run.

use super::prelude::*;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum BenchArg {
    Counterfact,
    Zsre,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ConventionArg {
    Rome,
    Easyedit,
}

/// The editor an evaluation runs.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MethodArg {
    Rome,
    RRome,
    Memit,
    /// AlphaEdit (Fang et al. 2025): MEMIT's batches within each layer's null space.
    Alphaedit,
    /// FT-L: fine-tune one layer's MLP output projection within an L∞ bound.
    #[value(name = "ft-l")]
    FtL,
}

impl MethodArg {
    /// MEMIT and AlphaEdit edit in batches; ROME and r-ROME one fact at a time.
    fn batched(self) -> bool {
        matches!(self, Self::Memit | Self::Alphaedit)
    }
}

#[derive(Args)]
pub(crate) struct EvalArgs {
    pub benchmark: BenchArg,
    pub model: PathBuf,
    /// CounterFact JSON (ROME's or EasyEdit's form) or zsRE JSON (MEND's form).
    /// Default for the demo model with counterfact: its facts.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// zsRE only: which target the edit teaches and how metrics are named
    /// (rome: answers[0], zsre_efficacy/_paraphrase/_specificity; easyedit: alt,
    /// easyedit_reliability/_generalization/_locality).
    #[arg(long, value_enum, default_value = "rome")]
    pub convention: ConventionArg,
    /// Tokens generated per prompt for the generation-entropy fluency measure
    /// (ROME's top-5 sampling). Default: 100 with --sequential, else off (0).
    #[arg(value_parser = crate::cmd::range::tokens, long)]
    pub fluency_tokens: Option<usize>,
    /// Append each finished case (MEMIT, AlphaEdit: each finished batch) to
    /// this JSON-lines file and skip the cases already in it: an interrupted
    /// run picks up where it stopped, with its edits where --sequential.
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Evaluate this many usable cases (cases the edit refuses are skipped and counted).
    #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 50)]
    pub n: usize,
    /// rome (ROME's code: the plain prompt's key in the update), r-rome (the
    /// consistent key, Gupta et al. 2024) or memit.
    #[arg(long, value_enum, default_value = "r-rome")]
    pub method: MethodArg,
    #[arg(long)]
    pub hparams: Option<String>,
    /// ROME's key, overriding the one --method implies.
    #[arg(long, value_enum)]
    pub key: Option<KeyArg>,
    /// Keep every edit applied (sequential editing) instead of reverting after
    /// each case; with memit, batches are applied cumulatively.
    #[arg(long)]
    pub sequential: bool,
    /// Skip cases whose subject an earlier case edits (MEMIT always does), so
    /// that ROME runs take the same cases as MEMIT runs.
    #[arg(long)]
    pub distinct_subjects: bool,
    /// Evaluate exactly the cases of this earlier run (its case ids, in order),
    /// e.g. ROME on a MEMIT run's cases.
    #[arg(long)]
    pub cases_from: Option<String>,
    /// Take every N-th case, starting at the K-th: this machine's share of a
    /// study spread over N (a Slurm array task, an indexed job). `--n` is the
    /// whole study's; `engram runs merge` joins the shards' runs.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<engram_datasets::merge::Shard>,
    /// MEMIT: requests per batch (default: all --n cases in one batch).
    #[arg(value_parser = crate::cmd::range::positive, long)]
    pub batch: Option<usize>,
    /// Numbers of edits at which every case edited so far is scored again
    /// (the metric-against-edits curve), e.g. 1,10,50,100,200.
    #[arg(value_parser = crate::cmd::range::positive, long, value_delimiter = ',')]
    pub checkpoints: Vec<usize>,
    /// MEMIT: requests per z optimisation batch.
    #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 16)]
    pub z_chunk: usize,
    /// MEMIT: threads optimising z chunks at once (0: every core on the CPU, 1 on a GPU).
    #[arg(long, default_value_t = 0)]
    pub z_workers: usize,
    /// MEMIT: a JSON-lines cache of z vectors, reused by later runs.
    #[arg(long)]
    pub z_cache: Option<PathBuf>,
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 100_000)]
    pub stats_tokens: usize,
    #[arg(long)]
    pub runs: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub(crate) fn run(args: EvalArgs) -> Result<()> {
    let backend = args.backend;
    backend.run(EvalJob(args))
}

struct EvalJob(EvalArgs);

impl BackendJob for EvalJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_editing::jobs::evaluate::{
            run_eval, zsre_cases, BenchCase, EvalMethod, EvalOptions, EvalRequest, ZsreConvention,
        };
        let a = self.0;
        if !a.method.batched() && (a.batch.is_some() || a.z_cache.is_some()) {
            bail!("--batch and --z-cache are for --method memit");
        }
        let conv = match a.convention {
            ConventionArg::Rome => ZsreConvention::Rome,
            ConventionArg::Easyedit => ZsreConvention::EasyEdit,
        };
        let bench = match a.benchmark {
            BenchArg::Counterfact => "counterfact",
            BenchArg::Zsre => "zsre",
        };
        let mut lm = load::<B>(&a.model, &device)?;
        let cf = |v: Vec<engram_editing::eval::EvalCase>| -> Vec<BenchCase> {
            v.into_iter().map(BenchCase::CounterFact).collect()
        };
        let skipped_records = |skipped: Vec<String>| {
            for e in skipped {
                eprintln!("skipped record: {e}");
            }
        };
        let cases = match (a.benchmark, &a.data) {
            (BenchArg::Counterfact, Some(p)) => {
                let (cases, skipped) = engram_editing::jobs::setup::counterfact_cases(p)?;
                skipped_records(skipped);
                cf(cases)
            }
            (BenchArg::Counterfact, None) if is_demo(&a.model) => {
                cf(engram_editing::jobs::setup::demo_eval_cases())
            }
            (BenchArg::Zsre, Some(p)) => {
                let (cases, skipped) = zsre_cases(p, conv)?;
                skipped_records(skipped);
                cases
            }
            (_, None) => bail!(
                "--data FILE ({bench} JSON) is needed for {}",
                a.model.display()
            ),
        };
        // --cases-from RUN: exactly that run's cases, in its order.
        let cases = match &a.cases_from {
            Some(id) => {
                let store = engram_datasets::RunStore::open(
                    a.runs.clone().unwrap_or_else(|| settings().runs.clone()),
                )?;
                let run = store.find(id)?;
                let ids: Vec<u64> = run
                    .params
                    .record_ids
                    .iter()
                    .filter_map(|r| r.trim_matches('"').parse().ok())
                    .collect();
                if ids.is_empty() {
                    bail!("run {id} lists no case ids");
                }
                let picked: Vec<BenchCase> = ids
                    .iter()
                    .filter_map(|i| cases.iter().find(|c| c.id() == *i).cloned())
                    .collect();
                if picked.len() != ids.len() {
                    bail!(
                        "{} of run {id}'s {} cases are not in this data",
                        ids.len() - picked.len(),
                        ids.len()
                    );
                }
                picked
            }
            None => cases,
        };
        let (cases, n) = match a.shard {
            Some(shard) => {
                if a.sequential || a.method.batched() || a.journal.is_some() {
                    bail!(
                        "--shard {shard}: shards edit on fresh weights, one case at a time (ROME or r-ROME, \
                         not --sequential, --method memit or --journal), so that their runs join into the unsharded one"
                    );
                }
                (shard.select(cases), shard.share_of(a.n))
            }
            None => (cases, a.n),
        };
        let opts = EvalOptions {
            n,
            sequential: a.sequential,
            checkpoints: a.checkpoints.clone(),
            distinct_subjects: a.distinct_subjects || a.method.batched(),
            fluency_tokens: a
                .fluency_tokens
                .unwrap_or(if a.sequential && !a.method.batched() {
                    100
                } else {
                    0
                }),
            journal: a.journal.clone(),
        };
        let method = if a.method.batched() {
            let (hparams, alphaedit) = if a.method == MethodArg::Alphaedit {
                let hp = engram_editing::jobs::setup::resolve_alphaedit_hparams(
                    &a.model,
                    a.hparams.as_deref(),
                    settings(),
                )?;
                let options = engram_editing::jobs::memit::AlphaEditOptions {
                    threshold: hp.nullspace_threshold,
                    l2: hp.l2,
                };
                (hp.memit, Some(options))
            } else {
                let hp = engram_editing::jobs::setup::resolve_memit_hparams(
                    &a.model,
                    a.hparams.as_deref(),
                    settings(),
                )?;
                (hp, None)
            };
            EvalMethod::Memit {
                hparams,
                alphaedit,
                batch: a.batch.unwrap_or(a.n),
                z_chunk: a.z_chunk,
                z_workers: engram_editing::jobs::setup::z_workers(a.z_workers, &a.backend.device),
                z_cache: a.z_cache.clone(),
            }
        } else if a.method == MethodArg::FtL {
            EvalMethod::Ft(engram_editing::jobs::setup::resolve_ft_hparams(
                &a.model,
                a.hparams.as_deref(),
                settings(),
            )?)
        } else {
            let mut hp = engram_editing::jobs::setup::resolve_hparams(
                &a.model,
                a.hparams.as_deref(),
                settings(),
            )?;
            hp.key = match (a.key, a.method) {
                (Some(k), _) => k.into(),
                (None, MethodArg::Rome) => engram_editing::KeyChoice::Original,
                (None, _) => engram_editing::KeyChoice::Consistent,
            };
            EvalMethod::Rome(hp)
        };
        let req = EvalRequest {
            cases,
            benchmark: bench.into(),
            method,
            options: opts,
            corpus: a.corpus.clone(),
            stats_tokens: a.stats_tokens,
            dataset: a.data.clone(),
            cases_from: a.cases_from.clone(),
            shard: a.shard.map(|s| s.to_string()),
        };
        let store = engram_datasets::RunStore::open(
            a.runs.clone().unwrap_or_else(|| settings().runs.clone()),
        )?;
        let r = run_eval(
            &mut lm,
            &a.model.display().to_string(),
            &req,
            &store,
            settings(),
            &stderr_control(),
        )?;
        let out = &r.outcome;
        for note in &out.notes {
            eprintln!("{note}");
        }
        for s in &r.summary {
            outln!(
                "{:<28} {:>8.4}  [{:.4}, {:.4}]  n={}",
                s.metric,
                s.mean,
                s.ci_low,
                s.ci_high,
                s.n
            );
        }
        if let Some(s) = r.score {
            outln!("S (harmonic mean of ES, PS, NS): {s:.4}");
        }
        outln!(
            "{} cases evaluated, {} skipped, {:.1} s{}",
            out.rows.len(),
            out.skipped.len(),
            out.seconds,
            if a.sequential { " (sequential)" } else { "" }
        );
        for c in &out.curve {
            outln!(
                "after {:>5} edits: {}",
                c.get("edits")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
                ["ES", "PS", "NS", "S"]
                    .iter()
                    .filter_map(|m| c
                        .get(*m)
                        .and_then(serde_json::Value::as_f64)
                        .map(|v| format!("{m} {v:.4}")))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
        }
        outln!("run {} in {}", r.run.id, r.run.dir.display());
        Ok(())
    }
}
