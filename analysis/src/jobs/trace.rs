//! The causal tracing job (Meng et al. 2022, ROME's protocol) over a fact set
//! or one fact: facts the model gets wrong are skipped as ROME does, the rest
//! traced, and all stored as a `trace` run (one row per fact, kind, token and
//! layer) with averaged indirect effects by ROME's token groups (95% t
//! intervals) and the figures.

use std::path::Path;

use engram_model::Control;

use crate::error::{bail, Result};
use crate::trace::{
    default_window, embedding_std, token_groups, trace_fact, trace_naive, FactTrace, KindScores,
    Noise, TraceConfig, TraceInput, TraceKind, TOKEN_GROUPS,
};
use engram_datasets::facts::UserFact;
use engram_datasets::figures::{effect_lines, trace_heatmaps, CurvePoint, TraceCell};
use engram_datasets::summary::mean_ci;
use engram_datasets::{RunInfo, RunStore};
use engram_model::burn_tensor::backend::Backend;
use engram_model::lm::top_k_from_logits;
use engram_model::{LanguageModel, ModelError};

use super::run_params;
use serde::{Deserialize, Serialize};

/// How the noise scale is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoiseLevel {
    /// ν = `multiple` × the standard deviation of the subjects' token embeddings (ROME: 3).
    Spread {
        multiple: f32,
    },
    Fixed(f32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceOptions {
    pub kinds: Vec<TraceKind>,
    pub samples: usize,
    /// 0: [`default_window`] for the model's depth.
    pub window: usize,
    pub noise: NoiseLevel,
    pub uniform: bool,
    /// numpy's `RandomState` seed of the noise (ROME: 1).
    pub seed: u32,
    /// Stop after this many facts have been traced.
    pub n: usize,
    pub max_rows: usize,
    /// Use the reference path (one restoration per forward pass).
    pub naive: bool,
    /// Trace a fact only when the model's top token, stripped, is the whole
    /// answer (ROME's `calculate_hidden_flow` with `expect`); otherwise when it
    /// is the answer's first token.
    pub whole_answer: bool,
}

impl TraceOptions {
    /// Every setting within its range, before any work.
    pub fn check(&self) -> Result<()> {
        let (name, level) = match self.noise {
            NoiseLevel::Spread { multiple } => ("noise multiple (e.g. 3sigma)", multiple),
            NoiseLevel::Fixed(v) => ("noise", v),
        };
        if !(level.is_finite() && level > 0.0) {
            bail!("{name} {level}: must be a finite number above 0");
        }
        if self.samples == 0 || self.n == 0 || self.max_rows == 0 {
            bail!(
                "samples ({}), facts ({}) and rows ({}) must each be at least 1",
                self.samples,
                self.n,
                self.max_rows
            );
        }
        if self.kinds.is_empty() {
            bail!("no trace kind chosen (residual, mlp, attention)");
        }
        Ok(())
    }
}

impl Default for TraceOptions {
    fn default() -> Self {
        Self {
            kinds: TraceKind::ALL.to_vec(),
            samples: 10,
            window: 0,
            noise: NoiseLevel::Spread { multiple: 3.0 },
            uniform: false,
            seed: 1,
            n: usize::MAX,
            max_rows: 256,
            naive: false,
            whole_answer: false,
        }
    }
}

/// What happened to one fact.
#[derive(Debug, Clone)]
pub enum Outcome {
    Traced(Box<FactTrace>),
    Skipped(String),
}

#[derive(Debug, Clone)]
pub struct FactOutcome {
    pub fact: UserFact,
    /// Token texts of the prompt.
    pub tokens: Vec<String>,
    pub outcome: Outcome,
}

/// ν for `subjects` under `level`.
pub fn noise_scale<B: Backend>(
    lm: &LanguageModel<B>,
    subjects: &[String],
    level: NoiseLevel,
) -> Result<f32> {
    match level {
        NoiseLevel::Fixed(v) if v.is_finite() && v >= 0.0 => Ok(v),
        NoiseLevel::Fixed(v) => bail!("the noise scale must be a finite number >= 0, not {v}"),
        NoiseLevel::Spread { multiple } => {
            // Each subject on its own, with no leading space: ROME's
            // `collect_embedding_std` runs `make_inputs(tokenizer, [subject])`.
            let ids: Vec<Vec<u32>> = subjects
                .iter()
                .map(|s| lm.tokenizer.encode(s.trim()))
                .collect::<std::result::Result<_, _>>()?;
            Ok(multiple * embedding_std(&lm.model, &ids)?)
        }
    }
}

pub fn config(opts: &TraceOptions, scale: f32, n_layers: usize) -> TraceConfig {
    TraceConfig {
        noise: if opts.uniform {
            Noise::Uniform { scale }
        } else {
            Noise::Gaussian { scale }
        },
        samples: opts.samples,
        window: match opts.window {
            0 => default_window(n_layers),
            w => w,
        },
        seed: opts.seed,
        kinds: opts.kinds.clone(),
        max_rows: opts.max_rows,
    }
}

/// A fact as trace input: subject tokens located, target tokenized as `" " + target`.
pub fn prepare<B: Backend>(lm: &LanguageModel<B>, fact: &UserFact) -> Result<TraceInput> {
    let target = lm.target_tokens(&fact.prompt, &fact.target)?[0];
    let (enc, span) = lm.tokenizer.subject_span(&fact.prompt, &fact.subject)?;
    if enc.ids.len() > lm.model.config.n_ctx {
        return Err(ModelError::PromptTooLong {
            len: enc.ids.len(),
            n_ctx: lm.model.config.n_ctx,
        }
        .into());
    }
    Ok(TraceInput {
        ids: enc.ids,
        subject: span,
        target,
    })
}

/// Trace `facts` in order until `opts.n` are traced. Facts the model does not
/// get right (top-1 ≠ the target's first token; with `whole_answer`, top-1's
/// text ≠ the target, ROME's test) are skipped, as ROME does.
/// Progress: `traced` of the facts wanted, then each fact's `restorations`.
pub fn trace_facts<B: Backend>(
    lm: &LanguageModel<B>,
    facts: &[UserFact],
    opts: &TraceOptions,
    scale: f32,
    ctl: &Control,
) -> Result<Vec<FactOutcome>> {
    let cfg = config(opts, scale, lm.model.config.n_layers);
    let want = opts.n.min(facts.len()) as u64;
    let mut out = Vec::new();
    let mut traced = 0;
    for fact in facts {
        if traced >= opts.n {
            break;
        }
        if !ctl.tick("traced", traced as u64, want) {
            return Err(engram_model::Cancelled.into());
        }
        let tokens = lm
            .tokenizer
            .encode(&fact.prompt)
            .map(|ids| ids.iter().map(|&t| lm.tokenizer.token_text(t)).collect())
            .unwrap_or_default();
        let outcome = match trace_one(lm, fact, &cfg, opts, ctl) {
            Ok(o) => o,
            Err(e) if engram_model::is_cancelled(&e) => return Err(e),
            Err(e) => Outcome::Skipped(e.to_string()),
        };
        if matches!(outcome, Outcome::Traced(_)) {
            traced += 1;
        }
        out.push(FactOutcome {
            fact: fact.clone(),
            tokens,
            outcome,
        });
    }
    Ok(out)
}

fn trace_one<B: Backend>(
    lm: &LanguageModel<B>,
    fact: &UserFact,
    cfg: &TraceConfig,
    opts: &TraceOptions,
    ctl: &Control,
) -> Result<Outcome> {
    let input = prepare(lm, fact)?;
    // One clean pass decides whether the fact is worth a trace (ROME's filter).
    let predicted = top_k_from_logits(&lm.next_logits(&fact.prompt)?, 1, |_| String::new())
        .first()
        .map_or(0, |t| t.id);
    if predicted != input.target {
        return Ok(Outcome::Skipped(format!(
            "the model predicts {:?}, not {:?}",
            lm.tokenizer.token_text(predicted),
            lm.tokenizer.token_text(input.target)
        )));
    }
    let top = lm.tokenizer.token_text(predicted);
    if opts.whole_answer && top.trim() != fact.target.trim() {
        return Ok(Outcome::Skipped(format!(
            "the model's top token {top:?} is not the whole answer {:?} (whole-answer test, as ROME)",
            fact.target
        )));
    }
    let run = if opts.naive { trace_naive } else { trace_fact };
    Ok(Outcome::Traced(Box::new(run(
        &lm.model,
        &input,
        cfg,
        &mut |done, total| ctl.tick("restorations", done as u64, total as u64),
    )?)))
}

/// One row of the `trace` table (readable as a [`TraceCell`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceRow {
    pub fact: String,
    pub fact_index: i64,
    pub kind: String,
    pub token_index: i64,
    pub token: String,
    pub is_subject: bool,
    pub layer: i64,
    /// Mean probability of the target with this state restored.
    pub score: f64,
    pub clean_prob: f64,
    pub corrupted_prob: f64,
    pub indirect_effect: f64,
}

