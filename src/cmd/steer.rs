//! `engram steer build|apply`: contrastive steering vectors, stored as runs.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct SteerArgs {
    #[command(subcommand)]
    pub which: SteerCommand,
}

/// How each prompt's activations are reduced to one vector.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ReduceArg {
    /// The last token's activation (CAA).
    Last,
    /// The mean over the prompt's tokens.
    Mean,
}

#[derive(Subcommand)]
pub(crate) enum SteerCommand {
    /// mean(positive) − mean(negative) of a hook point's activations; stored as a `steer` run.
    Build {
        model: PathBuf,
        /// A prompt of the side to steer towards (repeatable).
        #[arg(long, required = true)]
        positive: Vec<String>,
        /// A prompt of the side to steer away from (repeatable).
        #[arg(long, required = true)]
        negative: Vec<String>,
        /// Where: a block's hook point, e.g. blocks.6.hook_resid_pre (TransformerLens names).
        #[arg(long)]
        point: String,
        #[arg(long, value_enum, default_value = "last")]
        reduce: ReduceArg,
        #[arg(long)]
        runs: Option<PathBuf>,
    },
    /// Greedy continuations of a prompt without and with `coef` × the vector; stored as a `steer-apply` run.
    Apply {
        model: PathBuf,
        /// A `steer` run (its id) or a `vector.safetensors` file.
        #[arg(long)]
        vector: String,
        /// The hook point, for a bare file (a run names its own).
        #[arg(long)]
        point: Option<String>,
        #[arg(long, allow_negative_numbers = true)]
        coef: f32,
        #[arg(long)]
        prompt: String,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 30)]
        tokens: usize,
        #[arg(long)]
        runs: Option<PathBuf>,
    },
}

fn point(text: &str) -> Result<engram_model::HookPoint> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("--point {text:?}: {e} (e.g. blocks.6.hook_resid_pre)"))
}

pub(crate) fn run(a: SteerArgs) -> Result<()> {
    use engram_analysis::jobs::steer::{
        load_vector, run_apply, run_build, ApplyRequest, BuildRequest,
    };
    match a.which {
        SteerCommand::Build {
            model,
            positive,
            negative,
            point: at,
            reduce,
            runs,
        } => {
            let req = BuildRequest {
                positive,
                negative,
                point: point(&at)?,
                reduce: match reduce {
                    ReduceArg::Last => engram_analysis::steer::Reduce::Last,
                    ReduceArg::Mean => engram_analysis::steer::Reduce::Mean,
                },
            };
            let store =
                engram_datasets::RunStore::open(runs.unwrap_or_else(|| settings().runs.clone()))?;
            let lm = load::<engram_model::Cpu>(&model, &Default::default())?;
            let r = run_build(&lm, &model.display().to_string(), &req, &store)?;
            outln!(
                "steering vector at {}: {} values, norm {:.4} ({} positive, {} negative prompts)",
                r.vector.point,
                r.vector.values.len(),
                r.vector.norm(),
                req.positive.len(),
                req.negative.len()
            );
            outln!("stored as run {} ({})", r.run.id, r.run.dir.display());
            Ok(())
        }
        SteerCommand::Apply {
            model,
            vector,
            point: at,
            coef,
            prompt,
            tokens,
            runs,
        } => {
            let store =
                engram_datasets::RunStore::open(runs.unwrap_or_else(|| settings().runs.clone()))?;
            let given = at.as_deref().map(point).transpose()?;
            let path = PathBuf::from(&vector);
            let path = if path.exists() {
                path
            } else {
                store
                    .find(&vector)
                    .with_context(|| {
                        format!("--vector {vector:?}: neither a file nor a stored run")
                    })?
                    .dir
            };
            let v = load_vector(&path, given)?;
            let lm = load::<engram_model::Cpu>(&model, &Default::default())?;
            let req = ApplyRequest {
                vector: v,
                coef,
                prompt,
                max_new_tokens: tokens,
            };
            let r = run_apply(&lm, &model.display().to_string(), &req, &store)?;
            outln!("prompt:  {}", req.prompt);
            outln!("coef 0:  {:?}", r.before);
            outln!("coef {coef}: {:?}", r.after);
            outln!("stored as run {} ({})", r.run.id, r.run.dir.display());
            Ok(())
        }
    }
}
