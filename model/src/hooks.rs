//! Hook points with TransformerLens names, and the hooks that read or replace them.
//!
//! A forward pass takes `&mut impl Hook<B>`. At each hook point it first asks
//! [`Hook::wants`]; only then is the activation handed over. [`NoHooks`] answers
//! `false` and is monomorphised away, so the unhooked forward pays nothing.
//! There is no global registry: hooks live for one call.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use burn_tensor::backend::Backend;
use burn_tensor::Tensor;

use crate::error::{ModelError, Result};

/// A site inside block `l`, named as in TransformerLens (`blocks.{l}.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockSite {
    /// `[batch, pos, d_model]` residual stream entering the block.
    ResidPre,
    /// `[batch, pos, d_model]` output of the first norm.
    Ln1Normalized,
    /// `[batch, pos, head, d_head]` queries, before rotary.
    Q,
    /// `[batch, pos, kv_head, d_head]` keys, before rotary.
    K,
    /// `[batch, pos, kv_head, d_head]` values.
    V,
    /// `[batch, pos, head, d_head]` queries after rotary (rotary models only).
    RotQ,
    /// `[batch, pos, kv_head, d_head]` keys after rotary (rotary models only).
    RotK,
    /// `[batch, head, query_pos, key_pos]` scaled, masked scores.
    AttnScores,
    /// `[batch, head, query_pos, key_pos]` softmax of the scores.
    Pattern,
    /// `[batch, pos, head, d_head]` attention-weighted values.
    Z,
    /// `[batch, pos, d_model]` attention output after the output projection.
    AttnOut,
    /// `[batch, pos, d_model]` residual between attention and MLP (sequential blocks only).
    ResidMid,
    /// `[batch, pos, d_model]` output of the second norm (absent where one norm is shared).
    Ln2Normalized,
    /// `[batch, pos, d_mlp]` MLP pre-activation (the gate projection in gated MLPs).
    MlpPre,
    /// `[batch, pos, d_mlp]` the up projection of a gated MLP.
    MlpPreLinear,
    /// `[batch, pos, d_mlp]` input of the output projection: the FFN memory coefficients.
    MlpPost,
    /// `[batch, pos, d_model]` MLP output.
    MlpOut,
    /// `[batch, pos, d_model]` residual stream leaving the block.
    ResidPost,
}

impl BlockSite {
    pub const ALL: [BlockSite; 18] = [
        BlockSite::ResidPre,
        BlockSite::Ln1Normalized,
        BlockSite::Q,
        BlockSite::K,
        BlockSite::V,
        BlockSite::RotQ,
        BlockSite::RotK,
        BlockSite::AttnScores,
        BlockSite::Pattern,
        BlockSite::Z,
        BlockSite::AttnOut,
        BlockSite::ResidMid,
        BlockSite::Ln2Normalized,
        BlockSite::MlpPre,
        BlockSite::MlpPreLinear,
        BlockSite::MlpPost,
        BlockSite::MlpOut,
        BlockSite::ResidPost,
    ];

    /// The name after `blocks.{l}.`.
    pub fn name(self) -> &'static str {
        match self {
            BlockSite::ResidPre => "hook_resid_pre",
            BlockSite::Ln1Normalized => "ln1.hook_normalized",
            BlockSite::Q => "attn.hook_q",
            BlockSite::K => "attn.hook_k",
            BlockSite::V => "attn.hook_v",
            BlockSite::RotQ => "attn.hook_rot_q",
            BlockSite::RotK => "attn.hook_rot_k",
            BlockSite::AttnScores => "attn.hook_attn_scores",
            BlockSite::Pattern => "attn.hook_pattern",
            BlockSite::Z => "attn.hook_z",
            BlockSite::AttnOut => "hook_attn_out",
            BlockSite::ResidMid => "hook_resid_mid",
            BlockSite::Ln2Normalized => "ln2.hook_normalized",
            BlockSite::MlpPre => "mlp.hook_pre",
            BlockSite::MlpPreLinear => "mlp.hook_pre_linear",
            BlockSite::MlpPost => "mlp.hook_post",
            BlockSite::MlpOut => "hook_mlp_out",
            BlockSite::ResidPost => "hook_resid_post",
        }
    }
}

