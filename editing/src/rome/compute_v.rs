//! Step 3: the value. v* = v₀ + δ, where v₀ is the edited MLP's output at the
//! subject's last token and δ, added there in every prefixed prompt, is found
//! with Adam through burn's autodiff (ROME eq. 4). The loss is the new target's
//! NLL over the prefixed prompts, plus `kl_factor` × KL from the unedited model
//! on "{subject} is a" (at the subject's last token, as ROME's code computes it),
//! plus `v_weight_decay` × ‖δ‖ / ‖v₀‖². ‖δ‖ is clamped to `clamp_norm_factor`·‖v₀‖,
//! and the loop stops early below 5e-2.

use burn_autodiff::Autodiff;
use burn_tensor::activation::log_softmax;
use burn_tensor::backend::Backend;
use burn_tensor::{Int, Tensor, TensorData};
use engram_model::hooks::{BlockSite, NoHooks};
use engram_model::layers::{ForwardCtx, LayerKv};
use engram_model::train::lift_kv;
use engram_model::{Batch, LanguageModel, Transformer};
use serde::{Deserialize, Serialize};

use super::compute_u::{activations_at, subject_rows};
use super::RomeHparams;
use crate::error::{EditError, Result};

/// The loss ROME prints at each step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VStep {
    pub nll: f32,
    pub kl: f32,
    pub weight_decay: f32,
    pub total: f32,
    /// Mean probability of the new target's tokens over the prompts.
    pub target_prob: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VResult {
    /// `[d_model]`
    pub v_star: Vec<f32>,
    /// `[d_model]`: the output before the edit, in the unprefixed prompt.
    pub v0: Vec<f32>,
    pub steps: Vec<VStep>,
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| EditError::Invalid(format!("reading a tensor: {e:?}")))
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Optimise δ at `layer` so that the model says `target_ids` after each of the
/// `templates` (each with one `{}` for `prompt`). `progress(step, total)`
/// returns false to cancel.
#[allow(clippy::too_many_arguments)]
pub fn compute_v<B: Backend>(
    lm: &LanguageModel<B>,
    prompt: &str,
    subject: &str,
    target_ids: &[u32],
    templates: &[String],
    layer: usize,
    hp: &RomeHparams,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<VResult> {
    let n_t = target_ids.len();
    if n_t == 0 {
        return Err(EditError::Model(engram_model::ModelError::EmptyTarget));
    }
    // Rewriting prompts: each prefixed prompt followed by all but the last target token.
    let texts: Vec<String> = templates
        .iter()
        .map(|t| t.replacen("{}", prompt, 1))
        .collect();
    let mut rows = subject_rows(lm, &texts, subject)?;
    let prompt_lens: Vec<usize> = rows.iter().map(|(ids, _)| ids.len()).collect();
    for (ids, _) in &mut rows {
        ids.extend_from_slice(&target_ids[..n_t - 1]);
    }
    let n_rewrite = rows.len();
    let kl_text = format!("{subject} is a");
    rows.extend(subject_rows(lm, &[kl_text], subject)?);
    let n_ctx = lm.model.config.n_ctx;
    if let Some(long) = rows.iter().map(|(ids, _)| ids.len()).max() {
        if long > n_ctx {
            return Err(EditError::Model(engram_model::ModelError::PromptTooLong {
                len: long,
                n_ctx,
            }));
        }
    }

    // v₀: the MLP output at the subject's last token of the unprefixed prompt.
    let plain = subject_rows(lm, &[prompt.to_string()], subject)?;
    let v0 = activations_at(lm, &plain, layer, BlockSite::MlpOut)?.remove(0);
    let v0_norm = norm(&v0);

    type Ad<B> = Autodiff<B>;
    let model: Transformer<Ad<B>> = Transformer::lift(&lm.model);
    let device = lm.model.device.clone();
    let d = lm.model.config.d_model;
    let pad = lm.model.config.eos_token_id.unwrap_or(0);
    // δ reaches only each row's subject token and what follows it (attention is
    // causal). Split every row there: the heads, left-padded so that all rows
    // split at one column, run once without autodiff and leave their keys and
    // values; the tails run blocks 0..=layer once too, and only blocks above
    // the edit under autodiff, on top of those keys and values.
    let split = rows.iter().map(|(_, idx)| *idx).max().unwrap_or(0);
    let tail_len = rows
        .iter()
        .map(|(ids, idx)| ids.len() - idx)
        .max()
        .unwrap_or(0);
    let b = rows.len();
    let mut head = Batch {
        ids: vec![],
        keep: vec![],
        positions: vec![],
    };
    let mut tail = head.clone();
    for (ids, idx) in &rows {
        let n_pad = split - idx;
        let mut h = vec![pad; n_pad];
        h.extend_from_slice(&ids[..*idx]);
        head.ids.push(h);
        head.keep.push((0..split).map(|i| i >= n_pad).collect());
        head.positions
            .push((0..split).map(|i| i.saturating_sub(n_pad)).collect());
        let mut t = ids[*idx..].to_vec();
        let real = t.len();
        t.resize(tail_len, pad);
        tail.ids.push(t);
        tail.keep.push((0..tail_len).map(|i| i < real).collect());
        tail.positions.push((*idx..idx + tail_len).collect());
    }
    let n_layers = lm.model.config.n_layers;
    let cfg = &lm.model.config;
    let mut kv = vec![LayerKv::<B>::default(); n_layers];
    if split > 0 {
        let ctx = ForwardCtx::new(cfg, &head.positions, &head.keep, &device);
        let x = lm.model.embed(&head, &mut NoHooks)?;
        lm.model
            .run_blocks_cached(0..n_layers, x, &ctx, &mut kv, &mut NoHooks)?;
    }
    let keep: Vec<Vec<bool>> = head
        .keep
        .iter()
        .zip(&tail.keep)
        .map(|(h, t)| h.iter().chain(t).copied().collect())
        .collect();
    let ctx = ForwardCtx::<B>::new(cfg, &tail.positions, &keep, &device);
    let x = lm.model.embed(&tail, &mut NoHooks)?;
    // [batch, tail, d_model]: the residual stream leaving the edited block.
    let resid = lm
        .model
        .run_blocks_cached(0..layer + 1, x, &ctx, &mut kv, &mut NoHooks)?;
    let resid = Tensor::<Ad<B>, 3>::from_inner(resid);
    let kv: Vec<LayerKv<Ad<B>>> = kv.iter().map(lift_kv).collect();
    let ctx = ForwardCtx::<Ad<B>>::new(cfg, &tail.positions, &keep, &device);
    let s = tail_len;
    let mut mask = vec![0f32; b * s];
    for r in 0..b {
        mask[r * s] = 1.0;
    }
    let mask = Tensor::<Ad<B>, 3>::from_data(TensorData::new(mask, [b, s, 1]), &device);
    // Tail positions whose logits the loss reads: those predicting a target
    // token, then the KL prompt's subject token. Only these are unembedded.
    let (mut pick, mut want) = (Vec::new(), Vec::new());
    for (r, len) in prompt_lens.iter().enumerate() {
        for (j, &t) in target_ids.iter().enumerate() {
            pick.push((r * s + len - 1 + j - rows[r].1) as i64);
            want.push(t as i64);
        }
    }
    let n_pick = pick.len();
    pick.push((n_rewrite * s) as i64);
    let pick = Tensor::<Ad<B>, 1, Int>::from_data(TensorData::new(pick, [n_pick + 1]), &device);
    let want = Tensor::<Ad<B>, 2, Int>::from_data(TensorData::new(want, [n_pick, 1]), &device);
    let target_rows = Tensor::<Ad<B>, 1, Int>::from_data(
        TensorData::new((0..n_pick as i64).collect(), [n_pick]),
        &device,
    );
    let kl_pick =
        Tensor::<Ad<B>, 1, Int>::from_data(TensorData::new(vec![n_pick as i64], [1]), &device);

    let mut delta = vec![0f32; d];
    let (mut m, mut v) = (vec![0f32; d], vec![0f32; d]);
    let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let mut kl_init: Option<Tensor<B, 2>> = None;
    let mut steps = Vec::new();
    let total_steps = hp.v_num_grad_steps.max(1);
    for it in 0..total_steps {
        if !progress(it, total_steps) {
            return Err(EditError::Cancelled);
        }
        let delta_t = Tensor::<Ad<B>, 1>::from_data(TensorData::new(delta.clone(), [d]), &device)
            .require_grad();
        // δ at the subject's last token of every row, on top of the MLP output.
        let x = resid.clone() + mask.clone() * delta_t.clone().reshape([1, 1, d]);
        let mut kv = kv.clone();
        let x = model.run_blocks_cached(layer + 1..n_layers, x, &ctx, &mut kv, &mut NoHooks)?;
        let x = x.reshape([b * s, d]).select(0, pick.clone());
        // [1, n_pick + 1, vocab]
        let logits = model.unembed(x.reshape([1, n_pick + 1, d]), &mut NoHooks)?;
        let v_size = logits.dims()[2];
        let flat = logits.reshape([n_pick + 1, v_size]);
        let logp = log_softmax(flat.clone().select(0, target_rows.clone()), 1);
        let picked = logp.gather(1, want.clone());
        let nll = picked
            .clone()
            .sum()
            .neg()
            .div_scalar((n_t * n_rewrite) as f32);
        let kl_logp = log_softmax(flat.select(0, kl_pick.clone()), 1);
        let init = kl_init
            .get_or_insert_with(|| kl_logp.clone().inner())
            .clone();
        let init = Tensor::<Ad<B>, 2>::from_inner(init);
        // KL(current ‖ initial), as torch's kl_div(init, current, log_target=True).
        let kl = (kl_logp.clone().exp() * (kl_logp - init))
            .sum()
            .mul_scalar(hp.kl_factor as f32);
        let wd = (hp.v_weight_decay as f32) * norm(&delta) / (v0_norm * v0_norm).max(1e-12);
        let loss = nll.clone() + kl.clone() + wd;
        let values = to_vec(Tensor::cat(vec![loss.clone(), nll, kl], 0).inner())?;
        let target_prob = to_vec(picked.inner().exp().mean())?[0];
        let step = VStep {
            total: values[0],
            nll: values[1],
            kl: values[2],
            weight_decay: wd,
            target_prob,
        };
        if !step.total.is_finite() {
            return Err(EditError::NonFinite {
                what: "the v* loss",
                value: step.total,
                step: it,
            });
        }
        steps.push(step);
        if step.total < 5e-2 || it + 1 == total_steps {
            break;
        }
        let grads = loss.backward();
        let g = delta_t
            .grad(&grads)
            .ok_or_else(|| EditError::Invalid("δ received no gradient".into()))?;
        let mut g = to_vec(g)?;
        // ∂/∂δ of the weight-decay term c·‖δ‖/‖v₀‖², added on the host (zero at δ = 0).
        let dn = norm(&delta);
        if dn > 0.0 {
            let c = hp.v_weight_decay as f32 / (dn * (v0_norm * v0_norm).max(1e-12));
            g.iter_mut().zip(&delta).for_each(|(gi, x)| *gi += c * x);
        }
        let t = (it + 1) as i32;
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for i in 0..d {
            m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
            v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
            delta[i] -= hp.v_lr as f32 * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
        }
        if delta.iter().any(|x| !x.is_finite()) {
            return Err(EditError::NonFinite {
                what: "δ",
                value: f32::NAN,
                step: it,
            });
        }
        let max_norm = hp.clamp_norm_factor as f32 * v0_norm;
        let dn = norm(&delta);
        if dn > max_norm {
            delta.iter_mut().for_each(|x| *x *= max_norm / dn);
        }
    }
    Ok(VResult {
        v_star: v0.iter().zip(&delta).map(|(a, b)| a + b).collect(),
        v0,
        steps,
    })
}
