//! The CPU fast path under burn's autodiff, for the v* and z optimisations of
//! ROME and MEMIT (Meng et al. 2022, eq. 4; 2023, eq. 16): a linear map with a
//! constant weight runs its forward and its input gradient `∂x = ∂y · Wᵀ` on
//! [`super::gemm`], registered in burn's graph as one backward step. The other
//! ops (norms, attention, activations) stay burn's; they are a small share of
//! the arithmetic.

use std::any::Any;

use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_ndarray::{NdArray, NdArrayTensor};
use burn_tensor::backend::{Backend, BackendTypes};
use burn_tensor::{Tensor, TensorPrimitive};

use super::gemm::{sgemm, sgemm_bt};
use crate::config::{NormKind, RotaryStyle};

type Nd = NdArray<f32>;
type AdPrim = <Autodiff<Nd> as BackendTypes>::FloatTensorPrimitive;

/// The autodiff primitive of `t`, where `B` is `Autodiff<NdArray<f32>>`.
fn ad_prim<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<AdPrim> {
    let TensorPrimitive::Float(p) = t.clone().into_primitive() else {
        return None;
    };
    let boxed: Box<dyn Any> = Box::new(p);
    boxed.downcast::<AdPrim>().ok().map(|b| *b)
}

/// Row-major f32 data of an ndarray primitive (copied only where strided).
fn data(p: &NdArrayTensor) -> Option<std::borrow::Cow<'_, [f32]>> {
    let v = super::f32_view(p)?;
    Some(match v.to_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(v.iter().copied().collect()),
    })
}

/// Record `out` as the result of `op` on `parents` in burn's graph (with `state`
/// for the backward where a parent needs a gradient) and hand it back as `B`'s tensor.
fn record<B: Backend, const D: usize, const N: usize, O: Backward<Nd, N>>(
    op: O,
    parents: [&AdPrim; N],
    state: O::State,
    out: NdArrayTensor,
) -> Option<Tensor<B, D>> {
    let y: AdPrim = match op
        .prepare::<NoCheckpointing>(parents.map(|p| p.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    let boxed: Box<dyn Any> = Box::new(y);
    let prim = boxed.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*prim)))
}

/// The data of untracked operands (weights, tables), or `None` where one needs a gradient.
fn constant(p: &AdPrim) -> Option<Vec<f32>> {
    (!p.is_tracked()).then(|| data(&p.primitive).map(|d| d.into_owned()))?
}

/// `∂y` flowing back through `x · W`: the state is `W` (`[d_in, d_out]`) and `[batch, pos, d_in]`.
#[derive(Debug)]
struct LinearBackward;

impl Backward<Nd, 1> for LinearBackward {
    type State = (NdArrayTensor, [usize; 3]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (weight, [b, s, d_in]) = ops.state;
        unary::<Nd, _>(ops.parents, ops.node, grads, |grad| {
            input_grad(&grad, &weight, [b, s, d_in]).unwrap_or_else(|| {
                // Only where the kernel declines (it checked the CPU at the forward).
                let g = Tensor::<Nd, 3>::from_primitive(TensorPrimitive::Float(grad));
                let d_out = g.dims()[2];
                let w = Tensor::<Nd, 2>::from_primitive(TensorPrimitive::Float(weight));
                g.reshape([b * s, d_out])
                    .matmul(w.transpose())
                    .reshape([b, s, d_in])
                    .into_primitive()
                    .tensor()
            })
        });
    }
}

/// `∂x = ∂y · Wᵀ` on the GEMM.
///
/// # Shapes
/// - grad: `[batch, pos, d_out]`, weight: `[d_in, d_out]` → `[batch, pos, d_in]`
fn input_grad(
    grad: &NdArrayTensor,
    weight: &NdArrayTensor,
    dims: [usize; 3],
) -> Option<NdArrayTensor> {
    let [b, s, d_in] = dims;
    let (g, w) = (data(grad)?, data(weight)?);
    let m = b * s;
    let d_out = w.len() / d_in.max(1);
    let mut c = vec![0f32; m * d_in];
    if !sgemm_bt(m, d_in, d_out, &g, &w, &mut c) {
        return None;
    }
    super::nd_tensor(c, &[b, s, d_in])
}

