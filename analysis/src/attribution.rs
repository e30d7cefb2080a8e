//! Attribution patching (Nanda 2023, "Attribution Patching"; Syed et al. 2023,
//! arXiv 2310.10348): the first-order estimate of patching each clean activation
//! into the corrupted run, (clean − corrupted) · ∂metric/∂activation taken at the
//! corrupted run, for every layer × position at `hook_resid_pre`,
//! `hook_attn_out` and `hook_mlp_out`, and per head at `attn.hook_z`. One clean
//! forward, one corrupted forward and one backward; exact patching needs one
//! forward per site. The metric is the answer's logit minus the corrupted
//! answer's at the last position.

use std::collections::HashMap;

use burn_autodiff::Autodiff;
use burn_tensor::backend::Backend;
use burn_tensor::Tensor;
use engram_model::{Activation, ActivationCache, Batch, BlockSite, Hook, HookPoint, Transformer};

use crate::error::{AnalysisError, Result};

/// The sites estimated, in this order.
pub const SITES: [BlockSite; 4] = [
    BlockSite::ResidPre,
    BlockSite::AttnOut,
    BlockSite::MlpOut,
    BlockSite::Z,
];

/// Estimates per site: `[layer][position]`, and for `hook_z` `[layer][position][head]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub resid_pre: Vec<Vec<f32>>,
    pub attn_out: Vec<Vec<f32>>,
    pub mlp_out: Vec<Vec<f32>>,
    pub heads: Vec<Vec<Vec<f32>>>,
    /// The metric on the clean and the corrupted prompt.
    pub clean_metric: f32,
    pub corrupted_metric: f32,
}

type Ad<B> = Autodiff<B>;

/// Adds a zero that needs a gradient at every wanted point, keeping it and the
/// corrupted value there.
struct Probe<B: Backend> {
    zeros: HashMap<HookPoint, Activation<Ad<B>>>,
    values: HashMap<HookPoint, Activation<B>>,
}

impl<B: Backend> Hook<Ad<B>> for Probe<B> {
    fn wants(&self, point: HookPoint) -> bool {
        point.site().is_some_and(|s| SITES.contains(&s))
    }
    fn call(&mut self, point: HookPoint, act: &Activation<Ad<B>>) -> Option<Activation<Ad<B>>> {
        match act {
            Activation::Rank3(x) => {
                let z = Tensor::<Ad<B>, 3>::zeros(x.dims(), &x.device()).require_grad();
                self.values
                    .insert(point, Activation::Rank3(x.clone().inner()));
                self.zeros.insert(point, Activation::Rank3(z.clone()));
                Some(Activation::Rank3(x.clone() + z))
            }
            Activation::Rank4(x) => {
                let z = Tensor::<Ad<B>, 4>::zeros(x.dims(), &x.device()).require_grad();
                self.values
                    .insert(point, Activation::Rank4(x.clone().inner()));
                self.zeros.insert(point, Activation::Rank4(z.clone()));
                Some(Activation::Rank4(x.clone() + z))
            }
        }
    }
}

fn vec_of<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| AnalysisError::Invalid(format!("reading a tensor: {e:?}")))
}

/// `logit[answer] − logit[wrong]` at the last position of `[1, pos, vocab]`.
fn metric<B: Backend>(logits: Tensor<B, 3>, answer: u32, wrong: u32) -> Tensor<B, 1> {
    let [_, s, v] = logits.dims();
    let last = logits.slice([0..1, s - 1..s, 0..v]).reshape([v]);
    let a = last.clone().narrow(0, answer as usize, 1);
    let w = last.narrow(0, wrong as usize, 1);
    a - w
}

/// The estimates for `clean` against `corrupted` (the same length), with the
/// metric `answer` minus `wrong`.
pub fn attribution_patch<B: Backend>(
    model: &Transformer<B>,
    clean: &[u32],
    corrupted: &[u32],
    answer: u32,
    wrong: u32,
) -> Result<Attribution> {
    let vocab = model.config.vocab_size;
    if clean.len() != corrupted.len() || clean.is_empty() {
        return Err(AnalysisError::Invalid(format!(
            "the clean and corrupted prompts must have the same number of tokens ({} and {})",
            clean.len(),
            corrupted.len()
        )));
    }
    if answer as usize >= vocab || wrong as usize >= vocab {
        return Err(AnalysisError::Invalid(format!(
            "answer tokens {answer} and {wrong} must be below the vocabulary size {vocab}"
        )));
    }
    let mut cache = ActivationCache::<B>::new(|p| p.site().is_some_and(|s| SITES.contains(&s)));
    let clean_logits = model.forward(&Batch::single(clean), &mut cache)?;
    let clean_metric = vec_of(metric(clean_logits, answer, wrong))?[0];
    let ad: Transformer<Ad<B>> = Transformer::lift(model);
    let mut probe = Probe::<B> {
        zeros: HashMap::new(),
        values: HashMap::new(),
    };
    let logits = ad.forward(&Batch::single(corrupted), &mut probe)?;
    let m = metric(logits, answer, wrong);
    let corrupted_metric = vec_of(m.clone().inner())?[0];
    let grads = m.backward();
    let (n, s) = (model.config.n_layers, clean.len());
    let mut out = Attribution {
        resid_pre: vec![vec![0.0; s]; n],
        attn_out: vec![vec![0.0; s]; n],
        mlp_out: vec![vec![0.0; s]; n],
        heads: vec![vec![Vec::new(); s]; n],
        clean_metric,
        corrupted_metric,
    };
    for layer in 0..n {
        for site in SITES {
            let point = HookPoint::block(layer, site);
            let missing = || AnalysisError::Invalid(format!("no activation at {point}"));
            match (probe.zeros.get(&point), probe.values.get(&point)) {
                (Some(Activation::Rank3(z)), Some(Activation::Rank3(x))) => {
                    let g = z.grad(&grads).ok_or_else(missing)?;
                    let c = cache.rank3(point).ok_or_else(missing)?;
                    // [1, pos, d] -> [pos]
                    let est = vec_of((c - x.clone()).mul(g).sum_dim(2).reshape([s]))?;
                    let row = match site {
                        BlockSite::ResidPre => &mut out.resid_pre[layer],
                        BlockSite::AttnOut => &mut out.attn_out[layer],
                        _ => &mut out.mlp_out[layer],
                    };
                    *row = est;
                }
                (Some(Activation::Rank4(z)), Some(Activation::Rank4(x))) => {
                    let g = z.grad(&grads).ok_or_else(missing)?;
                    let c = cache.rank4(point).ok_or_else(missing)?;
                    // [1, pos, head, d_head] -> [pos, head]
                    let h = x.dims()[2];
                    let est = vec_of((c - x.clone()).mul(g).sum_dim(3).reshape([s * h]))?;
                    out.heads[layer] = est.chunks(h).map(<[f32]>::to_vec).collect();
                }
                _ => return Err(missing()),
            }
        }
    }
    Ok(out)
}

/// Spearman's rank correlation of two equally long lists (ties broken by order).
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    let ranks = |v: &[f32]| -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0f64; v.len()];
        for (rank, &i) in idx.iter().enumerate() {
            r[i] = rank as f64;
        }
        r
    };
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len().min(rb.len()) as f64;
    let mean = (n - 1.0) / 2.0;
    let cov: f64 = ra
        .iter()
        .zip(&rb)
        .map(|(x, y)| (x - mean) * (y - mean))
        .sum();
    let var: f64 = ra.iter().map(|x| (x - mean) * (x - mean)).sum();
    if var > 0.0 {
        cov / var
    } else {
        f64::NAN
    }
}
