//! Training a language model with burn's autodiff: next-token cross-entropy and
//! Adam (Kingma & Ba 2015) with linear warm-up and cosine decay. Used to train
//! the embedded demo model; the parameters are the plain tensors of [`Transformer`].

use burn_tensor::activation::log_softmax;
use burn_tensor::backend::{AutodiffBackend, Backend};
use burn_tensor::{Int, Tensor, TensorData};

use crate::error::{ModelError, Result};
use crate::generate::Rng;
use crate::hooks::NoHooks;
use crate::layers::{Attention, Block, LayerKv, Linear, Mlp, Norm};
use crate::transformer::{Batch, Transformer};

/// A mutable reference to one parameter tensor.
pub enum ParamMut<'a, B: Backend> {
    R1(&'a mut Tensor<B, 1>),
    R2(&'a mut Tensor<B, 2>),
}

fn linear_params<'a, B: Backend>(l: &'a mut Linear<B>, out: &mut Vec<ParamMut<'a, B>>) {
    let Linear { weight, bias } = l;
    out.push(ParamMut::R2(weight));
    if let Some(b) = bias {
        out.push(ParamMut::R1(b));
    }
}

fn norm_params<'a, B: Backend>(n: &'a mut Norm<B>, out: &mut Vec<ParamMut<'a, B>>) {
    out.push(ParamMut::R1(&mut n.weight));
    if let Some(b) = &mut n.bias {
        out.push(ParamMut::R1(b));
    }
}

impl<B: Backend> Transformer<B> {
    /// Every parameter tensor, in a fixed order.
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_, B>> {
        let mut out = vec![ParamMut::R2(&mut self.embed)];
        if let Some(p) = &mut self.pos_embed {
            out.push(ParamMut::R2(p));
        }
        for b in &mut self.blocks {
            norm_params(&mut b.ln1, &mut out);
            if let Some(ln2) = &mut b.ln2 {
                norm_params(ln2, &mut out);
            }
            for l in [
                &mut b.attn.q,
                &mut b.attn.k,
                &mut b.attn.v,
                &mut b.attn.o,
                &mut b.mlp.fc_in,
                &mut b.mlp.fc_out,
            ] {
                linear_params(l, &mut out);
            }
            if let Some(up) = &mut b.mlp.up {
                linear_params(up, &mut out);
            }
        }
        norm_params(&mut self.ln_final, &mut out);
        linear_params(&mut self.unembed, &mut out);
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1500,
            batch_size: 32,
            lr: 3e-3,
            warmup: 100,
            weight_decay: 0.01,
            seed: 0,
        }
    }
}

/// Mean next-token cross-entropy over the real (unpadded) positions.
///
/// # Shapes
/// - returns `[1]`
pub fn lm_loss<B: Backend>(model: &Transformer<B>, batch: &Batch) -> Result<Tensor<B, 1>> {
    let logits = model.forward(batch, &mut NoHooks)?;
    let [b, s, v] = logits.dims();
    if s < 2 {
        return Err(ModelError::Data(
            "sequences need at least two tokens to train on".into(),
        ));
    }
    let logp = log_softmax(logits.slice([0..b, 0..s - 1, 0..v]), 2);
    let mut targets = Vec::with_capacity(b * (s - 1));
    let mut mask = Vec::with_capacity(b * (s - 1));
    for (ids, keep) in batch.ids.iter().zip(&batch.keep) {
        for t in 1..s {
            targets.push(ids[t] as i64);
            mask.push(if keep[t] && keep[t - 1] { 1.0f32 } else { 0.0 });
        }
    }
    let n: f32 = mask.iter().sum();
    let device = &model.device;
    let targets = Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [b, s - 1, 1]), device);
    let mask = Tensor::<B, 3>::from_data(TensorData::new(mask, [b, s - 1, 1]), device);
    let picked = logp.gather(2, targets) * mask;
    Ok(picked.sum().neg().div_scalar(n.max(1.0)))
}

struct AdamState<B: Backend> {
    m1: Vec<Tensor<B, 1>>,
    v1: Vec<Tensor<B, 1>>,
    m2: Vec<Tensor<B, 2>>,
    v2: Vec<Tensor<B, 2>>,
}

