//! Step 3: the value. v* = v₀ + δ, where v₀ is the edited MLP's output at the
//! subject's last token and δ, added there in every prefixed prompt, is found
//! with Adam through burn's autodiff (ROME eq. 4). The loss is the new target's
//! NLL over the prefixed prompts, plus `kl_factor` × KL from the unedited model
//! on "{subject} is a" (at the subject's last token, as ROME's code computes it),
//! plus `v_weight_decay` × ‖δ‖ / ‖v₀‖². ‖δ‖ is clamped to `clamp_norm_factor`·‖v₀‖,
//! and the loop stops early below 5e-2.
//!
//! [`optimise_deltas`] runs this for many requests at once, one δ each: MEMIT's
//! z (`crate::memit::compute_z`) is the same optimisation, batched.

use burn_autodiff::Autodiff;
use burn_tensor::activation::log_softmax;
use burn_tensor::backend::Backend;
use burn_tensor::{Int, Tensor, TensorData};
use engram_model::hooks::{BlockSite, NoHooks};
use engram_model::layers::{ForwardCtx, LayerKv};
use engram_model::train::lift_kv;
use engram_model::{Batch, LanguageModel, Transformer};
use serde::{Deserialize, Serialize};

use super::compute_u::{activations_at, fill_template, subject_rows};
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

/// The optimiser's settings (ROME's and MEMIT's `v_*` hyperparameters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeltaOptions {
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub clamp_norm_factor: f64,
    pub kl_factor: f64,
}

impl From<&RomeHparams> for DeltaOptions {
    fn from(hp: &RomeHparams) -> Self {
        Self {
            steps: hp.v_num_grad_steps,
            lr: hp.v_lr,
            weight_decay: hp.v_weight_decay,
            clamp_norm_factor: hp.clamp_norm_factor,
            kl_factor: hp.kl_factor,
        }
    }
}

/// One request's rows: each prefixed prompt followed by all but the last
/// target token, then the KL prompt; each with its subject's last token.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaJob {
    pub rows: Vec<(Vec<u32>, usize)>,
    /// Tokens of each rewriting row before the target's tokens.
    pub prompt_lens: Vec<usize>,
    pub target_ids: Vec<u32>,
}

impl DeltaJob {
    /// The rows for `prompt` (which contains `subject`) under `templates`
    /// (each with one `{}` for the prompt).
    pub fn new<B: Backend>(
        lm: &LanguageModel<B>,
        prompt: &str,
        subject: &str,
        target_ids: &[u32],
        templates: &[String],
    ) -> Result<Self> {
        let n_t = target_ids.len();
        if n_t == 0 {
            return Err(EditError::Model(engram_model::ModelError::EmptyTarget));
        }
        let texts: Vec<(String, usize)> =
            templates.iter().map(|t| fill_template(t, prompt)).collect();
        let mut rows = subject_rows(lm, &texts, subject)?;
        let prompt_lens = rows.iter().map(|(ids, _)| ids.len()).collect();
        for (ids, _) in &mut rows {
            ids.extend_from_slice(&target_ids[..n_t - 1]);
        }
        rows.extend(subject_rows(
            lm,
            &[(format!("{subject} is a"), 0)],
            subject,
        )?);
        let n_ctx = lm.model.config.n_ctx;
        if let Some(long) = rows.iter().map(|(ids, _)| ids.len()).max() {
            if long > n_ctx {
                return Err(EditError::Model(engram_model::ModelError::PromptTooLong {
                    len: long,
                    n_ctx,
                }));
            }
        }
        Ok(Self {
            rows,
            prompt_lens,
            target_ids: target_ids.to_vec(),
        })
    }

    /// The longest row from the subject's last token on: the batch's padded width.
    pub fn tail_len(&self) -> usize {
        self.rows
            .iter()
            .map(|(ids, idx)| ids.len() - idx)
            .max()
            .unwrap_or(0)
    }

    fn n_rewrite(&self) -> usize {
        self.prompt_lens.len()
    }
}

