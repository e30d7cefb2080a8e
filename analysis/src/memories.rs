//! FFN key-value memories (Geva et al. 2021, 2022; LM-Debugger, Geva et al. 2022).
//! Memory i of layer l is row i of the MLP output projection, its value vᵢ
//! (`[d_model]`); its coefficient aᵢ is `blocks.{l}.mlp.hook_post` (the gated
//! activation for SwiGLU MLPs), so the MLP adds Σᵢ aᵢ vᵢ (+ bias).
//!
//! - Values are read in vocabulary space as W_U · dir(vᵢ), where dir applies the
//!   final norm's gain (and LayerNorm's centring) but not its per-vector scale
//!   nor any bias: a direction, so the scale does not change the ranking.
//! - Residual states (before/after the MLP, or plus one sub-update) are read
//!   through the full final norm and unembedding, as the logit lens does.
//! - Interventions set coefficients through a hook on `mlp.hook_post`.
//! - Knowledge neurons (Dai et al. 2022): integrated gradients of the target's
//!   probability with respect to the coefficients at one position, zero
//!   baseline, a right Riemann sum over `steps` scalings run as one batch.

use std::collections::BTreeMap;

use burn_autodiff::Autodiff;
use burn_tensor::activation::softmax;
use burn_tensor::backend::Backend;
use burn_tensor::{Int, Tensor, TensorData};
use engram_model::config::NormKind;
use engram_model::hooks::{Activation, BlockSite, Hook, HookPoint, NoHooks};
use engram_model::layers::Norm;
use engram_model::{ActivationCache, Batch, ModelError, Transformer};

type Result<T> = std::result::Result<T, ModelError>;

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| ModelError::Data(format!("{e:?}")))
}

/// A token and a score (a logit-space projection or a probability).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenScore {
    pub id: u32,
    pub score: f32,
}

/// The `k` highest (or lowest) entries of `row`, best first.
pub fn top_k(row: &[f32], k: usize, lowest: bool) -> Vec<TokenScore> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let k = k.min(row.len());
    let cmp = |a: &usize, b: &usize| {
        let (x, y) = (row[*a], row[*b]);
        if lowest {
            x.total_cmp(&y)
        } else {
            y.total_cmp(&x)
        }
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.into_iter()
        .map(|i| TokenScore {
            id: i as u32,
            score: row[i],
        })
        .collect()
}

/// 0-based rank of `id` in `row` (0: the highest).
pub fn rank_of(row: &[f32], id: u32) -> usize {
    let x = row[id as usize];
    row.iter().filter(|&&y| y > x).count()
}

/// What memory `memory` of `layer` promotes and suppresses.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueProjection {
    pub layer: usize,
    pub memory: usize,
    /// ‖vᵢ‖
    pub norm: f32,
    pub top: Vec<TokenScore>,
    pub bottom: Vec<TokenScore>,
}

/// The final norm's direction map: γ ⊙ (v − mean v) for LayerNorm, γ ⊙ v for RMSNorm.
///
/// # Shapes
/// - v: `[n, d_model]` → `[n, d_model]`
fn direction<B: Backend>(norm: &Norm<B>, v: Tensor<B, 2>) -> Tensor<B, 2> {
    let v = match norm.kind {
        NormKind::LayerNorm => {
            let mean = v.clone().mean_dim(1);
            v - mean
        }
        NormKind::RmsNorm => v,
    };
    v * norm.weight.clone().unsqueeze::<2>()
}

fn check_layer<B: Backend>(model: &Transformer<B>, layer: usize) -> Result<()> {
    if layer >= model.config.n_layers {
        return Err(ModelError::LayerOutOfRange {
            layer,
            n_layers: model.config.n_layers,
        });
    }
    Ok(())
}

