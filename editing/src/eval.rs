//! Edit evaluation, each metric under its own convention's name.
//!
//! - **CounterFact, as ROME's code computes it** (Meng et al. 2022, App. C): for
//!   each prompt, the mean per-token NLL of `target_new` and of `target_true`
//!   (multi-token targets by teacher forcing). ES/PS: the share of rewrite /
//!   paraphrase prompts where NLL(new) < NLL(true); NS: neighbourhood prompts
//!   where NLL(true) < NLL(new). EM/PM: mean p(new) − p(true) (p = exp(−NLL));
//!   NM: mean p(true) − p(new). S: the harmonic mean of ES, PS and NS.
//! - **EasyEdit's token accuracies** (Wang et al. 2023): reliability and
//!   generalisation are the share of `target_new` tokens that are the argmax
//!   under teacher forcing, on the rewrite and paraphrase prompts; locality is
//!   the share of the neighbourhood answer's positions whose argmax is unchanged
//!   by the edit.

use burn_tensor::activation::log_softmax;
use burn_tensor::backend::Backend;
use engram_model::{Batch, LanguageModel};
use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};

/// One evaluation case (CounterFact's fields; the demo builds the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalCase {
    pub case_id: u64,
    pub subject: String,
    pub prompt: String,
    pub target_new: String,
    pub target_true: String,
    pub paraphrases: Vec<String>,
    pub neighborhood: Vec<String>,
    /// The expected answer on neighbourhood prompts.
    pub neighborhood_target: String,
}

/// Per prompt: each target token's log-probability and whether it is the argmax.
#[derive(Debug, Clone, PartialEq)]
pub struct Forced {
    pub logp: Vec<f32>,
    pub argmax: Vec<u32>,
    pub target: Vec<u32>,
}

impl Forced {
    /// Mean per-token NLL (ROME's `test_batch_prediction`).
    pub fn nll(&self) -> f64 {
        -self.logp.iter().map(|&x| f64::from(x)).sum::<f64>() / self.logp.len().max(1) as f64
    }
    /// Share of target tokens that are the argmax (EasyEdit).
    pub fn accuracy(&self) -> f64 {
        let hit = self
            .argmax
            .iter()
            .zip(&self.target)
            .filter(|(a, b)| a == b)
            .count();
        hit as f64 / self.target.len().max(1) as f64
    }
}

/// Teacher-force `target` after each prompt, in one batch.
pub fn teacher_force<B: Backend>(
    lm: &LanguageModel<B>,
    prompts: &[String],
    target: &str,
) -> Result<Vec<Forced>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    let mut spans = Vec::new();
    for p in prompts {
        let ids = lm.encode_prompt(p)?;
        let t = lm.target_tokens(p, target)?;
        let start = ids.len();
        let mut row = ids;
        row.extend_from_slice(&t);
        if row.len() > lm.model.config.n_ctx {
            return Err(EditError::Model(engram_model::ModelError::PromptTooLong {
                len: row.len(),
                n_ctx: lm.model.config.n_ctx,
            }));
        }
        spans.push((start, t));
        rows.push(row);
    }
    let pad = lm.model.config.eos_token_id.unwrap_or(0);
    let batch = Batch::right_padded(&rows, pad);
    let (b, s) = (batch.batch_size(), batch.seq_len());
    let logits = lm.model.logits(&batch)?;
    let v = logits.dims()[2];
    let logp = log_softmax(logits, 2);
    let argmax: Vec<i64> = logp
        .clone()
        .argmax(2)
        .into_data()
        .convert::<i64>()
        .into_vec()
        .map_err(|e| EditError::Invalid(format!("reading argmax: {e:?}")))?;
    let flat: Vec<f32> = logp
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| EditError::Invalid(format!("reading log-probs: {e:?}")))?;
    debug_assert_eq!(argmax.len(), b * s);
    Ok(spans
        .into_iter()
        .enumerate()
        .map(|(r, (start, t))| {
            let pos = |j: usize| r * s + start + j - 1;
            Forced {
                logp: t
                    .iter()
                    .enumerate()
                    .map(|(j, &tok)| flat[pos(j) * v + tok as usize])
                    .collect(),
                argmax: (0..t.len()).map(|j| argmax[pos(j)] as u32).collect(),
                target: t,
            }
        })
        .collect())
}

