//! The activation patching job (TransformerLens style): clean → corrupted
//! patching for one fact, stored as a `patch` run (one row per site, layer and
//! position or head) with a heatmap; optionally with attribution patching
//! (Nanda 2023; Syed et al. 2023) of the same sites beside it, as its own
//! table and heatmaps on the same recovery scale.

use std::time::Instant;

use crate::attribution::{attribution_patch, spearman, Attribution};
use crate::error::{bail, Context, Result};
use crate::patching::{patch_sweep, replace_subject, PatchReport, PatchSite};
use engram_datasets::figures::{trace_heatmaps, TraceCell};
use engram_datasets::{RunInfo, RunStore};
use engram_model::burn_tensor::backend::Backend;
use engram_model::LanguageModel;
use serde::{Deserialize, Serialize};

use super::run_params;

/// The corrupted input: another subject of the same token length, or a whole prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Corruption {
    Subject(String),
    Prompt(String),
}

/// One patched activation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchRow {
    pub site: String,
    pub layer: i64,
    /// A position, or a head for `head_out`.
    pub index: i64,
    pub label: String,
    pub logit_diff: f64,
    pub recovery: f64,
}

/// A prepared patching experiment.
#[derive(Debug, Clone)]
pub struct PatchSetup {
    pub clean_prompt: String,
    pub corrupted_prompt: String,
    pub clean: Vec<u32>,
    pub corrupted: Vec<u32>,
    pub answer: u32,
    pub wrong: u32,
}

/// Tokenize both prompts, check they line up, and pick the corrupted answer
/// (the corrupted run's top token other than the clean answer).
pub fn prepare<B: Backend>(
    lm: &LanguageModel<B>,
    prompt: &str,
    subject: &str,
    target: &str,
    corruption: &Corruption,
) -> Result<PatchSetup> {
    let corrupted_prompt = match corruption {
        Corruption::Prompt(p) => p.clone(),
        Corruption::Subject(other) => {
            match replace_subject(&lm.tokenizer, prompt, subject, std::slice::from_ref(other))? {
                Some((p, _)) => p,
                None => bail!(
                    "{other:?} does not tokenize like {subject:?} in this prompt (patching needs the same \
                     token positions); pick a subject of the same token length"
                ),
            }
        }
    };
    let clean = lm.encode_prompt(prompt)?;
    let corrupted = lm.encode_prompt(&corrupted_prompt)?;
    if clean.len() != corrupted.len() {
        bail!(
            "the clean prompt has {} tokens and the corrupted prompt {:?} has {}; they must match",
            clean.len(),
            corrupted_prompt,
            corrupted.len()
        );
    }
    let answer = lm.target_tokens(prompt, target)?[0];
    let wrong = lm
        .top_k(&corrupted_prompt, 2)?
        .into_iter()
        .find(|t| t.id != answer)
        .map(|t| t.id)
        .context("the vocabulary has a single token")?;
    Ok(PatchSetup {
        clean_prompt: prompt.to_string(),
        corrupted_prompt,
        clean,
        corrupted,
        answer,
        wrong,
    })
}

pub fn rows<B: Backend>(
    lm: &LanguageModel<B>,
    setup: &PatchSetup,
    report: &PatchReport,
) -> Vec<PatchRow> {
    let mut out = Vec::new();
    for s in &report.sites {
        for (layer, (lds, recs)) in s.logit_diff.iter().zip(&s.recovery).enumerate() {
            for (i, (&ld, &rec)) in lds.iter().zip(recs).enumerate() {
                let label = if s.site == PatchSite::HeadOut {
                    format!("head {i}")
                } else {
                    lm.tokenizer.token_text(setup.clean[i])
                };
                out.push(PatchRow {
                    site: s.site.name().into(),
                    layer: layer as i64,
                    index: i as i64,
                    label,
                    logit_diff: ld as f64,
                    recovery: rec as f64,
                });
            }
        }
    }
    out
}

