//! Step 3 (MEMIT Alg. 1, lines 6–13; eq. 14): for each edited layer l_i in
//! order, with K the requests' keys there and R = (z − h) / (L − i) the share of
//! the residual still missing, the update is Δ = R Kᵀ (λC + K Kᵀ)⁻¹, solved in
//! f64 by Cholesky (never an inverse). The layer's entry is applied before the
//! next layer's keys are read, as in MEMIT's code. In the ledger each layer is
//! stored as factors: Δ = Σ_i u_i r_iᵀ with u_i = (λC + K Kᵀ)⁻¹ k_i.

use std::time::Instant;

use burn_tensor::backend::Backend;
use engram_model::LanguageModel;
use serde::{Deserialize, Serialize};

use super::compute_ks::{compute_ks, current_zs};
use super::compute_z::Z;
use super::MemitHparams;
use crate::error::{EditError, Result};
use crate::ledger::Ledger;
use crate::linalg::{add_outer_lower, cholesky, cholesky_solve_many};
use crate::rome::EditRequest;
use crate::stats::LayerStats;

/// C = E[k kᵀ] of one layer, `[dim, dim]` row-major.
#[derive(Debug, Clone)]
pub struct LayerMom2 {
    pub layer: usize,
    pub dim: usize,
    /// Key vectors the statistics were computed from (0: the identity).
    pub tokens: u64,
    pub mom2: Vec<f64>,
}

impl LayerMom2 {
    pub fn new(stats: &LayerStats) -> Self {
        Self {
            layer: stats.key.layer,
            dim: stats.dim,
            tokens: stats.key.tokens,
            mom2: stats.mom2(),
        }
    }

    /// The identity (`mom2_adjustment: false`).
    pub fn identity(layer: usize, dim: usize) -> Self {
        let mut mom2 = vec![0f64; dim * dim];
        for i in 0..dim {
            mom2[i * dim + i] = 1.0;
        }
        Self {
            layer,
            dim,
            tokens: 0,
            mom2,
        }
    }
}

/// What a request's z optimisation ended with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ZSummary {
    pub delta_norm: f32,
    pub steps: usize,
    pub loss: f32,
    pub target_prob: f32,
}

/// One layer of a MEMIT batch, as stored in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemitLayerEdit {
    pub layer: usize,
    pub requests: Vec<EditRequest>,
    /// `[n][d_mlp]`: (λC + K Kᵀ)⁻¹ k_i.
    pub u: Vec<f32>,
    /// `[n][d_model]`: (z_i − h_i) / (L − i).
    pub r: Vec<f32>,
    pub lambda: f64,
    /// 1 / (L − i): this layer's share of the remaining residual.
    pub share: f64,
    /// Mean ‖z_i − h_i‖ before this layer's update.
    pub residual_norm: f32,
    pub seconds: f64,
    pub stats_tokens: u64,
    /// Per request, on the last layer's entry only.
    #[serde(default)]
    pub z: Vec<ZSummary>,
    /// AlphaEdit: the batch's keys at this layer, read after the batch was
    /// applied (`[n][d_mlp]`); while the entry is applied they are part of the
    /// running K_p of later batches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_keys: Vec<f32>,
}

/// How each layer's update is solved.
#[derive(Debug, Clone, Copy)]
pub enum Solver<'a> {
    /// MEMIT: (λC + K Kᵀ) Δ = R Kᵀ.
    Memit,
    /// AlphaEdit: within each layer's null space (in `hp.layers` order), with
    /// the keys of applied earlier AlphaEdit batches and the L2 term.
    AlphaEdit {
        spaces: &'a [crate::alphaedit::NullSpace],
        l2: f64,
    },
}

impl Solver<'_> {
    /// The ledger's method name.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Memit => "memit",
            Self::AlphaEdit { .. } => "alphaedit",
        }
    }
}

