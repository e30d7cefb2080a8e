//! The FT-L job: one request fine-tuned into one layer (see [`crate::ft`]),
//! probed before and after, applied through the ledger, stored as an `edit`
//! run whose method is `ft-l`.

use burn_tensor::backend::Backend;
use engram_datasets::{RunInfo, RunStore};
use engram_model::{Control, LanguageModel};
use serde::{Deserialize, Serialize};

use super::rome::{greedy, probe_all, probe_rows, ProbeKind, ProbeRow};
use crate::error::Result;
use crate::ft::{ft_edit, FtHparams};
use crate::rome::EditRequest;
use crate::Ledger;

/// What an FT-L edit is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct FtRequest {
    pub request: EditRequest,
    pub hparams: FtHparams,
    pub paraphrases: Vec<String>,
    pub neighbours: Vec<String>,
    pub generate_tokens: usize,
}

/// One optimisation step; a row of `losses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossRow {
    pub step: i64,
    pub nll: f64,
}

/// A finished, applied and stored FT-L edit.
#[derive(Debug, Clone, PartialEq)]
pub struct FtReport {
    pub run: RunInfo,
    pub id: usize,
    pub layer: usize,
    /// The target's mean NLL before each step and after the last.
    pub losses: Vec<f32>,
    /// max |ΔW| (at most the bound) and ‖ΔW‖_F.
    pub delta_max: f32,
    pub delta_fro: f64,
    pub probes: Vec<ProbeRow>,
    pub seconds: f64,
    pub generation_before: String,
    pub generation_after: String,
}

/// Fine-tune, apply through `ledger`, probe and store. Progress: `FT-L` steps.
pub fn run_ft<B: Backend>(
    lm: &mut LanguageModel<B>,
    model: &str,
    ledger: &mut Ledger<B>,
    req: &FtRequest,
    store: &RunStore,
    ctl: &Control,
) -> Result<FtReport> {
    req.hparams.check()?;
    let target = &req.request.target;
    let prompts: Vec<(ProbeKind, String)> =
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
    let before = probe_all(lm, &prompts, target)?;
    let generation_before = greedy(lm, &req.request.prompt, req.generate_tokens)?;
    let edit = ft_edit(lm, &req.request, &req.hparams, &mut |step, total| {
        ctl.tick("FT-L", step as u64 + 1, total as u64)
    })?;
    let (layer, losses, seconds) = (edit.layer, edit.losses.clone(), edit.seconds);
    let delta_max = edit.delta.iter().fold(0f32, |m, x| m.max(x.abs()));
    let delta_fro = crate::EditNorms::dense(&edit.delta, 1.0).delta_fro;
    let id = ledger.push_ft(&mut lm.model, edit)?;
    let after = probe_all(lm, &prompts, target)?;
    let generation_after = greedy(lm, &req.request.prompt, req.generate_tokens)?;
    let probes = probe_rows(prompts, before, after);
    let rows: Vec<LossRow> = losses
        .iter()
        .enumerate()
        .map(|(i, &l)| LossRow {
            step: i as i64,
            nll: l as f64,
        })
        .collect();
    let params = super::run_params::<B>(
        model,
        ledger.base_model_hash.clone(),
        serde_json::json!({
            "method": "ft-l",
            "request": req.request,
            "hparams": req.hparams,
            "paraphrases": req.paraphrases,
            "neighbours": req.neighbours,
            "delta_max": delta_max,
            "delta_fro": delta_fro,
            "generation_before": generation_before,
            "generation_after": generation_after,
        }),
        vec![req.request.prompt.clone()],
    );
    let run = super::store_edit_run(store, "edit", params, ledger, |run| {
        run.write_rows("probes", &probes)?;
        run.write_rows("losses", &rows)?;
        Ok(())
    })?;
    Ok(FtReport {
        run,
        id,
        layer,
        losses,
        delta_max,
        delta_fro,
        probes,
        seconds,
        generation_before,
        generation_after,
    })
}