/// One request's optimised δ.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaResult {
    /// `[d_model]`
    pub delta: Vec<f32>,
    /// `[d_model]`: the residual leaving the edited block at the subject's last
    /// token of the first rewriting row, before the edit (MEMIT's z₀).
    pub resid0: Vec<f32>,
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
    let job = DeltaJob::new(lm, prompt, subject, target_ids, templates)?;
    // v₀: the MLP output at the subject's last token of the unprefixed prompt.
    let plain = subject_rows(lm, &[(prompt.to_string(), 0)], subject)?;
    let v0 = activations_at(lm, &plain, layer, BlockSite::MlpOut)?.remove(0);
    let mut out = optimise_deltas(
        lm,
        &[job],
        layer,
        &DeltaOptions::from(hp),
        Some(&[norm(&v0)]),
        progress,
    )?;
    let r = out.remove(0);
    Ok(VResult {
        v_star: v0.iter().zip(&r.delta).map(|(a, b)| a + b).collect(),
        v0,
        steps: r.steps,
    })
}

/// Host-side layout of the rows of the jobs still being optimised.
struct Active {
    /// Job index of each active job.
    jobs: Vec<usize>,
    /// Rows (into the full batch) of the active jobs, in order.
    rows: Vec<usize>,
}

/// Optimise one δ per job at `layer`, all in one batch. `norms[j]` is the norm
/// that job j's weight decay and clamp are relative to (ROME: ‖v₀‖ of the MLP
/// output); `None` takes the residual's (MEMIT: ‖z₀‖). A job stops when its
/// loss falls below 5e-2, and its rows leave the batch. `progress(step,
/// total)` returns false to cancel.
pub fn optimise_deltas<B: Backend>(
    lm: &LanguageModel<B>,
    jobs: &[DeltaJob],
    layer: usize,
    opts: &DeltaOptions,
    norms: Option<&[f32]>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<DeltaResult>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let n_layers = lm.model.config.n_layers;
    if layer >= n_layers {
        return Err(EditError::Layer { layer, n_layers });
    }
    let rows: Vec<&(Vec<u32>, usize)> = jobs.iter().flat_map(|j| &j.rows).collect();
    let mut first_row = Vec::with_capacity(jobs.len());
    let mut acc = 0;
    for j in jobs {
        first_row.push(acc);
        acc += j.rows.len();
    }

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
    let cfg = &lm.model.config;
    let mut kv = vec![LayerKv::<B>::default(); n_layers];
    if split > 0 {
        let ctx = ForwardCtx::new(cfg, &head.positions, &head.keep, &device);
        let x = lm.model.embed(&head, &mut NoHooks)?;
        lm.model
            .run_blocks_cached(0..n_layers, x, &ctx, &mut kv, &mut NoHooks)?;
    }
    let keep_all: Vec<Vec<bool>> = head
        .keep
        .iter()
        .zip(&tail.keep)
        .map(|(h, t)| h.iter().chain(t).copied().collect())
        .collect();
    let ctx = ForwardCtx::<B>::new(cfg, &tail.positions, &keep_all, &device);
    let x = lm.model.embed(&tail, &mut NoHooks)?;
    // [rows, tail, d_model]: the residual stream leaving the edited block.
    let resid_all = lm
        .model
        .run_blocks_cached(0..layer + 1, x, &ctx, &mut kv, &mut NoHooks)?;
    let s = tail_len;
    // z₀ of each job: its first row's subject token (tail position 0).
    let first = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            first_row.iter().map(|&r| r as i64).collect::<Vec<_>>(),
            [jobs.len()],
        ),
        &device,
    );
    let z0 = to_vec(
        resid_all
            .clone()
            .select(0, first)
            .slice([0..jobs.len(), 0..1, 0..d])
            .reshape([jobs.len(), d]),
    )?;
    let resid0: Vec<Vec<f32>> = z0.chunks(d).map(<[f32]>::to_vec).collect();
    let norms: Vec<f32> = match norms {
        Some(n) if n.len() == jobs.len() => n.to_vec(),
        Some(n) => {
            return Err(EditError::Invalid(format!(
                "{} norms for {} requests",
                n.len(),
                jobs.len()
            )))
        }
        None => resid0.iter().map(|v| norm(v)).collect(),
    };

    let mut deltas = vec![vec![0f32; d]; jobs.len()];
    let mut adam_m = vec![vec![0f32; d]; jobs.len()];
    let mut adam_v = vec![vec![0f32; d]; jobs.len()];
    let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let mut steps: Vec<Vec<VStep>> = vec![Vec::new(); jobs.len()];
    // KL reference rows (step 0, δ = 0), `[1, vocab]` per job.
    let mut kl_init: Vec<Option<Tensor<B, 2>>> = vec![None; jobs.len()];
    let total_steps = opts.steps.max(1);
    let mut active = Active {
        jobs: (0..jobs.len()).collect(),
        rows: (0..rows.len()).collect(),
    };
    let mut built: Option<Built<Ad<B>>> = None;
    for it in 0..total_steps {
        if !progress(it, total_steps) {
            return Err(engram_model::Cancelled.into());
        }
        if built.is_none() {
            built = Some(build::<B>(
                jobs, &active, &resid_all, &kv, &tail, &keep_all, cfg, &device,
            ));
        }
        let Some(bt) = built.as_ref() else { break };
        let n_act = active.jobs.len();
        let flat: Vec<f32> = active
            .jobs
            .iter()
            .flat_map(|&j| deltas[j].iter().copied())
            .collect();
        let delta_t = Tensor::<Ad<B>, 2>::from_data(TensorData::new(flat, [n_act, d]), &device)
            .require_grad();
        // δ of each row's job, at the row's subject token, on top of the residual.
        let b = active.rows.len();
        let per_row = bt.assign.clone().matmul(delta_t.clone()).reshape([b, 1, d]);
        let x = bt.resid.clone() + bt.mask.clone() * per_row;
        let mut kv_step = bt.kv.clone();
        let x =
            model.run_blocks_cached(layer + 1..n_layers, x, &bt.ctx, &mut kv_step, &mut NoHooks)?;
        let n_pick = bt.want_len;
        let x = x.reshape([b * s, d]).select(0, bt.pick.clone());
        // [1, n_pick + n_act, vocab]
        let logits = model.unembed(x.reshape([1, n_pick + n_act, d]), &mut NoHooks)?;
        let v_size = logits.dims()[2];
        let flat = logits.reshape([n_pick + n_act, v_size]);
        let logp = log_softmax(flat.clone().select(0, bt.target_rows.clone()), 1);
        // [n_pick, 1]
        let picked = logp.gather(1, bt.want.clone());
        let nll = (picked.clone() * bt.weights.clone()).sum().neg();
        let kl_logp = log_softmax(flat.select(0, bt.kl_rows.clone()), 1);
        if it == 0 {
            let inner = kl_logp.clone().inner();
            for (a, &j) in active.jobs.iter().enumerate() {
                kl_init[j] = Some(inner.clone().slice([a..a + 1, 0..v_size]));
            }
        }
        let init: Vec<Tensor<B, 2>> = active
            .jobs
            .iter()
            .map(|&j| {
                kl_init[j]
                    .clone()
                    .ok_or_else(|| EditError::Invalid("no KL reference".into()))
            })
            .collect::<Result<_>>()?;
        let init = Tensor::<Ad<B>, 2>::from_inner(Tensor::cat(init, 0));
        // KL(current ‖ initial) per job, as torch's kl_div(init, current, log_target=True).
        let kl_each = (kl_logp.clone().exp() * (kl_logp - init))
            .sum_dim(1)
            .mul_scalar(opts.kl_factor as f32);
        let loss = nll + kl_each.clone().sum();
        let picked_host = to_vec(picked.inner())?;
        let kl_host = to_vec(kl_each.inner())?;
        let mut finished = vec![false; n_act];
        for (a, &j) in active.jobs.iter().enumerate() {
            let job = &jobs[j];
            let range = bt.pick_ranges[a].clone();
            let w = 1.0 / (job.target_ids.len() * job.n_rewrite()) as f32;
            let nll_j = -picked_host[range.clone()].iter().sum::<f32>() * w;
            let prob = picked_host[range.clone()]
                .iter()
                .map(|l| l.exp())
                .sum::<f32>()
                / range.len().max(1) as f32;
            let nj = norms[j];
            let wd = (opts.weight_decay as f32) * norm(&deltas[j]) / (nj * nj).max(1e-12);
            let step = VStep {
                nll: nll_j,
                kl: kl_host[a],
                weight_decay: wd,
                total: nll_j + kl_host[a] + wd,
                target_prob: prob,
            };
            if !step.total.is_finite() {
                return Err(EditError::NonFinite {
                    what: "the v* loss",
                    value: step.total,
                    step: it,
                });
            }
            steps[j].push(step);
            finished[a] = step.total < 5e-2 || it + 1 == total_steps;
        }
        if finished.iter().all(|&f| f) {
            break;
        }
        let grads = loss.backward();
        let g = delta_t
            .grad(&grads)
            .ok_or_else(|| EditError::Invalid("δ received no gradient".into()))?;
        let g = to_vec(g)?;
        let t = (it + 1) as i32;
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for (a, &j) in active.jobs.iter().enumerate() {
            if finished[a] {
                continue;
            }
            let mut gj = g[a * d..(a + 1) * d].to_vec();
            let delta = &mut deltas[j];
            // ∂/∂δ of the weight-decay term c·‖δ‖/n², added on the host (zero at δ = 0).
            let dn = norm(delta);
            let nj = norms[j];
            if dn > 0.0 {
                let c = opts.weight_decay as f32 / (dn * (nj * nj).max(1e-12));
                gj.iter_mut()
                    .zip(delta.iter())
                    .for_each(|(gi, x)| *gi += c * x);
            }
            let (m, v) = (&mut adam_m[j], &mut adam_v[j]);
            for i in 0..d {
                m[i] = beta1 * m[i] + (1.0 - beta1) * gj[i];
                v[i] = beta2 * v[i] + (1.0 - beta2) * gj[i] * gj[i];
                delta[i] -= opts.lr as f32 * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
            }
            if delta.iter().any(|x| !x.is_finite()) {
                return Err(EditError::NonFinite {
                    what: "δ",
                    value: f32::NAN,
                    step: it,
                });
            }
            let max_norm = opts.clamp_norm_factor as f32 * nj;
            let dn = norm(delta);
            if dn > max_norm {
                delta.iter_mut().for_each(|x| *x *= max_norm / dn);
            }
        }
        if finished.iter().any(|&f| f) {
            let keep: Vec<usize> = active
                .jobs
                .iter()
                .zip(&finished)
                .filter(|(_, f)| !**f)
                .map(|(&j, _)| j)
                .collect();
            active = Active {
                rows: keep
                    .iter()
                    .flat_map(|&j| first_row[j]..first_row[j] + jobs[j].rows.len())
                    .collect(),
                jobs: keep,
            };
            built = None;
        }
    }
    Ok(deltas
        .into_iter()
        .zip(resid0)
        .zip(steps)
        .map(|((delta, resid0), steps)| DeltaResult {
            delta,
            resid0,
            steps,
        })
        .collect())
}

