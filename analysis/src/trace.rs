//! Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations
//! in GPT", §2.1 and Appendix B). The subject's token embeddings are corrupted
//! with noise in `samples` copies; then one clean internal state at a time is
//! restored, and the mean probability of the answer's first token is read.
//!
//! The noise is ROME's, draw for draw: numpy's `RandomState(seed)` (ROME: 1),
//! `randn` (or `uniform(-1, 1)`) over `[samples, subject tokens, d_model]` in
//! that order, times ν ([`crate::numpy_random`]).
//!
//! Three kinds of restoration, as in ROME's `causal_trace.py`:
//! - `hidden`: the residual stream after block `l` (`blocks.{l}.hook_resid_post`) at one token;
//! - `mlp` / `attn`: the MLP / attention outputs of a window of layers around `l`
//!   (`[l - w/2, l + ceil(w/2))`, clipped) at one token.
//!
//! [`trace_naive`] does what the reference code does: one forward pass per
//! (token, layer). [`trace_fact`] gives the same numbers at the arithmetic floor:
//! a restoration at (token t, layer l) changes nothing before t, nor below l, so
//! one corrupted run (shared by the three kinds) leaves every block's input and
//! keys/values, and each restoration computes only positions t.. from layer l
//! on, over the corrupted keys and values of positions before t. Tokens before
//! the subject carry no noise: restoring them gives the corrupted run's score.
//! [`trace_batched`] is the earlier procedure (every position, every token's
//! restoration at a layer in one batch of at most `max_rows`), kept to measure
//! against.

use std::ops::Range;

use burn_tensor::activation::softmax;
use burn_tensor::backend::Backend;
use burn_tensor::{Tensor, TensorData};
use engram_model::layers::{ForwardCtx, LayerKv};
use engram_model::{
    Activation, ActivationCache, Batch, BlockSite, Hook, HookPoint, ModelError, NoHooks,
    Transformer,
};

use crate::numpy_random::RandomState;

/// What is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceKind {
    Hidden,
    Mlp,
    Attn,
}

impl TraceKind {
    pub const ALL: [TraceKind; 3] = [TraceKind::Hidden, TraceKind::Mlp, TraceKind::Attn];

    pub fn name(self) -> &'static str {
        match self {
            TraceKind::Hidden => "hidden",
            TraceKind::Mlp => "mlp",
            TraceKind::Attn => "attn",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    fn site(self) -> BlockSite {
        match self {
            TraceKind::Hidden => BlockSite::ResidPost,
            TraceKind::Mlp => BlockSite::MlpOut,
            TraceKind::Attn => BlockSite::AttnOut,
        }
    }
}

/// The noise added to the subject's token embeddings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Noise {
    /// `scale * N(0, 1)` per coordinate (ROME's default, with scale ν = 3σ).
    Gaussian { scale: f32 },
    /// `scale * U(-1, 1)` per coordinate (ROME's `uniform_noise`).
    Uniform { scale: f32 },
}

