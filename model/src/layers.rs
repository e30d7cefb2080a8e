//! The building blocks every architecture shares: linear maps, norms, rotary
//! embeddings, multi-head attention and the MLP, each calling its hook points.
//!
//! Weights are stored as `[in, out]` so that a layer is `x · W (+ b)`; loaders
//! transpose HF `nn.Linear` weights (`[out, in]`) and keep GPT-2's Conv1D as is.

use burn_tensor::activation::{gelu, gelu_approximate, relu, softmax};
use burn_tensor::backend::Backend;
use burn_tensor::{Bool, DType, Tensor, TensorData};

use crate::config::{MlpActivation, ModelConfig, NormKind, Rotary, RotaryStyle};
use crate::error::Result;
use crate::hooks::{at3, at4, BlockSite, Hook, HookPoint};
use crate::weights::HostTensor;

/// Upload a host tensor of rank `D` to `device`.
pub fn upload<B: Backend, const D: usize>(t: &HostTensor, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

/// An affine map `x · W + b` with `W: [in, out]`.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]`
    pub weight: Tensor<B, 2>,
    /// `[d_out]`
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// # Shapes
    /// - x: `[batch, pos, d_in]` → `[batch, pos, d_out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if let Some(y) = crate::cpu::linear(&x, &self.weight, self.bias.as_ref()) {
            return y;
        }
        let [b, s, d_in] = x.dims();
        let d_out = self.weight.dims()[1];
        let y = x.reshape([b * s, d_in]).matmul(self.weight.clone());
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        y.reshape([b, s, d_out])
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }
}

/// LayerNorm or RMSNorm over the last axis.
#[derive(Debug, Clone)]
pub struct Norm<B: Backend> {
    pub kind: NormKind,
    pub eps: f64,
    /// `[d_model]`
    pub weight: Tensor<B, 1>,
    /// `[d_model]`, LayerNorm only
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Norm<B> {
    /// # Shapes
    /// - x: `[batch, pos, d_model]` → `[batch, pos, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if let Some(y) =
            crate::cpu::ops::norm(&x, self.kind, self.eps, &self.weight, self.bias.as_ref())
                .or_else(|| {
                    crate::cpu::autodiff_norm(
                        &x,
                        self.kind,
                        self.eps,
                        &self.weight,
                        self.bias.as_ref(),
                    )
                })
        {
            return y;
        }
        let normed = match self.kind {
            NormKind::LayerNorm => {
                let (var, mean) = x.clone().var_mean_bias(2);
                (x - mean) / (var + self.eps).sqrt()
            }
            NormKind::RmsNorm => {
                let ms = x.clone().square().mean_dim(2);
                x / (ms + self.eps).sqrt()
            }
        };
        let y = normed * self.weight.clone().unsqueeze::<3>();
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<3>(),
            None => y,
        }
    }
}

/// Per-call tensors shared by all blocks: the attention mask and rotary tables.
pub struct ForwardCtx<B: Backend> {
    /// `[batch, 1, query_pos, key_pos]`, true where attention is not allowed.
    pub mask: Tensor<B, 4, Bool>,
    /// `[batch, pos, 1, rotary_dim]` cos and sin of position × frequency.
    pub rotary: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> ForwardCtx<B> {
    /// Build the causal + padding mask and rotary tables.
    ///
    /// `positions` (`[batch][query]`) are the position ids of the tokens being run;
    /// `keep` (`[batch][key]`, false for padding) covers every key, cached ones first,
    /// so a query `q` sees key `k` when `k <= past + q`.
    pub fn new(
        cfg: &ModelConfig,
        positions: &[Vec<usize>],
        keep: &[Vec<bool>],
        device: &B::Device,
    ) -> Self {
        let b = positions.len();
        let s = positions.first().map_or(0, Vec::len);
        let t = keep.first().map_or(0, Vec::len);
        let past = t.saturating_sub(s);
        let mut mask = Vec::with_capacity(b * s * t);
        for row in keep {
            for q in 0..s {
                for (k, &kept) in row.iter().enumerate() {
                    mask.push(k > past + q || !kept);
                }
            }
        }
        let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(mask, [b, 1, s, t]), device);
        let rotary = cfg
            .rotary
            .map(|r| rotary_tables::<B>(&r, positions, device));
        Self { mask, rotary }
    }
}

/// Keys (after rotary) and values of the tokens seen so far, for one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerKv<B: Backend> {
    /// `[batch, past, kv_head, d_head]`
    pub k: Option<Tensor<B, 4>>,
    /// `[batch, past, kv_head, d_head]`
    pub v: Option<Tensor<B, 4>>,
}

