//! The evaluation job: edit each benchmark case (on fresh weights, or
//! cumulatively with `--sequential`), score it before and after under its
//! convention's metric names ([`crate::eval`]: ROME/MEMIT's CounterFact and
//! zsRE metrics, EasyEdit's), and collect a row per case.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{bail, Context, Result};
use crate::eval::{
    generation_entropy, rome_score, score_case, score_cases, score_zsre, CaseScores, EvalCase,
    NeighbourhoodArgmax, ZsreCase,
};
use crate::memit::compute_z::{compute_zs, Z};
use crate::memit::update::LayerMom2;
use crate::memit::{apply_memit, MemitHparams};
use crate::rome::compute_u::KeyCovariance;
use crate::rome::{rome_edit, EditRequest, RomeHparams};
use crate::{EditError, Ledger};
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

    /// The case without the neighbourhood prompts that name a subject in
    /// `edited` (other than its own): a neighbour that is itself edited is no
    /// longer a neighbour. Only CounterFact cases have such lists.
    pub fn without_edited_neighbours(&self, edited: &HashSet<String>) -> BenchCase {
        match self {
            Self::CounterFact(c) => {
                let mut c = c.clone();
                c.neighborhood.retain(|p| {
                    !edited
                        .iter()
                        .any(|s| *s != c.subject && !s.is_empty() && p.contains(s.as_str()))
                });
                Self::CounterFact(c)
            }
            other => other.clone(),
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
                (counterfact_metrics(&s), nb)
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

/// [`BenchCase::score`] for many cases, each with its `before`: the
/// CounterFact cases' prompts run in shared batches ([`score_cases`]), zsRE
/// cases one by one. The same numbers as scoring each case alone.
pub fn score_many<B: Backend>(
    lm: &LanguageModel<B>,
    cases: &[(&BenchCase, Option<&[Vec<u32>]>)],
) -> Result<Vec<Scored>> {
    let counterfact: Vec<(&EvalCase, Option<&[Vec<u32>]>)> = cases
        .iter()
        .filter_map(|(c, b)| match c {
            BenchCase::CounterFact(e) => Some((e, *b)),
            BenchCase::Zsre(..) => None,
        })
        .collect();
    let mut batched = score_cases(lm, &counterfact)?.into_iter();
    let mut out = Vec::with_capacity(cases.len());
    for (case, before) in cases {
        out.push(match case {
            BenchCase::CounterFact(_) => {
                let (s, nb) = batched
                    .next()
                    .context("a CounterFact case was not scored")?;
                (counterfact_metrics(&s), nb)
            }
            BenchCase::Zsre(..) => case.score(lm, *before)?,
        });
    }
    Ok(out)
}

/// A case's metrics under their names, and its neighbourhood argmax.
pub type Scored = (Vec<(&'static str, f64)>, NeighbourhoodArgmax);

fn counterfact_metrics(s: &CaseScores) -> Vec<(&'static str, f64)> {
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
    ]
}

/// zsRE records (MEND's form) as cases; records without the convention's
/// target are left out.
/// Also returns the records skipped as malformed.
pub fn zsre_cases(path: &Path, conv: ZsreConvention) -> Result<(Vec<BenchCase>, Vec<String>)> {
    let loaded = engram_datasets::facts::load_zsre(path, engram_datasets::OnBadRecord::Skip)?;
    let skipped = loaded.skipped.iter().map(|e| e.to_string()).collect();
    let cases = loaded
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
        .collect();
    Ok((cases, skipped))
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub n: usize,
    pub sequential: bool,
    /// Skip a case whose subject an earlier case already edits (MEMIT always
    /// does: one subject's requests share its key, so their targets would be
    /// averaged). Makes ROME runs select the same cases as MEMIT's.
    pub distinct_subjects: bool,
    /// Numbers of edits after which every case edited so far is scored again
    /// on the model as it then is (the metric-against-edits curve).
    pub checkpoints: Vec<usize>,
    /// Measure generation entropy (tokens generated per prompt; 0 = off).
    pub fluency_tokens: usize,
    /// A JSON-lines file that receives each case as it finishes (a batch
    /// method's cases when their batch finishes); cases already in it are
    /// taken as done, so an interrupted run resumes on the edits it had
    /// made: a sequential run's single edits ride in their cases' lines
    /// (appended, so a case costs its own edit's bytes, not the whole
    /// ledger's); a batch method keeps its ledger beside the journal
    /// ([`journal_ledger`]).
    pub journal: Option<PathBuf>,
}

/// One evaluated case: identity, metrics, `pre_` metrics, timing.
pub type Row = Map<String, Value>;
/// A case the edit refused, and why.
type Skip = (u64, String);

/// What a journal holds: rows, skip notes, each row's neighbourhood argmax
/// before its edit (sequential runs), and curve points.
#[derive(Default)]
pub struct Journal {
    rows: Vec<Row>,
    skipped: Vec<Skip>,
    pre_nb: std::collections::HashMap<u64, NeighbourhoodArgmax>,
    curve: Vec<Row>,
    /// The ledger entry of each row that carries one, in row order.
    edits: Vec<Value>,
    /// The content hash of the model those edits were made on.
    edit_base: Option<String>,
}

/// The ledger a sequential batch run keeps beside its journal (and a single-
/// edit run of an older engram, whose later edits are in the journal).
pub fn journal_ledger(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".ledger.json");
    PathBuf::from(name)
}

/// Rows and skip notes already in a journal. A last line cut short by a
/// kill is cut off the file, so that the next append starts a fresh line;
/// a whole last line missing only its newline gets one.
pub fn read_journal(path: &Path) -> Result<Journal> {
    let mut j = Journal::default();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(j),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut start = 0;
    let mut line_no = 0;
    while start < bytes.len() {
        line_no += 1;
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| start + i);
        let line = &bytes[start..end.unwrap_or(bytes.len())];
        let next = end.map_or(bytes.len(), |e| e + 1);
        let last = next >= bytes.len();
        if line.iter().all(u8::is_ascii_whitespace) {
            start = next;
            continue;
        }
        let mut v: Map<String, Value> = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(_) if last => {
                truncate_journal(path, start)?;
                break;
            }
            Err(e) => bail!(
                "{} line {line_no}: {e}; only the last line may be cut short",
                path.display()
            ),
        };
        if end.is_none() {
            append_newline(path)?;
        }
        start = next;
        if let Some(Value::Object(c)) = v.remove("curve") {
            j.curve.push(c);
            continue;
        }
        let nb = v.remove("pre_nb");
        let edit = v.remove("edit");
        if let Some(Value::String(h)) = v.remove("edit_base") {
            if j.edit_base.get_or_insert_with(|| h.clone()) != &h {
                bail!(
                    "{} line {line_no}: edits made on another model",
                    path.display()
                );
            }
        }
        let id = v.get("case_id").and_then(Value::as_u64);
        match (id, v.get("skipped").and_then(Value::as_str)) {
            (Some(id), Some(why)) => j.skipped.push((id, why.to_string())),
            (Some(id), None) => {
                if let Some(nb) = nb {
                    let nb = serde_json::from_value(nb)
                        .with_context(|| format!("{} line {line_no}: pre_nb", path.display()))?;
                    j.pre_nb.insert(id, nb);
                }
                match edit {
                    Some(e) => j.edits.push(e),
                    None if !j.edits.is_empty() => bail!(
                        "{} line {line_no}: case {id} has no edit after cases that have",
                        path.display()
                    ),
                    None => {}
                }
                j.rows.push(v)
            }
            _ => bail!("{} line {line_no}: no case_id", path.display()),
        }
    }
    Ok(j)
}