/// One row of the `facts` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FactRow {
    pub fact_index: i64,
    pub subject: String,
    pub prompt: String,
    pub target: String,
    pub traced: bool,
    pub skipped_because: String,
    pub clean_prob: f64,
    pub corrupted_prob: f64,
}

/// Averaged indirect effect of one kind at one token group and layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupEffect {
    pub kind: String,
    pub group: String,
    pub layer: i64,
    pub n: i64,
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Mean restored probability (ROME's notebooks plot this).
    pub mean_score: f64,
}

pub fn trace_rows(outcomes: &[FactOutcome]) -> Vec<TraceRow> {
    let mut rows = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        let Outcome::Traced(t) = &o.outcome else {
            continue;
        };
        for k in &t.kinds {
            for (tok, layers) in k.scores.iter().enumerate() {
                for (layer, &score) in layers.iter().enumerate() {
                    rows.push(TraceRow {
                        fact: o.fact.prompt.clone(),
                        fact_index: i as i64,
                        kind: k.kind.name().into(),
                        token_index: tok as i64,
                        token: o.tokens.get(tok).cloned().unwrap_or_default(),
                        is_subject: t.input.subject.contains(&tok),
                        layer: layer as i64,
                        score: score as f64,
                        clean_prob: t.clean_prob as f64,
                        corrupted_prob: t.corrupted_prob as f64,
                        indirect_effect: (score - t.corrupted_prob) as f64,
                    });
                }
            }
        }
    }
    rows
}

