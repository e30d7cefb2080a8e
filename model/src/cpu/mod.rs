//! CPU fast paths on the ndarray backend, used where the CPU has AVX-512F, or AVX2
//! with FMA (most x86-64 laptops and servers since 2013), and the tensors are f32
//! ndarray tensors; elsewhere (autodiff, CUDA, other CPUs) each entry returns `None`
//! and the burn ops in [`crate::layers`] run instead. Under autodiff on the ndarray
//! backend, linear maps still run here (`autodiff.rs`).
//!
//! - [`gemm`]: the matrix product under `Linear` and attention; with
//!   `ENGRAM_CPU_GEMM=amx` on CPUs with AMX-BF16, large products run on
//!   [`amx`] tiles at f32 accuracy (off by default: not yet faster).
//! - [`ops`]: fused norms, SiLU, rotary embeddings and attention, one pass each.
//!
//! Each entry reads [`active`] once on the calling thread and passes the
//! instruction set down to the tasks it spreads over threads. The front ends map
//! `ENGRAM_CPU_GEMM=burn` to [`set_enabled`]`(false)` (every path off, so that
//! benchmarks can compare both in one run) and `ENGRAM_CPU_GEMM=avx2` to
//! [`set_isa`]; tests run a closure on one instruction set with [`with_isa`].
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
pub mod amx;
mod autodiff;
pub mod gemm;
#[cfg(target_arch = "x86_64")]
pub mod ops;
/// Off x86-64 there are no kernels: every entry declines.
#[cfg(not(target_arch = "x86_64"))]
pub mod ops {
    use crate::config::{NormKind, RotaryStyle};
    use burn_tensor::backend::Backend;
    use burn_tensor::{Bool, Tensor};
    pub fn silu<B: Backend, const D: usize>(_: &Tensor<B, D>) -> Option<Tensor<B, D>> {
        None
    }
    pub fn silu_mul<B: Backend>(_: &Tensor<B, 3>, _: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        None
    }
    pub fn norm<B: Backend>(
        _: &Tensor<B, 3>,
        _: NormKind,
        _: f64,
        _: &Tensor<B, 1>,
        _: Option<&Tensor<B, 1>>,
    ) -> Option<Tensor<B, 3>> {
        None
    }
    pub fn rotary<B: Backend>(
        _: &Tensor<B, 4>,
        _: RotaryStyle,
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 4>> {
        None
    }
    pub fn attention<B: Backend>(
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4, Bool>,
    ) -> Option<Tensor<B, 4>> {
        None
    }
    pub fn attention_scores<B: Backend>(
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4, Bool>,
    ) -> Option<Tensor<B, 4>> {
        None
    }
    pub fn softmax<B: Backend>(_: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
        None
    }
    pub fn attention_values<B: Backend>(
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 4>> {
        None
    }
}

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use burn_ndarray::NdArrayTensor;
use burn_tensor::backend::Backend;
use burn_tensor::{Bool, Tensor, TensorPrimitive};

pub use gemm::{sgemm, sgemm_bt};

/// An instruction set the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 16 lanes, masked tails.
    Avx512,
    /// AVX2 with FMA: 8 lanes.
    Avx2,
}

impl Isa {
    /// The name the front ends and benchmarks print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "AVX-512",
            Isa::Avx2 => "AVX2",
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    fn code(self) -> u8 {
        match self {
            Isa::Avx512 => 1,
            Isa::Avx2 => 2,
        }
    }
}

/// The instruction sets this CPU can run the kernels on, best first.
pub fn isas() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|i| i.available())
        .collect()
}

/// The best instruction set this CPU has for the kernels.
fn best() -> Option<Isa> {
    [Isa::Avx512, Isa::Avx2].into_iter().find(|i| i.available())
}

/// The process's choice: 0 undecided, 1 AVX-512, 2 AVX2, 3 off.
static STATE: AtomicU8 = AtomicU8::new(0);