/// A named place in the forward pass where a hook may read or replace an activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `hook_embed`: `[batch, pos, d_model]` token embeddings.
    Embed,
    /// `hook_pos_embed`: `[batch, pos, d_model]` learned position embeddings.
    PosEmbed,
    /// `blocks.{layer}.{site}`.
    Block { layer: usize, site: BlockSite },
    /// `ln_final.hook_normalized`: `[batch, pos, d_model]` input of the unembedding.
    LnFinal,
}

impl HookPoint {
    pub const fn block(layer: usize, site: BlockSite) -> Self {
        HookPoint::Block { layer, site }
    }
    pub const fn resid_pre(layer: usize) -> Self {
        Self::block(layer, BlockSite::ResidPre)
    }
    pub const fn resid_mid(layer: usize) -> Self {
        Self::block(layer, BlockSite::ResidMid)
    }
    pub const fn resid_post(layer: usize) -> Self {
        Self::block(layer, BlockSite::ResidPost)
    }
    pub const fn attn_out(layer: usize) -> Self {
        Self::block(layer, BlockSite::AttnOut)
    }
    pub const fn pattern(layer: usize) -> Self {
        Self::block(layer, BlockSite::Pattern)
    }
    pub const fn mlp_post(layer: usize) -> Self {
        Self::block(layer, BlockSite::MlpPost)
    }
    pub const fn mlp_out(layer: usize) -> Self {
        Self::block(layer, BlockSite::MlpOut)
    }

    /// The layer of a block hook.
    pub fn layer(self) -> Option<usize> {
        match self {
            HookPoint::Block { layer, .. } => Some(layer),
            _ => None,
        }
    }

    /// The block site, if this is a block hook.
    pub fn site(self) -> Option<BlockSite> {
        match self {
            HookPoint::Block { site, .. } => Some(site),
            _ => None,
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Embed => f.write_str("hook_embed"),
            HookPoint::PosEmbed => f.write_str("hook_pos_embed"),
            HookPoint::Block { layer, site } => write!(f, "blocks.{layer}.{}", site.name()),
            HookPoint::LnFinal => f.write_str("ln_final.hook_normalized"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hook_embed" => return Ok(HookPoint::Embed),
            "hook_pos_embed" => return Ok(HookPoint::PosEmbed),
            "ln_final.hook_normalized" => return Ok(HookPoint::LnFinal),
            _ => {}
        }
        let unknown = || ModelError::UnknownHook(s.to_string());
        let rest = s.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, name) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        let site = BlockSite::ALL
            .into_iter()
            .find(|site| site.name() == name)
            .ok_or_else(unknown)?;
        Ok(HookPoint::Block { layer, site })
    }
}

/// An activation handed to a hook. Most are rank 3 (`[batch, pos, d]`);
/// per-head tensors and attention patterns are rank 4.
#[derive(Debug, Clone)]
pub enum Activation<B: Backend> {
    Rank3(Tensor<B, 3>),
    Rank4(Tensor<B, 4>),
}

impl<B: Backend> Activation<B> {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Activation::Rank3(t) => t.dims().to_vec(),
            Activation::Rank4(t) => t.dims().to_vec(),
        }
    }

    pub fn rank(&self) -> usize {
        match self {
            Activation::Rank3(_) => 3,
            Activation::Rank4(_) => 4,
        }
    }

    /// The rank-3 tensor, if this is one.
    pub fn as_rank3(&self) -> Option<&Tensor<B, 3>> {
        match self {
            Activation::Rank3(t) => Some(t),
            Activation::Rank4(_) => None,
        }
    }

    /// The rank-4 tensor, if this is one.
    pub fn as_rank4(&self) -> Option<&Tensor<B, 4>> {
        match self {
            Activation::Rank4(t) => Some(t),
            Activation::Rank3(_) => None,
        }
    }

    /// Row-major f32 values, for inspection and tests.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let data = match self {
            Activation::Rank3(t) => t.to_data(),
            Activation::Rank4(t) => t.to_data(),
        };
        data.convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ModelError::Data(format!("{e:?}")))
    }
}