/// The factors of one layer's update: `([n][d_mlp], [n][d_model])`.
/// `mom2` is C; only its lower triangle is read.
pub fn layer_update(
    mom2: &[f64],
    dim: usize,
    lambda: f64,
    keys: &[Vec<f32>],
    targets: &[Vec<f32>],
    share: f64,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = keys.len();
    if targets.len() != n {
        return Err(EditError::Invalid(format!(
            "{n} keys but {} targets",
            targets.len()
        )));
    }
    if mom2.len() != dim * dim {
        return Err(EditError::Invalid(format!(
            "C has {} entries, expected {dim} x {dim}",
            mom2.len()
        )));
    }
    if let Some(k) = keys.iter().find(|k| k.len() != dim) {
        return Err(EditError::Invalid(format!(
            "a key has {} entries, C is {dim} x {dim}",
            k.len()
        )));
    }
    let mut m: Vec<f64> = mom2.iter().map(|c| lambda * c).collect();
    let k: Vec<f64> = keys.iter().flatten().map(|&x| f64::from(x)).collect();
    add_outer_lower(&mut m, dim, &k, n);
    let l = cholesky(&m, dim)?;
    drop(m);
    let adj = cholesky_solve_many(&l, dim, &k, n);
    let u: Vec<f32> = adj.iter().map(|&x| x as f32).collect();
    factors(u, targets, share, "the MEMIT update")
}

/// The factors `(u, r)` with r_i = share · target_i, refused where either
/// holds a non-finite value.
pub(crate) fn factors(
    u: Vec<f32>,
    targets: &[Vec<f32>],
    share: f64,
    what: &'static str,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let r: Vec<f32> = targets
        .iter()
        .flatten()
        .map(|&x| (f64::from(x) * share) as f32)
        .collect();
    if let Some(bad) = u.iter().chain(&r).find(|x| !x.is_finite()) {
        return Err(EditError::NonFinite {
            what,
            value: *bad,
            step: 0,
        });
    }
    Ok((u, r))
}

/// How a MEMIT batch went.
#[derive(Debug, Clone, PartialEq)]
pub struct MemitOutcome {
    /// The ledger batch: toggle or remove any of `ids` to act on all.
    pub batch: usize,
    pub ids: Vec<usize>,
    /// Reading keys and residuals, and solving, over all layers.
    pub keys_seconds: f64,
    pub solve_seconds: f64,
    /// Mean ‖z − h‖ before each layer, and after the last.
    pub residual_norms: Vec<f32>,
}

fn mean_norm(v: &[Vec<f32>]) -> f32 {
    v.iter()
        .map(|x| x.iter().map(|a| a * a).sum::<f32>().sqrt())
        .sum::<f32>()
        / v.len().max(1) as f32
}