/// Vocabulary projections of some memories of `layer`: the `k` most promoted
/// and most suppressed tokens of each.
pub fn value_projections<B: Backend>(
    model: &Transformer<B>,
    layer: usize,
    memories: &[usize],
    k: usize,
) -> Result<Vec<ValueProjection>> {
    check_layer(model, layer)?;
    let d_mlp = model.config.d_mlp;
    if let Some(&bad) = memories.iter().find(|&&m| m >= d_mlp) {
        return Err(ModelError::Data(format!(
            "memory {bad} does not exist: layer {layer} has {d_mlp}"
        )));
    }
    if memories.is_empty() {
        return Ok(Vec::new());
    }
    let idx: Vec<i64> = memories.iter().map(|&m| m as i64).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [memories.len()]), &model.device);
    // [n, d_model]
    let v = model.blocks[layer].mlp.fc_out.weight.clone().select(0, idx);
    let norms = host(v.clone().square().sum_dim(1).sqrt())?;
    // [n, vocab]
    let logits = direction(&model.ln_final, v).matmul(model.unembed.weight.clone());
    let vocab = logits.dims()[1];
    let flat = host(logits)?;
    Ok(memories
        .iter()
        .enumerate()
        .map(|(j, &m)| {
            let row = &flat[j * vocab..(j + 1) * vocab];
            ValueProjection {
                layer,
                memory: m,
                norm: norms[j],
                top: top_k(row, k, false),
                bottom: top_k(row, k, true),
            }
        })
        .collect())
}

/// Every memory of `layer`, in chunks (for `engram memories index`).
/// `progress(done, total)` returns false to stop.
pub fn value_index<B: Backend>(
    model: &Transformer<B>,
    layer: usize,
    k: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<ValueProjection>> {
    let d_mlp = model.config.d_mlp;
    let mut out = Vec::with_capacity(d_mlp);
    for start in (0..d_mlp).step_by(256) {
        if !progress(start, d_mlp) {
            return Err(engram_model::Cancelled.into());
        }
        let chunk: Vec<usize> = (start..(start + 256).min(d_mlp)).collect();
        out.extend(value_projections(model, layer, &chunk, k)?);
    }
    progress(d_mlp, d_mlp);
    Ok(out)
}

/// How a target token stands in a distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetStanding {
    pub rank: usize,
    pub prob: f32,
}

/// One memory's part in a prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryHit {
    pub memory: usize,
    pub coefficient: f32,
    pub value_norm: f32,
    /// |coefficient| × ‖value‖, the ranking score.
    pub score: f32,
    pub value: ValueProjection,
    /// What the sub-update aᵢvᵢ promotes: the value's top tokens, or its
    /// bottom ones (scores negated) where the coefficient is negative.
    pub promotes: Vec<TokenScore>,
    /// The target before the MLP, and with only this memory's sub-update added.
    pub target_before: Option<TargetStanding>,
    pub target_with: Option<TargetStanding>,
}

/// One layer's MLP at one position, as LM-Debugger shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMemories {
    pub layer: usize,
    /// Top tokens of the residual before and after the MLP (probabilities).
    pub before: Vec<TokenScore>,
    pub after: Vec<TokenScore>,
    pub target_before: Option<TargetStanding>,
    pub target_after: Option<TargetStanding>,
    pub memories: Vec<MemoryHit>,
}

fn standing(row: &[f32], target: Option<u32>) -> Option<TargetStanding> {
    target.map(|t| TargetStanding {
        rank: rank_of(row, t),
        prob: row[t as usize],
    })
}

