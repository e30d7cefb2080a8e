//! `engram trace`: ROME's causal tracing of a fact set or one fact, stored as a `trace` run.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct TraceArgs {
    pub model: PathBuf,
    /// A fact set: known_1000.json, CounterFact, or CSV/JSONL of subject,prompt,target.
    #[arg(long, required_unless_present = "prompt")]
    pub facts: Option<PathBuf>,
    /// Trace this many facts the model gets right (skipping the others).
    #[arg(value_parser = crate::cmd::range::positive, long)]
    pub n: Option<usize>,
    /// One fact: the prompt, its subject and the expected answer.
    #[arg(long, conflicts_with = "facts", requires_all = ["subject", "target"])]
    pub prompt: Option<String>,
    #[arg(long)]
    pub subject: Option<String>,
    #[arg(long)]
    pub target: Option<String>,
    /// What is restored, comma-separated: hidden states, MLP outputs, attention outputs.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "hidden,mlp,attn"
    )]
    pub kind: Vec<KindArg>,
    #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 10)]
    pub samples: usize,
    /// MLP/attention layers restored together. 0: ROME's 10 on models of 28+
    /// layers, the same share of depth (10/48) on shallower ones.
    #[arg(long, default_value_t = 0)]
    pub window: usize,
    /// Noise scale ν: `3sigma` (3 x the std of the subjects' token embeddings, ROME), `Ksigma`, or a number.
    #[arg(long, default_value = "3sigma")]
    pub noise: String,
    /// Measure σ (for `Ksigma`) over this fact set's subjects rather than the
    /// traced facts': ROME's ν for one fact is 3σ over known_1000.json.
    #[arg(long, value_name = "FACTS")]
    pub noise_subjects: Option<PathBuf>,
    /// Uniform noise in [-ν, ν] instead of Gaussian.
    #[arg(long)]
    pub uniform: bool,
    /// The noise's seed: numpy's `RandomState(SEED)`, as ROME's `causal_trace.py` (which uses 1).
    #[arg(long, default_value_t = 1)]
    pub seed: u32,
    /// Trace every N-th fact, starting at the K-th: this machine's share of a
    /// study spread over N (`--n` is the whole study's); ν is measured over all
    /// the facts, so `engram runs merge` joins the shards into the unsharded run.
    #[arg(long, value_parser = parse_shard, requires = "facts")]
    pub shard: Option<engram_datasets::merge::Shard>,
    /// The reference path: one restoration per forward pass.
    #[arg(long)]
    pub naive: bool,
    /// Trace a fact only if the model's top token is the whole answer (ROME's
    /// test on known_1000.json); by default its first token suffices.
    #[arg(long)]
    pub whole_answer: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[arg(long)]
    pub runs: Option<PathBuf>,
}

/// What a trace restores.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum KindArg {
    Hidden,
    Mlp,
    Attn,
}

impl From<KindArg> for engram_analysis::trace::TraceKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Hidden => Self::Hidden,
            KindArg::Mlp => Self::Mlp,
            KindArg::Attn => Self::Attn,
        }
    }
}

pub(crate) fn run(args: TraceArgs) -> Result<()> {
    let backend = args.backend;
    backend.run(TraceJob(args))
}

struct TraceJob(TraceArgs);

impl BackendJob for TraceJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_analysis::jobs::trace::{
            peak, run_trace, NoiseLevel, TraceOptions, TraceRequest,
        };
        use engram_analysis::trace::TraceKind;
        let a = self.0;
        let kinds: Vec<TraceKind> = a.kind.iter().map(|&k| k.into()).collect();
        let noise =
            match a.noise.strip_suffix("sigma") {
                Some(m) => NoiseLevel::Spread {
                    multiple: m.parse().with_context(|| {
                        format!("--noise {:?}: expected e.g. 3sigma or 0.1", a.noise)
                    })?,
                },
                None => NoiseLevel::Fixed(a.noise.parse().with_context(|| {
                    format!("--noise {:?}: expected e.g. 3sigma or 0.1", a.noise)
                })?),
            };
        let (facts, dataset) = match (&a.facts, &a.prompt) {
            (Some(path), _) => {
                let loaded = engram_datasets::facts::load_fact_set(
                    path,
                    engram_datasets::OnBadRecord::Skip,
                )?;
                for e in &loaded.skipped {
                    eprintln!("skipped record: {e}");
                }
                (loaded.records, Some(path.clone()))
            }
            (None, Some(prompt)) => {
                let fact = engram_datasets::facts::UserFact {
                    subject: a.subject.clone().unwrap_or_default(),
                    prompt: prompt.clone(),
                    target: a.target.clone().unwrap_or_default(),
                    relation: None,
                };
                (vec![fact], None)
            }
            (None, None) => bail!("give --facts FILE, or --prompt, --subject and --target"),
        };
        // ν over every fact of the study, so shards trace with the same noise.
        let noise_subjects: Vec<String> = match &a.noise_subjects {
            Some(path) => {
                if let NoiseLevel::Fixed(v) = noise {
                    bail!(
                        "--noise-subjects sets σ for --noise Ksigma; --noise {v} is a fixed scale"
                    );
                }
                let loaded = engram_datasets::facts::load_fact_set(
                    path,
                    engram_datasets::OnBadRecord::Skip,
                )?;
                if loaded.records.is_empty() {
                    bail!("--noise-subjects {}: no fact records", path.display());
                }
                loaded.records.iter().map(|f| f.subject.clone()).collect()
            }
            None => facts.iter().map(|f| f.subject.clone()).collect(),
        };
        let (facts, n) = match a.shard {
            Some(shard) => (shard.select(facts), a.n.map(|n| shard.share_of(n))),
            None => (facts, a.n),
        };
        let lm = load::<B>(&a.model, &device)?;
        let opts = TraceOptions {
            kinds,
            samples: a.samples,
            window: a.window,
            noise,
            uniform: a.uniform,
            seed: a.seed,
            n: n.unwrap_or(usize::MAX),
            naive: a.naive,
            whole_answer: a.whole_answer,
            ..TraceOptions::default()
        };
        let store = engram_datasets::RunStore::open(
            a.runs.clone().unwrap_or_else(|| settings().runs.clone()),
        )?;
        let req = TraceRequest {
            facts,
            options: opts.clone(),
            noise_subjects,
            dataset,
            shard: a.shard.map(|s| s.to_string()),
        };
        let started = std::time::Instant::now();
        let run = run_trace(
            &lm,
            &a.model.display().to_string(),
            &req,
            &store,
            &stderr_control(),
        )?;
        eprintln!();
        eprintln!(
            "noise: {} with scale {:.4}{}",
            if a.uniform { "uniform" } else { "gaussian" },
            run.noise_scale,
            match noise {
                NoiseLevel::Spread { multiple } => format!(
                    " ({multiple} x the embedding std of {} subjects)",
                    req.noise_subjects.len()
                ),
                NoiseLevel::Fixed(_) => String::new(),
            }
        );
        outln!(
            "traced {} facts, skipped {} (the model did not predict the target, or bad input), in {:.1} s",
            run.traced,
            run.skipped,
            started.elapsed().as_secs_f64()
        );
        for kind in &opts.kinds {
            if let Some(p) = peak(&run.effects, *kind) {
                outln!(
                    "{:>6}: average indirect effect at the last subject token peaks at layer {} ({:+.4})",
                    kind.name(),
                    p.layer,
                    p.effect
                );
            }
        }
        outln!("run {} in {}", run.info.id, run.info.dir.display());
        for f in &run.figures {
            outln!("figure {}", f.display());
        }
        Ok(())
    }
}