/// Spread `zs` (from [`super::compute_zs`]) over `hp`'s layers and apply the
/// batch through `ledger`. `covs` holds C for each of `hp.layers`, in order;
/// `groups` are the context prefixes in groups. On any error the layers already
/// applied are removed again, so the model is as it was. `progress(layer
/// index, layers)` returns false to cancel.
#[allow(clippy::too_many_arguments)]
pub fn apply_memit<B: Backend>(
    lm: &mut LanguageModel<B>,
    ledger: &mut Ledger<B>,
    requests: &[EditRequest],
    zs: &[Z],
    hp: &MemitHparams,
    covs: &[LayerMom2],
    groups: &[Vec<String>],
    solver: &Solver<'_>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<MemitOutcome> {
    let z_layer = hp.z_layer()?;
    if let Solver::AlphaEdit { spaces, .. } = solver {
        let layers: Vec<usize> = spaces.iter().map(|s| s.layer).collect();
        if layers != hp.layers || spaces.iter().any(|s| s.dim != lm.model.config.d_mlp) {
            return Err(EditError::Invalid(format!(
                "null spaces for layers {layers:?}, edited layers {:?}",
                hp.layers
            )));
        }
    }
    if zs.len() != requests.len() {
        return Err(EditError::Invalid(format!(
            "{} targets for {} requests",
            zs.len(),
            requests.len()
        )));
    }
    let (n_layers, d_mlp) = (lm.model.config.n_layers, lm.model.config.d_mlp);
    if z_layer >= n_layers {
        return Err(EditError::Layer {
            layer: z_layer,
            n_layers,
        });
    }
    if covs.len() != hp.layers.len() {
        return Err(EditError::Invalid(format!(
            "statistics for {} layers, {} edited",
            covs.len(),
            hp.layers.len()
        )));
    }
    for (c, &l) in covs.iter().zip(&hp.layers) {
        if c.layer != l || c.dim != d_mlp {
            return Err(EditError::StatsMismatch {
                what: format!("layer {} with {} keys", c.layer, c.dim),
                expected: format!("layer {l} with {d_mlp}"),
            });
        }
    }
    let d_model = lm.model.config.d_model;
    if let Some((i, z)) = zs.iter().enumerate().find(|(_, z)| z.z.len() != d_model) {
        return Err(EditError::Invalid(format!(
            "z of request {i} has {} entries, the model's residual {d_model}",
            z.z.len()
        )));
    }
    let batch = ledger.next_batch();
    let mut ids = Vec::new();
    let result = (|| -> Result<MemitOutcome> {
        let (mut keys_seconds, mut solve_seconds) = (0.0, 0.0);
        let mut residual_norms = Vec::new();
        let n_edit = hp.layers.len();
        for (i, (&layer, cov)) in hp.layers.iter().zip(covs).enumerate() {
            if !progress(i, n_edit) {
                return Err(engram_model::Cancelled.into());
            }
            let t = Instant::now();
            let ks = compute_ks(lm, requests, groups, layer)?;
            let cur = current_zs(lm, requests, z_layer)?;
            keys_seconds += t.elapsed().as_secs_f64();
            let targets: Vec<Vec<f32>> = zs
                .iter()
                .zip(&cur)
                .map(|(z, h)| z.z.iter().zip(h).map(|(a, b)| a - b).collect())
                .collect();
            residual_norms.push(mean_norm(&targets));
            let t = Instant::now();
            let share = 1.0 / (n_edit - i) as f64;
            let lambda = if hp.mom2_adjustment {
                hp.mom2_update_weight
            } else {
                1.0
            };
            let (u, r) = match solver {
                Solver::Memit => layer_update(&cov.mom2, cov.dim, lambda, &ks, &targets, share)?,
                Solver::AlphaEdit { spaces, l2 } => crate::alphaedit::layer_update(
                    &spaces[i],
                    *l2,
                    &ks,
                    &ledger.alphaedit_keys(layer),
                    &targets,
                    share,
                )?,
            };
            let seconds = t.elapsed().as_secs_f64();
            solve_seconds += seconds;
            let z = if layer == z_layer {
                zs.iter()
                    .map(|z| ZSummary {
                        delta_norm: z.delta_norm,
                        steps: z.steps.len(),
                        loss: z.steps.last().map_or(f32::NAN, |s| s.total),
                        target_prob: z.steps.last().map_or(f32::NAN, |s| s.target_prob),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let edit = MemitLayerEdit {
                layer,
                requests: requests.to_vec(),
                u,
                r,
                lambda,
                share,
                residual_norm: residual_norms[i],
                seconds,
                stats_tokens: cov.tokens,
                z,
                cache_keys: Vec::new(),
            };
            ids.push(ledger.push_batch_layer(&mut lm.model, solver.method(), edit, batch)?);
        }
        if let Solver::AlphaEdit { .. } = solver {
            // AlphaEdit's running sum: the keys as the edited model reads them.
            for (&layer, &id) in hp.layers.iter().zip(&ids) {
                let ks = compute_ks(lm, requests, groups, layer)?;
                ledger.set_cache_keys(id, ks.concat())?;
            }
        }
        let cur = current_zs(lm, requests, z_layer)?;
        let left: Vec<Vec<f32>> = zs
            .iter()
            .zip(&cur)
            .map(|(z, h)| z.z.iter().zip(h).map(|(a, b)| a - b).collect())
            .collect();
        residual_norms.push(mean_norm(&left));
        Ok(MemitOutcome {
            batch,
            ids: ids.clone(),
            keys_seconds,
            solve_seconds,
            residual_norms,
        })
    })();
    let Err(e) = result else {
        return result;
    };
    // The error that stopped the batch is the one to report; a failed
    // rollback is added to it.
    if let Some(&first) = ids.first() {
        if let Err(undo) = ledger.remove(&mut lm.model, first) {
            return Err(EditError::Invalid(format!(
                "{e}; removing the layers already applied also failed: {undo}"
            )));
        }
    }
    Err(e)
}
