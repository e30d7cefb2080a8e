//! `engram patch`: activation patching (clean into corrupted) for one fact, stored as a `patch` run.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct PatchArgs {
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub subject: String,
    #[arg(long)]
    pub target: String,
    /// Corrupt by putting this subject (same token length) in place of --subject.
    #[arg(long, required_unless_present = "corrupted_prompt")]
    pub corrupt_subject: Option<String>,
    /// Or give the whole corrupted prompt (same token length).
    #[arg(long, conflicts_with = "corrupt_subject")]
    pub corrupted_prompt: Option<String>,
    /// What is patched, comma-separated: the residual stream before each
    /// block, attention outputs, MLP outputs, each head's output.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "resid_pre,attn_out,mlp_out,head_out"
    )]
    pub sites: Vec<SiteArg>,
    /// Also estimate every site (resid_pre, attn_out, mlp_out per position, each
    /// head) by attribution patching (one forward each way and one backward),
    /// stored beside the exact patches with its time and rank correlation.
    #[arg(long)]
    pub attribution: bool,
    /// Attribution patching only: no exact patches (for large models).
    #[arg(long, conflicts_with = "sites")]
    pub attribution_only: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[arg(long)]
    pub runs: Option<PathBuf>,
}

/// A patched site, by its TransformerLens name.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SiteArg {
    #[value(name = "resid_pre")]
    ResidPre,
    #[value(name = "attn_out")]
    AttnOut,
    #[value(name = "mlp_out")]
    MlpOut,
    #[value(name = "head_out")]
    HeadOut,
}

impl From<SiteArg> for engram_analysis::patching::PatchSite {
    fn from(s: SiteArg) -> Self {
        match s {
            SiteArg::ResidPre => Self::ResidPre,
            SiteArg::AttnOut => Self::AttnOut,
            SiteArg::MlpOut => Self::MlpOut,
            SiteArg::HeadOut => Self::HeadOut,
        }
    }
}

pub(crate) fn run(args: PatchArgs) -> Result<()> {
    let backend = args.backend;
    backend.run(PatchJob(args))
}

struct PatchJob(PatchArgs);

impl BackendJob for PatchJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_analysis::jobs::patch::{prepare, run_patch, Corruption};
        use engram_analysis::patching::PatchSite;
        let a = self.0;
        let sites: Vec<PatchSite> = if a.attribution_only {
            Vec::new()
        } else {
            a.sites.iter().map(|&s| s.into()).collect()
        };
        let corruption = match (&a.corrupt_subject, &a.corrupted_prompt) {
            (Some(s), _) => Corruption::Subject(s.clone()),
            (None, Some(p)) => Corruption::Prompt(p.clone()),
            (None, None) => bail!("give --corrupt-subject or --corrupted-prompt"),
        };
        let lm = load::<B>(&a.model, &device)?;
        let setup = prepare(&lm, &a.prompt, &a.subject, &a.target, &corruption)?;
        let root = a.runs.unwrap_or_else(|| settings().runs.clone());
        let store = engram_datasets::RunStore::open(root)?;
        let out = run_patch(
            &lm,
            &a.model.display().to_string(),
            &store,
            &a.subject,
            &setup,
            &sites,
            a.attribution || a.attribution_only,
        )?;
        let report = &out.report;
        outln!(
            "clean:     {:?}  logit diff {:+.4}",
            setup.clean_prompt,
            report.clean_logit_diff
        );
        outln!(
            "corrupted: {:?}  logit diff {:+.4}  ({:?} vs {:?})",
            setup.corrupted_prompt,
            report.corrupted_logit_diff,
            lm.tokenizer.token_text(setup.answer),
            lm.tokenizer.token_text(setup.wrong)
        );
        let best = |site: PatchSite, rec: &[Vec<f32>]| {
            let best = rec
                .iter()
                .enumerate()
                .flat_map(|(l, row)| row.iter().enumerate().map(move |(i, &r)| (l, i, r)))
                .max_by(|x, y| x.2.total_cmp(&y.2));
            best.map(|(layer, i, r)| {
                let what = if site == PatchSite::HeadOut {
                    format!("head {i}")
                } else {
                    format!("position {i} {:?}", lm.tokenizer.token_text(setup.clean[i]))
                };
                format!("{r:+.3} at layer {layer}, {what}")
            })
        };
        for s in &report.sites {
            if let Some(b) = best(s.site, &s.recovery) {
                outln!("{:>9}: best recovery {b}", s.site.name());
            }
        }
        if let Some(attr) = &out.attribution {
            outln!(
                "attribution patching: {:.3} s for every site (one forward each way, one backward); \
                 exact patching of {} site kind(s): {:.3} s",
                attr.seconds,
                sites.len(),
                out.exact_seconds
            );
            for (site, rec) in &attr.recovery {
                if let Some(b) = best(*site, rec) {
                    outln!("{:>9}: best estimated recovery {b}", site.name());
                }
            }
            for (what, rho) in [
                ("resid/attn/mlp sites", attr.spearman),
                ("heads", attr.spearman_heads),
            ] {
                if let Some((rho, n)) = rho {
                    outln!("  Spearman rho against exact patching over {n} {what}: {rho:.3}");
                }
            }
        }
        let info = out.run;
        outln!("run {} in {}", info.id, info.dir.display());
        Ok(())
    }
}
