//! The logit lens job (nostalgebraist 2020): every layer's residual at every
//! position read through the final norm and unembedding, the top token of each
//! cell stored as a `lens` run.

use engram_datasets::figures::LensCell;
use engram_datasets::{RunInfo, RunStore};
use engram_model::burn_tensor::backend::Backend;
use engram_model::LanguageModel;

use super::run_params;
use crate::error::Result;
use crate::lens::{logit_lens, LensSite};

/// What the lens is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct LensRequest {
    pub prompt: String,
    pub site: LensSite,
    /// Tokens kept per cell in the report (the stored table keeps the top one).
    pub k: usize,
}

/// The stored grid: one cell per (position, layer), position-major.
#[derive(Debug, Clone)]
pub struct LensReport {
    pub run: RunInfo,
    pub tokens: Vec<String>,
    pub n_layers: usize,
    pub cells: Vec<LensCell>,
    /// `[position][layer]`: the request's top `k` (token, probability).
    pub top: Vec<Vec<Vec<(u32, f32)>>>,
    /// The first layer whose lens already ranks the model's own last-position
    /// prediction first.
    pub first_top1_layer: Option<usize>,
    /// The model's own top-1 token at the last position.
    pub final_token: u32,
}

impl LensReport {
    pub fn cell(&self, position: usize, layer: usize) -> Option<&LensCell> {
        self.cells.get(position * self.n_layers + layer)
    }
}

/// Decode every layer's residual at every position; store the top token per cell.
pub fn run_lens<B: Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    req: &LensRequest,
    store: &RunStore,
) -> Result<LensReport> {
    let ids = lm.encode_prompt(&req.prompt)?;
    let lens = logit_lens(&lm.model, &ids, req.site)?;
    let mut cells = Vec::new();
    let mut tops = Vec::with_capacity(ids.len());
    for (position, &id) in ids.iter().enumerate() {
        let at = lens.top_k(position, req.k.max(1));
        for (layer, top) in at.iter().enumerate() {
            let Some(&(tok, prob)) = top.first() else {
                continue;
            };
            cells.push(LensCell {
                layer: layer as i64,
                position: position as i64,
                input_token: lm.tokenizer.token_text(id),
                top_token: lm.tokenizer.token_text(tok),
                prob: prob as f64,
            });
        }
        tops.push(at);
    }
    let last = ids.len() - 1;
    let logits = lm.next_logits(&req.prompt)?;
    let final_token = engram_model::lm::top_k_from_logits(&logits, 1, |_| String::new())
        .first()
        .map_or(0, |t| t.id);
    let params = run_params(
        lm,
        model,
        serde_json::json!({"prompt": req.prompt, "site": format!("{:?}", req.site)}),
    )?;
    let run = store.create("lens", params)?;
    run.write_rows("lens", &cells)?;
    let run = run.finish()?;
    Ok(LensReport {
        run,
        tokens: ids.iter().map(|&t| lm.tokenizer.token_text(t)).collect(),
        n_layers: lm.model.config.n_layers,
        cells,
        top: tops,
        first_top1_layer: lens.first_top1_layer(last, final_token),
        final_token,
    })
}