impl Noise {
    pub fn scale(self) -> f32 {
        match self {
            Noise::Gaussian { scale } | Noise::Uniform { scale } => scale,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    pub noise: Noise,
    /// Corrupted copies (ROME: 10).
    pub samples: usize,
    /// Layers restored together for `mlp` and `attn` (ROME: 10).
    pub window: usize,
    /// numpy's `RandomState` seed (ROME: 1).
    pub seed: u32,
    pub kinds: Vec<TraceKind>,
    /// At most this many rows per batched forward pass ([`trace_batched`]).
    pub max_rows: usize,
}

impl TraceConfig {
    /// ROME's protocol with noise scale `scale`.
    pub fn rome(scale: f32) -> Self {
        Self {
            noise: Noise::Gaussian { scale },
            samples: 10,
            window: 10,
            seed: 1,
            kinds: TraceKind::ALL.to_vec(),
            max_rows: 256,
        }
    }
}

/// One fact as token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceInput {
    pub ids: Vec<u32>,
    /// Token positions of the subject.
    pub subject: Range<usize>,
    /// First token of the expected answer.
    pub target: u32,
}

/// Restoration scores of one kind: `scores[token][layer]`, mean target probability.
#[derive(Debug, Clone, PartialEq)]
pub struct KindScores {
    pub kind: TraceKind,
    pub scores: Vec<Vec<f32>>,
}

/// A traced fact.
#[derive(Debug, Clone, PartialEq)]
pub struct FactTrace {
    pub input: TraceInput,
    /// The model's top-1 next token on the clean prompt.
    pub predicted: u32,
    pub clean_prob: f32,
    pub corrupted_prob: f32,
    pub kinds: Vec<KindScores>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the subject covers no token of the prompt")]
    EmptySubject,
    #[error("subject tokens {start}..{end} fall outside the prompt's {len} tokens")]
    SubjectOutOfRange {
        start: usize,
        end: usize,
        len: usize,
    },
    #[error("target token {0} is outside the vocabulary")]
    TargetOutOfRange(u32),
    #[error("{0}")]
    Config(String),
    #[error("cancelled")]
    Cancelled(#[from] engram_model::Cancelled),
}

type Result<T> = std::result::Result<T, TraceError>;

fn check<B: Backend>(model: &Transformer<B>, input: &TraceInput, cfg: &TraceConfig) -> Result<()> {
    let len = input.ids.len();
    if input.subject.is_empty() {
        return Err(TraceError::EmptySubject);
    }
    if input.subject.end > len {
        return Err(TraceError::SubjectOutOfRange {
            start: input.subject.start,
            end: input.subject.end,
            len,
        });
    }
    if input.target as usize >= model.config.vocab_size {
        return Err(TraceError::TargetOutOfRange(input.target));
    }
    if cfg.samples == 0 {
        return Err(TraceError::Config("samples must be at least 1".into()));
    }
    if cfg.window == 0 {
        return Err(TraceError::Config("window must be at least 1".into()));
    }
    if !cfg.noise.scale().is_finite() {
        return Err(TraceError::Config("the noise scale is not finite".into()));
    }
    Ok(())
}

fn data_err(e: impl std::fmt::Debug) -> TraceError {
    TraceError::Model(ModelError::Data(format!("{e:?}")))
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().into_vec().map_err(data_err)
}

/// Standard deviation of the token embeddings of `subjects` (all coordinates
/// of all their tokens), as ROME's `collect_embedding_std`. ν = 3 × this.
pub fn embedding_std<B: Backend>(model: &Transformer<B>, subjects: &[Vec<u32>]) -> Result<f32> {
    let mut sum = 0f64;
    let mut sum_sq = 0f64;
    let mut n = 0usize;
    for ids in subjects.iter().filter(|s| !s.is_empty()) {
        let mut cache = ActivationCache::<B>::new(|p| p == HookPoint::Embed);
        let batch = Batch::single(ids);
        model.embed(&batch, &mut cache)?;
        let act = cache
            .rank3(HookPoint::Embed)
            .ok_or_else(|| ModelError::UnknownHook("hook_embed".into()))?;
        for v in to_vec(act)? {
            sum += v as f64;
            sum_sq += (v as f64) * (v as f64);
            n += 1;
        }
    }
    if n < 2 {
        return Err(TraceError::Config(
            "no subject tokens to measure the embedding spread".into(),
        ));
    }
    let mean = sum / n as f64;
    // Unbiased, as torch.std.
    let var = (sum_sq - n as f64 * mean * mean) / (n as f64 - 1.0);
    Ok(var.max(0.0).sqrt() as f32)
}

/// The noise of each corrupted copy: `[samples, pos, d_model]`, zero outside
/// the subject; ROME's `noise * RandomState(seed).randn(samples, subject, d)`.
fn noise_tensor<B: Backend>(
    model: &Transformer<B>,
    input: &TraceInput,
    cfg: &TraceConfig,
) -> Tensor<B, 3> {
    let (s, t, d) = (cfg.samples, input.ids.len(), model.config.d_model);
    let mut rs = RandomState::new(cfg.seed);
    let mut data = vec![0f32; s * t * d];
    for sample in 0..s {
        for pos in input.subject.clone() {
            for k in 0..d {
                let z = match cfg.noise {
                    Noise::Gaussian { scale } => f64::from(scale) * rs.randn(),
                    Noise::Uniform { scale } => f64::from(scale) * rs.uniform(-1.0, 1.0),
                };
                data[(sample * t + pos) * d + k] = z as f32;
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [s, t, d]), &model.device)
}

/// Adds the noise at `hook_embed` (rows are the corrupted copies, repeated).
struct AddNoise<B: Backend> {
    noise: Tensor<B, 3>,
}

impl<B: Backend> Hook<B> for AddNoise<B> {
    fn wants(&self, point: HookPoint) -> bool {
        point == HookPoint::Embed
    }
    fn call(&mut self, _: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        let x = act.as_rank3()?.clone();
        let [rows, _, _] = x.dims();
        let [s, _, _] = self.noise.dims();
        let noise = self.noise.clone().repeat_dim(0, rows / s);
        Some(Activation::Rank3(x + noise))
    }
}

/// Replaces the activation at `points` with the clean one at each row's token:
/// `x * (1 - m) + clean * m`, `m` one-hot over positions per row.
struct Restore<B: Backend> {
    /// `(point, clean [1, pos, d])`
    clean: Vec<(HookPoint, Tensor<B, 3>)>,
    /// `[rows, pos, 1]`
    mask: Tensor<B, 3>,
}

impl<B: Backend> Hook<B> for Restore<B> {
    fn wants(&self, point: HookPoint) -> bool {
        self.clean.iter().any(|(p, _)| *p == point)
    }
    fn call(&mut self, point: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        let x = act.as_rank3()?.clone();
        let (_, clean) = self.clean.iter().find(|(p, _)| *p == point)?;
        Some(Activation::Rank3(blend(
            x,
            clean.clone(),
            self.mask.clone(),
        )))
    }
}

/// `x` where `mask` is 0, `clean` where it is 1 (broadcast). Restoring and
/// patching both come down to this.
///
/// # Shapes
/// - x: `[rows, ...]`, clean: `[1 or rows, ...]`, mask: `[rows, ...]` with 1s on broadcast axes
pub(crate) fn blend<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    clean: Tensor<B, D>,
    mask: Tensor<B, D>,
) -> Tensor<B, D> {
    let keep = mask.clone().neg().add_scalar(1.0);
    x * keep + clean * mask
}

/// `[groups * samples, pos, 1]`: group `g` restores token `tokens[g]`.
fn token_mask<B: Backend>(
    tokens: &[usize],
    samples: usize,
    len: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let rows = tokens.len() * samples;
    let mut m = vec![0f32; rows * len];
    for (g, &t) in tokens.iter().enumerate() {
        for s in 0..samples {
            m[(g * samples + s) * len + t] = 1.0;
        }
    }
    Tensor::from_data(TensorData::new(m, [rows, len, 1]), device)
}

/// The MLP/attention window for a model of `n_layers`: ROME's 10 for models of
/// 28 layers or more (GPT-J, NeoX, GPT-2 XL), and the same share of depth as on
/// GPT-2 XL (10 of 48) below that, at least 1. A 10-layer window on a 4-layer
/// model would restore every layer at once and show no location.
pub fn default_window(n_layers: usize) -> usize {
    if n_layers >= 28 {
        10
    } else {
        (n_layers * 10 / 48).max(1)
    }
}

/// Layers restored together for `kind` at `layer`.
pub fn window_layers(
    kind: TraceKind,
    layer: usize,
    window: usize,
    n_layers: usize,
) -> Range<usize> {
    match kind {
        TraceKind::Hidden => layer..layer + 1,
        _ => {
            let start = layer.saturating_sub(window / 2);
            let end = (layer + window.div_ceil(2)).min(n_layers);
            start..end
        }
    }
}

/// Mean probability of `target` at the last position over each group of `samples` rows.
///
/// # Shapes
/// - logits: `[groups * samples, pos, vocab]`
fn group_means<B: Backend>(logits: Tensor<B, 3>, target: u32, samples: usize) -> Result<Vec<f32>> {
    let [rows, pos, vocab] = logits.dims();
    let last = logits
        .slice([0..rows, pos - 1..pos, 0..vocab])
        .reshape([rows, vocab]);
    let p = softmax(last, 1).slice([0..rows, target as usize..target as usize + 1]);
    let p = to_vec(p)?;
    Ok(p.chunks(samples)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect())
}

/// Clean activations at every layer for the sites of `kinds`, and the clean prediction.
struct Clean<B: Backend> {
    cache: ActivationCache<B>,
    predicted: u32,
    prob: f32,
}

fn clean_run<B: Backend>(
    model: &Transformer<B>,
    input: &TraceInput,
    sites: &[BlockSite],
) -> Result<Clean<B>> {
    let sites = sites.to_vec();
    let mut cache =
        ActivationCache::<B>::new(move |p| p.site().is_some_and(|s| sites.contains(&s)));
    let logits = model.forward(&Batch::single(&input.ids), &mut cache)?;
    let [_, pos, vocab] = logits.dims();
    let last = logits
        .slice([0..1, pos - 1..pos, 0..vocab])
        .reshape([1, vocab]);
    let probs = to_vec(softmax(last, 1))?;
    let predicted = probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32);
    Ok(Clean {
        cache,
        predicted,
        prob: probs[input.target as usize],
    })
}

fn clean_act<B: Backend>(clean: &Clean<B>, point: HookPoint) -> Result<Tensor<B, 3>> {
    clean
        .cache
        .rank3(point)
        .ok_or_else(|| TraceError::Model(ModelError::UnknownHook(point.to_string())))
}

/// One corrupted pass with the given restorations: each `(point, token)` takes
/// its clean value. Returns the mean target probability. This is ROME's
/// `trace_with_patch`; the naive path and the tests use it.
pub fn trace_with_patch<B: Backend>(
    model: &Transformer<B>,
    input: &TraceInput,
    cfg: &TraceConfig,
    restores: &[(HookPoint, usize)],
) -> Result<f32> {
    check(model, input, cfg)?;
    let noise = noise_tensor(model, input, cfg);
    let mut points: Vec<HookPoint> = restores.iter().map(|(p, _)| *p).collect();
    points.sort();
    points.dedup();
    let sites: Vec<BlockSite> = points.iter().filter_map(|p| p.site()).collect();
    let clean = clean_run(model, input, &sites)?;
    patched_prob(model, input, cfg, &noise, &clean, restores)
}

fn patched_prob<B: Backend>(
    model: &Transformer<B>,
    input: &TraceInput,
    cfg: &TraceConfig,
    noise: &Tensor<B, 3>,
    clean: &Clean<B>,
    restores: &[(HookPoint, usize)],
) -> Result<f32> {
    let len = input.ids.len();
    let rows = vec![input.ids.clone(); cfg.samples];
    let batch = Batch::uniform(&rows)?;
    // One Restore hook per point, each with its own token mask.
    let mut hooks: Vec<Box<dyn Hook<B> + Send>> = Vec::new();
    let mut points: Vec<HookPoint> = restores.iter().map(|(p, _)| *p).collect();
    points.sort();
    points.dedup();
    for p in points {
        let mut m = vec![0f32; cfg.samples * len];
        for &(_, t) in restores.iter().filter(|(q, _)| *q == p) {
            for s in 0..cfg.samples {
                m[s * len + t] = 1.0;
            }
        }
        let mask = Tensor::from_data(TensorData::new(m, [cfg.samples, len, 1]), &model.device);
        hooks.push(Box::new(Restore {
            clean: vec![(p, clean_act(clean, p)?)],
            mask,
        }));
    }
    let mut all = (
        AddNoise {
            noise: noise.clone(),
        },
        hooks,
    );
    let logits = model.forward(&batch, &mut all)?;
    Ok(group_means(logits, input.target, cfg.samples)?[0])
}

/// Progress: `(done, total)` steps; return false to stop.
pub type OnStep<'a> = &'a mut dyn FnMut(usize, usize) -> bool;

fn scores_shape(len: usize, n_layers: usize) -> Vec<Vec<f32>> {
    vec![vec![0f32; n_layers]; len]
}

/// What both procedures start from: the checked input, the noise and the clean run.
struct Setup<B: Backend> {
    n_layers: usize,
    len: usize,
    noise: Tensor<B, 3>,
    clean: Clean<B>,
}

fn setup<B: Backend>(
    model: &Transformer<B>,
    input: &TraceInput,
    cfg: &TraceConfig,
) -> Result<Setup<B>> {
    check(model, input, cfg)?;
    let sites: Vec<BlockSite> = cfg.kinds.iter().map(|k| k.site()).collect();
    Ok(Setup {
        n_layers: model.config.n_layers,
        len: input.ids.len(),
        noise: noise_tensor(model, input, cfg),
        clean: clean_run(model, input, &sites)?,
    })
}

/// The reference procedure: one corrupted forward pass per (kind, token, layer).
pub fn trace_naive<B: Backend>(
    model: &Transformer<B>,
    input: &TraceInput,
    cfg: &TraceConfig,
    on_step: OnStep<'_>,
) -> Result<FactTrace> {
    let Setup {
        n_layers,
        len,
        noise,
        clean,
    } = setup(model, input, cfg)?;
    let corrupted_prob = patched_prob(model, input, cfg, &noise, &clean, &[])?;
    let total = cfg.kinds.len() * len * n_layers;
    let mut done = 0;
    let mut kinds = Vec::new();
    for &kind in &cfg.kinds {
        let mut scores = scores_shape(len, n_layers);
        for (token, row) in scores.iter_mut().enumerate() {
            for (layer, cell) in row.iter_mut().enumerate() {
                let restores: Vec<(HookPoint, usize)> =
                    window_layers(kind, layer, cfg.window, n_layers)
                        .map(|l| (HookPoint::block(l, kind.site()), token))
                        .collect();
                *cell = patched_prob(model, input, cfg, &noise, &clean, &restores)?;
                done += 1;
                if !on_step(done, total) {
                    return Err(engram_model::Cancelled.into());
                }
            }
        }
        kinds.push(KindScores { kind, scores });
    }
    Ok(FactTrace {
        input: input.clone(),
        predicted: clean.predicted,
        clean_prob: clean.prob,
        corrupted_prob,
        kinds,
    })
}

/// The earlier fast procedure: same numbers as [`trace_naive`], with the
/// corrupted prefix computed once and every token's restoration at a layer in
/// one batch, every position recomputed. [`trace_fact`] replaces it.
pub fn trace_batched<B: Backend>(
    model: &Transformer<B>,
    input: &TraceInput,
    cfg: &TraceConfig,
    on_step: OnStep<'_>,
) -> Result<FactTrace> {
    let Setup {
        n_layers,
        len,
        noise,
        clean,
    } = setup(model, input, cfg)?;
    let samples = cfg.samples;

    // The corrupted run, keeping the residual stream entering every block.
    let rows = vec![input.ids.clone(); samples];
    let batch = Batch::uniform(&rows)?;
    let mut corrupt_cache = ActivationCache::<B>::new(|p| p.site() == Some(BlockSite::ResidPre));
    let logits = model.forward(
        &batch,
        &mut (
            AddNoise {
                noise: noise.clone(),
            },
            &mut corrupt_cache,
        ),
    )?;
    let corrupted_prob = group_means(logits, input.target, samples)?[0];
    let resid_pre = |l: usize| -> Result<Tensor<B, 3>> {
        corrupt_cache.rank3(HookPoint::resid_pre(l)).ok_or_else(|| {
            TraceError::Model(ModelError::UnknownHook(format!(
                "blocks.{l}.hook_resid_pre"
            )))
        })
    };

    let per_chunk = (cfg.max_rows / samples).max(1).min(len);
    let chunks: Vec<Vec<usize>> = (0..len)
        .collect::<Vec<_>>()
        .chunks(per_chunk)
        .map(<[usize]>::to_vec)
        .collect();
    // Masks and attention contexts depend only on the chunk: build them once.
    let prepared: Vec<(Tensor<B, 3>, engram_model::layers::ForwardCtx<B>)> = chunks
        .iter()
        .map(|tokens| {
            let rows = vec![input.ids.clone(); tokens.len() * samples];
            Ok((
                token_mask::<B>(tokens, samples, len, &model.device),
                model.context(&Batch::uniform(&rows)?)?,
            ))
        })
        .collect::<Result<_>>()?;
    let total = cfg.kinds.len() * n_layers * chunks.len();
    let mut done = 0;
    let mut kinds = Vec::new();
    for &kind in &cfg.kinds {
        let mut scores = scores_shape(len, n_layers);
        for layer in 0..n_layers {
            let mut column = vec![0f32; len];
            let window = window_layers(kind, layer, cfg.window, n_layers);
            // Everything before the first restored layer is the plain corrupted run.
            let start = window.start;
            let points: Vec<(HookPoint, Tensor<B, 3>)> = window
                .clone()
                .map(|l| {
                    let p = HookPoint::block(l, kind.site());
                    clean_act(&clean, p).map(|c| (p, c))
                })
                .collect::<Result<_>>()?;
            for (tokens, (mask, ctx)) in chunks.iter().zip(&prepared) {
                let x = resid_pre(start)?.repeat_dim(0, tokens.len());
                let mut hook = Restore {
                    clean: points.clone(),
                    mask: mask.clone(),
                };
                let out = model.run_blocks(start..n_layers, x, ctx, &mut hook)?;
                // Only the last position's distribution is read: unembed just that.
                let [rows, _, d] = out.dims();
                let last = out.slice([0..rows, len - 1..len, 0..d]);
                let logits = model.unembed(last, &mut NoHooks)?;
                let means = group_means(logits, input.target, samples)?;
                for (g, &t) in tokens.iter().enumerate() {
                    column[t] = means[g];
                }
                done += 1;
                if !on_step(done, total) {
                    return Err(engram_model::Cancelled.into());
                }
            }
            for (row, v) in scores.iter_mut().zip(column) {
                row[layer] = v;
            }
        }
        kinds.push(KindScores { kind, scores });
    }
    Ok(FactTrace {
        input: input.clone(),
        predicted: clean.predicted,
        clean_prob: clean.prob,
        corrupted_prob,
        kinds,
    })
}

/// The corrupted run, kept at every layer for restorations to start from.
struct Corrupted<B: Backend> {
    /// `n_layers + 1` entries `[samples, pos, d_model]`: the residual entering
    /// each block, then the final one.
    resid: Vec<Tensor<B, 3>>,
    /// Each block's keys and values over all positions.
    kv: Vec<LayerKv<B>>,
    prob: f32,
}

fn corrupted_run<B: Backend>(
    model: &Transformer<B>,
    input: &TraceInput,
    cfg: &TraceConfig,
    noise: &Tensor<B, 3>,
) -> Result<Corrupted<B>> {
    let n_layers = model.config.n_layers;
    let batch = Batch::uniform(&vec![input.ids.clone(); cfg.samples])?;
    let ctx = model.context(&batch)?;
    let mut x = model.embed(
        &batch,
        &mut AddNoise {
            noise: noise.clone(),
        },
    )?;
    let mut kv = vec![LayerKv::default(); n_layers];
    let mut resid = Vec::with_capacity(n_layers + 1);
    for layer in 0..n_layers {
        resid.push(x.clone());
        x = model.run_blocks_cached(layer..layer + 1, x, &ctx, &mut kv, &mut NoHooks)?;
    }
    resid.push(x);
    let prob = last_means(model, &resid[n_layers], input.target, cfg.samples)?;
    Ok(Corrupted { resid, kv, prob })
}

/// Mean target probability at the last position of `[samples, pos, d_model]`.
fn last_means<B: Backend>(
    model: &Transformer<B>,
    x: &Tensor<B, 3>,
    target: u32,
    samples: usize,
) -> Result<f32> {
    let [rows, pos, d] = x.dims();
    let last = x.clone().slice([0..rows, pos - 1..pos, 0..d]);
    let logits = model.unembed(last, &mut NoHooks)?;
    Ok(group_means(logits, target, samples)?[0])
}

/// `x[:, t.., :]` of `[rows, pos, d]`.
fn from_pos<B: Backend>(x: &Tensor<B, 3>, t: usize) -> Tensor<B, 3> {
    let [rows, pos, d] = x.dims();
    x.clone().slice([0..rows, t..pos, 0..d])
}

/// The first block a restoration of `kind` at `layer` changes.
fn first_block(kind: TraceKind, layer: usize, window: usize, n_layers: usize) -> usize {
    match kind {
        // The restored residual is the next block's input.
        TraceKind::Hidden => layer + 1,
        _ => window_layers(kind, layer, window, n_layers).start,
    }
}

/// `[rows, len, 1]`: 1 at position 0 of the rows of the groups `on` picks.
fn group_mask<B: Backend>(
    on: impl Iterator<Item = bool>,
    samples: usize,
    len: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut m = Vec::new();
    for pick in on {
        for _ in 0..samples {
            m.push(if pick { 1.0 } else { 0.0 });
            m.extend(std::iter::repeat_n(0f32, len - 1));
        }
    }
    let rows = m.len() / len;
    Tensor::from_data(TensorData::new(m, [rows, len, 1]), device)
}

/// The fast procedure: same numbers as [`trace_naive`], computing only what a
/// restoration can change (see the module header). For each token `t`, every
/// restoration (kind × layer) runs in one batch that grows block by block: a
/// restoration's rows join at the first block it changes, entering with the
/// corrupted residual there, and all rows share the corrupted keys and values
/// of positions before `t`.
pub fn trace_fact<B: Backend>(
    model: &Transformer<B>,
    input: &TraceInput,
    cfg: &TraceConfig,
    on_step: OnStep<'_>,
) -> Result<FactTrace> {
    let Setup {
        n_layers,
        len,
        noise,
        clean,
    } = setup(model, input, cfg)?;
    let samples = cfg.samples;
    let device = &model.device;
    let corrupted = corrupted_run(model, input, cfg, &noise)?;
    let mut scores = vec![scores_shape(len, n_layers); cfg.kinds.len()];
    // Tokens before the subject are the same in both runs.
    let first = input.subject.start;
    for kind_scores in &mut scores {
        for row in &mut kind_scores[..first] {
            row.fill(corrupted.prob);
        }
    }
    let n = n_layers;
    let all: Vec<(usize, usize)> = (0..cfg.kinds.len())
        .flat_map(|k| (0..n).map(move |l| (k, l)))
        .collect();
    let starts: Vec<usize> = all
        .iter()
        .map(|&(k, l)| first_block(cfg.kinds[k], l, cfg.window, n))
        .collect();
    let total = (len - first) * (n + 1);
    let mut done = 0;
    // `t` is a token position first, an index second.
    #[allow(clippy::needless_range_loop)]
    for t in first..len {
        let tail = len - t;
        let max_rows = all.len() * samples;
        let full = ForwardCtx::new(
            &model.config,
            &vec![(t..len).collect::<Vec<_>>(); max_rows],
            &vec![vec![true; len]; max_rows],
            device,
        );
        let one = group_mask::<B>(std::iter::once(true), samples, tail, device);
        // Row groups (indices into `all`), `samples` rows each, in the order they joined.
        let mut groups: Vec<usize> = Vec::new();
        let mut x: Option<Tensor<B, 3>> = None;
        let mut kv = vec![LayerKv::<B>::default(); n];
        for j in 0..=n {
            let entering: Vec<usize> = (0..all.len()).filter(|&i| starts[i] == j).collect();
            if !entering.is_empty() {
                let base = from_pos(&corrupted.resid[j], t);
                let mut parts: Vec<Tensor<B, 3>> = x.take().into_iter().collect();
                for &i in &entering {
                    let (k, l) = all[i];
                    parts.push(match cfg.kinds[k] {
                        TraceKind::Hidden => {
                            let point = HookPoint::block(l, BlockSite::ResidPost);
                            blend(
                                base.clone(),
                                from_pos(&clean_act(&clean, point)?, t),
                                one.clone(),
                            )
                        }
                        _ => base.clone(),
                    });
                }
                x = Some(Tensor::cat(parts, 0));
                groups.extend(entering);
            }
            if j == n {
                break;
            }
            if let Some(xj) = x.take() {
                let rows = groups.len() * samples;
                let ctx = ForwardCtx {
                    mask: {
                        let [_, h, q, k] = full.mask.dims();
                        full.mask.clone().slice([0..rows, 0..h, 0..q, 0..k])
                    },
                    rotary: full.rotary.as_ref().map(|(c, s)| {
                        let [_, p, h, d] = c.dims();
                        (
                            c.clone().slice([0..rows, 0..p, 0..h, 0..d]),
                            s.clone().slice([0..rows, 0..p, 0..h, 0..d]),
                        )
                    }),
                };
                kv[j] = match (t, &corrupted.kv[j].k, &corrupted.kv[j].v) {
                    (1.., Some(k), Some(v)) => {
                        let cut = |x: &Tensor<B, 4>| {
                            let [b, _, h, d] = x.dims();
                            x.clone()
                                .slice([0..b, 0..t, 0..h, 0..d])
                                .repeat_dim(0, groups.len())
                        };
                        LayerKv {
                            k: Some(cut(k)),
                            v: Some(cut(v)),
                        }
                    }
                    _ => LayerKv::default(),
                };
                // The MLP and attention restorations whose window holds block j.
                let restore = |kind: TraceKind| -> Result<Restore<B>> {
                    let on: Vec<bool> = groups
                        .iter()
                        .map(|&i| {
                            let (k, l) = all[i];
                            cfg.kinds[k] == kind
                                && window_layers(kind, l, cfg.window, n).contains(&j)
                        })
                        .collect();
                    let clean = if on.iter().any(|&b| b) {
                        let p = HookPoint::block(j, kind.site());
                        vec![(p, from_pos(&clean_act(&clean, p)?, t))]
                    } else {
                        Vec::new()
                    };
                    Ok(Restore {
                        clean,
                        mask: group_mask(on.into_iter(), samples, tail, device),
                    })
                };
                let mut hooks = (restore(TraceKind::Mlp)?, restore(TraceKind::Attn)?);
                x = Some(model.run_blocks_cached(j..j + 1, xj, &ctx, &mut kv, &mut hooks)?);
                kv[j] = LayerKv::default();
            }
            done += 1;
            if !on_step(done, total) {
                return Err(engram_model::Cancelled.into());
            }
        }
        let Some(out) = x else { continue };
        // The last position of every row, unembedded in chunks of whole groups.
        let [rows, _, d] = out.dims();
        let last = out.slice([0..rows, tail - 1..tail, 0..d]);
        let per_chunk = (256 / samples).max(1) * samples;
        let mut means = Vec::with_capacity(groups.len());
        for r0 in (0..rows).step_by(per_chunk) {
            let r1 = (r0 + per_chunk).min(rows);
            let logits = model.unembed(last.clone().slice([r0..r1, 0..1, 0..d]), &mut NoHooks)?;
            means.extend(group_means(logits, input.target, samples)?);
        }
        for (&i, p) in groups.iter().zip(means) {
            let (k, l) = all[i];
            scores[k][t][l] = p;
        }
        done += 1;
        if !on_step(done, total) {
            return Err(engram_model::Cancelled.into());
        }
    }
    Ok(FactTrace {
        input: input.clone(),
        predicted: clean.predicted,
        clean_prob: clean.prob,
        corrupted_prob: corrupted.prob,
        kinds: cfg
            .kinds
            .iter()
            .zip(scores)
            .map(|(&kind, scores)| KindScores { kind, scores })
            .collect(),
    })
}

/// ROME's token groups for averaging (`average_causal_effects`):
/// first subject token, middle subject tokens, last subject token, first
/// subsequent token, further tokens, last token.
pub const TOKEN_GROUPS: [&str; 6] = [
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
];

/// The groups token `t` counts in (a token may count in two, as in ROME).
pub fn token_groups(t: usize, subject: &Range<usize>, len: usize) -> Vec<usize> {
    let mut g = Vec::new();
    let last_subject = subject.end.saturating_sub(1);
    let first_after = subject.end;
    let last = len.saturating_sub(1);
    if t == subject.start {
        g.push(0);
    }
    if t > subject.start && t < last_subject {
        g.push(1);
    }
    if t == last_subject {
        g.push(2);
    }
    if t == first_after {
        g.push(3);
    }
    if t > first_after && t < last {
        g.push(4);
    }
    if t == last {
        g.push(5);
    }
    g
}