/// One case's metrics, under both conventions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CaseScores {
    pub es: f64,
    pub em: f64,
    pub ps: f64,
    pub pm: f64,
    pub ns: f64,
    pub nm: f64,
    pub reliability: f64,
    pub generalization: f64,
    pub locality: f64,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// The model's argmax at each position of the neighbourhood answer, per
/// neighbourhood prompt (EasyEdit's locality compares these across an edit).
pub type NeighbourhoodArgmax = Vec<Vec<u32>>;

/// Score `case` on `lm`. `before` is what this returned on the unedited model
/// (`None` when scoring the unedited model itself: locality is then 1).
pub fn score_case<B: Backend>(
    lm: &LanguageModel<B>,
    case: &EvalCase,
    before: Option<&[Vec<u32>]>,
) -> Result<(CaseScores, NeighbourhoodArgmax)> {
    let rewrite = vec![case.prompt.clone()];
    // (NLL new, NLL true, accuracy of new) per prompt.
    let pair = |prompts: &[String]| -> Result<Vec<(f64, f64, f64)>> {
        let new = teacher_force(lm, prompts, &case.target_new)?;
        let old = teacher_force(lm, prompts, &case.target_true)?;
        Ok(new
            .iter()
            .zip(&old)
            .map(|(n, o)| (n.nll(), o.nll(), n.accuracy()))
            .collect())
    };
    let r = pair(&rewrite)?;
    let p = pair(&case.paraphrases)?;
    let success = |v: &[(f64, f64, f64)]| -> Vec<f64> {
        v.iter()
            .map(|(n, t, _)| f64::from(u8::from(n < t)))
            .collect()
    };
    let margin = |v: &[(f64, f64, f64)]| -> Vec<f64> {
        v.iter().map(|(n, t, _)| (-n).exp() - (-t).exp()).collect()
    };
    let acc = |v: &[(f64, f64, f64)]| -> Vec<f64> { v.iter().map(|x| x.2).collect() };
    // Neighbourhood: the true answer should stay more likely than the new one.
    let nb_new = teacher_force(lm, &case.neighborhood, &case.target_new)?;
    let nb_true = teacher_force(lm, &case.neighborhood, &case.neighborhood_target)?;
    let ns: Vec<f64> = nb_new
        .iter()
        .zip(&nb_true)
        .map(|(n, t)| f64::from(u8::from(t.nll() < n.nll())))
        .collect();
    let nm: Vec<f64> = nb_new
        .iter()
        .zip(&nb_true)
        .map(|(n, t)| (-t.nll()).exp() - (-n.nll()).exp())
        .collect();
    let now: NeighbourhoodArgmax = nb_true.iter().map(|f| f.argmax.clone()).collect();
    let before = before.unwrap_or(&now);
    let locality: Vec<f64> = nb_true
        .iter()
        .zip(before)
        .map(|(f, b)| {
            let same = f.argmax.iter().zip(b).filter(|(x, y)| x == y).count();
            same as f64 / b.len().max(1) as f64
        })
        .collect();
    let scores = CaseScores {
        es: mean(&success(&r)),
        em: mean(&margin(&r)),
        ps: mean(&success(&p)),
        pm: mean(&margin(&p)),
        ns: mean(&ns),
        nm: mean(&nm),
        reliability: mean(&acc(&r)),
        generalization: mean(&acc(&p)),
        locality: mean(&locality),
    };
    Ok((scores, now))
}

/// ROME's score S: the harmonic mean of ES, PS and NS.
pub fn rome_score(es: f64, ps: f64, ns: f64) -> f64 {
    if es <= 0.0 || ps <= 0.0 || ns <= 0.0 {
        0.0
    } else {
        3.0 / (1.0 / es + 1.0 / ps + 1.0 / ns)
    }
}