/// Train on `sequences` (each at least two tokens), returning the loss curve.
pub fn train_lm<B: AutodiffBackend>(
    model: &mut Transformer<B>,
    sequences: &[Vec<u32>],
    cfg: &TrainConfig,
    mut progress: impl FnMut(usize, f32) -> bool,
) -> Result<Vec<f32>> {
    if sequences.is_empty() {
        return Err(ModelError::Data("no training sequences".into()));
    }
    let pad = 0;
    let mut rng = Rng::new(cfg.seed);
    let (beta1, beta2, eps) = (0.9f64, 0.98f64, 1e-8f64);
    for p in model.params_mut() {
        match p {
            ParamMut::R1(t) => *t = t.clone().require_grad(),
            ParamMut::R2(t) => *t = t.clone().require_grad(),
        }
    }
    let mut state = AdamState::<B::InnerBackend> {
        m1: vec![],
        v1: vec![],
        m2: vec![],
        v2: vec![],
    };
    for p in model.params_mut() {
        match p {
            ParamMut::R1(t) => {
                state.m1.push(t.clone().inner().zeros_like());
                state.v1.push(t.clone().inner().zeros_like());
            }
            ParamMut::R2(t) => {
                state.m2.push(t.clone().inner().zeros_like());
                state.v2.push(t.clone().inner().zeros_like());
            }
        }
    }
    let mut losses = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let rows: Vec<Vec<u32>> = (0..cfg.batch_size)
            .map(|_| sequences[(rng.next_u64() % sequences.len() as u64) as usize].clone())
            .collect();
        let batch = Batch::right_padded(&rows, pad);
        let loss = lm_loss(model, &batch)?;
        let loss_value: f32 = loss
            .clone()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .ok()
            .and_then(|v| v.first().copied())
            .unwrap_or(f32::NAN);
        if !loss_value.is_finite() {
            return Err(ModelError::Data(format!(
                "loss became {loss_value} at step {step}"
            )));
        }
        losses.push(loss_value);
        let grads = loss.backward();
        let lr = schedule(cfg, step);
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        let (mut i1, mut i2) = (0, 0);
        for p in model.params_mut() {
            match p {
                ParamMut::R1(w) => {
                    if let Some(g) = w.grad(&grads) {
                        let m = state.m1[i1].clone() * beta1 + g.clone() * (1.0 - beta1);
                        let v = state.v1[i1].clone() * beta2 + g.square() * (1.0 - beta2);
                        let upd = (m.clone() / c1) / ((v.clone() / c2).sqrt() + eps);
                        // Norm gains and biases get no weight decay.
                        let new = w.clone().inner() - upd * lr;
                        state.m1[i1] = m;
                        state.v1[i1] = v;
                        *w = Tensor::from_inner(new).require_grad();
                    }
                    i1 += 1;
                }
                ParamMut::R2(w) => {
                    if let Some(g) = w.grad(&grads) {
                        let m = state.m2[i2].clone() * beta1 + g.clone() * (1.0 - beta1);
                        let v = state.v2[i2].clone() * beta2 + g.square() * (1.0 - beta2);
                        let upd = (m.clone() / c1) / ((v.clone() / c2).sqrt() + eps);
                        let inner = w.clone().inner();
                        let new = inner.clone() - (upd + inner * cfg.weight_decay) * lr;
                        state.m2[i2] = m;
                        state.v2[i2] = v;
                        *w = Tensor::from_inner(new).require_grad();
                    }
                    i2 += 1;
                }
            }
        }
        if !progress(step, loss_value) {
            break;
        }
    }
    Ok(losses)
}

/// Linear warm-up, then cosine decay to 10% of the peak rate.
fn schedule(cfg: &TrainConfig, step: usize) -> f64 {
    if step < cfg.warmup {
        return cfg.lr * (step + 1) as f64 / cfg.warmup as f64;
    }
    let span = (cfg.steps - cfg.warmup).max(1) as f64;
    let frac = (step - cfg.warmup) as f64 / span;
    cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()))
}

/// Cached keys and values as constants of the autodiff backend.
pub fn lift_kv<B: AutodiffBackend>(kv: &LayerKv<B::InnerBackend>) -> LayerKv<B> {
    LayerKv {
        k: kv.k.clone().map(Tensor::from_inner),
        v: kv.v.clone().map(Tensor::from_inner),
    }
}

fn lift_linear<B: AutodiffBackend>(l: &Linear<B::InnerBackend>) -> Linear<B> {
    Linear {
        weight: Tensor::from_inner(l.weight.clone()),
        bias: l.bias.clone().map(Tensor::from_inner),
    }
}

fn lift_norm<B: AutodiffBackend>(n: &Norm<B::InnerBackend>) -> Norm<B> {
    Norm {
        kind: n.kind,
        eps: n.eps,
        weight: Tensor::from_inner(n.weight.clone()),
        bias: n.bias.clone().map(Tensor::from_inner),
    }
}

impl<B: AutodiffBackend> Transformer<B> {
    /// The same weights on the autodiff backend, sharing storage (no copy). No
    /// parameter requires a gradient: ROME's v* optimises a vector added to an
    /// activation, not the weights.
    pub fn lift(m: &Transformer<B::InnerBackend>) -> Self {
        Transformer {
            config: m.config.clone(),
            embed: Tensor::from_inner(m.embed.clone()),
            pos_embed: m.pos_embed.clone().map(Tensor::from_inner),
            blocks: m
                .blocks
                .iter()
                .map(|b| Block {
                    ln1: lift_norm(&b.ln1),
                    ln2: b.ln2.as_ref().map(lift_norm),
                    attn: Attention {
                        q: lift_linear(&b.attn.q),
                        k: lift_linear(&b.attn.k),
                        v: lift_linear(&b.attn.v),
                        o: lift_linear(&b.attn.o),
                    },
                    mlp: Mlp {
                        fc_in: lift_linear(&b.mlp.fc_in),
                        up: b.mlp.up.as_ref().map(lift_linear),
                        fc_out: lift_linear(&b.mlp.fc_out),
                        act: b.mlp.act,
                    },
                })
                .collect(),
            ln_final: lift_norm(&m.ln_final),
            unembed: lift_linear(&m.unembed),
            device: m.device.clone(),
        }
    }
}
