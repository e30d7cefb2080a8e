//! Activation patching, TransformerLens style (`transformer_lens.patching`;
//! Wang et al. 2022; Heimersheim & Nanda 2024): run a corrupted prompt, put
//! back one activation from the clean prompt, and measure the logit
//! difference between the clean answer and the corrupted answer.
//!
//! Sites: `hook_resid_pre`, `hook_attn_out`, `hook_mlp_out` per (layer,
//! position), and each head's output (`attn.hook_z`) per (layer, head) at all
//! positions. The metric is the logit difference at the last position and its
//! normalised recovery `(patched - corrupted) / (clean - corrupted)`.

use burn_tensor::backend::Backend;
use burn_tensor::{Tensor, TensorData};

use crate::trace::blend;
use engram_model::{
    Activation, ActivationCache, Batch, BlockSite, Hook, HookPoint, ModelError, NoHooks, Tokenizer,
    Transformer,
};

/// Where activations are patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatchSite {
    ResidPre,
    AttnOut,
    MlpOut,
    /// Each head's `hook_z`, all positions at once.
    HeadOut,
}

impl PatchSite {
    pub const ALL: [PatchSite; 4] = [
        PatchSite::ResidPre,
        PatchSite::AttnOut,
        PatchSite::MlpOut,
        PatchSite::HeadOut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PatchSite::ResidPre => "resid_pre",
            PatchSite::AttnOut => "attn_out",
            PatchSite::MlpOut => "mlp_out",
            PatchSite::HeadOut => "head_out",
        }
    }

    fn block_site(self) -> BlockSite {
        match self {
            PatchSite::ResidPre => BlockSite::ResidPre,
            PatchSite::AttnOut => BlockSite::AttnOut,
            PatchSite::MlpOut => BlockSite::MlpOut,
            PatchSite::HeadOut => BlockSite::Z,
        }
    }
}

/// Logit differences with one site patched: `logit_diff[layer][i]`, where `i`
/// is a position, or a head for [`PatchSite::HeadOut`].
#[derive(Debug, Clone, PartialEq)]
pub struct SitePatch {
    pub site: PatchSite,
    pub logit_diff: Vec<Vec<f32>>,
    pub recovery: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatchReport {
    pub clean_logit_diff: f32,
    pub corrupted_logit_diff: f32,
    pub sites: Vec<SitePatch>,
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "the clean prompt has {clean} tokens and the corrupted one {corrupted}; patching needs equal lengths"
    )]
    LengthMismatch { clean: usize, corrupted: usize },
    #[error("token {0} is outside the vocabulary")]
    TokenOutOfRange(u32),
    #[error("the clean and corrupted runs give the same logit difference; recovery is undefined")]
    NoDifference,
}

type Result<T> = std::result::Result<T, PatchError>;

fn data_err(e: impl std::fmt::Debug) -> PatchError {
    PatchError::Model(ModelError::Data(format!("{e:?}")))
}

/// `logit[answer] - logit[wrong]` at the last position of every row.
fn logit_diffs<B: Backend>(logits: Tensor<B, 3>, answer: u32, wrong: u32) -> Result<Vec<f32>> {
    let [rows, pos, vocab] = logits.dims();
    let last = logits
        .slice([0..rows, pos - 1..pos, 0..vocab])
        .reshape([rows, vocab]);
    let a = last
        .clone()
        .slice([0..rows, answer as usize..answer as usize + 1]);
    let w = last.slice([0..rows, wrong as usize..wrong as usize + 1]);
    (a - w)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(data_err)
}

/// Replaces rows' entries with the clean activation where `mask` is 1.
struct Patch<B: Backend> {
    point: HookPoint,
    clean: Activation<B>,
    mask: Activation<B>,
}

impl<B: Backend> Hook<B> for Patch<B> {
    fn wants(&self, point: HookPoint) -> bool {
        point == self.point
    }
    fn call(&mut self, _: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        match (act, &self.clean, &self.mask) {
            (Activation::Rank3(x), Activation::Rank3(c), Activation::Rank3(m)) => {
                Some(Activation::Rank3(blend(x.clone(), c.clone(), m.clone())))
            }
            (Activation::Rank4(x), Activation::Rank4(c), Activation::Rank4(m)) => {
                Some(Activation::Rank4(blend(x.clone(), c.clone(), m.clone())))
            }
            _ => None,
        }
    }
}