impl<B: Backend> LayerKv<B> {
    /// Append the new keys and values; return all of them.
    fn extend(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let k = match self.k.take() {
            Some(past) => Tensor::cat(vec![past, k], 1),
            None => k,
        };
        let v = match self.v.take() {
            Some(past) => Tensor::cat(vec![past, v], 1),
            None => v,
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        (k, v)
    }
}

fn rotary_tables<B: Backend>(
    r: &Rotary,
    positions: &[Vec<usize>],
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let b = positions.len();
    let s = positions.first().map_or(0, Vec::len);
    let half = r.dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| 1.0 / r.theta.powf((2 * i) as f64 / r.dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(b * s * r.dim);
    let mut sin = Vec::with_capacity(b * s * r.dim);
    for row in positions {
        for &p in row {
            for j in 0..r.dim {
                let i = match r.style {
                    RotaryStyle::Half => j % half,
                    RotaryStyle::Interleaved => j / 2,
                };
                // HF computes the angle in f32.
                let angle = (p as f32) * (inv_freq[i] as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let shape = [b, s, 1, r.dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// Rotate the first `rotary_dim` dimensions of each head.
///
/// # Shapes
/// - x: `[batch, pos, heads, d_head]`, cos/sin: `[batch, pos, 1, rotary_dim]`
fn apply_rotary<B: Backend>(
    x: Tensor<B, 4>,
    style: RotaryStyle,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    if let Some(y) = crate::cpu::ops::rotary(&x, style, cos, sin)
        .or_else(|| crate::cpu::autodiff_rotary(&x, style, cos, sin))
    {
        return y;
    }
    let [b, s, h, d] = x.dims();
    let r = cos.dims()[3];
    let x_rot = x.clone().narrow(3, 0, r);
    let rotated = match style {
        RotaryStyle::Half => {
            let x1 = x_rot.clone().narrow(3, 0, r / 2);
            let x2 = x_rot.clone().narrow(3, r / 2, r / 2);
            Tensor::cat(vec![x2.neg(), x1], 3)
        }
        RotaryStyle::Interleaved => {
            let pairs = x_rot.clone().reshape([b * s * h, r / 2, 2]);
            let even = pairs.clone().narrow(2, 0, 1);
            let odd = pairs.narrow(2, 1, 1);
            Tensor::cat(vec![odd.neg(), even], 2).reshape([b, s, h, r])
        }
    };
    let out = x_rot * cos.clone() + rotated * sin.clone();
    if r == d {
        out
    } else {
        Tensor::cat(vec![out, x.narrow(3, r, d - r)], 3)
    }
}

/// The most negative score a masked position gets, per dtype (as HF's `finfo.min`).
fn mask_value(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => -65504.0,
        _ => f32::MIN,
    }
}

/// Multi-head (grouped-query) self-attention.
#[derive(Debug, Clone)]
pub struct Attention<B: Backend> {
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub o: Linear<B>,
}

impl<B: Backend> Attention<B> {
    /// # Shapes
    /// - x: `[batch, pos, d_model]` (the normalised residual) → `[batch, pos, d_model]`
    pub fn forward<H: Hook<B> + ?Sized>(
        &self,
        layer: usize,
        x: Tensor<B, 3>,
        cfg: &ModelConfig,
        ctx: &ForwardCtx<B>,
        kv: Option<&mut LayerKv<B>>,
        hooks: &mut H,
    ) -> Result<Tensor<B, 3>> {
        let hp = |site| HookPoint::block(layer, site);
        let [b, s, _] = x.dims();
        let (nh, nkv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);

        // [batch, pos, head, d_head]
        let q = at4(
            hooks,
            hp(BlockSite::Q),
            self.q.forward(x.clone()).reshape([b, s, nh, dh]),
        )?;
        // [batch, pos, kv_head, d_head]
        let k = at4(
            hooks,
            hp(BlockSite::K),
            self.k.forward(x.clone()).reshape([b, s, nkv, dh]),
        )?;
        let v = at4(
            hooks,
            hp(BlockSite::V),
            self.v.forward(x).reshape([b, s, nkv, dh]),
        )?;

        let (q, k) = match (&ctx.rotary, cfg.rotary) {
            (Some((cos, sin)), Some(r)) => (
                at4(
                    hooks,
                    hp(BlockSite::RotQ),
                    apply_rotary(q, r.style, cos, sin),
                )?,
                at4(
                    hooks,
                    hp(BlockSite::RotK),
                    apply_rotary(k, r.style, cos, sin),
                )?,
            ),
            _ => (q, k),
        };
        // With a cache: [batch, past + pos, kv_head, d_head]
        let (k, v) = match kv {
            Some(cache) => cache.extend(k, v),
            None => (k, v),
        };
        // On the CPU: fused where no hook reads or replaces the scores or the pattern,
        // else step by step, each step on the CPU kernels where they apply.
        let wanted = hooks.wants(hp(BlockSite::AttnScores)) || hooks.wants(hp(BlockSite::Pattern));
        let fused = if wanted {
            None
        } else {
            crate::cpu::ops::attention(&q, &k, &v, &ctx.mask)
                .or_else(|| crate::cpu::autodiff_attention(&q, &k, &v, &ctx.mask))
        };
        // [batch, pos, head, d_head]
        let z = match fused {
            Some(z) => z,
            None => {
                // [batch, head, query_pos, key_pos]
                let scores = match crate::cpu::ops::attention_scores(&q, &k, &ctx.mask) {
                    Some(scores) => scores,
                    None => masked_scores(q, repeat_kv(k, nh / nkv), &ctx.mask),
                };
                let scores = at4(hooks, hp(BlockSite::AttnScores), scores)?;
                let pattern =
                    crate::cpu::ops::softmax(&scores).unwrap_or_else(|| softmax(scores, 3));
                let pattern = at4(hooks, hp(BlockSite::Pattern), pattern)?;
                match crate::cpu::ops::attention_values(&pattern, &v) {
                    Some(z) => z,
                    None => {
                        let v = repeat_kv(v, nh / nkv);
                        pattern.matmul(v.swap_dims(1, 2)).swap_dims(1, 2)
                    }
                }
            }
        };
        let z = at4(hooks, hp(BlockSite::Z), z)?;
        Ok(self.o.forward(z.reshape([b, s, nh * dh])))
    }
}

/// `q kᵀ / √d_head`, masked to the dtype's most negative value.
///
/// # Shapes
/// - q: `[batch, pos, head, d_head]`, k: `[batch, key_pos, head, d_head]`,
///   mask: `[batch, 1, pos, key_pos]` → `[batch, head, pos, key_pos]`
fn masked_scores<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
) -> Tensor<B, 4> {
    let [b, s, nh, dh] = q.dims();
    let t = k.dims()[1];
    let scores = q
        .swap_dims(1, 2)
        .matmul(k.swap_dims(1, 2).swap_dims(2, 3))
        .mul_scalar(1.0 / (dh as f64).sqrt());
    let neg = mask_value(scores.dtype());
    scores.mask_fill(mask.clone().expand([b, nh, s, t]), neg)
}

/// Share each key/value head with `groups` query heads.
///
/// # Shapes
/// - x: `[batch, pos, kv_head, d_head]` → `[batch, pos, kv_head * groups, d_head]`
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [b, s, nkv, dh] = x.dims();
    x.unsqueeze_dim::<5>(3)
        .expand([b, s, nkv, groups, dh])
        .reshape([b, s, nkv * groups, dh])
}

/// The feed-forward block: `out(act(in x))`, or `out(act(gate x) * up x)` when gated.
#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    /// The first projection (the gate in a gated MLP): its columns are the FFN keys.
    pub fc_in: Linear<B>,
    /// The up projection of a gated MLP.
    pub up: Option<Linear<B>>,
    /// `[d_mlp, d_model]`: row i is the value vector of memory i.
    pub fc_out: Linear<B>,
    pub act: MlpActivation,
}

impl<B: Backend> Mlp<B> {
    /// # Shapes
    /// - x: `[batch, pos, d_model]` → `[batch, pos, d_model]`
    pub fn forward<H: Hook<B> + ?Sized>(
        &self,
        layer: usize,
        x: Tensor<B, 3>,
        hooks: &mut H,
    ) -> Result<Tensor<B, 3>> {
        let hp = |site| HookPoint::block(layer, site);
        // [batch, pos, d_mlp]
        let pre = at3(hooks, hp(BlockSite::MlpPre), self.fc_in.forward(x.clone()))?;
        let post = match &self.up {
            Some(up) => {
                let up = at3(hooks, hp(BlockSite::MlpPreLinear), up.forward(x))?;
                match self.act {
                    MlpActivation::Silu => match crate::cpu::ops::silu_mul(&pre, &up)
                        .or_else(|| crate::cpu::autodiff_silu_mul(&pre, &up))
                    {
                        Some(post) => post,
                        None => silu(pre) * up,
                    },
                    act => activate(pre, act) * up,
                }
            }
            None => activate(pre, self.act),
        };
        // [batch, pos, d_mlp]: the memory coefficients
        let post = at3(hooks, hp(BlockSite::MlpPost), post)?;
        Ok(self.fc_out.forward(post))
    }
}

/// SiLU as `x / (1 + exp(-x))`: four element-wise passes and one `exp`. burn's
/// default goes through a log-space sigmoid (two `exp`, one `log`, seven passes).
/// For very negative x, `exp(-x)` overflows to inf and the result is -0, as it should be.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if let Some(y) = crate::cpu::ops::silu(&x) {
        return y;
    }
    x.clone() / x.neg().exp().add_scalar(1.0)
}

pub fn activate<B: Backend, const D: usize>(x: Tensor<B, D>, act: MlpActivation) -> Tensor<B, D> {
    match act {
        MlpActivation::Gelu => gelu(x),
        MlpActivation::GeluTanh => gelu_approximate(x),
        MlpActivation::Silu => silu(x),
        MlpActivation::Relu => relu(x),
    }
}

/// One transformer block. Sequential (GPT-2, Llama) or parallel (GPT-J, NeoX):
///
/// ```text
/// sequential: mid = x + attn(ln1 x);      out = mid + mlp(ln2 mid)
/// parallel:   out = x + attn(ln1 x) + mlp(ln2 x)   (GPT-J: ln2 = ln1)
/// ```
#[derive(Debug, Clone)]
pub struct Block<B: Backend> {
    pub ln1: Norm<B>,
    /// `None` where the MLP reads `ln1`'s output (GPT-J).
    pub ln2: Option<Norm<B>>,
    pub attn: Attention<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> Block<B> {
    /// # Shapes
    /// - x: `[batch, pos, d_model]` → `[batch, pos, d_model]`
    pub fn forward<H: Hook<B> + ?Sized>(
        &self,
        layer: usize,
        x: Tensor<B, 3>,
        cfg: &ModelConfig,
        ctx: &ForwardCtx<B>,
        kv: Option<&mut LayerKv<B>>,
        hooks: &mut H,
    ) -> Result<Tensor<B, 3>> {
        let hp = |site| HookPoint::block(layer, site);
        let x = at3(hooks, hp(BlockSite::ResidPre), x)?;
        let n1 = at3(
            hooks,
            hp(BlockSite::Ln1Normalized),
            self.ln1.forward(x.clone()),
        )?;
        let attn_out = self.attn.forward(layer, n1.clone(), cfg, ctx, kv, hooks)?;
        let attn_out = at3(hooks, hp(BlockSite::AttnOut), attn_out)?;

        let out = if cfg.parallel_attn_mlp {
            let n2 = match &self.ln2 {
                Some(ln2) => at3(hooks, hp(BlockSite::Ln2Normalized), ln2.forward(x.clone()))?,
                None => n1,
            };
            let mlp_out = self.mlp.forward(layer, n2, hooks)?;
            let mlp_out = at3(hooks, hp(BlockSite::MlpOut), mlp_out)?;
            x + attn_out + mlp_out
        } else {
            let mid = at3(hooks, hp(BlockSite::ResidMid), x + attn_out)?;
            let n2 = match &self.ln2 {
                Some(ln2) => at3(
                    hooks,
                    hp(BlockSite::Ln2Normalized),
                    ln2.forward(mid.clone()),
                )?,
                None => mid.clone(),
            };
            let mlp_out = self.mlp.forward(layer, n2, hooks)?;
            let mlp_out = at3(hooks, hp(BlockSite::MlpOut), mlp_out)?;
            mid + mlp_out
        };
        at3(hooks, hp(BlockSite::ResidPost), out)
    }

    /// The hook sites this block calls, in order.
    pub fn sites(cfg: &ModelConfig, has_ln2: bool) -> Vec<BlockSite> {
        use BlockSite::*;
        let mut v = vec![ResidPre, Ln1Normalized, Q, K, V];
        if cfg.rotary.is_some() {
            v.extend([RotQ, RotK]);
        }
        v.extend([AttnScores, Pattern, Z, AttnOut]);
        if !cfg.parallel_attn_mlp {
            v.push(ResidMid);
        }
        if has_ln2 {
            v.push(Ln2Normalized);
        }
        v.push(MlpPre);
        if cfg.gated_mlp {
            v.push(MlpPreLinear);
        }
        v.extend([MlpPost, MlpOut, ResidPost]);
        v
    }
}
