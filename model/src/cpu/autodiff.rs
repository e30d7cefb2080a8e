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
    let y: AdPrim = match LinearBackward
        .prepare::<NoCheckpointing>([xa.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((wa.primitive.clone(), [b, s, k]), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    let boxed: Box<dyn Any> = Box::new(y);
    let prim = boxed.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*prim)))
}