pub fn fact_rows(outcomes: &[FactOutcome]) -> Vec<FactRow> {
    outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let (traced, why, clean, corrupted) = match &o.outcome {
                Outcome::Traced(t) => (true, String::new(), t.clean_prob, t.corrupted_prob),
                Outcome::Skipped(why) => (false, why.clone(), f32::NAN, f32::NAN),
            };
            FactRow {
                fact_index: i as i64,
                subject: o.fact.subject.clone(),
                prompt: o.fact.prompt.clone(),
                target: o.fact.target.clone(),
                traced,
                skipped_because: why,
                clean_prob: clean as f64,
                corrupted_prob: corrupted as f64,
            }
        })
        .collect()
}

/// Per token group, per layer: each fact's (indirect effect, restored probability).
type GroupSamples = Vec<Vec<(Vec<f64>, Vec<f64>)>>;

/// Average indirect effects by kind, ROME token group and layer.
pub fn group_effects(outcomes: &[FactOutcome]) -> Vec<GroupEffect> {
    // [kind][group][layer] -> (effects, scores)
    let mut acc: Vec<(TraceKind, GroupSamples)> = Vec::new();
    for o in outcomes {
        let Outcome::Traced(t) = &o.outcome else {
            continue;
        };
        let len = t.input.ids.len();
        for k in &t.kinds {
            let n_layers = k.scores.first().map_or(0, Vec::len);
            let slot = match acc.iter().position(|(kind, _)| *kind == k.kind) {
                Some(s) => s,
                None => {
                    acc.push((
                        k.kind,
                        vec![vec![(Vec::new(), Vec::new()); n_layers]; TOKEN_GROUPS.len()],
                    ));
                    acc.len() - 1
                }
            };
            // Within a fact, a group's tokens are averaged first (ROME's middle/further groups).
            let mut per_fact = vec![vec![(0f64, 0f64, 0usize); n_layers]; TOKEN_GROUPS.len()];
            for (tok, layers) in k.scores.iter().enumerate() {
                for g in token_groups(tok, &t.input.subject, len) {
                    for (layer, &s) in layers.iter().enumerate() {
                        let cell = &mut per_fact[g][layer];
                        cell.0 += (s - t.corrupted_prob) as f64;
                        cell.1 += s as f64;
                        cell.2 += 1;
                    }
                }
            }
            for (g, layers) in per_fact.into_iter().enumerate() {
                for (layer, (ie, score, n)) in layers.into_iter().enumerate() {
                    if n > 0 && layer < acc[slot].1[g].len() {
                        acc[slot].1[g][layer].0.push(ie / n as f64);
                        acc[slot].1[g][layer].1.push(score / n as f64);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for (kind, groups) in acc {
        for (g, layers) in groups.into_iter().enumerate() {
            for (layer, (ie, scores)) in layers.into_iter().enumerate() {
                if ie.is_empty() {
                    continue;
                }
                let s = mean_ci("indirect_effect", &ie);
                out.push(GroupEffect {
                    kind: kind.name().into(),
                    group: TOKEN_GROUPS[g].into(),
                    layer: layer as i64,
                    n: ie.len() as i64,
                    mean: s.mean,
                    ci_low: s.ci_low,
                    ci_high: s.ci_high,
                    mean_score: scores.iter().sum::<f64>() / scores.len() as f64,
                });
            }
        }
    }
    out
}

/// The curves of ROME's figure: each kind's average indirect effect at the last subject token.
pub fn last_subject_curves(effects: &[GroupEffect]) -> Vec<CurvePoint> {
    effects
        .iter()
        .filter(|e| e.group == TOKEN_GROUPS[2])
        .map(|e| CurvePoint {
            series: e.kind.clone(),
            layer: e.layer,
            mean: e.mean,
            ci_low: e.ci_low,
            ci_high: e.ci_high,
        })
        .collect()
}

/// The averaged heatmaps: one row per token group.
pub fn average_cells(effects: &[GroupEffect], n_facts: usize) -> Vec<TraceCell> {
    effects
        .iter()
        .map(|e| {
            let g = TOKEN_GROUPS.iter().position(|x| *x == e.group).unwrap_or(0);
            TraceCell {
                fact: format!("average over {n_facts} facts"),
                kind: e.kind.clone(),
                token_index: g as i64,
                token: e.group.clone(),
                is_subject: g <= 2,
                layer: e.layer,
                score: e.mean,
            }
        })
        .collect()
}

/// Where a traced fact's MLP effect at the last subject token is largest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Peak {
    pub layer: usize,
    pub effect: f64,
}

/// The layer where `kind`'s average indirect effect at the last subject token peaks.
pub fn peak(effects: &[GroupEffect], kind: TraceKind) -> Option<Peak> {
    effects
        .iter()
        .filter(|e| e.kind == kind.name() && e.group == TOKEN_GROUPS[2])
        .max_by(|a, b| a.mean.total_cmp(&b.mean))
        .map(|e| Peak {
            layer: e.layer as usize,
            effect: e.mean,
        })
}

/// Everything a trace run stores.
#[derive(Debug, Clone)]
pub struct TraceRun {
    pub info: RunInfo,
    pub traced: usize,
    pub skipped: usize,
    pub effects: Vec<GroupEffect>,
    pub figures: Vec<std::path::PathBuf>,
    /// Each fact's outcome, in the order read.
    pub outcomes: Vec<FactOutcome>,
    /// ν, the noise scale used.
    pub noise_scale: f32,
}

/// Store the outcomes as a run and draw its figures into the run directory.
pub fn store_run<B: Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    store: &RunStore,
    source: TraceSource<'_>,
    opts: &TraceOptions,
    scale: f32,
    outcomes: &[FactOutcome],
) -> Result<TraceRun> {
    let n_layers = outcomes.iter().find_map(|o| match &o.outcome {
        Outcome::Traced(t) => t.kinds.first().and_then(|k| k.scores.first()).map(Vec::len),
        _ => None,
    });
    let window = match (opts.window, n_layers) {
        (0, Some(n)) => default_window(n),
        (w, _) => w,
    };
    let mut params = run_params(
        lm,
        model,
        serde_json::json!({
            "noise_scale": scale,
            "noise": if opts.uniform { "uniform" } else { "gaussian" },
            "generator": "numpy RandomState (MT19937), as ROME",
            "noise_level": match opts.noise {
                NoiseLevel::Spread { multiple } => format!("{multiple} x embedding std"),
                NoiseLevel::Fixed(v) => format!("fixed {v}"),
            },
            "samples": opts.samples,
            "window": window,
            "kinds": opts.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "path": if opts.naive { "naive" } else { "batched, prefix reuse" },
            "answer_test": if opts.whole_answer { "whole answer" } else { "first token" },
            "shard": source.shard,
        }),
    )?;
    params.dataset = source.dataset.map(|d| d.display().to_string());
    params.seed = Some(opts.seed.into());
    write_trace_run(store, params, scale, outcomes)
}

/// How many of `outcomes` were traced (the rest were skipped).
fn traced_count(outcomes: &[FactOutcome]) -> usize {
    outcomes
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Traced(_)))
        .count()
}

/// Store `outcomes` as a `trace` run under `params` (their record ids and
/// counts set here): the tables, the averaged effects and the figures.
fn write_trace_run(
    store: &RunStore,
    mut params: engram_datasets::RunParams,
    scale: f32,
    outcomes: &[FactOutcome],
) -> Result<TraceRun> {
    let traced = traced_count(outcomes);
    let skipped = outcomes.len() - traced;
    if let Some(m) = params.hyperparameters.as_object_mut() {
        m.insert("facts_traced".into(), traced.into());
        m.insert("facts_skipped".into(), skipped.into());
    }
    params.record_ids = outcomes.iter().map(|o| o.fact.prompt.clone()).collect();
    let run = store.create("trace", params)?;
    let rows = trace_rows(outcomes);
    run.write_rows("trace", &rows)?;
    run.write_rows("facts", &fact_rows(outcomes))?;
    let effects = group_effects(outcomes);
    let mut figures = Vec::new();
    if !effects.is_empty() {
        let curves = last_subject_curves(&effects);
        run.write_rows("effects", &curves)?;
        run.write_rows("effects_by_group", &effects)?;
        let cells = average_cells(&effects, traced);
        run.write_rows("average", &cells)?;
        for ext in ["svg", "png"] {
            let p = run.dir().join(format!("effects.{ext}"));
            effect_lines(&curves, "average indirect effect, last subject token", &p)?;
            figures.push(p);
            let p = run.dir().join(format!("average.{ext}"));
            trace_heatmaps(&cells, &p)?;
            figures.push(p);
        }
        if let Some(first) = outcomes
            .iter()
            .find(|o| matches!(o.outcome, Outcome::Traced(_)))
        {
            let cells: Vec<TraceCell> = rows
                .iter()
                .filter(|r| r.fact == first.fact.prompt)
                .map(|r| TraceCell {
                    fact: r.fact.clone(),
                    kind: r.kind.clone(),
                    token_index: r.token_index,
                    token: r.token.clone(),
                    is_subject: r.is_subject,
                    layer: r.layer,
                    score: r.score,
                })
                .collect();
            for ext in ["svg", "png"] {
                let p = run.dir().join(format!("first-fact.{ext}"));
                trace_heatmaps(&cells, &p)?;
                figures.push(p);
            }
        }
    }
    let info = run.finish()?;
    Ok(TraceRun {
        info,
        traced,
        skipped,
        effects,
        figures,
        outcomes: outcomes.to_vec(),
        noise_scale: scale,
    })
}

/// A stored trace run's facts as outcomes again, in the order they were read
/// (token ids are not stored: each traced fact's `ids` are placeholders of
/// the prompt's length).
pub fn read_outcomes(store: &RunStore, run: &RunInfo) -> Result<Vec<FactOutcome>> {
    use engram_datasets::table::from_frame;
    let facts: Vec<FactRow> = from_frame(&store.read_table(run, "facts")?)?;
    let rows: Vec<TraceRow> = from_frame(&store.read_table(run, "trace")?)?;
    let mut out = Vec::with_capacity(facts.len());
    for f in facts {
        let fact = UserFact {
            subject: f.subject.clone(),
            prompt: f.prompt.clone(),
            target: f.target.clone(),
            relation: None,
        };
        if !f.traced {
            out.push(FactOutcome {
                fact,
                tokens: Vec::new(),
                outcome: Outcome::Skipped(f.skipped_because),
            });
            continue;
        }
        let mine: Vec<&TraceRow> = rows
            .iter()
            .filter(|r| r.fact_index == f.fact_index)
            .collect();
        let n_tokens = mine
            .iter()
            .map(|r| r.token_index as usize + 1)
            .max()
            .unwrap_or(0);
        let n_layers = mine.iter().map(|r| r.layer as usize + 1).max().unwrap_or(0);
        let mut tokens = vec![String::new(); n_tokens];
        let mut kinds: Vec<KindScores> = Vec::new();
        let mut subject: Option<std::ops::Range<usize>> = None;
        for r in &mine {
            let kind = TraceKind::from_name(&r.kind).ok_or_else(|| {
                crate::AnalysisError::Invalid(format!(
                    "run {}: unknown trace kind {:?}",
                    run.id, r.kind
                ))
            })?;
            let k = match kinds.iter().position(|k| k.kind == kind) {
                Some(k) => k,
                None => {
                    kinds.push(KindScores {
                        kind,
                        scores: vec![vec![0.0; n_layers]; n_tokens],
                    });
                    kinds.len() - 1
                }
            };
            let (t, l) = (r.token_index as usize, r.layer as usize);
            kinds[k].scores[t][l] = r.score as f32;
            tokens[t] = r.token.clone();
            if r.is_subject {
                subject = Some(match subject {
                    Some(s) => s.start.min(t)..s.end.max(t + 1),
                    None => t..t + 1,
                });
            }
        }
        out.push(FactOutcome {
            fact,
            tokens,
            outcome: Outcome::Traced(Box::new(FactTrace {
                input: TraceInput {
                    ids: vec![0; n_tokens],
                    subject: subject.unwrap_or(0..0),
                    target: 0,
                },
                predicted: 0,
                clean_prob: f.clean_prob as f32,
                corrupted_prob: f.corrupted_prob as f32,
                kinds,
            })),
        });
    }
    Ok(out)
}

/// Join the runs of a trace study's shards (`trace --facts … --shard K/N`)
/// into one run: the facts back in the study's order, and the averaged
/// effects, figures and counts computed again over all of them.
pub fn merge_trace_shards(store: &RunStore, ids: &[String]) -> Result<TraceRun> {
    let shards = engram_datasets::merge::check_shards(store, ids)?;
    let first = &shards[0].1;
    if first.kind != "trace" {
        bail!("run {} is a {} run, not a trace", first.id, first.kind);
    }
    let per_shard = shards
        .iter()
        .map(|(_, r)| read_outcomes(store, r))
        .collect::<Result<Vec<_>>>()?;
    let longest = per_shard.iter().map(Vec::len).max().unwrap_or(0);
    let outcomes: Vec<FactOutcome> = (0..longest)
        .flat_map(|i| per_shard.iter().filter_map(move |o| o.get(i).cloned()))
        .collect();
    let mut params = first.params.clone();
    if let Some(m) = params.hyperparameters.as_object_mut() {
        m.remove("shard");
        m.insert("merged_from".into(), serde_json::Value::from(ids.to_vec()));
    }
    let scale = params
        .hyperparameters
        .get("noise_scale")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(f64::NAN) as f32;
    write_trace_run(store, params, scale, &outcomes)
}

/// What a trace is asked: the facts, how to trace them, and where they came from.
#[derive(Debug, Clone)]
pub struct TraceRequest {
    pub facts: Vec<UserFact>,
    pub options: TraceOptions,
    /// Subjects whose embeddings set ν under [`NoiseLevel::Spread`]; empty: the facts' own.
    pub noise_subjects: Vec<String>,
    /// The fact file, stored with the run.
    pub dataset: Option<std::path::PathBuf>,
    /// `K/N` where this run is one shard of a study.
    pub shard: Option<String>,
}

impl TraceRequest {
    /// One fact, traced with `options`.
    pub fn one(fact: UserFact, options: TraceOptions) -> Self {
        Self {
            facts: vec![fact],
            options,
            noise_subjects: Vec::new(),
            dataset: None,
            shard: None,
        }
    }
}

/// Trace the request's facts and store them as a `trace` run. One fact given
/// alone is checked first, so that what is wrong with it is said, not skipped;
/// a request none of whose facts the model gets right is an error naming why.
pub fn run_trace<B: Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    req: &TraceRequest,
    store: &RunStore,
    ctl: &Control,
) -> Result<TraceRun> {
    req.options.check()?;
    if req.facts.is_empty() {
        bail!("the fact set is empty");
    }
    if req.facts.len() == 1 {
        prepare(lm, &req.facts[0])?;
    }
    let subjects: Vec<String> = if req.noise_subjects.is_empty() {
        req.facts.iter().map(|f| f.subject.clone()).collect()
    } else {
        req.noise_subjects.clone()
    };
    let scale = noise_scale(lm, &subjects, req.options.noise)?;
    let outcomes = trace_facts(lm, &req.facts, &req.options, scale, ctl)?;
    if traced_count(&outcomes) == 0 {
        let reasons: Vec<String> = outcomes
            .iter()
            .take(5)
            .filter_map(|o| match &o.outcome {
                Outcome::Skipped(why) => Some(format!("  {:?}: {why}", o.fact.prompt)),
                Outcome::Traced(_) => None,
            })
            .collect();
        bail!(
            "no fact of {} could be traced: the model gets none of them right (top-1), so there is no answer to restore. First reasons:\n{}",
            outcomes.len(),
            reasons.join("\n")
        );
    }
    store_run(
        lm,
        model,
        store,
        TraceSource {
            dataset: req.dataset.as_deref(),
            shard: req.shard.as_deref(),
        },
        &req.options,
        scale,
        &outcomes,
    )
}

/// Where a trace's facts came from: the fact file, and the shard of a study.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceSource<'a> {
    pub dataset: Option<&'a Path>,
    pub shard: Option<&'a str>,
}