/// At `position` of `ids`, for each layer: the `per_layer` memories with the
/// largest |aᵢ|·‖vᵢ‖, what each promotes (`k` tokens), and how each alone
/// moves `target`; plus the residual read before and after the MLP. `hooks`
/// (e.g. [`MemoryHook`]) apply to the run that is read.
pub fn top_memories<B: Backend, H: Hook<B>>(
    model: &Transformer<B>,
    ids: &[u32],
    position: usize,
    target: Option<u32>,
    per_layer: usize,
    k: usize,
    hooks: H,
) -> Result<Vec<LayerMemories>> {
    if position >= ids.len() {
        return Err(ModelError::Data(format!(
            "position {position} is past the prompt's {} tokens",
            ids.len()
        )));
    }
    let want = |p: HookPoint| {
        matches!(
            p.site(),
            Some(BlockSite::MlpPost | BlockSite::MlpOut | BlockSite::ResidPost)
        )
    };
    let mut both = (hooks, ActivationCache::<B>::new(want));
    model.forward(&Batch::single(ids), &mut both)?;
    let cache = both.1;
    let get = |layer: usize, site: BlockSite| -> Result<Tensor<B, 2>> {
        let point = HookPoint::block(layer, site);
        let t = cache
            .rank3(point)
            .ok_or_else(|| ModelError::UnknownHook(point.to_string()))?;
        let d = t.dims()[2];
        Ok(t.slice([0..1, position..position + 1, 0..d])
            .reshape([1, d]))
    };
    let d = model.config.d_model;
    let mut out = Vec::with_capacity(model.config.n_layers);
    for layer in 0..model.config.n_layers {
        let coef = host(get(layer, BlockSite::MlpPost)?)?;
        let w = model.blocks[layer].mlp.fc_out.weight.clone();
        let norms = host(w.clone().square().sum_dim(1).sqrt())?;
        let scores: Vec<f32> = coef.iter().zip(&norms).map(|(a, n)| a.abs() * n).collect();
        let chosen: Vec<usize> = top_k(&scores, per_layer, false)
            .iter()
            .map(|t| t.id as usize)
            .collect();
        let after = get(layer, BlockSite::ResidPost)?;
        let before = after.clone() - get(layer, BlockSite::MlpOut)?;
        // Rows: before, after, then before + aᵢvᵢ for each chosen memory.
        let mut rows = vec![before.clone(), after];
        if !chosen.is_empty() {
            let idx: Vec<i64> = chosen.iter().map(|&m| m as i64).collect();
            let n = chosen.len();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &model.device);
            let a: Vec<f32> = chosen.iter().map(|&m| coef[m]).collect();
            let a = Tensor::<B, 2>::from_data(TensorData::new(a, [n, 1]), &model.device);
            rows.push(before + w.select(0, idx) * a);
        }
        let x = Tensor::cat(rows, 0);
        let n_rows = x.dims()[0];
        // [1, rows, vocab]
        let probs = softmax(model.unembed(x.reshape([1, n_rows, d]), &mut NoHooks)?, 2);
        let vocab = probs.dims()[2];
        let p = host(probs)?;
        let row = |r: usize| &p[r * vocab..(r + 1) * vocab];
        let values = value_projections(model, layer, &chosen, k)?;
        let memories = chosen
            .iter()
            .zip(values)
            .enumerate()
            .map(|(j, (&m, value))| MemoryHit {
                memory: m,
                coefficient: coef[m],
                value_norm: norms[m],
                score: scores[m],
                promotes: if coef[m] >= 0.0 {
                    value.top.clone()
                } else {
                    value
                        .bottom
                        .iter()
                        .map(|t| TokenScore {
                            id: t.id,
                            score: -t.score,
                        })
                        .collect()
                },
                value,
                target_before: standing(row(0), target),
                target_with: standing(row(2 + j), target),
            })
            .collect();
        out.push(LayerMemories {
            layer,
            before: top_k(row(0), k, false),
            after: top_k(row(1), k, false),
            target_before: standing(row(0), target),
            target_after: standing(row(1), target),
            memories,
        });
    }
    Ok(out)
}

/// What an intervention sets a coefficient to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    Zero,
    Value(f32),
    /// The largest coefficient of the layer at that position, plus ε.
    MaxPlus(f32),
}

/// Set memory `memory` of `layer` (at every position, or at one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intervention {
    pub layer: usize,
    pub memory: usize,
    pub setting: Setting,
}

impl Intervention {
    /// `setting` on each (layer, memory).
    pub fn each(memories: &[(usize, usize)], setting: Setting) -> Vec<Intervention> {
        memories
            .iter()
            .map(|&(layer, memory)| Intervention {
                layer,
                memory,
                setting,
            })
            .collect()
    }
}

/// A hook on `mlp.hook_post` applying interventions; they compose (later ones
/// on the same memory win) and an empty hook changes nothing.
#[derive(Debug, Clone, Default)]
pub struct MemoryHook {
    by_layer: BTreeMap<usize, Vec<(usize, Setting)>>,
    /// Apply only at this position (None: every position).
    pub position: Option<usize>,
}

impl MemoryHook {
    pub fn new(interventions: &[Intervention], position: Option<usize>) -> Self {
        let mut by_layer: BTreeMap<usize, Vec<(usize, Setting)>> = BTreeMap::new();
        for i in interventions {
            by_layer
                .entry(i.layer)
                .or_default()
                .push((i.memory, i.setting));
        }
        Self { by_layer, position }
    }
}

impl<B: Backend> Hook<B> for MemoryHook {
    fn wants(&self, point: HookPoint) -> bool {
        point.site() == Some(BlockSite::MlpPost)
            && point
                .layer()
                .is_some_and(|l| self.by_layer.contains_key(&l))
    }