/// One attribution estimate, beside the exact patch of the same site where one was run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttributionRow {
    pub site: String,
    pub layer: i64,
    /// A position, or a head for `head_out`.
    pub index: i64,
    pub label: String,
    /// The estimated change of the logit difference, (clean − corrupted) · ∂metric/∂activation.
    pub estimate: f64,
    /// `estimate` over the clean − corrupted logit difference: the estimated recovery.
    pub recovery_estimate: f64,
    /// The exact patch's recovery, where that site was patched.
    pub recovery_exact: Option<f64>,
}

/// Attribution patching of every site, next to the exact sweep.
#[derive(Debug, Clone)]
pub struct AttributionOutcome {
    pub estimate: Attribution,
    /// Estimated recovery per site: `[layer][position]`, and for `head_out`
    /// `[layer][head]` (hook_z's estimate summed over positions, as the exact
    /// sweep patches a head at every position at once).
    pub recovery: Vec<(PatchSite, Vec<Vec<f32>>)>,
    pub seconds: f64,
    /// Spearman's ρ against the exact patches over the resid/attn/mlp sites
    /// both have, and how many; `None` where no such site was patched exactly.
    pub spearman: Option<(f64, usize)>,
    /// The same over heads.
    pub spearman_heads: Option<(f64, usize)>,
}

impl AttributionOutcome {
    /// Scale the estimates to recoveries and compare them with `report`'s exact patches.
    pub fn new(estimate: Attribution, report: &PatchReport, seconds: f64) -> Self {
        let span = estimate.clean_metric - estimate.corrupted_metric;
        let scale = |rows: &Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            rows.iter()
                .map(|r| r.iter().map(|v| v / span).collect())
                .collect()
        };
        let heads: Vec<Vec<f32>> = estimate
            .heads
            .iter()
            .map(|per_pos| {
                let h = per_pos.first().map_or(0, Vec::len);
                (0..h)
                    .map(|i| per_pos.iter().map(|p| p[i]).sum::<f32>() / span)
                    .collect()
            })
            .collect();
        let recovery = vec![
            (PatchSite::ResidPre, scale(&estimate.resid_pre)),
            (PatchSite::AttnOut, scale(&estimate.attn_out)),
            (PatchSite::MlpOut, scale(&estimate.mlp_out)),
            (PatchSite::HeadOut, heads),
        ];
        let rho = |heads: bool| {
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            for s in report
                .sites
                .iter()
                .filter(|s| (s.site == PatchSite::HeadOut) == heads)
            {
                let Some((_, est)) = recovery.iter().find(|(site, _)| *site == s.site) else {
                    continue;
                };
                for (exact, approx) in s.recovery.iter().flatten().zip(est.iter().flatten()) {
                    xs.push(*exact);
                    ys.push(*approx);
                }
            }
            (xs.len() > 1).then(|| (spearman(&xs, &ys), xs.len()))
        };
        Self {
            spearman: rho(false),
            spearman_heads: rho(true),
            estimate,
            recovery,
            seconds,
        }
    }

    /// One row per estimated site, with the exact recovery where `report` has it.
    pub fn rows<B: Backend>(
        &self,
        lm: &LanguageModel<B>,
        setup: &PatchSetup,
        report: &PatchReport,
    ) -> Vec<AttributionRow> {
        let span = (self.estimate.clean_metric - self.estimate.corrupted_metric) as f64;
        let mut out = Vec::new();
        for (site, rec) in &self.recovery {
            let exact = report.sites.iter().find(|s| s.site == *site);
            for (layer, row) in rec.iter().enumerate() {
                for (i, &r) in row.iter().enumerate() {
                    out.push(AttributionRow {
                        site: site.name().into(),
                        layer: layer as i64,
                        index: i as i64,
                        label: if *site == PatchSite::HeadOut {
                            format!("head {i}")
                        } else {
                            lm.tokenizer.token_text(setup.clean[i])
                        },
                        estimate: r as f64 * span,
                        recovery_estimate: r as f64,
                        recovery_exact: exact
                            .and_then(|s| s.recovery.get(layer)?.get(i).copied())
                            .map(f64::from),
                    });
                }
            }
        }
        out
    }
}

