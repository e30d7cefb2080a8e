//! `engram edit`: one ROME / r-ROME edit, probed before and after, stored as an `edit` run.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct EditArgs {
    pub model: PathBuf,
    /// The prompt, containing the subject, e.g. "The Eiffel Tower is located in the city of".
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub subject: String,
    /// The new answer, e.g. Rome.
    #[arg(long)]
    pub target: String,
    /// Paraphrases of the prompt to probe before and after (repeatable).
    #[arg(long = "also")]
    pub also: Vec<String>,
    /// Prompts about other subjects whose answers should not move (repeatable).
    #[arg(long = "neighbour")]
    pub neighbour: Vec<String>,
    /// Greedy tokens to generate after the prompt, before and after the edit.
    #[arg(value_parser = crate::cmd::range::tokens, long, default_value_t = 0)]
    pub generate: usize,
    /// The run store (default: $ENGRAM_RUNS, else ./runs).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    /// Checked-in hyperparameters (demo, smollm2-135m, gpt2-xl, ...) or a JSON file.
    #[arg(long)]
    pub hparams: Option<String>,
    /// Edit this layer instead of the hyperparameters' one.
    #[arg(long)]
    pub layer: Option<usize>,
    /// The update's key: consistent (r-ROME) or original (ROME's code).
    #[arg(long, value_enum, default_value = "consistent")]
    pub key: KeyArg,
    /// ROME (rank one, with --key), or FT-L: fine-tune the layer's MLP output
    /// projection within an L∞ bound (the papers' fine-tuning baseline).
    #[arg(long, value_enum, default_value = "rome")]
    pub method: EditMethod,
    /// Text for the key statistics (default for the demo model: its corpus).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Key vectors for the statistics.
    #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 100_000)]
    pub stats_tokens: usize,
    #[command(flatten)]
    pub output: EditOutput,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// How the single edit is made.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EditMethod {
    Rome,
    #[value(name = "ft-l")]
    FtL,
}

pub(crate) fn run(args: EditArgs) -> Result<()> {
    let backend = args.backend;
    if args.method == EditMethod::FtL {
        return backend.run(FtJob(args));
    }
    backend.run(EditJob(args))
}

struct FtJob(EditArgs);

impl BackendJob for FtJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_editing::jobs::ft::{run_ft, FtRequest};
        let a = self.0;
        a.output.refuse_existing()?;
        let mut hparams = engram_editing::jobs::setup::resolve_ft_hparams(
            &a.model,
            a.hparams.as_deref(),
            settings(),
        )?;
        if let Some(l) = a.layer {
            hparams.layer = l;
        }
        let req = FtRequest {
            request: engram_editing::EditRequest {
                prompt: a.prompt.clone(),
                subject: a.subject.clone(),
                target: a.target.clone(),
            },
            hparams,
            paraphrases: a.also.clone(),
            neighbours: a.neighbour.clone(),
            generate_tokens: a.generate,
        };
        let store = engram_datasets::RunStore::open(
            a.runs.clone().unwrap_or_else(|| settings().runs.clone()),
        )?;
        let mut lm = load::<B>(&a.model, &device)?;
        engram_editing::memit::check_batch(&lm, std::slice::from_ref(&req.request))?;
        let (mut ledger, ledger_file) = a.output.ledger(&mut lm)?;
        let r = run_ft(
            &mut lm,
            &a.model.display().to_string(),
            &mut ledger,
            &req,
            &store,
            &stderr_control(),
        )?;
        outln!(
            "FT-L layer {}: target NLL {:.4} -> {:.4} in {} steps; max |dW| {:.2e} (bound {:.2e}), |dW|_F {:.4}, {:.2} s",
            r.layer,
            r.losses.first().copied().unwrap_or(f32::NAN),
            r.losses.last().copied().unwrap_or(f32::NAN),
            r.losses.len().saturating_sub(1),
            r.delta_max,
            req.hparams.norm_constraint,
            r.delta_fro,
            r.seconds
        );
        for p in &r.probes {
            outln!(
                "{:<10} {:?}: {:?} {:.4} -> {:?} {:.4}; p({:?}) {:.4} -> {:.4}",
                p.kind,
                p.prompt,
                p.before_top,
                p.before_top_prob,
                p.after_top,
                p.after_top_prob,
                req.request.target,
                p.before_target,
                p.after_target
            );
        }
        if a.generate > 0 {
            outln!("before: {}", r.generation_before);
            outln!(" after: {}", r.generation_after);
        }
        outln!("stored as run {} ({})", r.run.id, r.run.dir.display());
        a.output.write(&ledger, ledger_file.as_ref(), &lm)?;
        Ok(())
    }
}