std::thread_local! {
    /// [`with_isa`]'s choice for this thread, over the process's.
    static SCOPED: std::cell::Cell<Option<Isa>> = const { std::cell::Cell::new(None) };
}

/// The instruction set the fast paths run on in this thread: `None` where they
/// are off (no AVX2/FMA or AVX-512F, or [`set_enabled`]`(false)`).
pub fn active() -> Option<Isa> {
    if let Some(isa) = SCOPED.with(std::cell::Cell::get) {
        return Some(isa);
    }
    match STATE.load(Ordering::Relaxed) {
        1 => Some(Isa::Avx512),
        2 => Some(Isa::Avx2),
        3 => None,
        _ => {
            let isa = best();
            STATE.store(isa.map_or(3, Isa::code), Ordering::Relaxed);
            isa
        }
    }
}

/// The instruction set [`sgemm`] runs on: [`active`]'s, or where the fast paths
/// are off, the best this CPU has (the GEMM is called directly where it applies).
pub(crate) fn gemm_isa() -> Option<Isa> {
    active().or_else(best)
}

/// Whether the fast paths are on: the CPU has AVX2/FMA or AVX-512F and
/// [`set_enabled`] did not turn them off.
pub fn enabled() -> bool {
    active().is_some()
}

/// Turn the fast paths on (on the best instruction set) or off for this process;
/// benchmarks compare both. They stay off where the CPU has neither set.
pub fn set_enabled(on: bool) {
    let isa = if on { best() } else { None };
    STATE.store(isa.map_or(3, Isa::code), Ordering::Relaxed);
}

/// Run the fast paths on `isa` for this process (a narrower set than the CPU's
/// best, to measure it). False, changing nothing, where the CPU lacks it.
pub fn set_isa(isa: Isa) -> bool {
    if !isa.available() {
        return false;
    }
    STATE.store(isa.code(), Ordering::Relaxed);
    true
}

/// Run `f` with the fast paths on `isa` in this thread (the kernels' own threads
/// follow it), then restore the previous choice; `None` where the CPU lacks `isa`.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> Option<R> {
    if !isa.available() {
        return None;
    }
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(SCOPED.with(|c| c.replace(Some(isa))));
    Some(f())
}

/// Whether the editing workflows' products run on the kernels too: linear maps
/// under autodiff (v*, z) and the statistics' `kᵀk`.
static WORKFLOW: AtomicBool = AtomicBool::new(true);

/// Turn the kernels off (or back on) for the workflow products only, leaving the
/// plain forward on them: benchmarks time burn's autodiff and matmul against them.
pub fn set_workflow_paths(on: bool) {
    WORKFLOW.store(on, Ordering::Relaxed);
}

/// Whether [`set_workflow_paths`] left the workflow products on the kernels.
pub fn workflow_paths() -> bool {
    WORKFLOW.load(Ordering::Relaxed)
}

/// Apply a front end's `ENGRAM_CPU_GEMM` setting: `burn` turns the fast paths off,
/// `avx2` runs them on AVX2 where the CPU has AVX-512 too, `amx` runs large products
/// on AMX tiles. An unknown value, or one this CPU cannot run, is an error naming
/// it and what is allowed here.
pub fn choose(value: &str) -> Result<(), String> {
    let amx = cfg!(target_arch = "x86_64") && amx_available();
    let allowed = {
        let mut a = vec!["burn"];
        if Isa::Avx2.available() {
            a.push("avx2");
        }
        if amx {
            a.push("amx");
        }
        a.join(", ")
    };
    let refuse = |why: &str| {
        Err(format!(
            "ENGRAM_CPU_GEMM={value:?}: {why}; allowed here: {allowed}"
        ))
    };
    match value {
        "" => {}
        "burn" => set_enabled(false),
        "avx2" if set_isa(Isa::Avx2) => {}
        "avx2" => return refuse("this CPU lacks AVX2 with FMA"),
        #[cfg(target_arch = "x86_64")]
        "amx" if amx => amx::set_enabled(true),
        "amx" => return refuse("this CPU lacks AMX-BF16 (or Linux did not grant it)"),
        _ => return refuse("unknown value"),
    }
    Ok(())
}

fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU can run the kernels (AVX2 with FMA, or AVX-512F).
pub fn supported() -> bool {
    best().is_some()
}

/// A float tensor's data, contiguous and row-major, borrowed where it already is.
pub(crate) struct Host<B: Backend> {
    prim: B::FloatTensorPrimitive,
}

impl<B: Backend> Host<B> {
    /// `None` unless the tensor is an f32 ndarray tensor.
    pub(crate) fn new<const D: usize>(t: &Tensor<B, D>) -> Option<Self> {
        let prim = match t.clone().into_primitive() {
            TensorPrimitive::Float(p) => p,
            TensorPrimitive::QFloat(_) => return None,
        };
        f32_view(&prim)?;
        Some(Self { prim })
    }

    /// The elements in row-major order (copied only if the layout is strided).
    pub(crate) fn data(&self) -> std::borrow::Cow<'_, [f32]> {
        match f32_view(&self.prim) {
            Some(v) => match v.to_slice() {
                Some(s) => std::borrow::Cow::Borrowed(s),
                None => std::borrow::Cow::Owned(v.iter().copied().collect()),
            },
            None => std::borrow::Cow::Owned(Vec::new()),
        }
    }
}

/// Whether backend `B` keeps its float tensors on the ndarray (CPU) backend.
pub fn on_ndarray<B: Backend>() -> bool {
    std::any::TypeId::of::<B::FloatTensorPrimitive>() == std::any::TypeId::of::<NdArrayTensor>()
}

/// The f32 data of an ndarray tensor primitive, viewed in place.
fn f32_view<P: 'static>(p: &P) -> Option<ndarray::ArrayViewD<'_, f32>> {
    match (p as &dyn Any).downcast_ref::<NdArrayTensor>()? {
        NdArrayTensor::F32(s) => Some(s.view()),
        _ => None,
    }
}

/// A bool tensor's elements in row-major order, or `None` off the ndarray backend.
pub(crate) fn bools<B: Backend, const D: usize>(t: &Tensor<B, D, Bool>) -> Option<Vec<bool>> {
    let prim = t.clone().into_primitive();
    match (&prim as &dyn Any).downcast_ref::<NdArrayTensor>()? {
        NdArrayTensor::Bool(s) => Some(s.view().iter().copied().collect()),
        _ => None,
    }
}

/// Row-major f32 data of shape `dims` as an ndarray primitive.
fn nd_tensor(data: Vec<f32>, dims: &[usize]) -> Option<NdArrayTensor> {
    let arr = ndarray::ArcArray::from_shape_vec(ndarray::IxDyn(dims), data).ok()?;
    Some(NdArrayTensor::from(arr))
}

/// Wrap row-major f32 data of shape `dims` as a tensor of backend `B` (ndarray only).
pub(crate) fn tensor<B: Backend, const D: usize>(
    data: Vec<f32>,
    dims: [usize; D],
) -> Option<Tensor<B, D>> {
    let prim: Box<dyn Any> = Box::new(nd_tensor(data, &dims)?);
    let prim = prim.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*prim)))
}

