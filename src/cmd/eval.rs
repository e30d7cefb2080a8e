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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MethodArg {
    Rome,
    RRome,
    Memit,
}

impl MethodArg {
    fn name(self) -> &'static str {
        match self {
            Self::Rome => "rome",
            Self::RRome => "r-rome",
            Self::Memit => "memit",
        }
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
    #[arg(long)]
    pub fluency_tokens: Option<usize>,
    /// Append each finished case to this JSON-lines file and skip the cases
    /// already in it: an interrupted run picks up where it stopped.
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Evaluate this many usable cases (cases the edit refuses are skipped and counted).
    #[arg(long, default_value_t = 50)]
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
    #[arg(long)]
    pub batch: Option<usize>,
    /// Numbers of edits at which every case edited so far is scored again
    /// (the metric-against-edits curve), e.g. 1,10,50,100,200.
    #[arg(long, value_delimiter = ',')]
    pub checkpoints: Vec<usize>,
    /// MEMIT: requests per z optimisation batch.
    #[arg(long, default_value_t = 16)]
    pub z_chunk: usize,
    /// MEMIT: threads optimising z chunks at once (0: every core on the CPU, 1 on a GPU).
    #[arg(long, default_value_t = 0)]
    pub z_workers: usize,
    /// MEMIT: a JSON-lines cache of z vectors, reused by later runs.
    #[arg(long)]
    pub z_cache: Option<PathBuf>,
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 100_000)]
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
        use engram_datasets::summary::mean_ci;
        use engram_editing::eval::rome_score;
        use engram_editing::jobs::evaluate::{
            evaluate, evaluate_memit, zsre_cases, BenchCase, EvalOptions, MemitSetup,
            ZsreConvention,
        };
        use engram_editing::Ledger;
        let a = self.0;
        if a.method != MethodArg::Memit && (a.batch.is_some() || a.z_cache.is_some()) {
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
                if a.sequential || a.method == MethodArg::Memit || a.journal.is_some() {
                    bail!(
                        "--shard {shard}: shards edit on fresh weights, one case at a time (ROME or r-ROME, \
                         not --sequential, --method memit or --journal), so that their runs join into the unsharded one"
                    );
                }
                (shard.select(cases), shard.share_of(a.n))
            }
            None => (cases, a.n),
        };
        let hash = model_hash(&a.model)?;
        let mut ledger = Ledger::new(hash.clone());
        let opts = EvalOptions {
            n,
            sequential: a.sequential,
            checkpoints: a.checkpoints.clone(),
            distinct_subjects: a.distinct_subjects || a.method == MethodArg::Memit,
            fluency_tokens: a.fluency_tokens.unwrap_or(
                if a.sequential && a.method != MethodArg::Memit {
                    100
                } else {
                    0
                },
            ),
            journal: a.journal.clone(),
        };
        let (out, hparams, stats_tokens, templates) = if a.method == MethodArg::Memit {
            if opts.fluency_tokens > 0 {
                bail!("--fluency-tokens is measured for ROME runs only so far");
            }
            let hp = engram_editing::jobs::setup::resolve_memit_hparams(
                &a.model,
                a.hparams.as_deref(),
                settings(),
            )?;
            let (covs, groups) = engram_editing::jobs::setup::memit_setup(
                &lm,
                &hp,
                a.corpus.as_deref(),
                a.stats_tokens,
                settings(),
                &stderr_control(),
            )?;
            let setup = MemitSetup {
                hp: &hp,
                covs: &covs,
                groups: &groups,
                batch: a.batch.unwrap_or(a.n),
                z_chunk: a.z_chunk,
                z_workers: engram_editing::jobs::setup::z_workers(a.z_workers, &a.backend.device),
                z_cache: a.z_cache.clone(),
                model_hash: hash.clone(),
            };
            let start = std::time::Instant::now();
            let out = evaluate_memit(&mut lm, &mut ledger, &cases, &setup, &opts, &mut |what| {
                eprintln!("[{:.0} s] {what}", start.elapsed().as_secs_f64())
            })?;
            let tokens = covs.first().map_or(0, |c| c.tokens);
            (
                out,
                serde_json::to_value(&hp)?,
                tokens,
                serde_json::to_value(&groups)?,
            )
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
            let (cov, templates) = engram_editing::jobs::setup::rome_setup(
                &lm,
                &hp,
                a.corpus.as_deref(),
                a.stats_tokens,
                settings(),
                &stderr_control(),
            )?;
            let out = evaluate(
                &mut lm,
                &mut ledger,
                &cases,
                &hp,
                &cov,
                &templates,
                &opts,
                &mut |done, skipped, secs| {
                    eprint!("\r{done} of {n} cases evaluated, {skipped} skipped, {secs:.0} s")
                },
            )?;
            eprintln!();
            (
                out,
                serde_json::to_value(&hp)?,
                cov.tokens,
                serde_json::to_value(&templates)?,
            )
        };
        for note in &out.notes {
            eprintln!("{note}");
        }
        if out.rows.is_empty() {
            bail!("no case could be edited ({} skipped)", out.skipped.len());
        }
        let summary: Vec<_> = out
            .metrics
            .iter()
            .map(|name| {
                let values: Vec<f64> = out
                    .rows
                    .iter()
                    .filter_map(|r| r.get(name).and_then(serde_json::Value::as_f64))
                    .collect();
                mean_ci(name, &values)
            })
            .collect();
        for s in &summary {
            println!(
                "{:<28} {:>8.4}  [{:.4}, {:.4}]  n={}",
                s.metric, s.mean, s.ci_low, s.ci_high, s.n
            );
        }
        let get = |n: &str| summary.iter().find(|s| s.metric == n).map(|s| s.mean);
        let score = match (get("ES"), get("PS"), get("NS")) {
            (Some(es), Some(ps), Some(ns)) => {
                let s = rome_score(es, ps, ns);
                println!("S (harmonic mean of ES, PS, NS): {s:.4}");
                Some(s)
            }
            _ => None,
        };
        println!(
            "{} cases evaluated, {} skipped, {:.1} s{}",
            out.rows.len(),
            out.skipped.len(),
            out.seconds,
            if a.sequential { " (sequential)" } else { "" }
        );
        let store = engram_datasets::RunStore::open(
            a.runs.clone().unwrap_or_else(|| settings().runs.clone()),
        )?;
        let conventions = match (a.benchmark, conv) {
            (BenchArg::Counterfact, _) => {
                "ES/PS/NS/EM/PM/NM as ROME's code; easyedit_* token accuracies as EasyEdit"
            }
            (BenchArg::Zsre, ZsreConvention::Rome) => {
                "zsre_* token accuracies as ROME/MEMIT's code (target answers[0])"
            }
            (BenchArg::Zsre, ZsreConvention::EasyEdit) => {
                "easyedit_* token accuracies as EasyEdit (target alt)"
            }
        };
        let params = engram_datasets::RunParams {
            model: a.model.display().to_string(),
            model_hash: hash,
            hyperparameters: serde_json::json!({
                "method": a.method.name(),
                "benchmark": bench,
                "conventions": conventions,
                "hparams": hparams,
                "context_templates": templates,
                "sequential": a.sequential,
                "batch": a.batch,
                "checkpoints": a.checkpoints,
                "distinct_subjects": opts.distinct_subjects,
                "cases_from": a.cases_from,
                "fluency_tokens": opts.fluency_tokens,
                "stats_tokens": stats_tokens,
                "skipped": out.skipped,
                "S": score,
                "shard": a.shard.map(|s| s.to_string()),
            }),
            dataset: a.data.as_ref().map(|d| d.display().to_string()),
            record_ids: out
                .rows
                .iter()
                .map(|r| {
                    r.get("case_id")
                        .map(ToString::to_string)
                        .unwrap_or_default()
                })
                .collect(),
            seed: Some(0),
            engram_version: env!("CARGO_PKG_VERSION").into(),
            device: format!("{device:?}"),
        };
        let run = store.create("eval", params)?;
        run.write_rows("cases", &out.rows)?;
        run.write_rows("summary", &summary)?;
        if !out.curve.is_empty() {
            for c in &out.curve {
                println!(
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
            run.write_rows("curve", &out.curve)?;
        }
        let info = run.finish()?;
        println!(
            "run {} in {}",
            info.id,
            store.root().join("eval").join(&info.id).display()
        );
        Ok(())
    }
}
