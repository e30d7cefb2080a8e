//! Step 4: the rank-one update (ROME eq. 2). With u = C⁻¹k*/‖C⁻¹k*‖ and
//! r = (v* − (kᵀW + b)) / (kᵀu), W' = W + u rᵀ maps k to v*. ROME's code takes
//! k from the unprefixed prompt here while u uses the prefix-averaged k*;
//! r-ROME (Gupta et al. 2024) takes k = k* in both, which keeps sequential edits
//! from collapsing. `KeyChoice` selects.

use std::time::Instant;

use burn_tensor::backend::Backend;
use burn_tensor::{Tensor, TensorData};
use engram_model::LanguageModel;
use serde::{Deserialize, Serialize};

use super::compute_u::{compute_u, subject_keys, KeyCovariance};
use super::compute_v::{compute_v, VStep};
use super::{EditRequest, KeyChoice, RomeHparams};
use crate::error::{EditError, Result};

/// A computed (not yet applied) ROME edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RomeEdit {
    pub request: EditRequest,
    pub layer: usize,
    pub key: KeyChoice,
    /// `[d_mlp]`, unit norm.
    pub u: Vec<f32>,
    /// `[d_model]`
    pub r: Vec<f32>,
    pub k_star_norm: f32,
    pub v0_norm: f32,
    pub delta_norm: f32,
    pub steps: Vec<VStep>,
    pub seconds: f64,
    /// Statistics behind u (0: identity).
    pub stats_tokens: u64,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// kᵀW + b of the edited projection, `[d_model]`.
fn project<B: Backend>(lm: &LanguageModel<B>, layer: usize, k: &[f32]) -> Result<Vec<f32>> {
    let fc = &lm.model.blocks[layer].mlp.fc_out;
    let kt = Tensor::<B, 2>::from_data(TensorData::new(k.to_vec(), [1, k.len()]), &lm.model.device);
    let mut out = kt.matmul(fc.weight.clone());
    if let Some(bias) = &fc.bias {
        out = out + bias.clone().unsqueeze::<2>();
    }
    out.into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| EditError::Invalid(format!("reading kᵀW: {e:?}")))
}

/// Compute a ROME edit of `request` at `hp`'s layer. `templates` come from
/// [`super::context::context_templates`]; `cov` from the layer's statistics.
pub fn rome_edit<B: Backend>(
    lm: &LanguageModel<B>,
    request: &EditRequest,
    hp: &RomeHparams,
    cov: &KeyCovariance,
    templates: &[String],
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<RomeEdit> {
    let start = Instant::now();
    let layer = hp.layer()?;
    let n_layers = lm.model.config.n_layers;
    if layer >= n_layers {
        return Err(EditError::Layer { layer, n_layers });
    }
    if cov.layer != layer || cov.dim != lm.model.config.d_mlp {
        return Err(EditError::StatsMismatch {
            what: format!("layer {} with {} keys", cov.layer, cov.dim),
            expected: format!("layer {layer} with {}", lm.model.config.d_mlp),
        });
    }
    request.template()?;
    let target_ids = lm.target_tokens(&request.prompt, &request.target)?;
    let top = lm.top_k(&request.prompt, 1)?;
    if target_ids.len() == 1 && top.first().map(|t| t.id) == Some(target_ids[0]) {
        return Err(EditError::TargetIsCurrent {
            prompt: request.prompt.clone(),
            target: request.target.clone(),
        });
    }
    let keys = subject_keys(lm, &request.prompt, &request.subject, templates, layer)?;
    let u = compute_u(cov, &keys.k_star)?;
    let v = compute_v(
        lm,
        &request.prompt,
        &request.subject,
        &target_ids,
        templates,
        layer,
        hp,
        progress,
    )?;
    let k = match hp.key {
        KeyChoice::Consistent => &keys.k_star,
        KeyChoice::Original => &keys.k_plain,
    };
    let current = project(lm, layer, k)?;
    let denom = dot(k, &u);
    let r: Vec<f32> = v
        .v_star
        .iter()
        .zip(&current)
        .map(|(a, b)| (a - b) / denom)
        .collect();
    if !denom.is_finite() || denom.abs() < 1e-12 || r.iter().any(|x| !x.is_finite()) {
        return Err(EditError::NonFinite {
            what: "the update's right vector",
            value: denom,
            step: v.steps.len(),
        });
    }
    let delta_norm = v
        .v_star
        .iter()
        .zip(&v.v0)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    Ok(RomeEdit {
        request: request.clone(),
        layer,
        key: hp.key,
        u,
        r,
        k_star_norm: dot(&keys.k_star, &keys.k_star).sqrt(),
        v0_norm: dot(&v.v0, &v.v0).sqrt(),
        delta_norm,
        steps: v.steps,
        seconds: start.elapsed().as_secs_f64(),
        stats_tokens: cov.tokens,
    })
}