/// The tensors of one active set.
struct Built<B: Backend> {
    /// `[rows, tail, d_model]`
    resid: Tensor<B, 3>,
    kv: Vec<LayerKv<B>>,
    ctx: ForwardCtx<B>,
    /// `[rows, tail, 1]`: 1 at each row's subject token.
    mask: Tensor<B, 3>,
    /// `[rows, jobs]`: which job's δ each row gets.
    assign: Tensor<B, 2>,
    /// Flat `rows × tail` positions to unembed: target predictions, then KL rows.
    pick: Tensor<B, 1, Int>,
    want: Tensor<B, 2, Int>,
    want_len: usize,
    /// `[n_pick, 1]`: 1 / (target tokens × rewriting rows) of each pick's job.
    weights: Tensor<B, 2>,
    target_rows: Tensor<B, 1, Int>,
    kl_rows: Tensor<B, 1, Int>,
    /// Each active job's picks.
    pick_ranges: Vec<std::ops::Range<usize>>,
}

#[allow(clippy::too_many_arguments)]
fn build<B: Backend>(
    jobs: &[DeltaJob],
    active: &Active,
    resid_all: &Tensor<B, 3>,
    kv_all: &[LayerKv<B>],
    tail: &Batch,
    keep_all: &[Vec<bool>],
    cfg: &engram_model::ModelConfig,
    device: &B::Device,
) -> Built<Autodiff<B>> {
    type Ad<B> = Autodiff<B>;
    let b = active.rows.len();
    let s = tail.ids.first().map(Vec::len).unwrap_or(0);
    let n_act = active.jobs.len();
    let idx = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            active.rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
            [b],
        ),
        device,
    );
    let all = active.rows.len() == resid_all.dims()[0];
    let sel3 = |t: &Tensor<B, 3>| {
        if all {
            t.clone()
        } else {
            t.clone().select(0, idx.clone())
        }
    };
    let sel4 = |t: &Tensor<B, 4>| {
        if all {
            t.clone()
        } else {
            t.clone().select(0, idx.clone())
        }
    };
    let resid = Tensor::<Ad<B>, 3>::from_inner(sel3(resid_all));
    let kv: Vec<LayerKv<B>> = kv_all
        .iter()
        .map(|l| LayerKv {
            k: l.k.as_ref().map(sel4),
            v: l.v.as_ref().map(sel4),
        })
        .collect();
    let kv: Vec<LayerKv<Ad<B>>> = kv.iter().map(lift_kv).collect();
    let positions: Vec<Vec<usize>> = active
        .rows
        .iter()
        .map(|&r| tail.positions[r].clone())
        .collect();
    let keep: Vec<Vec<bool>> = active.rows.iter().map(|&r| keep_all[r].clone()).collect();
    let ctx = ForwardCtx::<Ad<B>>::new(cfg, &positions, &keep, device);
    let mut mask = vec![0f32; b * s];
    for r in 0..b {
        mask[r * s] = 1.0;
    }
    let mask = Tensor::<Ad<B>, 3>::from_data(TensorData::new(mask, [b, s, 1]), device);
    let mut assign = vec![0f32; b * n_act];
    let (mut pick, mut want, mut weights, mut kl) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut pick_ranges = Vec::with_capacity(n_act);
    let mut row = 0usize;
    for (a, &j) in active.jobs.iter().enumerate() {
        let job = &jobs[j];
        let w = 1.0 / (job.target_ids.len() * job.n_rewrite()) as f32;
        let start = pick.len();
        for (k, (ids_idx, len)) in job
            .rows
            .iter()
            .map(|(_, i)| *i)
            .zip(&job.prompt_lens)
            .enumerate()
        {
            let r = row + k;
            for (t, &tok) in job.target_ids.iter().enumerate() {
                pick.push((r * s + len - 1 + t - ids_idx) as i64);
                want.push(tok as i64);
                weights.push(w);
            }
        }
        pick_ranges.push(start..pick.len());
        // The KL row is the job's last.
        kl.push(((row + job.rows.len() - 1) * s) as i64);
        for k in 0..job.rows.len() {
            assign[(row + k) * n_act + a] = 1.0;
        }
        row += job.rows.len();
    }
    let n_pick = pick.len();
    let kl_rows: Vec<i64> = (n_pick as i64..(n_pick + n_act) as i64).collect();
    pick.extend(kl);
    Built {
        resid,
        kv,
        ctx,
        mask,
        assign: Tensor::from_data(TensorData::new(assign, [b, n_act]), device),
        pick: Tensor::from_data(TensorData::new(pick, [n_pick + n_act]), device),
        want: Tensor::from_data(TensorData::new(want, [n_pick, 1]), device),
        want_len: n_pick,
        weights: Tensor::from_data(TensorData::new(weights, [n_pick, 1]), device),
        target_rows: Tensor::from_data(
            TensorData::new((0..n_pick as i64).collect::<Vec<_>>(), [n_pick]),
            device,
        ),
        kl_rows: Tensor::from_data(TensorData::new(kl_rows, [n_act]), device),
        pick_ranges,
    }
}
