//! `engram eval`: edit each benchmark case (on fresh weights, or cumulatively
//! with `--sequential`), score it before and after under its convention's
//! metric names (`editing::eval`), and collect a row per case.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engram_editing::eval::{
    generation_entropy, score_case, score_zsre, EvalCase, NeighbourhoodArgmax, ZsreCase,
};
use engram_editing::rome::compute_u::KeyCovariance;
use engram_editing::rome::{rome_edit, EditRequest, RomeHparams};
use engram_editing::{EditError, Ledger};
use engram_model::burn_tensor::backend::Backend;
use engram_model::LanguageModel;
use serde_json::{Map, Value};

/// Which target a zsRE edit teaches, and so which names its metrics carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZsreConvention {
    /// ROME/MEMIT's code: `answers[0]`; zsre_efficacy/_paraphrase/_specificity.
    Rome,
    /// EasyEdit: `alt`; easyedit_reliability/_generalization/_locality.
    EasyEdit,
}

/// One case of either benchmark.
#[derive(Debug, Clone)]
pub enum BenchCase {
    CounterFact(EvalCase),
    Zsre(ZsreCase, ZsreConvention),
}

impl BenchCase {
    pub fn id(&self) -> u64 {
        match self {
            Self::CounterFact(c) => c.case_id,
            Self::Zsre(c, _) => c.case_id,
        }
    }

    pub fn request(&self) -> EditRequest {
        let (prompt, subject, target) = match self {
            Self::CounterFact(c) => (&c.prompt, &c.subject, &c.target_new),
            Self::Zsre(c, _) => (&c.prompt, &c.subject, &c.target),
        };
        EditRequest {
            prompt: prompt.clone(),
            subject: subject.clone(),
            target: target.clone(),
        }
    }

    fn target_true(&self) -> &str {
        match self {
            Self::CounterFact(c) => &c.target_true,
            Self::Zsre(..) => "",
        }
    }

    /// Prompts for the fluency measure: CounterFact's generation prompts where
    /// the data has them, else the rewrite prompt and its paraphrases.
    pub fn generation_prompts(&self) -> Vec<String> {
        match self {
            Self::CounterFact(c) if !c.generation_prompts.is_empty() => {
                c.generation_prompts.clone()
            }
            Self::CounterFact(c) => std::iter::once(&c.prompt)
                .chain(&c.paraphrases)
                .cloned()
                .collect(),
            Self::Zsre(c, _) => vec![c.prompt.clone(), c.paraphrase.clone()],
        }
    }

    /// The case's metrics under their convention's names, and the argmax that
    /// the locality measures compare against.
    pub fn score<B: Backend>(
        &self,
        lm: &LanguageModel<B>,
        before: Option<&[Vec<u32>]>,
    ) -> Result<(Vec<(&'static str, f64)>, NeighbourhoodArgmax)> {
        Ok(match self {
            Self::CounterFact(c) => {
                let (s, nb) = score_case(lm, c, before)?;
                (
                    vec![
                        ("ES", s.es),
                        ("PS", s.ps),
                        ("NS", s.ns),
                        ("EM", s.em),
                        ("PM", s.pm),
                        ("NM", s.nm),
                        ("easyedit_reliability", s.reliability),
                        ("easyedit_generalization", s.generalization),
                        ("easyedit_locality", s.locality),
                    ],
                    nb,
                )
            }
            Self::Zsre(c, conv) => {
                let (s, nb) = score_zsre(lm, c, before)?;
                let m = match conv {
                    ZsreConvention::Rome => vec![
                        ("zsre_efficacy", s.efficacy),
                        ("zsre_paraphrase", s.paraphrase),
                        ("zsre_specificity", s.specificity),
                    ],
                    ZsreConvention::EasyEdit => vec![
                        ("easyedit_reliability", s.efficacy),
                        ("easyedit_generalization", s.paraphrase),
                        ("easyedit_locality", s.locality),
                    ],
                };
                (m, nb)
            }
        })
    }
}

/// zsRE records (MEND's form) as cases; records without the convention's
/// target are left out.
pub fn zsre_cases(path: &Path, conv: ZsreConvention) -> Result<Vec<BenchCase>> {
    let loaded = engram_datasets::facts::load_zsre(path, engram_datasets::OnBadRecord::Skip)?;
    for e in &loaded.skipped {
        eprintln!("skipped record: {e}");
    }
    Ok(loaded
        .records
        .into_iter()
        .filter_map(|r| {
            let target = match conv {
                ZsreConvention::Rome => r.answers.first().cloned().unwrap_or_default(),
                ZsreConvention::EasyEdit => r.alt.clone(),
            };
            (!target.trim().is_empty()).then(|| {
                BenchCase::Zsre(
                    ZsreCase {
                        case_id: r.case_id,
                        subject: r.subject,
                        prompt: r.src,
                        target,
                        paraphrase: r.rephrase,
                        loc_prompt: format!("{}?", r.loc),
                        loc_answer: r.loc_ans,
                    },
                    conv,
                )
            })
        })
        .collect())
}

pub struct EvalOptions {
    pub n: usize,
    pub sequential: bool,
    /// Measure generation entropy (tokens generated per prompt; 0 = off).
    pub fluency_tokens: usize,
    /// A JSON-lines file that receives each case as it finishes; cases already
    /// in it are taken as done, so an interrupted run resumes. Not with
    /// `sequential` (the edits before the break would be missing).
    pub journal: Option<PathBuf>,
}

/// One evaluated case: identity, metrics, `pre_` metrics, timing.
pub type Row = Map<String, Value>;
/// A case the edit refused, and why.
type Skip = (u64, String);

/// Rows and skip notes already in a journal.
fn read_journal(path: &Path) -> Result<(Vec<Row>, Vec<Skip>)> {
    let (mut rows, mut skipped) = (Vec::new(), Vec::new());
    if !path.exists() {
        return Ok((rows, skipped));
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Map<String, Value> = match serde_json::from_str(line) {
            Ok(v) => v,
            // A line cut short by an interruption is the last one; drop it.
            Err(_) if i + 1 == text.lines().count() => break,
            Err(e) => bail!("{} line {}: {e}", path.display(), i + 1),
        };
        let id = v.get("case_id").and_then(Value::as_u64);
        match (id, v.get("skipped").and_then(Value::as_str)) {
            (Some(id), Some(why)) => skipped.push((id, why.to_string())),
            (Some(_), None) => rows.push(v),
            _ => bail!("{} line {}: no case_id", path.display(), i + 1),
        }
    }
    Ok((rows, skipped))
}

fn append(path: &Path, v: &Value) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{v}").with_context(|| format!("writing {}", path.display()))?;
    f.sync_data()
        .with_context(|| format!("writing {}", path.display()))
}