/// What [`run_patch`] did.
#[derive(Debug, Clone)]
pub struct PatchOutcome {
    pub run: RunInfo,
    pub report: PatchReport,
    /// The exact sweep's time.
    pub exact_seconds: f64,
    pub attribution: Option<AttributionOutcome>,
}

/// Heatmaps (tokens × layers per position site), coloured by recovery.
fn heatmaps(
    setup: &PatchSetup,
    cells: impl Iterator<Item = (String, i64, i64, String, f64)>,
    path: &std::path::Path,
) -> Result<()> {
    let cells: Vec<TraceCell> = cells
        .map(|(kind, layer, index, token, score)| TraceCell {
            fact: setup.clean_prompt.clone(),
            kind,
            token_index: index,
            token,
            is_subject: false,
            layer,
            score,
        })
        .collect();
    if !cells.is_empty() {
        for ext in ["svg", "png"] {
            trace_heatmaps(&cells, &path.with_extension(ext))?;
        }
    }
    Ok(())
}

/// Run the sweep over `sites` (which may be empty), and attribution patching
/// too where `attribution` is set, and store both as one `patch` run.
pub fn run_patch<B: Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    store: &RunStore,
    subject: &str,
    setup: &PatchSetup,
    sites: &[PatchSite],
    attribution: bool,
) -> Result<PatchOutcome> {
    let started = Instant::now();
    let report = patch_sweep(
        &lm.model,
        &setup.clean,
        &setup.corrupted,
        setup.answer,
        setup.wrong,
        sites,
    )?;
    let exact_seconds = started.elapsed().as_secs_f64();
    let attribution = if attribution {
        let t = Instant::now();
        let est = attribution_patch(
            &lm.model,
            &setup.clean,
            &setup.corrupted,
            setup.answer,
            setup.wrong,
        )?;
        Some(AttributionOutcome::new(
            est,
            &report,
            t.elapsed().as_secs_f64(),
        ))
    } else {
        None
    };
    let mut params = run_params(
        lm,
        model,
        serde_json::json!({
            "clean_prompt": setup.clean_prompt,
            "corrupted_prompt": setup.corrupted_prompt,
            "subject": subject,
            "answer": lm.tokenizer.token_text(setup.answer),
            "corrupted_answer": lm.tokenizer.token_text(setup.wrong),
            "clean_logit_diff": report.clean_logit_diff,
            "corrupted_logit_diff": report.corrupted_logit_diff,
            "sites": sites.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "exact_seconds": exact_seconds,
            "attribution": attribution.as_ref().map(|a| serde_json::json!({
                "seconds": a.seconds,
                "spearman": a.spearman.map(|r| r.0),
                "spearman_sites": a.spearman.map(|r| r.1),
                "spearman_heads": a.spearman_heads.map(|r| r.0),
            })),
        }),
    )?;
    params.record_ids = vec![setup.clean_prompt.clone()];
    let run = store.create("patch", params)?;
    let table = rows(lm, setup, &report);
    run.write_rows("patch", &table)?;
    let position_sites = |site: &str| site != PatchSite::HeadOut.name();
    heatmaps(
        setup,
        table.iter().filter(|r| position_sites(&r.site)).map(|r| {
            (
                r.site.clone(),
                r.layer,
                r.index,
                r.label.clone(),
                r.recovery,
            )
        }),
        &run.dir().join("patch.png"),
    )?;
    if let Some(a) = &attribution {
        let est = a.rows(lm, setup, &report);
        run.write_rows("attribution", &est)?;
        heatmaps(
            setup,
            est.iter().filter(|r| position_sites(&r.site)).map(|r| {
                (
                    format!("{} (attribution)", r.site),
                    r.layer,
                    r.index,
                    r.label.clone(),
                    r.recovery_estimate,
                )
            }),
            &run.dir().join("attribution.png"),
        )?;
    }
    Ok(PatchOutcome {
        run: run.finish()?,
        report,
        exact_seconds,
        attribution,
    })
}