/// Patch every `sites` activation of the clean run into the corrupted run, one
/// (layer, position) or (layer, head) at a time, batched per layer, with the
/// corrupted run up to that layer computed once.
pub fn patch_sweep<B: Backend>(
    model: &Transformer<B>,
    clean: &[u32],
    corrupted: &[u32],
    answer: u32,
    wrong: u32,
    sites: &[PatchSite],
) -> Result<PatchReport> {
    if clean.len() != corrupted.len() {
        return Err(PatchError::LengthMismatch {
            clean: clean.len(),
            corrupted: corrupted.len(),
        });
    }
    for t in [answer, wrong] {
        if t as usize >= model.config.vocab_size {
            return Err(PatchError::TokenOutOfRange(t));
        }
    }
    let len = clean.len();
    let n_layers = model.config.n_layers;
    let n_heads = model.config.n_heads;
    let wanted: Vec<BlockSite> = sites.iter().map(|s| s.block_site()).collect();
    let mut clean_cache =
        ActivationCache::<B>::new(move |p| p.site().is_some_and(|s| wanted.contains(&s)));
    let clean_ld = logit_diffs(
        model.forward(&Batch::single(clean), &mut clean_cache)?,
        answer,
        wrong,
    )?[0];
    let mut corrupt_cache = ActivationCache::<B>::new(|p| p.site() == Some(BlockSite::ResidPre));
    let corrupt_ld = logit_diffs(
        model.forward(&Batch::single(corrupted), &mut corrupt_cache)?,
        answer,
        wrong,
    )?[0];
    let span = clean_ld - corrupt_ld;
    if span.abs() < 1e-6 {
        return Err(PatchError::NoDifference);
    }
    let device = &model.device;
    // One attention context per batch size (positions, or heads), built once.
    let ctx_positions = model.context(&Batch::uniform(&vec![corrupted.to_vec(); len])?)?;
    let ctx_heads = model.context(&Batch::uniform(&vec![corrupted.to_vec(); n_heads])?)?;
    let mut out = Vec::new();
    for &site in sites {
        let mut lds = Vec::with_capacity(n_layers);
        for layer in 0..n_layers {
            let point = HookPoint::block(layer, site.block_site());
            let clean_act = clean_cache
                .get(point)
                .cloned()
                .ok_or_else(|| ModelError::UnknownHook(point.to_string()))?;
            let rows = if site == PatchSite::HeadOut {
                n_heads
            } else {
                len
            };
            let mask = match (&clean_act, site) {
                (Activation::Rank4(_), PatchSite::HeadOut) => {
                    // [rows = head, 1, head, 1]
                    let mut m = vec![0f32; rows * n_heads];
                    for h in 0..n_heads {
                        m[h * n_heads + h] = 1.0;
                    }
                    Activation::Rank4(Tensor::from_data(
                        TensorData::new(m, [rows, 1, n_heads, 1]),
                        device,
                    ))
                }
                _ => {
                    // [rows = position, pos, 1]
                    let mut m = vec![0f32; rows * len];
                    for p in 0..len {
                        m[p * len + p] = 1.0;
                    }
                    Activation::Rank3(Tensor::from_data(
                        TensorData::new(m, [rows, len, 1]),
                        device,
                    ))
                }
            };
            let x = corrupt_cache
                .rank3(HookPoint::resid_pre(layer))
                .ok_or_else(|| ModelError::UnknownHook(HookPoint::resid_pre(layer).to_string()))?
                .repeat_dim(0, rows);
            let ctx = if site == PatchSite::HeadOut {
                &ctx_heads
            } else {
                &ctx_positions
            };
            let mut hook = Patch {
                point,
                clean: clean_act,
                mask,
            };
            let h = model.run_blocks(layer..n_layers, x, ctx, &mut hook)?;
            let [r, _, d] = h.dims();
            let last = h.slice([0..r, len - 1..len, 0..d]);
            lds.push(logit_diffs(
                model.unembed(last, &mut NoHooks)?,
                answer,
                wrong,
            )?);
        }
        let recovery = lds
            .iter()
            .map(|row| row.iter().map(|v| (v - corrupt_ld) / span).collect())
            .collect();
        out.push(SitePatch {
            site,
            logit_diff: lds,
            recovery,
        });
    }
    Ok(PatchReport {
        clean_logit_diff: clean_ld,
        corrupted_logit_diff: corrupt_ld,
        sites: out,
    })
}

/// Symmetric token replacement: the prompt with `subject` replaced by the first
/// of `candidates` that tokenizes to the same number of tokens (so positions
/// line up). Returns the corrupted prompt and the subject used.
pub fn replace_subject(
    tokenizer: &Tokenizer,
    prompt: &str,
    subject: &str,
    candidates: &[String],
) -> std::result::Result<Option<(String, String)>, ModelError> {
    let (clean, span) = tokenizer.subject_span(prompt, subject)?;
    for other in candidates {
        if other == subject || other.trim().is_empty() {
            continue;
        }
        let corrupted = prompt.replacen(subject, other, 1);
        let (ids, other_span) = tokenizer.subject_span(&corrupted, other)?;
        if ids.ids.len() == clean.ids.len() && other_span == span {
            return Ok(Some((corrupted, other.clone())));
        }
    }
    Ok(None)
}
