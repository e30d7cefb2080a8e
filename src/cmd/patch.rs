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
    /// Also estimate every resid_pre/attn_out/mlp_out site at once by attribution
    /// patching (one forward each way and one backward) and print its time and
    /// rank correlation against the exact patches.
    #[arg(long)]
    pub attribution: bool,
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
        let sites: Vec<PatchSite> = a.sites.iter().map(|&s| s.into()).collect();
        let corruption = match (&a.corrupt_subject, &a.corrupted_prompt) {
            (Some(s), _) => Corruption::Subject(s.clone()),
            (None, Some(p)) => Corruption::Prompt(p.clone()),
            (None, None) => bail!("give --corrupt-subject or --corrupted-prompt"),
        };
        let lm = load::<B>(&a.model, &device)?;
        let setup = prepare(&lm, &a.prompt, &a.subject, &a.target, &corruption)?;
        let root = a.runs.unwrap_or_else(|| settings().runs.clone());
        let store = engram_datasets::RunStore::open(root)?;
        let started = std::time::Instant::now();
        let (info, report) = run_patch(
            &lm,
            &a.model.display().to_string(),
            &store,
            &a.subject,
            &setup,
            &sites,
        )?;
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
        for s in &report.sites {
            let best = s
                .recovery
                .iter()
                .enumerate()
                .flat_map(|(l, row)| row.iter().enumerate().map(move |(i, &r)| (l, i, r)))
                .max_by(|x, y| x.2.total_cmp(&y.2));
            if let Some((layer, i, r)) = best {
                let what = if s.site == PatchSite::HeadOut {
                    format!("head {i}")
                } else {
                    format!("position {i} {:?}", lm.tokenizer.token_text(setup.clean[i]))
                };
                outln!(
                    "{:>9}: best recovery {r:+.3} at layer {layer}, {what}",
                    s.site.name()
                );
            }
        }
        if a.attribution {
            let exact_s = started.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            let est = engram_analysis::attribution::attribution_patch(
                &lm.model,
                &setup.clean,
                &setup.corrupted,
                setup.answer,
                setup.wrong,
            )?;
            let attr_s = t.elapsed().as_secs_f64();
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            for s in &report.sites {
                let rows = match s.site {
                    PatchSite::ResidPre => &est.resid_pre,
                    PatchSite::AttnOut => &est.attn_out,
                    PatchSite::MlpOut => &est.mlp_out,
                    PatchSite::HeadOut => continue,
                };
                for (exact, approx) in s.logit_diff.iter().flatten().zip(rows.iter().flatten()) {
                    xs.push(exact - report.corrupted_logit_diff);
                    ys.push(*approx);
                }
            }
            outln!(
                "attribution patching: {attr_s:.2} s for every site (one forward each way, one backward); \
                 exact patching with the store: {exact_s:.2} s; Spearman rho over {} resid/attn/mlp sites: {:.3}",
                xs.len(),
                engram_analysis::attribution::spearman(&xs, &ys)
            );
        }
        outln!("run {} in {}", info.id, info.dir.display());
        Ok(())
    }
}
