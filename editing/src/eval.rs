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
use burn_tensor::{Int, Tensor, TensorData};
use engram_model::{Batch, KvCache, LanguageModel, NoHooks};
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
#[derive(Debug, Clone, Default, PartialEq)]
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

/// Teacher-force `target` after each prompt ([`teacher_force_targets`] with one target).
pub fn teacher_force<B: Backend>(
    lm: &LanguageModel<B>,
    prompts: &[String],
    target: &str,
) -> Result<Vec<Forced>> {
    Ok(teacher_force_targets(lm, prompts, &[target])?
        .pop()
        .unwrap_or_default())
}

/// Teacher-force each of `targets` after each prompt ([`teacher_force_rows`]
/// with the same targets on every prompt). Returns `[target][prompt]`.
pub fn teacher_force_targets<B: Backend>(
    lm: &LanguageModel<B>,
    prompts: &[String],
    targets: &[&str],
) -> Result<Vec<Vec<Forced>>> {
    let rows: Vec<(&str, Vec<&str>)> = prompts
        .iter()
        .map(|p| (p.as_str(), targets.to_vec()))
        .collect();
    let mut by_prompt = teacher_force_rows(lm, &rows)?;
    let mut out: Vec<Vec<Forced>> = vec![Vec::with_capacity(prompts.len()); targets.len()];
    for per in &mut by_prompt {
        for (k, f) in per.drain(..).enumerate() {
            out[k].push(f);
        }
    }
    Ok(out)
}

/// Prompts per forward pass in [`teacher_force_rows`].
const FORCE_CHUNK: usize = 64;

/// Teacher-force each row's targets after its prompt. Rows are sorted by
/// prompt length and run in chunks; in a chunk the prompts run once
/// (left-padded, keys and values cached), each target slot's tokens continue
/// them, and only the positions that predict a target token are unembedded.
/// Equal to [`teacher_force_full`] per prompt and target within float rounding
/// (tested). Returns `[row][target]`.
pub fn teacher_force_rows<B: Backend>(
    lm: &LanguageModel<B>,
    rows: &[(&str, Vec<&str>)],
) -> Result<Vec<Vec<Forced>>> {
    let n_ctx = lm.model.config.n_ctx;
    // Every row's prompt and target ids, checked before any forward pass.
    let mut heads = Vec::with_capacity(rows.len());
    let mut tails: Vec<Vec<Vec<u32>>> = Vec::with_capacity(rows.len());
    for (prompt, targets) in rows {
        let h = lm.encode_prompt(prompt)?;
        let mut per = Vec::with_capacity(targets.len());
        for target in targets {
            let t = lm.target_tokens(prompt, target)?;
            if h.len() + t.len() > n_ctx {
                return Err(EditError::Model(engram_model::ModelError::PromptTooLong {
                    len: h.len() + t.len(),
                    n_ctx,
                }));
            }
            per.push(t);
        }
        heads.push(h);
        tails.push(per);
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| heads[i].len());
    let mut out: Vec<Vec<Forced>> = vec![Vec::new(); rows.len()];
    for chunk in order.chunks(FORCE_CHUNK) {
        let h: Vec<&[u32]> = chunk.iter().map(|&i| heads[i].as_slice()).collect();
        let t: Vec<&[Vec<u32>]> = chunk.iter().map(|&i| tails[i].as_slice()).collect();
        for (&i, forced) in chunk.iter().zip(force_chunk(lm, &h, &t)?) {
            out[i] = forced;
        }
    }
    Ok(out)
}

/// One chunk of [`teacher_force_rows`], on token ids. Returns `[row][target]`.
fn force_chunk<B: Backend>(
    lm: &LanguageModel<B>,
    heads: &[&[u32]],
    tails: &[&[Vec<u32>]],
) -> Result<Vec<Vec<Forced>>> {
    let pad = lm.model.config.eos_token_id.unwrap_or(0);
    let (b, d) = (heads.len(), lm.model.config.d_model);
    let owned: Vec<Vec<u32>> = heads.iter().map(|h| h.to_vec()).collect();
    let head = Batch::left_padded(&owned, pad);
    let s = head.seq_len();
    let mut cache = KvCache::new();
    // [batch, pos, d_model]; every prompt ends in the last column.
    let x = lm
        .model
        .forward_cached_residual(&head, &mut cache, &mut NoHooks)?;
    let mut parts: Vec<Tensor<B, 2>> = vec![x.slice([0..b, s - 1..s, 0..d]).reshape([b, d])];
    // Row of `parts` (concatenated) that predicts token j of target k after prompt r.
    let mut at: Vec<Vec<Vec<usize>>> = tails
        .iter()
        .map(|per| per.iter().map(|_| Vec::new()).collect())
        .collect();
    let mut offset = b;
    let slots = tails.iter().map(|per| per.len()).max().unwrap_or(0);
    for k in 0..slots {
        // The continuation: every token of target k but the last.
        let cont = |r: usize| tails[r].get(k).map_or(&[][..], |t| &t[..t.len() - 1]);
        let len = (0..b).map(|r| cont(r).len()).max().unwrap_or(0);
        for (r, (per, rows)) in tails.iter().zip(at.iter_mut()).enumerate() {
            if let (Some(t), Some(rows)) = (per.get(k), rows.get_mut(k)) {
                rows.push(r);
                rows.extend((0..t.len() - 1).map(|j| offset + r * len + j));
            }
        }
        if len == 0 {
            continue;
        }
        let mut step = Batch {
            ids: Vec::with_capacity(b),
            keep: Vec::with_capacity(b),
            positions: Vec::with_capacity(b),
        };
        for (r, h) in heads.iter().enumerate() {
            let c = cont(r);
            let mut ids = c.to_vec();
            ids.resize(len, pad);
            step.ids.push(ids);
            step.keep.push((0..len).map(|j| j < c.len()).collect());
            step.positions.push((0..len).map(|j| h.len() + j).collect());
        }
        let mut kv = cache.clone();
        // [batch, len, d_model]
        let y = lm
            .model
            .forward_cached_residual(&step, &mut kv, &mut NoHooks)?;
        parts.push(y.reshape([b * len, d]));
        offset += b * len;
    }
    let wanted: Vec<i64> = at.iter().flatten().flatten().map(|&i| i as i64).collect();
    let n = wanted.len();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(wanted, [n]), &lm.model.device);
    // [1, n, d_model] → [1, n, vocab]
    let picked = Tensor::cat(parts, 0).select(0, index).reshape([1, n, d]);
    let logp = log_softmax(lm.model.unembed(picked, &mut NoHooks)?, 2);
    let v = logp.dims()[2];
    let (argmax, flat) = argmax_and_values(logp)?;
    let mut next = 0usize;
    Ok(tails
        .iter()
        .map(|per| {
            per.iter()
                .map(|t| {
                    let here = next;
                    next += t.len();
                    Forced {
                        logp: t
                            .iter()
                            .enumerate()
                            .map(|(j, &tok)| flat[(here + j) * v + tok as usize])
                            .collect(),
                        argmax: (0..t.len()).map(|j| argmax[here + j] as u32).collect(),
                        target: t.clone(),
                    }
                })
                .collect()
        })
        .collect())
}