/// Reads or replaces activations during one forward pass.
pub trait Hook<B: Backend> {
    /// Whether this hook acts at `point`. Asked first, so unhooked points cost nothing.
    fn wants(&self, point: HookPoint) -> bool;

    /// Called where `wants` said yes. Return `Some` to replace the activation
    /// (same rank and shape), `None` to leave it unchanged.
    fn call(&mut self, point: HookPoint, act: &Activation<B>) -> Option<Activation<B>>;
}

/// The empty hook: the plain forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl<B: Backend> Hook<B> for NoHooks {
    #[inline(always)]
    fn wants(&self, _: HookPoint) -> bool {
        false
    }
    #[inline(always)]
    fn call(&mut self, _: HookPoint, _: &Activation<B>) -> Option<Activation<B>> {
        None
    }
}

impl<B: Backend, H: Hook<B> + ?Sized> Hook<B> for &mut H {
    fn wants(&self, point: HookPoint) -> bool {
        (**self).wants(point)
    }
    fn call(&mut self, point: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        (**self).call(point, act)
    }
}

impl<B: Backend, H: Hook<B> + ?Sized> Hook<B> for Box<H> {
    fn wants(&self, point: HookPoint) -> bool {
        (**self).wants(point)
    }
    fn call(&mut self, point: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        (**self).call(point, act)
    }
}

/// Two hooks in sequence: the second sees what the first returned.
impl<B: Backend, H1: Hook<B>, H2: Hook<B>> Hook<B> for (H1, H2) {
    fn wants(&self, point: HookPoint) -> bool {
        self.0.wants(point) || self.1.wants(point)
    }
    fn call(&mut self, point: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        let first = if self.0.wants(point) {
            self.0.call(point, act)
        } else {
            None
        };
        if !self.1.wants(point) {
            return first;
        }
        match first {
            Some(replaced) => Some(self.1.call(point, &replaced).unwrap_or(replaced)),
            None => self.1.call(point, act),
        }
    }
}

/// Any number of hooks in sequence, e.g. the interventions a user has switched on.
impl<B: Backend> Hook<B> for Vec<Box<dyn Hook<B> + Send>> {
    fn wants(&self, point: HookPoint) -> bool {
        self.iter().any(|h| h.wants(point))
    }
    fn call(&mut self, point: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        let mut current: Option<Activation<B>> = None;
        for h in self.iter_mut() {
            if h.wants(point) {
                let seen = current.as_ref().unwrap_or(act);
                if let Some(next) = h.call(point, seen) {
                    current = Some(next);
                }
            }
        }
        current
    }
}

/// A closure hook at a fixed set of points.
pub struct FnHook<F> {
    points: Vec<HookPoint>,
    f: F,
}

/// Run `f` at each of `points`; it returns `Some` to replace the activation.
pub fn fn_hook<B, F>(points: impl IntoIterator<Item = HookPoint>, f: F) -> FnHook<F>
where
    B: Backend,
    F: FnMut(HookPoint, &Activation<B>) -> Option<Activation<B>>,
{
    FnHook {
        points: points.into_iter().collect(),
        f,
    }
}

impl<B: Backend, F> Hook<B> for FnHook<F>
where
    F: FnMut(HookPoint, &Activation<B>) -> Option<Activation<B>>,
{
    fn wants(&self, point: HookPoint) -> bool {
        self.points.contains(&point)
    }
    fn call(&mut self, point: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        (self.f)(point, act)
    }
}

/// Stores the activations whose names pass a filter, in the order they were produced.
pub struct ActivationCache<B: Backend> {
    filter: Box<dyn Fn(HookPoint) -> bool + Send>,
    order: Vec<HookPoint>,
    store: HashMap<HookPoint, Activation<B>>,
}