/// Cut a journal back to its first `len` bytes (a torn last line dropped).
fn truncate_journal(path: &Path, len: usize) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.set_len(len as u64)
        .and_then(|()| f.sync_data())
        .with_context(|| format!("cutting the torn last line of {}", path.display()))
}

/// End a journal's whole last line that lacks its newline.
fn append_newline(path: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(b"\n")
        .and_then(|()| f.sync_data())
        .with_context(|| format!("writing {}", path.display()))
}

/// Append one JSON line: the whole line in one buffer and one write, then a sync.
fn append(path: &Path, v: &Value) -> Result<()> {
    use std::io::Write;
    let mut line = v.to_string();
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(line.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_data()
        .with_context(|| format!("writing {}", path.display()))
}

/// How [`evaluate`] edits each case: ROME (with its statistics and
/// prefixes) or FT-L.
#[derive(Debug, Clone, Copy)]
pub enum SingleEdit<'a> {
    Rome {
        hp: &'a RomeHparams,
        cov: &'a KeyCovariance,
        templates: &'a [String],
    },
    Ft(&'a crate::ft::FtHparams),
}

/// A case's edit, before it enters the ledger.
enum Made {
    Rome(crate::rome::RomeEdit),
    Ft(crate::ft::FtEdit),
}

#[derive(Debug)]
pub struct EvalOutcome {
    /// One object per evaluated case: identity, metrics, `pre_` metrics, timing.
    pub rows: Vec<Map<String, Value>>,
    /// One object per checkpoint: `edits`, and the mean of each metric over
    /// the cases edited so far, scored then.
    pub curve: Vec<Row>,
    /// Metric columns, in order (post-edit names, then `pre_` names).
    pub metrics: Vec<String>,
    pub skipped: Vec<String>,
    /// What the run said as it went: resumed edits, batch warnings and timings.
    pub notes: Vec<String>,
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
    editor: &SingleEdit<'_>,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<EvalOutcome> {
    let start = Instant::now();
    // Sequential runs: neighbours that later cases edit are left out, judged
    // on the first `n` cases (of distinct subjects where asked).
    let filtered: Vec<BenchCase>;
    let cases = if opts.sequential {
        let mut seen = HashSet::new();
        let subjects: HashSet<String> = cases
            .iter()
            .map(|c| c.request().subject)
            .filter(|s| !opts.distinct_subjects || seen.insert(s.clone()))
            .take(opts.n)
            .collect();
        filtered = cases
            .iter()
            .map(|c| c.without_edited_neighbours(&subjects))
            .collect();
        &filtered[..]
    } else {
        cases
    };
    let journal = match &opts.journal {
        Some(p) => read_journal(p)?,
        None => Journal::default(),
    };
    let (mut rows, done_skips) = (journal.rows, journal.skipped);
    let mut skipped: Vec<String> = done_skips
        .iter()
        .map(|(id, why)| format!("case {id}: {why}"))
        .collect();
    let done: std::collections::HashSet<u64> = rows
        .iter()
        .filter_map(|r| r.get("case_id").and_then(Value::as_u64))
        .chain(done_skips.iter().map(|(id, _)| *id))
        .collect();
    // The rows that carry their edits are the last ones.
    let older = rows.len() - journal.edits.len();
    rows.truncate(opts.n);
    let older = older.min(rows.len());
    let mut curve = journal.curve;
    let mut notes = Vec::new();
    let mut edited: Vec<(&BenchCase, NeighbourhoodArgmax)> = Vec::new();
    // A sequential run resumes on the edits it had made: each journalled
    // case's edit, after those of an older engram's ledger beside the journal.
    if let (true, Some(jp)) = (opts.sequential, &opts.journal) {
        let lp = journal_ledger(jp);
        if !rows.is_empty() {
            if older > 0 {
                if !lp.is_file() {
                    bail!(
                        "{} has {older} cases without their edits, and {} is missing: \
                         the edits cannot be restored",
                        jp.display(),
                        lp.display()
                    );
                }
                let hash = ledger.base_model_hash.clone();
                *ledger = Ledger::import(&lp, &mut lm.model, &hash)?;
                // Saved after the edit but before its journal line: redo that case.
                if ledger.edits().len() == older + 1 && journal.edits.is_empty() {
                    if let Some(last) = ledger.edits().iter().map(|e| e.id).max() {
                        ledger.remove(&mut lm.model, last)?;
                    }
                }
                if ledger.edits().len() != older {
                    bail!(
                        "{} holds {} edits for {older} journalled cases",
                        lp.display(),
                        ledger.edits().len(),
                    );
                }
            }
            if let Some(h) = journal.edit_base.filter(|h| *h != ledger.base_model_hash) {
                return Err(EditError::WrongBase {
                    expected: h,
                    found: ledger.base_model_hash.clone(),
                });
            }
            let mut entries = Vec::with_capacity(journal.edits.len());
            for e in journal.edits.into_iter().take(rows.len() - older) {
                entries.push(
                    serde_json::from_value(e)
                        .with_context(|| format!("{}: a case's edit", jp.display()))?,
                );
            }
            ledger.extend(jp, &mut lm.model, entries)?;
            for r in &rows {
                let id = r.get("case_id").and_then(Value::as_u64).unwrap_or(u64::MAX);
                let case = cases
                    .iter()
                    .find(|c| c.id() == id)
                    .with_context(|| format!("journalled case {id} is not in the data"))?;
                let nb = journal.pre_nb.get(&id).cloned().with_context(|| {
                    format!("journalled case {id} has no pre_nb (written by an older engram)")
                })?;
                edited.push((case, nb));
            }
            notes.push(format!(
                "resumed: {} edits restored from {}",
                rows.len(),
                jp.display()
            ));
        }
    }
    let mut subjects: std::collections::HashSet<String> = rows
        .iter()
        .filter_map(|r| r.get("subject").and_then(Value::as_str).map(String::from))
        .collect();
    let mut metrics: Vec<String> = rows.first().map(metric_names).unwrap_or_default();
    for case in cases {
        if rows.len() >= opts.n {
            break;
        }
        if done.contains(&case.id()) {
            continue;
        }
        if opts.distinct_subjects && !subjects.insert(case.request().subject) {
            skipped.push(format!(
                "case {}: its subject is edited by an earlier case",
                case.id()
            ));
            continue;
        }
        progress(rows.len(), skipped.len(), start.elapsed().as_secs_f64());
        let request = case.request();
        let (pre, pre_nb) = case.score(lm, None)?;
        let made = match editor {
            SingleEdit::Rome { hp, cov, templates } => {
                rome_edit(lm, &request, hp, cov, templates, &mut |_, _| true).map(Made::Rome)
            }
            SingleEdit::Ft(hp) => {
                crate::ft::ft_edit(lm, &request, hp, &mut |_, _| true).map(Made::Ft)
            }
        };
        let edit = match made {
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
            Err(e) => return Err(e),
        };
        let (seconds, v_steps, id) = match edit {
            Made::Rome(e) => (e.seconds, e.steps.len(), ledger.push(&mut lm.model, e)?),
            Made::Ft(e) => (
                e.seconds,
                e.losses.len().saturating_sub(1),
                ledger.push_ft(&mut lm.model, e)?,
            ),
        };
        let norms = entry_norms(ledger, &[id]);
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
        row.insert("delta_fro".into(), norms.0.into());
        row.insert("delta_relative".into(), norms.1.into());
        if metrics.is_empty() {
            metrics = post.iter().map(|(n, _)| n.to_string()).collect();
            if fluency.is_some() {
                metrics.push("generation_entropy".into());
            }
            metrics.extend(pre.iter().map(|(n, _)| format!("pre_{n}")));
        }
        if let Some(p) = &opts.journal {
            let mut line = row.clone();
            if opts.sequential {
                let entry = ledger.edits().iter().find(|e| e.id == id);
                line.insert(
                    "edit".into(),
                    serde_json::to_value(entry).context("the case's edit")?,
                );
                line.insert("edit_base".into(), ledger.base_model_hash.clone().into());
                line.insert(
                    "pre_nb".into(),
                    serde_json::to_value(&pre_nb).context("pre_nb")?,
                );
            }
            append(p, &Value::Object(line))?;
        }
        rows.push(row);
        if opts.sequential {
            edited.push((case, pre_nb));
            if opts.checkpoints.contains(&rows.len()) {
                let point = curve_point(lm, ledger, &edited)?;
                if let Some(p) = &opts.journal {
                    append(p, &serde_json::json!({ "curve": point }))?;
                }
                curve.push(point);
            }
        }
    }
    // Cases ran out (some refused) before the last checkpoint: score where it ended.
    let last = curve
        .last()
        .and_then(|c| c.get("edits"))
        .and_then(Value::as_u64);
    if opts.sequential
        && !edited.is_empty()
        && opts.checkpoints.iter().any(|&c| c > rows.len())
        && last != Some(rows.len() as u64)
    {
        curve.push(curve_point(lm, ledger, &edited)?);
    }
    progress(rows.len(), skipped.len(), start.elapsed().as_secs_f64());
    Ok(EvalOutcome {
        curve,
        rows,
        metrics,
        skipped,
        notes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A journalled row's metric columns (numbers other than identity and timing).
fn metric_names(row: &Row) -> Vec<String> {
    row.iter()
        .filter(|(k, v)| {
            v.is_number()
                && !matches!(
                    k.as_str(),
                    "case_id"
                        | "edits_applied"
                        | "edit_seconds"
                        | "v_steps"
                        | "delta_fro"
                        | "delta_relative"
                )
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// Score every case in `edited` on the model as it stands: the mean of each
/// metric, with `edits` the number of cases, S where ES/PS/NS exist, and the
/// edited layers' drift from their originals (`drift_fro`, `drift_relative`).
fn curve_point<B: Backend>(
    lm: &LanguageModel<B>,
    ledger: &Ledger<B>,
    edited: &[(&BenchCase, NeighbourhoodArgmax)],
) -> Result<Row> {
    // (name, sum, count): a case without a measure (NaN, e.g. no neighbours) is left out of its mean.
    let mut sums: Vec<(&'static str, f64, usize)> = Vec::new();
    let asked: Vec<(&BenchCase, Option<&[Vec<u32>]>)> = edited
        .iter()
        .map(|(c, nb)| (*c, Some(nb.as_slice())))
        .collect();
    for (post, _) in score_many(lm, &asked)? {
        for (name, v) in post {
            let i = match sums.iter().position(|(n, _, _)| *n == name) {
                Some(i) => i,
                None => {
                    sums.push((name, 0.0, 0));
                    sums.len() - 1
                }
            };
            if v.is_finite() {
                sums[i].1 += v;
                sums[i].2 += 1;
            }
        }
    }
    let mut row = Map::new();
    row.insert("edits".into(), edited.len().into());
    for (name, s, n) in &sums {
        if *n > 0 {
            row.insert((*name).into(), (s / *n as f64).into());
        }
    }
    let get = |k: &str| row.get(k).and_then(Value::as_f64);
    if let (Some(es), Some(ps), Some(ns)) = (get("ES"), get("PS"), get("NS")) {
        row.insert("S".into(), rome_score(es, ps, ns).into());
    }
    if let Some((fro, relative)) = ledger.drift(&lm.model) {
        row.insert("drift_fro".into(), fro.into());
        row.insert("drift_relative".into(), relative.into());
    }
    Ok(row)
}

/// What MEMIT's evaluation needs besides the cases.
pub struct MemitSetup<'a> {
    pub hp: &'a MemitHparams,
    /// C for each of `hp.layers`, in order.
    pub covs: &'a [LayerMom2],
    /// Context prefixes, in MEMIT's groups.
    pub groups: &'a [Vec<String>],
    /// Requests per MEMIT batch.
    pub batch: usize,
    /// Requests per z optimisation batch.
    pub z_chunk: usize,
    /// Threads optimising z chunks at once.
    pub z_workers: usize,
    /// A JSON-lines cache of computed z vectors: reused when the model, layer,
    /// optimiser settings, request and the weights' edits match.
    pub z_cache: Option<PathBuf>,
    pub model_hash: String,
    /// MEMIT's solve, or AlphaEdit's with each layer's null space.
    pub solver: crate::memit::update::Solver<'a>,
}

/// The z cache key of a request on the model as it is (`edits` applied before).
fn z_key(setup: &MemitSetup<'_>, r: &EditRequest, edits: usize) -> Result<String> {
    let hp = setup.hp;
    // Earlier batches were solved by this method: the model they left differs.
    let method = match setup.solver {
        crate::memit::update::Solver::Memit => String::new(),
        crate::memit::update::Solver::AlphaEdit { l2, spaces } => format!(
            "alphaedit {l2} {:?}|",
            spaces
                .iter()
                .map(|s| (s.rank, s.threshold))
                .collect::<Vec<_>>()
        ),
    };
    Ok(crate::stats::corpus_hash(&format!(
        "{method}{}|{}|{}|{}|{}|{}|{}|{}|{:?}|{}\u{1}{}\u{1}{}",
        setup.model_hash,
        hp.z_layer()?,
        hp.v_num_grad_steps,
        hp.v_lr,
        hp.v_weight_decay,
        hp.clamp_norm_factor,
        hp.kl_factor,
        edits,
        setup.groups,
        r.prompt,
        r.subject,
        r.target
    )))
}

fn read_z_cache(path: &Path) -> Result<std::collections::HashMap<String, Z>> {
    let mut out = std::collections::HashMap::new();
    if !path.exists() {
        return Ok(out);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // A line cut short by an interruption is skipped; it is recomputed.
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            if let (Some(k), Some(z)) = (v.get("key").and_then(Value::as_str), v.get("z")) {
                if let Ok(z) = serde_json::from_value::<Z>(z.clone()) {
                    out.insert(k.to_string(), z);
                }
            }
        }
    }
    Ok(out)
}

/// z for `requests` on the model as it is, through the cache where given.
fn zs_for<B: Backend>(
    lm: &LanguageModel<B>,
    setup: &MemitSetup<'_>,
    requests: &[EditRequest],
    edits: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Z>, f64)> {
    let flat: Vec<String> = setup.groups.iter().flatten().cloned().collect();
    let cache = match &setup.z_cache {
        Some(p) => read_z_cache(p)?,
        None => Default::default(),
    };
    let keys: Vec<String> = requests
        .iter()
        .map(|r| z_key(setup, r, edits))
        .collect::<Result<_>>()?;
    let mut out: Vec<Option<Z>> = keys.iter().map(|k| cache.get(k).cloned()).collect();
    let missing: Vec<usize> = (0..requests.len()).filter(|&i| out[i].is_none()).collect();
    let mut seconds = 0.0;
    let total = requests.len();
    // One chunk per worker between cache writes, so an interruption loses little.
    let step = setup.z_chunk.max(1) * setup.z_workers.max(1);
    for part in missing.chunks(step) {
        let reqs: Vec<EditRequest> = part.iter().map(|&i| requests[i].clone()).collect();
        progress(out.iter().filter(|z| z.is_some()).count(), total);
        let (zs, secs) = compute_zs(
            lm,
            &reqs,
            setup.hp,
            &flat,
            setup.z_chunk,
            setup.z_workers,
            &mut |_, _| true,
        )
        .map_err(|e| remap_index(e, part))?;
        seconds += secs;
        for (&i, z) in part.iter().zip(zs) {
            if let Some(p) = &setup.z_cache {
                append(p, &serde_json::json!({"key": keys[i], "z": z}))?;
            }
            out[i] = Some(z);
        }
    }
    progress(total, total);
    Ok((out.into_iter().flatten().collect(), seconds))
}

/// The size of the change made by ledger entries `ids` (one edit, or a
/// batch's layers): (√Σ ‖ΔW_l‖²_F, the largest ‖ΔW_l‖_F / ‖W_l‖_F).
fn entry_norms<B: Backend>(ledger: &Ledger<B>, ids: &[usize]) -> (f64, f64) {
    let norms: Vec<_> = ledger
        .edits()
        .iter()
        .filter(|e| ids.contains(&e.id))
        .filter_map(|e| e.norms)
        .collect();
    let fro = norms
        .iter()
        .map(|n| n.delta_fro * n.delta_fro)
        .sum::<f64>()
        .sqrt();
    let rel = norms.iter().map(|n| n.relative).fold(0.0, f64::max);
    (fro, rel)
}

/// A bad request's index within a sub-batch, as its index in the whole batch.
fn remap_index(e: EditError, part: &[usize]) -> EditError {
    match e {
        EditError::BadRequest {
            index,
            subject,
            cause,
        } => EditError::BadRequest {
            index: part.get(index).copied().unwrap_or(index),
            subject,
            cause,
        },
        other => other,
    }
}

/// Evaluate MEMIT on up to `opts.n` usable cases, `setup.batch` requests per
/// batch: each batch on fresh weights, or applied cumulatively with
/// `opts.sequential`. A case is scored after its batch is in. Without
/// `sequential`, each checkpoint N below the batch size is a MEMIT batch of the
/// first N cases (their z reused), scored and removed.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_memit<B: Backend>(
    lm: &mut LanguageModel<B>,
    ledger: &mut Ledger<B>,
    cases: &[BenchCase],
    setup: &MemitSetup<'_>,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<EvalOutcome> {
    let start = Instant::now();
    // Usable cases: the request is well formed, its target is not already the
    // answer, and no earlier case edits its subject.
    let mut skipped = Vec::new();
    let mut chosen: Vec<&BenchCase> = Vec::new();
    let mut asked: std::collections::HashMap<String, u64> = Default::default();
    let mut requests: Vec<EditRequest> = Vec::new();
    for case in cases {
        if chosen.len() >= opts.n {
            break;
        }
        let r = case.request();
        if let Err(e) = crate::memit::check_batch(lm, std::slice::from_ref(&r)) {
            let e = match e {
                EditError::BadRequest { cause, .. } => *cause,
                other => other,
            };
            skipped.push(format!("case {}: {e}", case.id()));
            continue;
        }
        if let Some(id) = asked.get(&r.subject) {
            skipped.push(format!(
                "case {}: its subject is edited by case {id} (one key, so MEMIT would average their targets)",
                case.id()
            ));
            continue;
        }
        let ids = lm.target_tokens(&r.prompt, &r.target)?;
        let top = lm.top_k(&r.prompt, 1)?;
        if ids.len() == 1 && top.first().map(|t| t.id) == Some(ids[0]) {
            skipped.push(format!(
                "case {}: {}",
                case.id(),
                EditError::TargetIsCurrent {
                    prompt: r.prompt.clone(),
                    target: r.target.clone()
                }
            ));
            continue;
        }
        asked.insert(r.subject.clone(), case.id());
        chosen.push(case);
        requests.push(r);
    }
    // Neighbours that the run itself edits are left out.
    let subjects: HashSet<String> = requests.iter().map(|r| r.subject.clone()).collect();
    let owned: Vec<BenchCase> = chosen
        .iter()
        .map(|c| c.without_edited_neighbours(&subjects))
        .collect();
    let chosen: Vec<&BenchCase> = owned.iter().collect();
    let mut notes: Vec<String> = crate::memit::check_batch(lm, &requests)?
        .into_iter()
        .map(|w| format!("warning: {w}"))
        .collect();
    let batch = setup.batch.max(1);
    let mut rows = Vec::new();
    let mut curve = Vec::new();
    let mut edited: Vec<(&BenchCase, NeighbourhoodArgmax)> = Vec::new();
    let mut metrics: Vec<String> = Vec::new();
    let mut applied = 0usize;
    let mut done_batches = 0usize;
    if let Some(jp) = &opts.journal {
        let journal = read_journal(jp)?;
        if !journal.rows.is_empty() {
            done_batches =
                resume_batches(lm, ledger, jp, &journal, &chosen, batch, opts.sequential)?;
            if opts.sequential {
                for (r, case) in journal.rows.iter().zip(&chosen) {
                    let id = case.id();
                    let nb =
                        journal.pre_nb.get(&id).cloned().with_context(|| {
                            format!("{}: case {id} has no pre_nb", jp.display())
                        })?;
                    debug_assert_eq!(r.get("case_id").and_then(Value::as_u64), Some(id));
                    edited.push((*case, nb));
                }
                applied = journal.rows.len();
            }
            metrics = journal.rows.first().map(metric_names).unwrap_or_default();
            notes.push(format!(
                "resumed: {} cases in {done_batches} batches from {}",
                journal.rows.len(),
                jp.display()
            ));
            rows = journal.rows;
            curve = journal.curve;
        }
    }
    for (b, (cases_b, reqs_b)) in chosen
        .chunks(batch)
        .zip(requests.chunks(batch))
        .enumerate()
        .skip(done_batches)
    {
        progress(&format!(
            "batch {} of {}: scoring before",
            b + 1,
            chosen.len().div_ceil(batch)
        ));
        let asked: Vec<(&BenchCase, Option<&[Vec<u32>]>)> =
            cases_b.iter().map(|c| (*c, None)).collect();
        let pre = score_many(lm, &asked)?;
        let (zs, z_seconds) = zs_for(lm, setup, reqs_b, applied, &mut |d, t| {
            progress(&format!("batch {}: z {d}/{t}", b + 1))
        })?;
        // Checkpoints inside a single fresh batch: the first N cases alone.
        if !opts.sequential {
            for &n in opts.checkpoints.iter().filter(|&&n| n < cases_b.len()) {
                progress(&format!("checkpoint {n}"));
                let out = apply_memit(
                    lm,
                    ledger,
                    &reqs_b[..n],
                    &zs[..n],
                    setup.hp,
                    setup.covs,
                    setup.groups,
                    &setup.solver,
                    &mut |_, _| true,
                )?;
                let firsts: Vec<(&BenchCase, NeighbourhoodArgmax)> = cases_b[..n]
                    .iter()
                    .zip(&pre)
                    .map(|(c, (_, nb))| (*c, nb.clone()))
                    .collect();
                curve.push(curve_point(lm, ledger, &firsts)?);
                ledger.remove(&mut lm.model, first_id(&out)?)?;
            }
        }
        progress(&format!("batch {}: solving", b + 1));
        let out = apply_memit(
            lm,
            ledger,
            reqs_b,
            &zs,
            setup.hp,
            setup.covs,
            setup.groups,
            &setup.solver,
            &mut |_, _| true,
        )?;
        applied += reqs_b.len();
        let norms = entry_norms(ledger, &out.ids);
        let per_case = (z_seconds + out.keys_seconds + out.solve_seconds) / reqs_b.len() as f64;
        let asked: Vec<(&BenchCase, Option<&[Vec<u32>]>)> = cases_b
            .iter()
            .zip(&pre)
            .map(|(c, (_, nb))| (*c, Some(nb.as_slice())))
            .collect();
        let posts = score_many(lm, &asked)?;
        for (((case, (pre_m, pre_nb)), z), (post, _)) in cases_b.iter().zip(pre).zip(&zs).zip(posts)
        {
            let request = case.request();
            let mut row = Map::new();
            row.insert("case_id".into(), case.id().into());
            row.insert("subject".into(), request.subject.into());
            row.insert("prompt".into(), request.prompt.into());
            row.insert("target_new".into(), request.target.into());
            row.insert("target_true".into(), case.target_true().into());
            row.insert(
                "edits_applied".into(),
                (if opts.sequential {
                    applied
                } else {
                    reqs_b.len()
                })
                .into(),
            );
            for (name, v) in &post {
                row.insert((*name).into(), (*v).into());
            }
            for (name, v) in &pre_m {
                row.insert(format!("pre_{name}"), (*v).into());
            }
            row.insert("edit_seconds".into(), per_case.into());
            row.insert("v_steps".into(), z.steps.len().into());
            row.insert("delta_fro".into(), norms.0.into());
            row.insert("delta_relative".into(), norms.1.into());
            if metrics.is_empty() {
                metrics = post.iter().map(|(n, _)| n.to_string()).collect();
                metrics.extend(pre_m.iter().map(|(n, _)| format!("pre_{n}")));
            }
            rows.push(row);
            edited.push((case, pre_nb));
        }
        notes.push(format!(
            "batch {}: {} requests, z {:.1} s, keys {:.1} s, solve {:.1} s, residual {:?}",
            b + 1,
            reqs_b.len(),
            z_seconds,
            out.keys_seconds,
            out.solve_seconds,
            out.residual_norms
        ));
        let points_before = curve.len();
        if opts.sequential {
            if opts
                .checkpoints
                .iter()
                .any(|&n| n <= applied && n > applied - reqs_b.len())
            {
                curve.push(curve_point(lm, ledger, &edited)?);
            }
        } else {
            if opts.checkpoints.contains(&reqs_b.len()) {
                let firsts = &edited[edited.len() - reqs_b.len()..];
                curve.push(curve_point(lm, ledger, firsts)?);
            }
            ledger.remove(&mut lm.model, first_id(&out)?)?;
        }
        if let Some(jp) = &opts.journal {
            // The ledger first: a kill before the rows leaves one batch more
            // in it than in the journal, which a resume takes out again.
            if opts.sequential {
                ledger.export(&journal_ledger(jp))?;
            }
            let fresh = rows.len() - cases_b.len();
            for (row, (_, nb)) in rows[fresh..]
                .iter()
                .zip(&edited[edited.len() - cases_b.len()..])
            {
                let mut line = row.clone();
                line.insert("pre_nb".into(), serde_json::to_value(nb).context("pre_nb")?);
                append(jp, &Value::Object(line))?;
            }
            for point in &curve[points_before..] {
                append(jp, &serde_json::json!({ "curve": point }))?;
            }
        }
    }
    Ok(EvalOutcome {
        rows,
        curve,
        metrics,
        skipped,
        notes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Take up a batch evaluation from its journal: the journalled rows must be
/// this run's first cases in whole batches (the same data, `--n` filters and
/// `--batch`); a sequential run's ledger is applied again, less a batch saved
/// after its last journal line. Returns the number of batches done.
fn resume_batches<B: Backend>(
    lm: &mut LanguageModel<B>,
    ledger: &mut Ledger<B>,
    jp: &Path,
    journal: &Journal,
    chosen: &[&BenchCase],
    batch: usize,
    sequential: bool,
) -> Result<usize> {
    let n = journal.rows.len();
    let ids: Vec<Option<u64>> = journal
        .rows
        .iter()
        .map(|r| r.get("case_id").and_then(Value::as_u64))
        .collect();
    let want: Vec<Option<u64>> = chosen.iter().take(n).map(|c| Some(c.id())).collect();
    if ids != want {
        bail!(
            "{} holds {n} cases that are not this run's first {n} (was it made with other data, --n or filters?)",
            jp.display()
        );
    }
    if !n.is_multiple_of(batch) && n != chosen.len() {
        bail!(
            "{} holds {n} cases, not whole batches of {batch} (was it made with another --batch?)",
            jp.display()
        );
    }
    let done = n.div_ceil(batch);
    if sequential {
        let lp = journal_ledger(jp);
        if !lp.is_file() {
            bail!(
                "{} has {n} cases but {} is missing: the edits cannot be restored",
                jp.display(),
                lp.display()
            );
        }
        let hash = ledger.base_model_hash.clone();
        *ledger = Ledger::import(&lp, &mut lm.model, &hash)?;
        let batches = |l: &Ledger<B>| -> Vec<usize> {
            let mut b: Vec<usize> = l.edits().iter().filter_map(|e| e.batch).collect();
            b.sort_unstable();
            b.dedup();
            b
        };
        if batches(ledger).len() == done + 1 {
            let last = *batches(ledger).last().context("a batch")?;
            let id = ledger
                .edits()
                .iter()
                .find(|e| e.batch == Some(last))
                .map(|e| e.id)
                .context("an entry of the last batch")?;
            ledger.remove(&mut lm.model, id)?;
        }
        if batches(ledger).len() != done {
            bail!(
                "{} holds {} batches for {done} journalled batches",
                lp.display(),
                batches(ledger).len()
            );
        }
    }
    Ok(done)
}

fn first_id(out: &crate::memit::MemitOutcome) -> Result<usize> {
    out.ids
        .first()
        .copied()
        .context("the MEMIT batch has no layers")
}

/// Which editor an evaluation runs, with its hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalMethod {
    /// ROME (original key) or r-ROME (consistent key), as `hparams.key` says.
    Rome(RomeHparams),
    /// FT-L: fine-tuning one layer within an L∞ bound.
    Ft(crate::ft::FtHparams),
    Memit {
        hparams: MemitHparams,
        /// Requests per MEMIT batch.
        batch: usize,
        z_chunk: usize,
        z_workers: usize,
        z_cache: Option<PathBuf>,
        /// AlphaEdit's threshold and L2, where the batches are AlphaEdit's.
        alphaedit: Option<super::memit::AlphaEditOptions>,
    },
}

impl EvalMethod {
    /// `rome`, `r-rome` or `memit`.
    pub fn name(&self) -> &'static str {
        match self {
            EvalMethod::Rome(h) => h.key.method_name(),
            EvalMethod::Ft(_) => "ft-l",
            EvalMethod::Memit {
                alphaedit: Some(_), ..
            } => "alphaedit",
            EvalMethod::Memit { .. } => "memit",
        }
    }
}

/// An evaluation: the cases (already chosen and, for a shard, thinned), the
/// editor, how to run it, and what to record with the run.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    pub cases: Vec<BenchCase>,
    /// `counterfact` or `zsre`.
    pub benchmark: String,
    pub method: EvalMethod,
    pub options: EvalOptions,
    /// The statistics corpus (the demo corpus for the demo model where `None`).
    pub corpus: Option<PathBuf>,
    pub stats_tokens: usize,
    /// Recorded with the run: the data file, the run whose cases were taken,
    /// the shard (`K/N`).
    pub dataset: Option<PathBuf>,
    pub cases_from: Option<String>,
    pub shard: Option<String>,
}

/// A stored evaluation.
#[derive(Debug)]
pub struct EvalReport {
    pub run: engram_datasets::RunInfo,
    pub outcome: EvalOutcome,
    /// Mean and 95% interval of each metric over the cases.
    pub summary: Vec<engram_datasets::summary::MetricSummary>,
    /// ROME's S, the harmonic mean of ES, PS and NS, where they were measured.
    pub score: Option<f64>,
}

fn conventions(benchmark: &str, cases: &[BenchCase]) -> &'static str {
    match (benchmark, cases.first()) {
        ("zsre", Some(BenchCase::Zsre(_, ZsreConvention::EasyEdit))) => {
            "easyedit_* token accuracies as EasyEdit (target alt)"
        }
        ("zsre", _) => "zsre_* token accuracies as ROME/MEMIT's code (target answers[0])",
        _ => "ES/PS/NS/EM/PM/NM as ROME's code; easyedit_* token accuracies as EasyEdit",
    }
}

/// Edit and score the request's cases, and store them as an `eval` run
/// (tables `cases`, `summary` and, with checkpoints, `curve`). Progress:
/// `cases` evaluated, or MEMIT's stages.
pub fn run_eval<B: Backend>(
    lm: &mut LanguageModel<B>,
    model: &str,
    req: &EvalRequest,
    store: &engram_datasets::RunStore,
    settings: &engram_model::Settings,
    ctl: &engram_model::Control,
) -> Result<EvalReport> {
    use engram_datasets::summary::mean_ci;
    let opts = &req.options;
    let model_hash = engram_model::source::model_hash(&lm.source)?;
    let mut ledger = Ledger::new(model_hash.clone());
    let (outcome, hparams, stats_tokens, templates) = match &req.method {
        EvalMethod::Memit {
            hparams,
            batch,
            z_chunk,
            z_workers,
            z_cache,
            alphaedit,
        } => {
            if opts.fluency_tokens > 0 {
                bail!("--fluency-tokens is measured for ROME runs only so far");
            }
            let (covs, groups) = super::setup::memit_setup(
                lm,
                hparams,
                req.corpus.as_deref(),
                req.stats_tokens,
                settings,
                ctl,
            )?;
            // AlphaEdit's projections, once per evaluation (as its code does).
            let spaces = match alphaedit {
                Some(a) => covs
                    .iter()
                    .map(|c| crate::alphaedit::null_space(c, a.threshold))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
                None => Vec::new(),
            };
            let solver = match alphaedit {
                Some(a) => crate::memit::update::Solver::AlphaEdit {
                    spaces: &spaces,
                    l2: a.l2,
                },
                None => crate::memit::update::Solver::Memit,
            };
            let setup = MemitSetup {
                solver,
                hp: hparams,
                covs: &covs,
                groups: &groups,
                batch: *batch,
                z_chunk: *z_chunk,
                z_workers: *z_workers,
                z_cache: z_cache.clone(),
                model_hash: model_hash.clone(),
            };
            let mut out = evaluate_memit(lm, &mut ledger, &req.cases, &setup, opts, &mut |what| {
                ctl.tick(what, 0, 0);
            })?;
            out.notes.extend(spaces.iter().map(|s| {
                format!(
                    "AlphaEdit null space at layer {}: {} of {} dimensions",
                    s.layer, s.rank, s.dim
                )
            }));
            let tokens = covs.first().map_or(0, |c| c.tokens);
            (
                out,
                serde_json::to_value(hparams).context("hparams")?,
                tokens,
                serde_json::to_value(&groups).context("context templates")?,
            )
        }
        EvalMethod::Ft(hp) => {
            let n = opts.n as u64;
            let out = evaluate(
                lm,
                &mut ledger,
                &req.cases,
                &SingleEdit::Ft(hp),
                opts,
                &mut |done, _, _| {
                    ctl.tick("cases", done as u64, n);
                },
            )?;
            (
                out,
                serde_json::to_value(hp).context("hparams")?,
                0,
                serde_json::Value::Null,
            )
        }
        EvalMethod::Rome(hp) => {
            let (cov, templates) = super::setup::rome_setup(
                lm,
                hp,
                req.corpus.as_deref(),
                req.stats_tokens,
                settings,
                ctl,
            )?;
            let n = opts.n as u64;
            let out = evaluate(
                lm,
                &mut ledger,
                &req.cases,
                &SingleEdit::Rome {
                    hp,
                    cov: &cov,
                    templates: &templates,
                },
                opts,
                &mut |done, _, _| {
                    ctl.tick("cases", done as u64, n);
                },
            )?;
            (
                out,
                serde_json::to_value(hp).context("hparams")?,
                cov.tokens,
                serde_json::to_value(&templates).context("context templates")?,
            )
        }
    };
    if outcome.rows.is_empty() {
        bail!(
            "no case could be edited ({} skipped)",
            outcome.skipped.len()
        );
    }
    let summary: Vec<_> = outcome
        .metrics
        .iter()
        .map(|name| {
            let values: Vec<f64> = outcome
                .rows
                .iter()
                .filter_map(|r| r.get(name).and_then(Value::as_f64))
                .collect();
            mean_ci(name, &values)
        })
        .collect();
    let get = |n: &str| summary.iter().find(|s| s.metric == n).map(|s| s.mean);
    let score = match (get("ES"), get("PS"), get("NS")) {
        (Some(es), Some(ps), Some(ns)) => Some(rome_score(es, ps, ns)),
        _ => None,
    };
    let batch = match &req.method {
        EvalMethod::Memit { batch, .. } if *batch < opts.n => Some(*batch),
        _ => None,
    };
    let record_ids = outcome
        .rows
        .iter()
        .map(|r| {
            r.get("case_id")
                .map(ToString::to_string)
                .unwrap_or_default()
        })
        .collect();
    let mut params = super::run_params::<B>(
        model,
        model_hash,
        serde_json::json!({
            "method": req.method.name(),
            "benchmark": req.benchmark,
            "conventions": conventions(&req.benchmark, &req.cases),
            "hparams": hparams,
            "context_templates": templates,
            "sequential": opts.sequential,
            "batch": batch,
            "checkpoints": opts.checkpoints,
            "distinct_subjects": opts.distinct_subjects,
            "cases_from": req.cases_from,
            "fluency_tokens": opts.fluency_tokens,
            "stats_tokens": stats_tokens,
            "skipped": outcome.skipped,
            "notes": outcome.notes,
            "S": score,
            "shard": req.shard,
        }),
        record_ids,
    );
    params.dataset = req.dataset.as_ref().map(|d| d.display().to_string());
    params.seed = Some(0);
    let run = store.create("eval", params)?;
    run.write_rows("cases", &outcome.rows)?;
    run.write_rows("summary", &summary)?;
    if !outcome.curve.is_empty() {
        run.write_rows("curve", &outcome.curve)?;
    }
    let run = run.finish()?;
    Ok(EvalReport {
        run,
        outcome,
        summary,
        score,
    })
}