/// `x · W (+ b)` for `Autodiff<NdArray<f32>>` tensors whose weight and bias need no
/// gradient; `None` for any other backend or where the kernel declines.
///
/// # Shapes
/// - x: `[batch, pos, d_in]`, weight: `[d_in, d_out]`, bias: `[d_out]` → `[batch, pos, d_out]`
pub(crate) fn linear<B: Backend>(
    x: &Tensor<B, 3>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 3>> {
    let xa = ad_prim(x)?;
    let wa = ad_prim(weight)?;
    if wa.is_tracked() {
        return None;
    }
    let ba = match bias {
        Some(t) => {
            let p = ad_prim(t)?;
            if p.is_tracked() {
                return None;
            }
            Some(p)
        }
        None => None,
    };
    let [b, s, k] = x.dims();
    let [k2, n] = weight.dims();
    if k != k2 || b * s == 0 || n == 0 {
        return None;
    }
    let (xd, wd) = (data(&xa.primitive)?, data(&wa.primitive)?);
    let bd = match &ba {
        Some(p) => Some(data(&p.primitive)?),
        None => None,
    };
    let mut c = vec![0f32; b * s * n];
    if !sgemm(b * s, n, k, &xd, &wd, bd.as_deref(), &mut c) {
        return None;
    }
    drop((xd, wd, bd));
    let out = super::nd_tensor(c, &[b, s, n])?;
    record(
        LinearBackward,
        [&xa],
        (wa.primitive.clone(), [b, s, k]),
        out,
    )
}

/// What attention's backward reads: the inputs and the attention pattern.
#[derive(Debug, Clone)]
struct AttnState {
    /// `[batch, pos, head, d_head]`
    q: Vec<f32>,
    /// `[batch, key_pos, kv_head, d_head]`
    k: Vec<f32>,
    v: Vec<f32>,
    /// `[batch, head, pos, key_pos]`
    p: Vec<f32>,
    dims: AttnDims,
}

#[derive(Debug, Clone, Copy)]
struct AttnDims {
    b: usize,
    s: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    dh: usize,
}

impl AttnDims {
    fn q(&self, bi: usize, i: usize, h: usize) -> usize {
        ((bi * self.s + i) * self.nh + h) * self.dh
    }
    fn k(&self, bi: usize, j: usize, g: usize) -> usize {
        ((bi * self.t + j) * self.nkv + g) * self.dh
    }
    fn p(&self, bi: usize, h: usize, i: usize) -> usize {
        ((bi * self.nh + h) * self.s + i) * self.t
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `softmax(q kᵀ / √d_head, masked) · v` and the pattern. A masked score is the
/// most negative f32, as on burn's path, so a fully masked row averages.
fn attn_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[bool],
    d: AttnDims,
) -> (Vec<f32>, Vec<f32>) {
    let scale = 1.0 / (d.dh as f32).sqrt();
    let groups = d.nh / d.nkv;
    let mut p = vec![0f32; d.b * d.nh * d.s * d.t];
    let mut z = vec![0f32; d.b * d.s * d.nh * d.dh];
    for bi in 0..d.b {
        for h in 0..d.nh {
            let g = h / groups;
            for i in 0..d.s {
                let qi = &q[d.q(bi, i, h)..][..d.dh];
                let row = &mut p[d.p(bi, h, i)..][..d.t];
                for (j, r) in row.iter_mut().enumerate() {
                    *r = if mask[(bi * d.s + i) * d.t + j] {
                        f32::MIN
                    } else {
                        dot(qi, &k[d.k(bi, j, g)..][..d.dh]) * scale
                    };
                }
                let max = row.iter().copied().fold(f32::MIN, f32::max);
                let mut sum = 0f32;
                for r in row.iter_mut() {
                    *r = (*r - max).exp();
                    sum += *r;
                }
                row.iter_mut().for_each(|r| *r /= sum);
                let zi = &mut z[d.q(bi, i, h)..][..d.dh];
                for (j, &w) in row.iter().enumerate() {
                    let vj = &v[d.k(bi, j, g)..][..d.dh];
                    zi.iter_mut().zip(vj).for_each(|(o, x)| *o += w * x);
                }
            }
        }
    }
    (z, p)
}

/// ∂q, ∂k, ∂v from ∂z (Vaswani et al.'s attention, differentiated by hand).
fn attn_backward(st: &AttnState, dz: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = st.dims;
    let scale = 1.0 / (d.dh as f32).sqrt();
    let groups = d.nh / d.nkv;
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; st.q.len()],
        vec![0f32; st.k.len()],
        vec![0f32; st.v.len()],
    );
    let mut ds = vec![0f32; d.t];
    for bi in 0..d.b {
        for h in 0..d.nh {
            let g = h / groups;
            for i in 0..d.s {
                let dzi = &dz[d.q(bi, i, h)..][..d.dh];
                let pi = &st.p[d.p(bi, h, i)..][..d.t];
                // ∂P = ∂z vᵀ; ∂S = P ⊙ (∂P − Σ P ∂P)
                for (j, dsj) in ds.iter_mut().enumerate() {
                    *dsj = dot(dzi, &st.v[d.k(bi, j, g)..][..d.dh]);
                }
                let mean: f32 = pi.iter().zip(&ds).map(|(p, x)| p * x).sum();
                for (dsj, &pj) in ds.iter_mut().zip(pi) {
                    *dsj = pj * (*dsj - mean) * scale;
                }
                let qi = d.q(bi, i, h);
                for j in 0..d.t {
                    let kj = d.k(bi, j, g);
                    let (w, pj) = (ds[j], pi[j]);
                    for e in 0..d.dh {
                        dq[qi + e] += w * st.k[kj + e];
                        dk[kj + e] += w * st.q[qi + e];
                        dv[kj + e] += pj * dzi[e];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

#[derive(Debug)]
struct AttnBackward;

impl Backward<Nd, 3> for AttnBackward {
    type State = AttnState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Nd>(&ops.node);
        let st = ops.state;
        let d = st.dims;
        let Some(dz) = data(&grad) else { return };
        let (dq, dk, dv) = attn_backward(&st, &dz);
        let [pq, pk, pv] = ops.parents;
        for (parent, g, dims) in [
            (pq, dq, [d.b, d.s, d.nh, d.dh]),
            (pk, dk, [d.b, d.t, d.nkv, d.dh]),
            (pv, dv, [d.b, d.t, d.nkv, d.dh]),
        ] {
            if let (Some(node), Some(t)) = (parent, super::nd_tensor(g, &dims)) {
                grads.register::<Nd>(node.id, t);
            }
        }
    }
}

/// Attention under autodiff on the ndarray backend as one graph step with a
/// hand-written backward (a dozen burn ops otherwise, each with its own node).
///
/// # Shapes
/// - q: `[batch, pos, head, d_head]`, k, v: `[batch, key_pos, kv_head, d_head]`,
///   mask: `[batch, 1, pos, key_pos]` → `[batch, pos, head, d_head]`
pub(crate) fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: &Tensor<B, 4, burn_tensor::Bool>,
) -> Option<Tensor<B, 4>> {
    let (qa, ka, va) = (ad_prim(q)?, ad_prim(k)?, ad_prim(v)?);
    let [b, s, nh, dh] = q.dims();
    let [bk, t, nkv, dhk] = k.dims();
    if bk != b || dhk != dh || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 {
        return None;
    }
    if mask.dims() != [b, 1, s, t] {
        return None;
    }
    let m = super::bools(mask)?;
    let dims = AttnDims {
        b,
        s,
        t,
        nh,
        nkv,
        dh,
    };
    let (qd, kd, vd) = (
        data(&qa.primitive)?.into_owned(),
        data(&ka.primitive)?.into_owned(),
        data(&va.primitive)?.into_owned(),
    );
    let (z, p) = attn_forward(&qd, &kd, &vd, &m, dims);
    let out = super::nd_tensor(z, &[b, s, nh, dh])?;
    let state = AttnState {
        q: qd,
        k: kd,
        v: vd,
        p,
        dims,
    };
    record(AttnBackward, [&qa, &ka, &va], state, out)
}

/// A norm's input and constants, for its backward.
#[derive(Debug, Clone)]
struct NormState {
    x: Vec<f32>,
    w: Vec<f32>,
    kind: NormKind,
    eps: f32,
    dims: Vec<usize>,
}

/// Per row: the mean removed (LayerNorm, else 0) and 1 / the root mean square.
fn norm_stats(row: &[f32], kind: NormKind, eps: f32) -> (f32, f32) {
    let d = row.len() as f32;
    let mean = match kind {
        NormKind::LayerNorm => row.iter().sum::<f32>() / d,
        NormKind::RmsNorm => 0.0,
    };
    let ms = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / d;
    (mean, 1.0 / (ms + eps).sqrt())
}

#[derive(Debug)]
struct NormBackward;

impl Backward<Nd, 1> for NormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        unary::<Nd, _>(ops.parents, ops.node, grads, |grad| {
            let dy = data(&grad).map(|d| d.into_owned()).unwrap_or_default();
            let d = st.w.len();
            let mut dx = vec![0f32; st.x.len()];
            for ((x, dy), dx) in st.x.chunks(d).zip(dy.chunks(d)).zip(dx.chunks_mut(d)) {
                let (mean, r) = norm_stats(x, st.kind, st.eps);
                // g = ∂y ⊙ w; x̂ = (x − mean) r
                let g = |i: usize| dy[i] * st.w[i];
                let gx: f32 = (0..d).map(|i| g(i) * (x[i] - mean) * r).sum::<f32>() / d as f32;
                let gm = match st.kind {
                    NormKind::LayerNorm => (0..d).map(g).sum::<f32>() / d as f32,
                    NormKind::RmsNorm => 0.0,
                };
                for i in 0..d {
                    dx[i] = r * (g(i) - gm - (x[i] - mean) * r * gx);
                }
            }
            super::nd_tensor(dx, &st.dims).unwrap_or(grad)
        });
    }
}

/// LayerNorm or RMSNorm over the last axis under autodiff, weight and bias constant.
///
/// # Shapes
/// - x: `[batch, pos, d]`, weight/bias: `[d]` → `[batch, pos, d]`
pub(crate) fn norm<B: Backend>(
    x: &Tensor<B, 3>,
    kind: NormKind,
    eps: f64,
    weight: &Tensor<B, 1>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 3>> {
    let xa = ad_prim(x)?;
    let w = constant(&ad_prim(weight)?)?;
    let b = match bias {
        Some(t) => Some(constant(&ad_prim(t)?)?),
        None => None,
    };
    let dims = x.dims();
    if w.len() != dims[2] || b.as_ref().is_some_and(|b| b.len() != w.len()) || w.is_empty() {
        return None;
    }
    let xd = data(&xa.primitive)?.into_owned();
    let eps = eps as f32;
    let mut y = vec![0f32; xd.len()];
    for (x, y) in xd.chunks(w.len()).zip(y.chunks_mut(w.len())) {
        let (mean, r) = norm_stats(x, kind, eps);
        for i in 0..w.len() {
            y[i] = (x[i] - mean) * r * w[i] + b.as_ref().map_or(0.0, |b| b[i]);
        }
    }
    let out = super::nd_tensor(y, &dims)?;
    let state = NormState {
        x: xd,
        w,
        kind,
        eps,
        dims: dims.to_vec(),
    };
    record(NormBackward, [&xa], state, out)
}

/// Rotary tables and the layout of the rotated tensor, for the backward.
#[derive(Debug, Clone)]
struct RotaryState {
    cos: Vec<f32>,
    sin: Vec<f32>,
    style: RotaryStyle,
    /// `[batch, pos, head, d_head]` and the rotated width.
    dims: [usize; 4],
    r: usize,
}

/// `out = x·cos + R(x)·sin` on the first `r` dims of each head (`sign` −1 applies
/// Rᵀ = −R instead: the backward), the rest copied.
fn rotate(x: &[f32], st: &RotaryState, sign: f32) -> Vec<f32> {
    let [b, s, h, d] = st.dims;
    let r = st.r;
    let mut out = x.to_vec();
    for bs in 0..b * s {
        let (c, sn) = (&st.cos[bs * r..][..r], &st.sin[bs * r..][..r]);
        for head in 0..h {
            let base = (bs * h + head) * d;
            let xi = &x[base..base + r];
            for i in 0..r {
                let rot = match st.style {
                    RotaryStyle::Half if i < r / 2 => -xi[i + r / 2],
                    RotaryStyle::Half => xi[i - r / 2],
                    RotaryStyle::Interleaved if i % 2 == 0 => -xi[i + 1],
                    RotaryStyle::Interleaved => xi[i - 1],
                };
                out[base + i] = if sign > 0.0 {
                    xi[i] * c[i] + rot * sn[i]
                } else {
                    // ∂x = ∂y·cos − R(∂y·sin)
                    xi[i] * c[i]
                        - match st.style {
                            RotaryStyle::Half if i < r / 2 => -xi[i + r / 2] * sn[i + r / 2],
                            RotaryStyle::Half => xi[i - r / 2] * sn[i - r / 2],
                            RotaryStyle::Interleaved if i % 2 == 0 => -xi[i + 1] * sn[i + 1],
                            RotaryStyle::Interleaved => xi[i - 1] * sn[i - 1],
                        }
                };
            }
        }
    }
    out
}

#[derive(Debug)]
struct RotaryBackward;

impl Backward<Nd, 1> for RotaryBackward {
    type State = RotaryState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        unary::<Nd, _>(ops.parents, ops.node, grads, |grad| {
            let dy = data(&grad).map(|d| d.into_owned()).unwrap_or_default();
            super::nd_tensor(rotate(&dy, &st, -1.0), &st.dims).unwrap_or(grad)
        });
    }
}

/// Rotary embeddings under autodiff, the tables constant.
///
/// # Shapes
/// - x: `[batch, pos, heads, d_head]`, cos/sin: `[batch, pos, 1, rotary_dim]`
pub(crate) fn rotary<B: Backend>(
    x: &Tensor<B, 4>,
    style: RotaryStyle,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    let xa = ad_prim(x)?;
    let (c, sn) = (constant(&ad_prim(cos)?)?, constant(&ad_prim(sin)?)?);
    let dims = x.dims();
    let [b, s, _, d] = dims;
    let r = cos.dims()[3];
    if cos.dims() != [b, s, 1, r] || sin.dims() != cos.dims() || r > d || !r.is_multiple_of(2) {
        return None;
    }
    let st = RotaryState {
        cos: c,
        sin: sn,
        style,
        dims,
        r,
    };
    let out = super::nd_tensor(rotate(&data(&xa.primitive)?, &st, 1.0), &dims)?;
    record(RotaryBackward, [&xa], st, out)
}

#[derive(Debug)]
struct SiluMulBackward;

impl Backward<Nd, 2> for SiluMulBackward {
    /// gate, up and the shape.
    type State = (Vec<f32>, Vec<f32>, [usize; 3]);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Nd>(&ops.node);
        let (gate, up, dims) = ops.state;
        let Some(dy) = data(&grad) else { return };
        let (mut dg, mut du) = (vec![0f32; gate.len()], vec![0f32; gate.len()]);
        for i in 0..gate.len() {
            let sig = 1.0 / (1.0 + (-gate[i]).exp());
            let silu = gate[i] * sig;
            du[i] = dy[i] * silu;
            dg[i] = dy[i] * up[i] * sig * (1.0 + gate[i] * (1.0 - sig));
        }
        let [pg, pu] = ops.parents;
        for (parent, g) in [(pg, dg), (pu, du)] {
            if let (Some(node), Some(t)) = (parent, super::nd_tensor(g, &dims)) {
                grads.register::<Nd>(node.id, t);
            }
        }
    }
}

/// `silu(gate) · up` under autodiff.
///
/// # Shapes
/// - gate, up: `[batch, pos, d_mlp]` → `[batch, pos, d_mlp]`
pub(crate) fn silu_mul<B: Backend>(gate: &Tensor<B, 3>, up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    let (ga, ua) = (ad_prim(gate)?, ad_prim(up)?);
    let dims = gate.dims();
    if up.dims() != dims {
        return None;
    }
    let (g, u) = (
        data(&ga.primitive)?.into_owned(),
        data(&ua.primitive)?.into_owned(),
    );
    let y: Vec<f32> = g
        .iter()
        .zip(&u)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    let out = super::nd_tensor(y, &dims)?;
    record(SiluMulBackward, [&ga, &ua], (g, u, dims), out)
}
