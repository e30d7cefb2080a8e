//! The ROME edit job (Meng et al. 2022; r-ROME's consistent key, Gupta et al.
//! 2024): probe the prompt, its paraphrases and neighbourhood prompts, compute
//! the rank-one edit, push it into the ledger, probe again, and store it all as
//! an `edit` run (tables `probes` and `steps`).

use engram_datasets::{RunInfo, RunStore};
use engram_model::burn_tensor::backend::Backend;
use engram_model::{generate, Control, GenerateConfig, LanguageModel, Sampling};
use serde::{Deserialize, Serialize};

use crate::error::{bail, Result};
use crate::eval::teacher_force;
use crate::rome::compute_u::KeyCovariance;
use crate::rome::compute_v::VStep;
use crate::rome::{rome_edit, EditRequest, KeyChoice, RomeHparams};
use crate::Ledger;

/// What a ROME edit is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct RomeRequest {
    pub request: EditRequest,
    pub hparams: RomeHparams,
    /// Other phrasings of the prompt: the edit should carry over.
    pub paraphrases: Vec<String>,
    /// Prompts about other subjects: their answers should not move.
    pub neighbours: Vec<String>,
    /// Greedy tokens generated after the prompt before and after (0: none).
    pub generate_tokens: usize,
}

/// Which list a probed prompt comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    Prompt,
    Paraphrase,
    Neighbour,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Prompt => "prompt",
            ProbeKind::Paraphrase => "paraphrase",
            ProbeKind::Neighbour => "neighbour",
        }
    }
}

/// One prompt's top-1 answer and p(target) before and after; a row of `probes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRow {
    pub kind: String,
    pub prompt: String,
    pub before_top: String,
    pub before_top_prob: f64,
    pub after_top: String,
    pub after_top_prob: f64,
    /// The probability of the whole new target (all its tokens).
    pub before_target: f64,
    pub after_target: f64,
}

/// A row of `steps`: v*'s loss at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub step: i64,
    pub total: f64,
    pub nll: f64,
    pub kl: f64,
    pub weight_decay: f64,
    pub target_prob: f64,
}

/// A finished, applied and stored edit.
#[derive(Debug, Clone, PartialEq)]
pub struct RomeReport {
    pub run: RunInfo,
    /// Its id in the ledger.
    pub id: usize,
    pub request: EditRequest,
    pub layer: usize,
    pub key: KeyChoice,
    pub k_star_norm: f32,
    pub v0_norm: f32,
    pub delta_norm: f32,
    pub stats_tokens: u64,
    pub seconds: f64,
    pub steps: Vec<VStep>,
    pub probes: Vec<ProbeRow>,
    pub generation_before: String,
    pub generation_after: String,
}

/// Compute the edit of `req` with C and the context prefixes given, apply it
/// through `ledger`, and store the run. Progress: `v*` steps.
#[allow(clippy::too_many_arguments)]
pub fn run_rome<B: Backend>(
    lm: &mut LanguageModel<B>,
    model: &str,
    ledger: &mut Ledger<B>,
    req: &RomeRequest,
    cov: &KeyCovariance,
    templates: &[String],
    store: &RunStore,
    ctl: &Control,
) -> Result<RomeReport> {
    req.request.template()?;
    let n_layers = lm.model.config.n_layers;
    let layer = req.hparams.layer()?;
    if layer >= n_layers {
        return Err(crate::EditError::Layer { layer, n_layers });
    }
    let target = &req.request.target;
    let probes: Vec<(ProbeKind, String)> =
        std::iter::once((ProbeKind::Prompt, req.request.prompt.clone()))
            .chain(
                req.paraphrases
                    .iter()
                    .map(|p| (ProbeKind::Paraphrase, p.clone())),
            )
            .chain(
                req.neighbours
                    .iter()
                    .map(|p| (ProbeKind::Neighbour, p.clone())),
            )
            .collect();
    let before = probe_all(lm, &probes, target)?;
    let generation_before = greedy(lm, &req.request.prompt, req.generate_tokens)?;
    let edit = rome_edit(
        lm,
        &req.request,
        &req.hparams,
        cov,
        templates,
        &mut |step, total| ctl.tick("v*", step as u64 + 1, total as u64),
    )?;
    let report_edit = edit.clone();
    let id = ledger.push(&mut lm.model, edit)?;
    let after = probe_all(lm, &probes, target)?;
    let generation_after = greedy(lm, &req.request.prompt, req.generate_tokens)?;
    let probes = probe_rows(probes, before, after);
    let steps: Vec<StepRow> = report_edit
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| StepRow {
            step: i as i64,
            total: s.total as f64,
            nll: s.nll as f64,
            kl: s.kl as f64,
            weight_decay: s.weight_decay as f64,
            target_prob: s.target_prob as f64,
        })
        .collect();
    let params = super::run_params::<B>(
        model,
        ledger.base_model_hash.clone(),
        serde_json::json!({
            "method": req.hparams.key.method_name(),
            "request": req.request,
            "hparams": req.hparams,
            "paraphrases": req.paraphrases,
            "neighbours": req.neighbours,
            "stats_tokens": report_edit.stats_tokens,
            "k_star_norm": report_edit.k_star_norm,
            "v0_norm": report_edit.v0_norm,
            "delta_norm": report_edit.delta_norm,
            "generation_before": generation_before,
            "generation_after": generation_after,
            "context_templates": templates,
        }),
        vec![req.request.prompt.clone()],
    );
    let run = super::store_edit_run(store, "edit", params, ledger, |run| {
        run.write_rows("probes", &probes)?;
        run.write_rows("steps", &steps)?;
        Ok(())
    })?;
    Ok(RomeReport {
        run,
        id,
        request: req.request.clone(),
        layer: report_edit.layer,
        key: report_edit.key,
        k_star_norm: report_edit.k_star_norm,
        v0_norm: report_edit.v0_norm,
        delta_norm: report_edit.delta_norm,
        stats_tokens: report_edit.stats_tokens,
        seconds: report_edit.seconds,
        steps: report_edit.steps,
        probes,
        generation_before,
        generation_after,
    })
}