/// Each position's argmax over the last axis, and every value, on the host.
fn argmax_and_values<B: Backend>(logp: Tensor<B, 3>) -> Result<(Vec<i64>, Vec<f32>)> {
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
    Ok((argmax, flat))
}

/// Teacher-force `target` after each prompt: one batch of prompt + target
/// rows, every position unembedded. The reference for [`teacher_force_targets`].
pub fn teacher_force_full<B: Backend>(
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
    let (argmax, flat) = argmax_and_values(logp)?;
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
    let mut out = score_cases(lm, &[(case, before)])?;
    out.pop()
        .ok_or_else(|| EditError::Invalid("no score for the case".into()))
}

/// [`score_case`] for many cases: every prompt of every case in one
/// [`teacher_force_rows`] call (the rewrite prompt and paraphrases with
/// `target_new` and `target_true`, the neighbourhood prompts with `target_new`
/// and `neighborhood_target`), so that the forward passes run full batches.
pub fn score_cases<B: Backend>(
    lm: &LanguageModel<B>,
    cases: &[(&EvalCase, Option<&[Vec<u32>]>)],
) -> Result<Vec<(CaseScores, NeighbourhoodArgmax)>> {
    let mut rows: Vec<(&str, Vec<&str>)> = Vec::new();
    for (case, _) in cases {
        let asked = std::iter::once(&case.prompt).chain(&case.paraphrases);
        rows.extend(asked.map(|p| {
            (
                p.as_str(),
                vec![case.target_new.as_str(), case.target_true.as_str()],
            )
        }));
        rows.extend(case.neighborhood.iter().map(|p| {
            (
                p.as_str(),
                vec![case.target_new.as_str(), case.neighborhood_target.as_str()],
            )
        }));
    }
    let mut forced = teacher_force_rows(lm, &rows)?.into_iter();
    let mut out = Vec::with_capacity(cases.len());
    for (case, before) in cases {
        // [prompt][new, true]
        let mut take = |n: usize| -> Vec<Vec<Forced>> { forced.by_ref().take(n).collect() };
        let rewrite = take(1);
        let paraphrase = take(case.paraphrases.len());
        let neighbours = take(case.neighborhood.len());
        out.push(case_scores(&rewrite, &paraphrase, &neighbours, *before));
    }
    Ok(out)
}

/// One case's metrics from its teacher-forced prompts, each `[new, true]`.
fn case_scores(
    rewrite: &[Vec<Forced>],
    paraphrase: &[Vec<Forced>],
    neighbours: &[Vec<Forced>],
    before: Option<&[Vec<u32>]>,
) -> (CaseScores, NeighbourhoodArgmax) {
    // (NLL new, NLL true, accuracy of new) per prompt.
    let triple = |v: &[Vec<Forced>]| -> Vec<(f64, f64, f64)> {
        v.iter()
            .map(|f| (f[0].nll(), f[1].nll(), f[0].accuracy()))
            .collect()
    };
    let (r, p) = (triple(rewrite), triple(paraphrase));
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
    let nb = triple(neighbours);
    let ns: Vec<f64> = nb
        .iter()
        .map(|(n, t, _)| f64::from(u8::from(t < n)))
        .collect();
    let nm: Vec<f64> = nb.iter().map(|(n, t, _)| (-t).exp() - (-n).exp()).collect();
    let now: NeighbourhoodArgmax = neighbours.iter().map(|f| f[1].argmax.clone()).collect();
    let before = before.unwrap_or(&now);
    let locality: Vec<f64> = neighbours
        .iter()
        .zip(before)
        .map(|(f, b)| {
            let same = f[1].argmax.iter().zip(b).filter(|(x, y)| x == y).count();
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
    (scores, now)
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