/// `x · W (+ b)` through [`gemm::sgemm`], or `None` where the fast path does not apply.
/// Under autodiff on the ndarray backend the input gradient runs on the GEMM too.
///
/// # Shapes
/// - x: `[batch, pos, d_in]`, weight: `[d_in, d_out]`, bias: `[d_out]` → `[batch, pos, d_out]`
pub fn linear<B: Backend>(
    x: &Tensor<B, 3>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 3>> {
    if !enabled() {
        return None;
    }
    let [b, s, k] = x.dims();
    let [k2, n] = weight.dims();
    if k != k2 || b * s == 0 || n == 0 {
        return None;
    }
    let Some(xh) = Host::new(x) else {
        return workflow_paths()
            .then(|| autodiff::linear(x, weight, bias))
            .flatten();
    };
    let wh = Host::new(weight)?;
    let bh = match bias {
        Some(t) => Some(Host::new(t)?),
        None => None,
    };
    let bias_data = bh.as_ref().map(Host::data);
    let m = b * s;
    let mut c = vec![0f32; m * n];
    if !sgemm(
        m,
        n,
        k,
        &xh.data(),
        &wh.data(),
        bias_data.as_deref(),
        &mut c,
    ) {
        return None;
    }
    tensor(c, [b, s, n])
}

/// `xᵀx` of `x: [n, d]` on the GEMM, row-major `[d, d]` (a sum of outer products,
/// as the key statistics need); `None` off the fast path.
pub fn gram<B: Backend>(x: &Tensor<B, 2>) -> Option<Vec<f32>> {
    if !enabled() {
        return None;
    }
    let [n, d] = x.dims();
    let h = Host::new(x)?;
    let data = h.data();
    // xᵀ, transposed in 64 × 64 tiles.
    const T: usize = 64;
    let mut xt = vec![0f32; n * d];
    for i0 in (0..n).step_by(T) {
        for j0 in (0..d).step_by(T) {
            for i in i0..(i0 + T).min(n) {
                for j in j0..(j0 + T).min(d) {
                    xt[j * n + i] = data[i * d + j];
                }
            }
        }
    }
    let mut c = vec![0f32; d * d];
    sgemm(d, d, n, &xt, &data, None, &mut c).then_some(c)
}

/// Attention under autodiff on the ndarray backend (ROME's v*, MEMIT's z) as one
/// graph step with a hand-written backward; `None` elsewhere.
///
/// # Shapes
/// - q: `[batch, pos, head, d_head]`, k, v: `[batch, key_pos, kv_head, d_head]`,
///   mask: `[batch, 1, pos, key_pos]` → `[batch, pos, head, d_head]`
pub fn autodiff_attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
) -> Option<Tensor<B, 4>> {
    if !enabled() || !workflow_paths() {
        return None;
    }
    autodiff::attention(q, k, v, mask)
}

/// LayerNorm or RMSNorm under autodiff on the ndarray backend, with a hand-written backward.
///
/// # Shapes
/// - x: `[batch, pos, d]`, weight/bias: `[d]` → `[batch, pos, d]`
pub fn autodiff_norm<B: Backend>(
    x: &Tensor<B, 3>,
    kind: crate::config::NormKind,
    eps: f64,
    weight: &Tensor<B, 1>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 3>> {
    (enabled() && workflow_paths())
        .then(|| autodiff::norm(x, kind, eps, weight, bias))
        .flatten()
}

/// Rotary embeddings under autodiff on the ndarray backend.
///
/// # Shapes
/// - x: `[batch, pos, heads, d_head]`, cos/sin: `[batch, pos, 1, rotary_dim]`
pub fn autodiff_rotary<B: Backend>(
    x: &Tensor<B, 4>,
    style: crate::config::RotaryStyle,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    (enabled() && workflow_paths())
        .then(|| autodiff::rotary(x, style, cos, sin))
        .flatten()
}

/// `silu(gate) · up` under autodiff on the ndarray backend.
///
/// # Shapes
/// - gate, up: `[batch, pos, d_mlp]` → `[batch, pos, d_mlp]`
pub fn autodiff_silu_mul<B: Backend>(
    gate: &Tensor<B, 3>,
    up: &Tensor<B, 3>,
) -> Option<Tensor<B, 3>> {
    (enabled() && workflow_paths())
        .then(|| autodiff::silu_mul(gate, up))
        .flatten()
}
