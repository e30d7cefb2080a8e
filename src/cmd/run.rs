//! `engram run`: the most likely next tokens after a prompt (or token ids), and generation.

use super::prelude::*;
use engram_model::lm::top_k_from_logits;
use engram_model::{generate, Batch, GenerateConfig, Sampling, TokenProb};

#[derive(Args)]
pub(crate) struct RunArgs {
    pub model: PathBuf,
    #[arg(long, required_unless_present = "ids")]
    pub prompt: Option<String>,
    /// Comma-separated token ids instead of a prompt.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub ids: Option<Vec<u32>>,
    /// Rows of the next-token table.
    #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 10)]
    pub top_k: usize,
    /// Generate this many tokens after the prompt.
    #[arg(value_parser = crate::cmd::range::tokens, long)]
    pub generate: Option<usize>,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(value_parser = crate::cmd::range::temperature, long)]
    pub temperature: Option<f32>,
    /// Sample only among the k most likely tokens.
    #[arg(value_parser = crate::cmd::range::positive, long)]
    pub sample_top_k: Option<usize>,
    /// Nucleus sampling: the smallest set of tokens with this much probability.
    #[arg(value_parser = crate::cmd::range::probability, long)]
    pub top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Re-run the whole sequence each step instead of caching keys and values.
    #[arg(long)]
    pub no_kv_cache: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn run(args: RunArgs) -> Result<()> {
    let backend = args.backend;
    backend.run(RunJob(args))
}

struct RunJob(RunArgs);

impl BackendJob for RunJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        let lm = load::<B>(&a.model, &device)?;
        let ids = match (a.ids, &a.prompt) {
            (Some(ids), _) => ids,
            (None, Some(p)) => lm.encode_prompt(p)?,
            (None, None) => bail!("give --prompt or --ids"),
        };
        let logits = lm.model.logits(&Batch::single(&ids))?;
        let last = engram_model::transformer::last_position(logits, &[ids.len() - 1]);
        let last: Vec<f32> = last
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let top: Vec<TokenProb> =
            top_k_from_logits(&last, a.top_k, |id| lm.tokenizer.token_text(id));

        let generated = match a.generate {
            None => None,
            Some(n) => {
                let sampling = match (a.temperature, a.sample_top_k, a.top_p) {
                    (None, None, None) => Sampling::Greedy,
                    (t, k, p) => Sampling::Sample {
                        temperature: t.unwrap_or(1.0),
                        top_k: k,
                        top_p: p,
                        seed: a.seed,
                    },
                };
                let cfg = GenerateConfig {
                    max_new_tokens: n,
                    sampling,
                    stop_at_eos: true,
                    kv_cache: !a.no_kv_cache,
                };
                let out = generate(&lm.model, std::slice::from_ref(&ids), &cfg)?;
                let new = out.into_iter().next().unwrap_or_default();
                Some((lm.tokenizer.decode(&new)?, new))
            }
        };

        if a.json {
            let v = json!({
                "prompt": a.prompt,
                "input_ids": ids,
                "input_tokens": ids.iter().map(|&i| lm.tokenizer.token_text(i)).collect::<Vec<_>>(),
                "top_k": top,
                "generated": generated.as_ref().map(|(text, ids)| json!({"text": text, "ids": ids})),
            });
            outln!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        if let Some(p) = &a.prompt {
            outln!("prompt: {p:?} ({} tokens)", ids.len());
        }
        outln!(
            "{:>4}  {:<20} {:>8}  {:>9}  {:>9}",
            "rank",
            "token",
            "id",
            "prob",
            "logit"
        );
        for (rank, t) in top.iter().enumerate() {
            outln!(
                "{:>4}  {:<20} {:>8}  {:>9.6}  {:>9.4}",
                rank + 1,
                format!("{:?}", t.token),
                t.id,
                t.prob,
                t.logit
            );
        }
        if let Some((text, _)) = generated {
            outln!("generated: {text:?}");
        }
        Ok(())
    }
}