struct EditJob(EditArgs);

impl BackendJob for EditJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_editing::jobs::rome::{check_request, run_rome, RomeRequest};
        use engram_editing::jobs::setup::{key_covariance, rome_templates};
        use engram_editing::rome::EditRequest;
        let a = self.0;
        a.output.refuse_existing()?;
        let mut hparams = engram_editing::jobs::setup::resolve_hparams(
            &a.model,
            a.hparams.as_deref(),
            settings(),
        )?;
        if let Some(l) = a.layer {
            hparams.layers = vec![l];
        }
        hparams.key = a.key.into();
        let req = RomeRequest {
            request: EditRequest {
                prompt: a.prompt.clone(),
                subject: a.subject.clone(),
                target: a.target.clone(),
            },
            hparams,
            paraphrases: a.also.clone(),
            neighbours: a.neighbour.clone(),
            generate_tokens: a.generate,
        };
        check_request(&req)?;
        let store = engram_datasets::RunStore::open(
            a.runs.clone().unwrap_or_else(|| settings().runs.clone()),
        )?;
        let mut lm = load::<B>(&a.model, &device)?;
        let layer = req.hparams.layer()?;
        engram_editing::memit::check_batch(&lm, std::slice::from_ref(&req.request))?;
        let (mut ledger, ledger_file) = a.output.ledger(&mut lm)?;
        let ctl = stderr_control();
        let cov = key_covariance(
            &lm,
            layer,
            a.corpus.as_deref(),
            a.stats_tokens,
            settings(),
            &ctl,
        )?;
        eprintln!(
            "layer {layer} statistics: {} key vectors from {}{} ({:.1} s)",
            cov.covariance.tokens,
            cov.corpus,
            if cov.cached { ", cached" } else { "" },
            cov.seconds
        );
        let templates = rome_templates(&lm, &req.hparams)?;
        let r = run_rome(
            &mut lm,
            &a.model.display().to_string(),
            &mut ledger,
            &req,
            &cov.covariance,
            &templates,
            &store,
            &ctl,
        )?;
        for (i, s) in r.steps.iter().enumerate() {
            outln!(
                "v* step {i:>2}: loss {:.4} = nll {:.4} + kl {:.4} + decay {:.4}; p(target) {:.4}",
                s.total,
                s.nll,
                s.kl,
                s.weight_decay,
                s.target_prob
            );
        }
        outln!(
            "layer {}, key {:?}: |k*| {:.3}, |v0| {:.3}, |v* - v0| {:.3}, {} key vectors, {:.2} s",
            r.layer,
            r.key,
            r.k_star_norm,
            r.v0_norm,
            r.delta_norm,
            r.stats_tokens,
            r.seconds
        );
        for when in ["before", "after"] {
            for p in &r.probes {
                let (top, prob, target) = if when == "before" {
                    (&p.before_top, p.before_top_prob, p.before_target)
                } else {
                    (&p.after_top, p.after_top_prob, p.after_target)
                };
                outln!(
                    "{when:>6}  {:<10} {:?} -> {top:?} {prob:.4}; p({:?}) {target:.4}",
                    p.kind,
                    p.prompt,
                    r.request.target
                );
            }
        }
        if a.generate > 0 {
            outln!("before: {}", r.generation_before);
            outln!(" after: {}", r.generation_after);
        }
        outln!("stored as run {} ({})", r.run.id, r.run.dir.display());
        a.output.write(&ledger, ledger_file.as_ref(), &lm)?;
        Ok(())
    }
}