impl<B: Backend> ActivationCache<B> {
    /// Cache every point for which `filter` is true.
    pub fn new(filter: impl Fn(HookPoint) -> bool + Send + 'static) -> Self {
        Self {
            filter: Box::new(filter),
            order: Vec::new(),
            store: HashMap::new(),
        }
    }

    /// Cache every hook point.
    pub fn all() -> Self {
        Self::new(|_| true)
    }

    /// Cache the points with these TransformerLens names; unknown names are an error.
    pub fn with_names<S: AsRef<str>>(names: &[S]) -> Result<Self> {
        let points = names
            .iter()
            .map(|n| n.as_ref().parse::<HookPoint>())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::new(move |p| points.contains(&p)))
    }

    /// Points cached, in forward order.
    pub fn points(&self) -> &[HookPoint] {
        &self.order
    }

    pub fn get(&self, point: HookPoint) -> Option<&Activation<B>> {
        self.store.get(&point)
    }

    /// Look up by TransformerLens name.
    pub fn get_name(&self, name: &str) -> Option<&Activation<B>> {
        name.parse::<HookPoint>()
            .ok()
            .and_then(|p| self.store.get(&p))
    }

    /// A rank-3 activation, e.g. a residual stream.
    pub fn rank3(&self, point: HookPoint) -> Option<Tensor<B, 3>> {
        self.get(point).and_then(|a| a.as_rank3().cloned())
    }

    pub fn rank4(&self, point: HookPoint) -> Option<Tensor<B, 4>> {
        self.get(point).and_then(|a| a.as_rank4().cloned())
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn clear(&mut self) {
        self.order.clear();
        self.store.clear();
    }
}

impl<B: Backend> Hook<B> for ActivationCache<B> {
    fn wants(&self, point: HookPoint) -> bool {
        (self.filter)(point)
    }
    fn call(&mut self, point: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        if self.store.insert(point, act.clone()).is_none() {
            self.order.push(point);
        }
        None
    }
}

/// Apply `hooks` at a rank-3 site; checks that a replacement keeps the shape.
#[inline(always)]
pub(crate) fn at3<B: Backend, H: Hook<B> + ?Sized>(
    hooks: &mut H,
    point: HookPoint,
    t: Tensor<B, 3>,
) -> Result<Tensor<B, 3>> {
    if !hooks.wants(point) {
        return Ok(t);
    }
    let act = Activation::Rank3(t);
    match hooks.call(point, &act) {
        None => match act {
            Activation::Rank3(t) => Ok(t),
            Activation::Rank4(_) => unreachable!("constructed as rank 3"),
        },
        Some(Activation::Rank3(new)) => {
            check_dims(point, &act.dims(), &new.dims())?;
            Ok(new)
        }
        Some(Activation::Rank4(_)) => Err(ModelError::HookRank {
            point: point.to_string(),
            expected: 3,
            found: 4,
        }),
    }
}

/// Apply `hooks` at a rank-4 site; checks that a replacement keeps the shape.
#[inline(always)]
pub(crate) fn at4<B: Backend, H: Hook<B> + ?Sized>(
    hooks: &mut H,
    point: HookPoint,
    t: Tensor<B, 4>,
) -> Result<Tensor<B, 4>> {
    if !hooks.wants(point) {
        return Ok(t);
    }
    let act = Activation::Rank4(t);
    match hooks.call(point, &act) {
        None => match act {
            Activation::Rank4(t) => Ok(t),
            Activation::Rank3(_) => unreachable!("constructed as rank 4"),
        },
        Some(Activation::Rank4(new)) => {
            check_dims(point, &act.dims(), &new.dims())?;
            Ok(new)
        }
        Some(Activation::Rank3(_)) => Err(ModelError::HookRank {
            point: point.to_string(),
            expected: 4,
            found: 3,
        }),
    }
}

fn check_dims(point: HookPoint, expected: &[usize], found: &[usize]) -> Result<()> {
    if expected != found {
        return Err(ModelError::HookShape {
            point: point.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}