pub struct EvalOutcome {
    /// One object per evaluated case: identity, metrics, `pre_` metrics, timing.
    pub rows: Vec<Map<String, Value>>,
    /// Metric columns, in order (post-edit names, then `pre_` names).
    pub metrics: Vec<String>,
    pub skipped: Vec<String>,
    pub seconds: f64,
}

/// Evaluate up to `opts.n` usable cases; cases the edit refuses (target already
/// the answer, subject not found, too long) are skipped and listed.
/// `progress(done, skipped, seconds)` is called before each case.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    lm: &mut LanguageModel<B>,
    ledger: &mut Ledger<B>,
    cases: &[BenchCase],
    hp: &RomeHparams,
    cov: &KeyCovariance,
    templates: &[String],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<EvalOutcome> {
    let start = Instant::now();
    let (mut rows, done_skips) = match &opts.journal {
        Some(_) if opts.sequential => bail!("--journal cannot resume a sequential run"),
        Some(p) => read_journal(p)?,
        None => (Vec::new(), Vec::new()),
    };
    let mut skipped: Vec<String> = done_skips
        .iter()
        .map(|(id, why)| format!("case {id}: {why}"))
        .collect();
    let done: std::collections::HashSet<u64> = rows
        .iter()
        .filter_map(|r| r.get("case_id").and_then(Value::as_u64))
        .chain(done_skips.iter().map(|(id, _)| *id))
        .collect();
    rows.truncate(opts.n);
    let mut metrics: Vec<String> = Vec::new();
    if let Some(first) = rows.first() {
        metrics = first
            .iter()
            .filter(|(k, v)| {
                v.is_number()
                    && !matches!(
                        k.as_str(),
                        "case_id" | "edits_applied" | "edit_seconds" | "v_steps"
                    )
            })
            .map(|(k, _)| k.clone())
            .collect();
    }
    for case in cases {
        if rows.len() >= opts.n {
            break;
        }
        if done.contains(&case.id()) {
            continue;
        }
        progress(rows.len(), skipped.len(), start.elapsed().as_secs_f64());
        let request = case.request();
        let (pre, pre_nb) = case.score(lm, None)?;
        let edit = match rome_edit(lm, &request, hp, cov, templates, &mut |_, _| true) {
            Ok(e) => e,
            Err(e @ (EditError::TargetIsCurrent { .. } | EditError::Model(_))) => {
                skipped.push(format!("case {}: {e}", case.id()));
                if let Some(p) = &opts.journal {
                    append(
                        p,
                        &serde_json::json!({"case_id": case.id(), "skipped": e.to_string()}),
                    )?;
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (seconds, v_steps) = (edit.seconds, edit.steps.len());
        let id = ledger.push(&mut lm.model, edit)?;
        let (post, _) = case.score(lm, Some(&pre_nb))?;
        let fluency = if opts.fluency_tokens > 0 {
            Some(
                generation_entropy(
                    lm,
                    &case.generation_prompts(),
                    opts.fluency_tokens,
                    case.id(),
                )?
                .0,
            )
        } else {
            None
        };
        if !opts.sequential {
            ledger.set_applied(&mut lm.model, id, false)?;
        }
        let mut row = Map::new();
        row.insert("case_id".into(), case.id().into());
        row.insert("subject".into(), request.subject.into());
        row.insert("prompt".into(), request.prompt.into());
        row.insert("target_new".into(), request.target.into());
        row.insert("target_true".into(), case.target_true().into());
        let applied = if opts.sequential { rows.len() + 1 } else { 1 };
        row.insert("edits_applied".into(), applied.into());
        for (name, v) in &post {
            row.insert((*name).into(), (*v).into());
        }
        if let Some(h) = fluency {
            row.insert("generation_entropy".into(), h.into());
        }
        for (name, v) in &pre {
            row.insert(format!("pre_{name}"), (*v).into());
        }
        row.insert("edit_seconds".into(), seconds.into());
        row.insert("v_steps".into(), v_steps.into());
        if metrics.is_empty() {
            metrics = post.iter().map(|(n, _)| n.to_string()).collect();
            if fluency.is_some() {
                metrics.push("generation_entropy".into());
            }
            metrics.extend(pre.iter().map(|(n, _)| format!("pre_{n}")));
        }
        if let Some(p) = &opts.journal {
            append(p, &Value::Object(row.clone()))?;
        }
        rows.push(row);
    }
    progress(rows.len(), skipped.len(), start.elapsed().as_secs_f64());
    Ok(EvalOutcome {
        rows,
        metrics,
        skipped,
        seconds: start.elapsed().as_secs_f64(),
    })
}
