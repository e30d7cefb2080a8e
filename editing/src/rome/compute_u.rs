//! Step 2: the key. k* is the input of the edited layer's output projection
//! (`blocks.{l}.mlp.hook_post`) at the subject's last token, averaged over the
//! context prefixes (ROME eq. 3); u = C⁻¹k* by a Cholesky solve.

use burn_tensor::backend::Backend;
use burn_tensor::Tensor;
use engram_model::hooks::{Activation, BlockSite};
use engram_model::{fn_hook, Batch, HookPoint, LanguageModel};

use crate::error::{EditError, Result};
use crate::linalg::{cholesky, cholesky_solve};
use crate::stats::LayerStats;

/// The subject's keys at one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectKeys {
    /// Averaged over every context prefix (ROME's k*), `[d_mlp]`.
    pub k_star: Vec<f32>,
    /// In the unprefixed prompt (the first template, "{}"), `[d_mlp]`.
    pub k_plain: Vec<f32>,
}

/// `template` with `prompt` in its `{}`, and the byte where the prompt starts
/// there: the subject is looked for from that byte, as ROME and MEMIT place it
/// at the `{}` slot, never in the generated prefix.
pub fn fill_template(template: &str, prompt: &str) -> (String, usize) {
    match template.find("{}") {
        Some(at) => (template.replacen("{}", prompt, 1), at),
        None => (template.to_string(), 0),
    }
}

/// Each text's token ids and the index of the subject's last token in it; the
/// subject is the first occurrence at or after the text's byte offset.
pub fn subject_rows<B: Backend>(
    lm: &LanguageModel<B>,
    texts: &[(String, usize)],
    subject: &str,
) -> Result<Vec<(Vec<u32>, usize)>> {
    texts
        .iter()
        .map(|(t, from)| {
            let (enc, span) = lm.tokenizer.subject_span_from(t, subject, *from)?;
            if enc.ids.len() > lm.model.config.n_ctx {
                return Err(EditError::Model(engram_model::ModelError::PromptTooLong {
                    len: enc.ids.len(),
                    n_ctx: lm.model.config.n_ctx,
                }));
            }
            Ok((enc.ids, span.end - 1))
        })
        .collect()
}

/// The activation at `site` of `layer`, at one position per row, `[rows][dim]`.
pub fn activations_at<B: Backend>(
    lm: &LanguageModel<B>,
    rows: &[(Vec<u32>, usize)],
    layer: usize,
    site: BlockSite,
) -> Result<Vec<Vec<f32>>> {
    let point = HookPoint::block(layer, site);
    let ids: Vec<Vec<u32>> = rows.iter().map(|(ids, _)| ids.clone()).collect();
    let pad = lm.model.config.eos_token_id.unwrap_or(0);
    let batch = Batch::right_padded(&ids, pad);
    let mut seen: Option<Tensor<B, 3>> = None;
    let mut hook = fn_hook::<B, _>([point], |_, act: &Activation<B>| {
        seen = act.as_rank3().cloned();
        None
    });
    let ctx = lm.model.context(&batch)?;
    let x = lm.model.embed(&batch, &mut hook)?;
    lm.model.run_blocks(0..layer + 1, x, &ctx, &mut hook)?;
    drop(hook);
    let t = seen.ok_or_else(|| EditError::Invalid(format!("no activation at {point}")))?;
    let [_, s, d] = t.dims();
    let v: Vec<f32> = t
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| EditError::Invalid(format!("reading {point}: {e:?}")))?;
    Ok(rows
        .iter()
        .enumerate()
        .map(|(r, (_, pos))| v[(r * s + pos) * d..(r * s + pos + 1) * d].to_vec())
        .collect())
}

/// k* over `templates` (each with one `{}` for the prompt), and the plain key.
pub fn subject_keys<B: Backend>(
    lm: &LanguageModel<B>,
    prompt: &str,
    subject: &str,
    templates: &[String],
    layer: usize,
) -> Result<SubjectKeys> {
    // The unprefixed prompt is one of the templates ("{}") as ROME builds them;
    // otherwise it is read as one extra row, outside the average.
    let mut texts: Vec<(String, usize)> =
        templates.iter().map(|t| fill_template(t, prompt)).collect();
    let plain = match templates.iter().position(|t| t == "{}") {
        Some(i) => i,
        None => {
            texts.push((prompt.to_string(), 0));
            texts.len() - 1
        }
    };
    let rows = subject_rows(lm, &texts, subject)?;
    let keys = activations_at(lm, &rows, layer, BlockSite::MlpPost)?;
    // No templates: k* is the plain key.
    let averaged = &keys[..templates.len().max(1)];
    let n = averaged.len() as f32;
    let mut k_star = vec![0f32; keys[plain].len()];
    for k in averaged {
        for (a, b) in k_star.iter_mut().zip(k) {
            *a += b / n;
        }
    }
    Ok(SubjectKeys {
        k_star,
        k_plain: keys[plain].clone(),
    })
}

/// C = E[k kᵀ] of one layer, factorised once for every edit at that layer.
#[derive(Debug, Clone)]
pub struct KeyCovariance {
    pub layer: usize,
    pub dim: usize,
    /// Key vectors the statistics were computed from.
    pub tokens: u64,
    chol: Vec<f64>,
}

impl KeyCovariance {
    pub fn new(stats: &LayerStats) -> Result<Self> {
        Ok(Self {
            layer: stats.key.layer,
            dim: stats.dim,
            tokens: stats.key.tokens,
            chol: cholesky(&stats.mom2(), stats.dim)?,
        })
    }

    /// The identity (ROME with `mom2_adjustment: false`).
    pub fn identity(layer: usize, dim: usize) -> Self {
        let mut chol = vec![0f64; dim * dim];
        for i in 0..dim {
            chol[i * dim + i] = 1.0;
        }
        Self {
            layer,
            dim,
            tokens: 0,
            chol,
        }
    }

    /// C⁻¹k, solved in f64.
    pub fn solve(&self, k: &[f32]) -> Result<Vec<f64>> {
        if k.len() != self.dim {
            return Err(EditError::Invalid(format!(
                "key has {} entries, the statistics {}",
                k.len(),
                self.dim
            )));
        }
        let b: Vec<f64> = k.iter().map(|&x| f64::from(x)).collect();
        Ok(cholesky_solve(&self.chol, self.dim, &b))
    }
}

/// u = C⁻¹k* / ‖C⁻¹k*‖ (ROME's left vector).
pub fn compute_u(cov: &KeyCovariance, k_star: &[f32]) -> Result<Vec<f32>> {
    let u = cov.solve(k_star)?;
    let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return Err(EditError::NonFinite {
            what: "‖C⁻¹k*‖",
            value: norm as f32,
            step: 0,
        });
    }
    Ok(u.iter().map(|x| (x / norm) as f32).collect())
}