    fn call(&mut self, point: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        let list = self.by_layer.get(&point.layer()?)?;
        let x = act.as_rank3()?;
        let [_, s, m] = x.dims();
        let device = x.device();
        // new = x ⊙ keep + fixed + use_max ⊙ max(x)
        let (mut keep, mut fixed, mut use_max) = (vec![1f32; m], vec![0f32; m], vec![0f32; m]);
        for &(i, setting) in list {
            if i >= m {
                continue;
            }
            keep[i] = 0.0;
            (fixed[i], use_max[i]) = match setting {
                Setting::Zero => (0.0, 0.0),
                Setting::Value(v) => (v, 0.0),
                Setting::MaxPlus(eps) => (eps, 1.0),
            };
        }
        let vec3 = |v: Vec<f32>| Tensor::<B, 3>::from_data(TensorData::new(v, [1, 1, m]), &device);
        let max = x.clone().max_dim(2);
        let new = x.clone() * vec3(keep) + vec3(fixed) + max * vec3(use_max);
        let new = match self.position.filter(|&p| p < s) {
            Some(p) => {
                let mut at = vec![0f32; s];
                at[p] = 1.0;
                let at = Tensor::<B, 3>::from_data(TensorData::new(at, [1, s, 1]), &device);
                x.clone() + (new - x.clone()) * at
            }
            None => new,
        };
        Some(Activation::Rank3(new))
    }
}

/// Integrated-gradients attributions of p(`target` | `ids`) to the
/// coefficients of `layer` at `position` (Dai et al. 2022): aᵢ × the mean over
/// α = 1/steps … 1 of ∂p/∂aᵢ at α·a. Also returns p at a (the clean run) and at
/// the zero baseline, whose difference the attributions should sum to.
pub fn integrated_gradients<B: Backend>(
    model: &Transformer<B>,
    ids: &[u32],
    position: usize,
    target: u32,
    layer: usize,
    steps: usize,
) -> Result<Attribution> {
    check_layer(model, layer)?;
    if position >= ids.len() || target as usize >= model.config.vocab_size {
        return Err(ModelError::Data(format!(
            "position {position} or target {target} out of range"
        )));
    }
    let steps = steps.max(1);
    let point = HookPoint::block(layer, BlockSite::MlpPost);
    let mut cache = ActivationCache::<B>::new(move |p| p == point);
    model.forward(&Batch::single(ids), &mut cache)?;
    let m = model.config.d_mlp;
    let coef = cache
        .rank3(point)
        .ok_or_else(|| ModelError::UnknownHook(point.to_string()))?;
    let a = host(coef.slice([0..1, position..position + 1, 0..m]))?;

    type Ad<B> = Autodiff<B>;
    let ad: Transformer<Ad<B>> = Transformer::lift(model);
    let device = model.device.clone();
    // Rows 0..steps scale a by α = (j+1)/steps; one more row holds the baseline.
    let rows: Vec<Vec<u32>> = vec![ids.to_vec(); steps + 1];
    let batch = Batch::uniform(&rows)?;
    let s = ids.len();
    let ctx = model.context(&batch)?;
    let x = model.embed(&batch, &mut NoHooks)?;
    let x = model.run_blocks(0..layer, x, &ctx, &mut NoHooks)?;
    let x = Tensor::<Ad<B>, 3>::from_inner(x);
    let mut scaled = Vec::with_capacity((steps + 1) * m);
    for j in 0..=steps {
        let alpha = if j < steps {
            (j + 1) as f32 / steps as f32
        } else {
            0.0
        };
        scaled.extend(a.iter().map(|v| v * alpha));
    }
    let leaf = Tensor::<Ad<B>, 2>::from_data(TensorData::new(scaled, [steps + 1, m]), &device)
        .require_grad();
    let mut at = vec![0f32; s];
    at[position] = 1.0;
    let at = Tensor::<Ad<B>, 3>::from_data(TensorData::new(at, [1, s, 1]), &device);
    let put = leaf.clone().reshape([steps + 1, 1, m]);
    let mut hook = engram_model::fn_hook::<Ad<B>, _>([point], move |_, act: &Activation<Ad<B>>| {
        act.as_rank3().map(|x| {
            let keep = at.clone().neg().add_scalar(1.0);
            Activation::Rank3(x.clone() * keep + put.clone() * at.clone())
        })
    });
    let ctx = ad.context(&batch)?;
    let x = ad.run_blocks(layer..model.config.n_layers, x, &ctx, &mut hook)?;
    drop(hook);
    let d = model.config.d_model;
    let last = x
        .slice([0..steps + 1, s - 1..s, 0..d])
        .reshape([1, steps + 1, d]);
    let logits = ad.unembed(last, &mut NoHooks)?;
    let v = logits.dims()[2];
    let p = softmax(logits.reshape([steps + 1, v]), 1);
    let idx = Tensor::<Ad<B>, 2, Int>::from_data(
        TensorData::new(vec![target as i64; steps + 1], [steps + 1, 1]),
        &device,
    );
    let pt = p.gather(1, idx);
    let probs = host(pt.clone().inner())?;
    let grads = pt.sum().backward();
    let g = leaf
        .grad(&grads)
        .ok_or_else(|| ModelError::Data("no gradient reached the coefficients".into()))?;
    let g = host(g)?;
    let scores = (0..m)
        .map(|i| {
            let mean = (0..steps).map(|j| g[j * m + i]).sum::<f32>() / steps as f32;
            a[i] * mean
        })
        .collect();
    Ok(Attribution {
        layer,
        scores,
        prob: probs[steps - 1],
        baseline_prob: probs[steps],
    })
}

