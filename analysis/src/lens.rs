//! The logit lens (nostalgebraist 2020): decode the residual stream after each
//! layer with the model's own final norm and unembedding, to see at which layer
//! the answer appears.

use burn_tensor::activation::softmax;
use burn_tensor::backend::Backend;
use burn_tensor::Tensor;
use engram_model::{
    ActivationCache, Batch, BlockSite, HookPoint, ModelError, NoHooks, Transformer,
};

/// Which residual stream to read at each layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LensSite {
    /// `blocks.{l}.hook_resid_pre`
    Pre,
    /// `blocks.{l}.hook_resid_mid` (sequential blocks only)
    Mid,
    /// `blocks.{l}.hook_resid_post`
    #[default]
    Post,
}

impl LensSite {
    fn block_site(self) -> BlockSite {
        match self {
            LensSite::Pre => BlockSite::ResidPre,
            LensSite::Mid => BlockSite::ResidMid,
            LensSite::Post => BlockSite::ResidPost,
        }
    }
}

/// Next-token probabilities read at every layer: `probs[layer][position][vocab]`.
pub struct LensResult {
    pub probs: Vec<Vec<Vec<f32>>>,
}

impl LensResult {
    /// Rank (0 = top) of `token` at each layer, at `position`.
    pub fn rank_by_layer(&self, position: usize, token: u32) -> Vec<usize> {
        self.probs
            .iter()
            .map(|layer| {
                let p = &layer[position];
                let target = p.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY);
                p.iter().filter(|&&x| x > target).count()
            })
            .collect()
    }

    /// The first layer at which `token` is top-1 at `position` and stays top-1 to the end.
    pub fn first_top1_layer(&self, position: usize, token: u32) -> Option<usize> {
        let ranks = self.rank_by_layer(position, token);
        let last_bad = ranks.iter().rposition(|&r| r != 0);
        match last_bad {
            None => Some(0),
            Some(i) if i + 1 < ranks.len() => Some(i + 1),
            Some(_) => None,
        }
    }

    /// Top `k` (token, probability) at each layer, at `position`.
    pub fn top_k(&self, position: usize, k: usize) -> Vec<Vec<(u32, f32)>> {
        self.probs
            .iter()
            .map(|layer| {
                let p = &layer[position];
                let mut idx: Vec<usize> = (0..p.len()).collect();
                idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                idx.into_iter().take(k).map(|i| (i as u32, p[i])).collect()
            })
            .collect()
    }
}

/// Run `ids` once, caching the chosen residual of every layer, and decode each.
pub fn logit_lens<B: Backend>(
    model: &Transformer<B>,
    ids: &[u32],
    site: LensSite,
) -> Result<LensResult, ModelError> {
    if site == LensSite::Mid && model.config.parallel_attn_mlp {
        return Err(ModelError::UnknownHook(
            "hook_resid_mid (parallel blocks have none)".into(),
        ));
    }
    let want = site.block_site();
    let mut cache = ActivationCache::<B>::new(move |p| p.site() == Some(want));
    model.forward(&Batch::single(ids), &mut cache)?;
    let mut probs = Vec::with_capacity(model.config.n_layers);
    for layer in 0..model.config.n_layers {
        let resid: Tensor<B, 3> = cache
            .rank3(HookPoint::block(layer, want))
            .ok_or_else(|| ModelError::UnknownHook(HookPoint::block(layer, want).to_string()))?;
        // [1, pos, vocab]
        let logits = model.unembed(resid, &mut NoHooks)?;
        let [_, s, v] = logits.dims();
        let p: Vec<f32> = softmax(logits, 2)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| ModelError::Data(format!("{e:?}")))?;
        probs.push((0..s).map(|i| p[i * v..(i + 1) * v].to_vec()).collect());
    }
    Ok(LensResult { probs })
}
