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
//! - **zsRE, as ROME/MEMIT's code computes it** (`compute_rewrite_quality_zsre`):
//!   efficacy and paraphrase are the share of the new answer's tokens that are
//!   the argmax under teacher forcing on the question and its rephrasing;
//!   specificity the same for the unrelated NQ question's answer (`loc?` then
//!   `loc_ans`), after the edit. ROME edits towards `answers[0]`; EasyEdit
//!   towards `alt`, reporting reliability/generalization/locality.
//! - **Generation entropy** (ROME's fluency): the weighted mean of the bigram
//!   and trigram entropies (bits; weights 2/3 and 4/3) of text generated with
//!   top-5 sampling, averaged over prompts. Words are split on letters/digits
//!   versus punctuation, close to NLTK's `word_tokenize`.

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
    /// CounterFact's generation prompts (ROME's form only).
    #[serde(default)]
    pub generation_prompts: Vec<String>,
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

/// One zsRE case (MEND's question-answering form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZsreCase {
    pub case_id: u64,
    pub subject: String,
    /// The question, containing the subject.
    pub prompt: String,
    /// The answer the edit teaches (ROME: `answers[0]`; EasyEdit: `alt`).
    pub target: String,
    pub paraphrase: String,
    /// The unrelated question with ROME's "?" appended.
    pub loc_prompt: String,
    pub loc_answer: String,
}

/// A zsRE case's token accuracies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ZsreScores {
    /// On the question (EasyEdit: reliability).
    pub efficacy: f64,
    /// On the rephrased question (EasyEdit: generalization).
    pub paraphrase: f64,
    /// `loc_ans`'s tokens that are the argmax on `loc?` (ROME's specificity).
    pub specificity: f64,
    /// `loc_ans`'s positions whose argmax the edit left unchanged (EasyEdit's locality).
    pub locality: f64,
}

/// Score a zsRE case. `before` is the locality argmax this returned on the
/// unedited model (`None` when scoring that model: locality is then 1).
pub fn score_zsre<B: Backend>(
    lm: &LanguageModel<B>,
    case: &ZsreCase,
    before: Option<&[Vec<u32>]>,
) -> Result<(ZsreScores, NeighbourhoodArgmax)> {
    let acc = |prompt: &str, target: &str| -> Result<Forced> {
        teacher_force(lm, &[prompt.to_string()], target)?
            .pop()
            .ok_or_else(|| EditError::Invalid("no prompt scored".into()))
    };
    let loc = acc(&case.loc_prompt, &case.loc_answer)?;
    let now = vec![loc.argmax.clone()];
    let b = before.and_then(|b| b.first()).unwrap_or(&loc.argmax);
    let same = loc.argmax.iter().zip(b).filter(|(x, y)| x == y).count();
    Ok((
        ZsreScores {
            efficacy: acc(&case.prompt, &case.target)?.accuracy(),
            paraphrase: acc(&case.paraphrase, &case.target)?.accuracy(),
            specificity: loc.accuracy(),
            locality: same as f64 / b.len().max(1) as f64,
        },
        now,
    ))
}

/// Words and punctuation marks of `text`, lower-cased as NLTK leaves them (not).
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        let word = c.is_alphanumeric() || c == '\'';
        match (word, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(&text[s..i]);
                start = None;
            }
            _ => {}
        }
        if !word && !c.is_whitespace() {
            out.push(&text[i..i + c.len_utf8()]);
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// ROME's `compute_n_gram_entropy`: mean of 2/3·H₂ and 4/3·H₃ (bits).
pub fn ngram_entropy(text: &str) -> f64 {
    let w = words(text);
    let h = |n: usize| -> f64 {
        let mut counts: std::collections::HashMap<&[&str], usize> = Default::default();
        for g in w.windows(n) {
            *counts.entry(g).or_default() += 1;
        }
        let total = counts.values().sum::<usize>() as f64;
        counts
            .values()
            .map(|&c| {
                let p = c as f64 / total;
                -p * p.log2()
            })
            .sum()
    };
    (2.0 / 3.0 * h(2) + 4.0 / 3.0 * h(3)) / 2.0
}

/// Generate `max_new_tokens` (at most what the context leaves) after each
/// prompt with top-5 sampling (ROME's `generate_fast`) and return the mean
/// n-gram entropy and the texts.
pub fn generation_entropy<B: Backend>(
    lm: &LanguageModel<B>,
    prompts: &[String],
    max_new_tokens: usize,
    seed: u64,
) -> Result<(f64, Vec<String>)> {
    use engram_model::{generate, GenerateConfig, Sampling};
    if prompts.is_empty() {
        return Ok((f64::NAN, Vec::new()));
    }
    let ids = prompts
        .iter()
        .map(|p| lm.encode_prompt(p))
        .collect::<engram_model::Result<Vec<_>>>()?;
    // Models with a short context (the demo's 32) generate what fits.
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    let max_new_tokens = max_new_tokens.min(lm.model.config.n_ctx.saturating_sub(longest));
    if max_new_tokens == 0 {
        return Ok((f64::NAN, Vec::new()));
    }
    let cfg = GenerateConfig {
        max_new_tokens,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: Some(5),
            top_p: None,
            seed,
        },
        stop_at_eos: true,
        kv_cache: true,
    };
    let out = generate(&lm.model, &ids, &cfg)?;
    let texts = prompts
        .iter()
        .zip(&out)
        .map(|(p, new)| Ok(format!("{p}{}", lm.tokenizer.decode(new)?)))
        .collect::<engram_model::Result<Vec<_>>>()?;
    let h = texts.iter().map(|t| ngram_entropy(t)).sum::<f64>() / texts.len() as f64;
    Ok((h, texts))
}
