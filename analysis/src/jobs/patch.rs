//! The activation patching job (TransformerLens style): clean → corrupted
//! patching for one fact, stored as a `patch` run (one row per site, layer and
//! position or head) with a heatmap.

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

/// Run the sweep and store it; returns the run and the report.
pub fn run_patch<B: Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    store: &RunStore,
    subject: &str,
    setup: &PatchSetup,
    sites: &[PatchSite],
) -> Result<(RunInfo, PatchReport)> {
    let report = patch_sweep(
        &lm.model,
        &setup.clean,
        &setup.corrupted,
        setup.answer,
        setup.wrong,
        sites,
    )?;
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
        }),
    )?;
    params.record_ids = vec![setup.clean_prompt.clone()];
    let run = store.create("patch", params)?;
    let table = rows(lm, setup, &report);
    run.write_rows("patch", &table)?;
    // Position sites as heatmaps (tokens x layers), coloured by recovery.
    let cells: Vec<TraceCell> = table
        .iter()
        .filter(|r| r.site != PatchSite::HeadOut.name())
        .map(|r| TraceCell {
            fact: setup.clean_prompt.clone(),
            kind: r.site.clone(),
            token_index: r.index,
            token: r.label.clone(),
            is_subject: false,
            layer: r.layer,
            score: r.recovery,
        })
        .collect();
    if !cells.is_empty() {
        for ext in ["svg", "png"] {
            trace_heatmaps(&cells, &run.dir().join(format!("patch.{ext}")))?;
        }
    }
    Ok((run.finish()?, report))
}