/// A prompt's top-1 token with its probability, and p(target) over all target tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub top: String,
    pub top_prob: f64,
    pub target_prob: f64,
}

/// Probe one prompt for `target`.
pub fn probe<B: Backend>(lm: &LanguageModel<B>, prompt: &str, target: &str) -> Result<Probe> {
    let top = lm.top_k(prompt, 1)?;
    let (token, prob) = top
        .first()
        .map(|t| (t.token.clone(), t.prob))
        .unwrap_or_default();
    let forced = teacher_force(lm, &[prompt.to_string()], target)?;
    let logp: f32 = forced
        .first()
        .map_or(f32::NEG_INFINITY, |f| f.logp.iter().sum());
    Ok(Probe {
        top: token,
        top_prob: prob as f64,
        target_prob: logp.exp() as f64,
    })
}

/// Each probe's prompt with its readings before and after an edit.
pub(crate) fn probe_rows(
    prompts: Vec<(ProbeKind, String)>,
    before: Vec<Probe>,
    after: Vec<Probe>,
) -> Vec<ProbeRow> {
    prompts
        .into_iter()
        .zip(before.into_iter().zip(after))
        .map(|((kind, prompt), (b, a))| ProbeRow {
            kind: kind.name().into(),
            prompt,
            before_top: b.top,
            before_top_prob: b.top_prob,
            after_top: a.top,
            after_top_prob: a.top_prob,
            before_target: b.target_prob,
            after_target: a.target_prob,
        })
        .collect()
}

pub(crate) fn probe_all<B: Backend>(
    lm: &LanguageModel<B>,
    prompts: &[(ProbeKind, String)],
    target: &str,
) -> Result<Vec<Probe>> {
    prompts.iter().map(|(_, p)| probe(lm, p, target)).collect()
}

/// The prompt and up to `tokens` greedy tokens after it (fewer where the context ends).
pub fn greedy<B: Backend>(lm: &LanguageModel<B>, prompt: &str, tokens: usize) -> Result<String> {
    if tokens == 0 {
        return Ok(String::new());
    }
    let ids = lm.encode_prompt(prompt)?;
    let room = lm.model.config.n_ctx.saturating_sub(ids.len()).min(tokens);
    if room == 0 {
        return Ok(String::new());
    }
    let cfg = GenerateConfig {
        max_new_tokens: room,
        sampling: Sampling::Greedy,
        stop_at_eos: true,
        kv_cache: true,
    };
    let mut all = ids.clone();
    all.extend(generate(&lm.model, &[ids], &cfg)?.into_iter().flatten());
    Ok(lm.tokenizer.decode(&all)?)
}

/// Check the request before any long work: its subject is in its prompt.
pub fn check_request(req: &RomeRequest) -> Result<()> {
    req.request.template()?;
    if req.request.target.trim().is_empty() {
        bail!("the target is empty; give the answer the model should produce");
    }
    Ok(())
}