/// One layer's integrated-gradients attributions.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub layer: usize,
    /// `[d_mlp]`
    pub scores: Vec<f32>,
    /// p(target) with the clean coefficients, and with them zeroed at the position.
    pub prob: f32,
    pub baseline_prob: f32,
}

/// Knowledge neurons (Dai et al. 2022): per prompt, the (layer, memory) whose
/// attribution exceeds `t` × that prompt's largest; then those found for at
/// least a share `p` of the prompts. Dai et al. use t = 0.2 and p = 0.7
/// (one prompt: p is moot).
pub fn knowledge_neurons(per_prompt: &[Vec<Attribution>], t: f32, p: f32) -> Vec<(usize, usize)> {
    let mut counts: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for layers in per_prompt {
        let max = layers
            .iter()
            .flat_map(|a| a.scores.iter().copied())
            .fold(f32::MIN, f32::max);
        if max <= 0.0 {
            continue;
        }
        for a in layers {
            for (i, &s) in a.scores.iter().enumerate() {
                if s > t * max {
                    *counts.entry((a.layer, i)).or_default() += 1;
                }
            }
        }
    }
    let need = ((p * per_prompt.len() as f32).ceil() as usize).max(1);
    counts
        .into_iter()
        .filter(|&(_, c)| c >= need)
        .map(|(k, _)| k)
        .collect()
}

/// One context where a memory's coefficient was high: the `token` read at the
/// end of `context` (up to [`TRIGGER_CONTEXT`] tokens before it).
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub coefficient: f32,
    /// Token ids, the triggering token last.
    pub context: Vec<u32>,
}

/// Tokens of context kept before a trigger.
pub const TRIGGER_CONTEXT: usize = 16;

/// A streaming search for each memory's highest coefficients over a corpus.
/// Memory stays O(layers × d_mlp × top_n × context), whatever the corpus size.
pub struct TriggerSearch {
    pub layers: Vec<usize>,
    pub top_n: usize,
    /// `[layer][memory]`: ascending by coefficient, at most `top_n`.
    best: Vec<Vec<Vec<Trigger>>>,
    /// Tokens read so far.
    pub tokens: u64,
}

impl TriggerSearch {
    pub fn new<B: Backend>(model: &Transformer<B>, layers: &[usize], top_n: usize) -> Result<Self> {
        for &l in layers {
            check_layer(model, l)?;
        }
        let m = model.config.d_mlp;
        Ok(Self {
            layers: layers.to_vec(),
            top_n: top_n.max(1),
            best: vec![vec![Vec::new(); m]; layers.len()],
            tokens: 0,
        })
    }

