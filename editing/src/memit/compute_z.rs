//! Step 1 (MEMIT Alg. 1, lines 2–5): z_i = h_i + δ_i, the residual leaving the
//! last edited layer at the subject's last token that makes the model say
//! request i's target. δ_i is ROME's v* optimisation with the residual in place
//! of the MLP output (its norm sets the weight decay and the clamp), run for
//! `chunk` requests at a time in one batch, so memory stays bounded for
//! thousands of requests.

use std::time::Instant;

use burn_tensor::backend::Backend;
use engram_model::LanguageModel;
use serde::{Deserialize, Serialize};

use super::MemitHparams;
use crate::error::{EditError, Result};
use crate::rome::compute_v::{optimise_deltas, DeltaJob, VStep};
use crate::rome::EditRequest;

/// One request's target residual.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Z {
    /// `[d_model]`
    pub z: Vec<f32>,
    pub delta_norm: f32,
    pub z0_norm: f32,
    pub steps: Vec<VStep>,
}

/// z for every request at `hp`'s last layer. `templates` are the flat context
/// prefixes. `progress(requests done, total)` returns false to cancel.
pub fn compute_zs<B: Backend>(
    lm: &LanguageModel<B>,
    requests: &[EditRequest],
    hp: &MemitHparams,
    templates: &[String],
    chunk: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(Vec<Z>, f64)> {
    let start = Instant::now();
    let layer = hp.z_layer()?;
    // z₀ is read from each request's first row, which must be the bare prompt.
    if templates.first().map(String::as_str) != Some("{}") {
        return Err(EditError::Invalid(format!(
            "MEMIT's templates must start with \"{{}}\" (the bare prompt), not {:?}",
            templates.first()
        )));
    }
    let opts = hp.delta_options();
    let mut out = Vec::with_capacity(requests.len());
    let chunk = chunk.max(1);
    for (c, part) in requests.chunks(chunk).enumerate() {
        if !progress(out.len(), requests.len()) {
            return Err(EditError::Cancelled);
        }
        let mut jobs = Vec::with_capacity(part.len());
        for (k, r) in part.iter().enumerate() {
            let index = c * chunk + k;
            let bad = |source: EditError| EditError::BadRequest {
                index,
                subject: r.subject.clone(),
                source: Box::new(source),
            };
            let ids = lm
                .target_tokens(&r.prompt, &r.target)
                .map_err(|e| bad(e.into()))?;
            jobs.push(DeltaJob::new(lm, &r.prompt, &r.subject, &ids, templates).map_err(bad)?);
        }
        let done = out.len();
        let total = requests.len();
        let results = optimise_deltas(lm, &jobs, layer, &opts, None, &mut |_, _| {
            progress(done, total)
        })?;
        for r in results {
            let z: Vec<f32> = r.resid0.iter().zip(&r.delta).map(|(a, b)| a + b).collect();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            out.push(Z {
                delta_norm: norm(&r.delta),
                z0_norm: norm(&r.resid0),
                z,
                steps: r.steps,
            });
        }
    }
    progress(out.len(), requests.len());
    Ok((out, start.elapsed().as_secs_f64()))
}