    /// Run `rows` (equal lengths) and keep each memory's best contexts.
    pub fn feed<B: Backend>(&mut self, model: &Transformer<B>, rows: &[Vec<u32>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let layers = self.layers.clone();
        let mut cache = ActivationCache::<B>::new(move |p| {
            p.site() == Some(BlockSite::MlpPost) && p.layer().is_some_and(|l| layers.contains(&l))
        });
        let batch = Batch::uniform(rows)?;
        // Only the coefficients are needed: stop after the last searched layer.
        let last = self.layers.iter().max().map_or(0, |l| l + 1);
        let ctx = model.context(&batch)?;
        let x = model.embed(&batch, &mut cache)?;
        model.run_blocks(0..last, x, &ctx, &mut cache)?;
        let s = batch.seq_len();
        for (li, &layer) in self.layers.iter().enumerate() {
            let point = HookPoint::block(layer, BlockSite::MlpPost);
            let t = cache
                .rank3(point)
                .ok_or_else(|| ModelError::UnknownHook(point.to_string()))?;
            let m = t.dims()[2];
            let a = host(t)?;
            for (r, row) in rows.iter().enumerate() {
                for pos in 0..s {
                    let base = (r * s + pos) * m;
                    for (i, best) in self.best[li].iter_mut().enumerate() {
                        let v = a[base + i];
                        let full = best.len() >= self.top_n;
                        if full && best.first().is_some_and(|b| v <= b.coefficient) {
                            continue;
                        }
                        let from = (pos + 1).saturating_sub(TRIGGER_CONTEXT + 1);
                        let t = Trigger {
                            coefficient: v,
                            context: row[from..=pos].to_vec(),
                        };
                        let at = best.partition_point(|b| b.coefficient < v);
                        best.insert(at, t);
                        if best.len() > self.top_n {
                            best.remove(0);
                        }
                    }
                }
            }
        }
        self.tokens += (rows.len() * s) as u64;
        Ok(())
    }

    /// `[layer index][memory]`: the best contexts, highest coefficient first.
    pub fn finish(self) -> Vec<Vec<Vec<Trigger>>> {
        self.best
            .into_iter()
            .map(|layer| {
                layer
                    .into_iter()
                    .map(|mut v| {
                        v.reverse();
                        v
                    })
                    .collect()
            })
            .collect()
    }
}

/// The target through the layers at one position: its rank and probability
/// entering the block, after the attention output is added, and after the MLP
/// output (the logit lens at three points per layer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FactStep {
    pub layer: usize,
    pub entering: TargetStanding,
    pub after_attn: TargetStanding,
    pub after_mlp: TargetStanding,
}

/// Where an answer appears and which sublayer raises it (ROME's and Geva et
/// al.'s question, asked with the logit lens).
pub fn fact_lens<B: Backend>(
    model: &Transformer<B>,
    ids: &[u32],
    position: usize,
    target: u32,
) -> Result<Vec<FactStep>> {
    if position >= ids.len() {
        return Err(ModelError::Data(format!(
            "position {position} is past the prompt's {} tokens",
            ids.len()
        )));
    }
    let want = |p: HookPoint| {
        matches!(
            p.site(),
            Some(BlockSite::ResidPre | BlockSite::AttnOut | BlockSite::ResidPost)
        )
    };
    let mut cache = ActivationCache::<B>::new(want);
    model.forward(&Batch::single(ids), &mut cache)?;
    let d = model.config.d_model;
    let n = model.config.n_layers;
    let mut rows = Vec::with_capacity(3 * n);
    for layer in 0..n {
        let at = |site: BlockSite| -> Result<Tensor<B, 2>> {
            let point = HookPoint::block(layer, site);
            let t = cache
                .rank3(point)
                .ok_or_else(|| ModelError::UnknownHook(point.to_string()))?;
            Ok(t.slice([0..1, position..position + 1, 0..d])
                .reshape([1, d]))
        };
        let pre = at(BlockSite::ResidPre)?;
        rows.push(pre.clone());
        rows.push(pre + at(BlockSite::AttnOut)?);
        rows.push(at(BlockSite::ResidPost)?);
    }
    let x = Tensor::cat(rows, 0).reshape([1, 3 * n, d]);
    let probs = softmax(model.unembed(x, &mut NoHooks)?, 2);
    let vocab = probs.dims()[2];
    let p = host(probs)?;
    let get = |r: usize| {
        let row = &p[r * vocab..(r + 1) * vocab];
        TargetStanding {
            rank: rank_of(row, target),
            prob: row[target as usize],
        }
    };
    Ok((0..n)
        .map(|layer| FactStep {
            layer,
            entering: get(3 * layer),
            after_attn: get(3 * layer + 1),
            after_mlp: get(3 * layer + 2),
        })
        .collect())
}
