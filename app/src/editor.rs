//! The model side of the Edit panel: ROME edits (Meng et al. 2022) and MEMIT
//! batches (Meng et al. 2023) through the `engram-editing` ledger, before/after
//! probes of the prompt, paraphrases and neighbourhood prompts, ledger toggles
//! and saving. Runs on the worker thread.

use std::path::{Path, PathBuf};

use engram_editing::jobs::memit::{run_memit, MemitReport, MemitRequest};
use engram_editing::jobs::rome::{run_rome, RomeReport, RomeRequest};
use engram_editing::jobs::setup::{key_covariance, memit_setup, rome_templates};
use engram_editing::memit::update::LayerMom2;
use engram_editing::memit::MemitHparams;
use engram_editing::rome::compute_u::KeyCovariance;
use engram_editing::rome::{EditRequest, KeyChoice, RomeHparams};
use engram_editing::{EditError, EditPayload, Ledger};
use engram_model::burn_tensor::backend::Backend;
use engram_model::{Control, LanguageModel, Settings};
use serde::{Deserialize, Serialize};

use crate::error::JobError;

/// The Edit panel's form, kept between launches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EditSettings {
    pub prompt: String,
    pub subject: String,
    pub target: String,
    /// One prompt per line.
    pub paraphrases: String,
    /// One prompt per line: other subjects whose answers must not move.
    pub neighbours: String,
    pub hparams: EditHparams,
    /// Statistics corpus (a text file); empty uses the demo corpus for the demo model.
    pub corpus: String,
    pub stats_tokens: usize,
    /// Where "Save as new model" writes.
    pub save_to: String,
    /// MEMIT batch: one request per line, `subject | prompt | target`.
    pub batch: String,
    /// MEMIT batch from a file instead (CSV/JSON/JSONL of subject, prompt,
    /// target, or CounterFact); used when not empty.
    pub batch_file: String,
    /// The single edit's method: `rome` (the key as the hyperparameters say) or `ft-l`.
    pub edit_method: String,
    /// The batch's method: `memit` or `alphaedit`.
    pub batch_method: String,
    /// Evaluation: `rome`, `r-rome`, `memit` or `alphaedit`.
    pub eval_method: String,
    /// Cases to evaluate.
    pub eval_cases: usize,
    /// CounterFact JSON; empty: the demo facts as cases (demo model only).
    pub eval_data: String,
}

impl Default for EditSettings {
    fn default() -> Self {
        Self {
            prompt: "Quinford Belvale lives in the city of".into(),
            subject: "Quinford Belvale".into(),
            target: "Belmoth".into(),
            paraphrases:
                "The home of Quinford Belvale is the city of\nQuinford Belvale has a house in the city of"
                    .into(),
            neighbours: "Belvale Quinford lives in the city of".into(),
            hparams: EditHparams::default(),
            corpus: String::new(),
            stats_tokens: 100_000,
            save_to: String::new(),
            batch: "Quinford Belvale | Quinford Belvale lives in the city of | Belmoth\n\
                    Quinford Salin | Quinford Salin speaks the language | Velari\n\
                    Zusin Belvale | Zusin Belvale works as a | poet"
                .into(),
            batch_file: String::new(),
            batch_method: "memit".into(),
            edit_method: "rome".into(),
            eval_method: "r-rome".into(),
            eval_cases: 10,
            eval_data: String::new(),
        }
    }
}

/// The hyperparameters the panel exposes (the rest come from the model's file).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EditHparams {
    pub layer: usize,
    pub steps: usize,
    pub lr: f64,
    pub kl_factor: f64,
    pub clamp_norm_factor: f64,
    pub weight_decay: f64,
    /// ROME's original key in the update instead of r-ROME's consistent one.
    pub original_key: bool,
}

impl Default for EditHparams {
    fn default() -> Self {
        Self::from(&base_hparams(None, None))
    }
}

impl From<&RomeHparams> for EditHparams {
    fn from(h: &RomeHparams) -> Self {
        Self {
            layer: h.layers.first().copied().unwrap_or(0),
            steps: h.v_num_grad_steps,
            lr: h.v_lr,
            kl_factor: h.kl_factor,
            clamp_norm_factor: h.clamp_norm_factor,
            weight_decay: h.v_weight_decay,
            original_key: h.key == KeyChoice::Original,
        }
    }
}

/// The model's checked-in hyperparameters, else ROME's GPT-2 XL values.
pub fn base_hparams(model: Option<&Path>, settings: Option<&Settings>) -> RomeHparams {
    model
        .zip(settings)
        .and_then(|(m, s)| engram_editing::jobs::setup::resolve_hparams(m, None, s).ok())
        .or_else(|| RomeHparams::builtin("gpt2-xl"))
        .unwrap_or_else(|| RomeHparams {
            layers: vec![0],
            fact_token: "subject_last".into(),
            v_num_grad_steps: 20,
            v_lr: 0.5,
            v_loss_layer: 0,
            v_weight_decay: 0.5,
            clamp_norm_factor: 4.0,
            kl_factor: 0.0625,
            mom2_adjustment: true,
            context_template_length_params: vec![(5, 10), (10, 10)],
            key: KeyChoice::Consistent,
            source: String::new(),
        })
}

/// One ledger entry as the panel lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    pub id: usize,
    pub applied: bool,
    /// "rome", "r-rome" or "memit".
    pub method: String,
    /// MEMIT: the entries of one batch share it and toggle together.
    pub batch: Option<usize>,
    /// Requests the entry carries (1 for ROME).
    pub n_requests: usize,
    pub subject: String,
    pub prompt: String,
    pub target: String,
    pub layer: usize,
    pub delta_norm: f32,
    pub seconds: f64,
    /// ‖ΔW‖_F and its ratio to the layer's ‖W‖_F when applied.
    pub norms: Option<engram_editing::EditNorms>,
}

pub type LedgerView = Vec<LedgerEntry>;

/// A finished FT-L edit: the job's report and the ledger after it.
#[derive(Debug, Clone, PartialEq)]
pub struct FtView {
    pub report: engram_editing::jobs::ft::FtReport,
    pub ledger: LedgerView,
}

/// A finished MEMIT batch: the job's report and the ledger after it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchView {
    pub report: MemitReport,
    pub ledger: LedgerView,
}

impl std::ops::Deref for BatchView {
    type Target = MemitReport;
    fn deref(&self) -> &MemitReport {
        &self.report
    }
}

/// `subject | prompt | target` lines as requests; a bad line is named.
pub fn parse_batch(text: &str) -> Result<Vec<EditRequest>, JobError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let parts: Vec<&str> = l.split('|').map(str::trim).collect();
            match parts.as_slice() {
                [subject, prompt, target] if !subject.is_empty() && !prompt.is_empty() => {
                    Ok(EditRequest {
                        prompt: prompt.to_string(),
                        subject: subject.to_string(),
                        target: target.to_string(),
                    })
                }
                _ => Err(failed(format!(
                    "batch line {}: expected `subject | prompt | target`, got {l:?}",
                    i + 1
                ))),
            }
        })
        .collect()
}

/// A finished edit: the job's report and the ledger after it.
#[derive(Debug, Clone, PartialEq)]
pub struct EditView {
    pub report: RomeReport,
    pub ledger: LedgerView,
}

impl std::ops::Deref for EditView {
    type Target = RomeReport;
    fn deref(&self) -> &RomeReport {
        &self.report
    }
}

/// A finished evaluation, as the Edit panel shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalView {
    pub method: String,
    pub cases: usize,
    pub skipped: usize,
    pub seconds: f64,
    pub summary: Vec<engram_datasets::summary::MetricSummary>,
    /// ROME's S (harmonic mean of ES, PS, NS).
    pub score: Option<f64>,
    /// The stored `eval` run.
    pub run_id: String,
}

/// What the ledger list asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerOp {
    Set { id: usize, applied: bool },
    Remove(usize),
    RevertAll,
}

/// Edits of the loaded model: the ledger, and the statistics and context
/// prefixes computed for it (reused by later edits).
pub struct EditState<B: Backend> {
    ledger: Option<Ledger<B>>,
    /// (layer, corpus, tokens) → C factorised.
    cov: Option<((usize, String, usize), KeyCovariance)>,
    templates: Option<Vec<String>>,
    /// MEMIT: (layers, corpus, tokens) → C per layer, and the template groups.
    memit: Option<MemitCache>,
}

type MemitCache = (
    (Vec<usize>, String, usize),
    Vec<LayerMom2>,
    Vec<Vec<String>>,
);

impl<B: Backend> Default for EditState<B> {
    fn default() -> Self {
        Self {
            ledger: None,
            cov: None,
            templates: None,
            memit: None,
        }
    }
}

fn failed(e: impl std::fmt::Display) -> JobError {
    JobError::Failed(e.to_string())
}

fn edit_error(e: EditError) -> JobError {
    JobError::from_lib(e)
}

/// The form's single request, refused before any long work where the
/// subject, target or tokens do not fit the model.
fn checked_request<B: Backend>(
    lm: &LanguageModel<B>,
    form: &EditSettings,
) -> Result<EditRequest, JobError> {
    let request = EditRequest {
        prompt: form.prompt.trim_end().to_string(),
        subject: form.subject.trim().to_string(),
        target: form.target.clone(),
    };
    request.template().map_err(edit_error)?;
    engram_editing::memit::check_batch(lm, std::slice::from_ref(&request)).map_err(edit_error)?;
    Ok(request)
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

impl<B: Backend> EditState<B> {
    fn ledger(&mut self, lm: &LanguageModel<B>) -> Result<&mut Ledger<B>, JobError> {
        if self.ledger.is_none() {
            let hash = engram_model::source::model_hash(&lm.source).map_err(failed)?;
            self.ledger = Some(Ledger::new(hash));
        }
        self.ledger.as_mut().ok_or(JobError::NoModel)
    }

    pub fn view(&self) -> LedgerView {
        let Some(ledger) = &self.ledger else {
            return Vec::new();
        };
        ledger
            .edits()
            .iter()
            .map(|e| {
                let requests = e.edit.requests();
                let first = requests.first().cloned().unwrap_or(EditRequest {
                    prompt: String::new(),
                    subject: String::new(),
                    target: String::new(),
                });
                LedgerEntry {
                    id: e.id,
                    applied: e.applied,
                    method: e.method.clone(),
                    batch: e.batch,
                    n_requests: requests.len(),
                    subject: first.subject,
                    prompt: first.prompt,
                    target: first.target,
                    layer: e.edit.layer(),
                    delta_norm: match &e.edit {
                        EditPayload::Rome(r) => r.delta_norm,
                        EditPayload::Memit(m) => m.residual_norm,
                        EditPayload::Dense(d) => d.losses.last().copied().unwrap_or(f32::NAN),
                    },
                    seconds: e.edit.seconds(),
                    norms: e.norms,
                }
            })
            .collect()
    }

    /// FT-L on the form's request at the form's layer, with the model's
    /// checked-in FT-L settings (else the demo's); stored as an `edit` run.
    pub fn edit_ft(
        &mut self,
        lm: &mut LanguageModel<B>,
        model: &str,
        form: &EditSettings,
        settings: &Settings,
        ctl: &Control,
    ) -> Result<FtView, JobError> {
        let request = checked_request(lm, form)?;
        let mut hparams =
            engram_editing::jobs::setup::resolve_ft_hparams(&lm.source, None, settings)
                .ok()
                .or_else(|| engram_editing::ft::FtHparams::builtin("demo"))
                .ok_or_else(|| failed("no FT-L hyperparameters"))?;
        hparams.layer = form.hparams.layer;
        let req = engram_editing::jobs::ft::FtRequest {
            request,
            hparams,
            paraphrases: lines(&form.paraphrases),
            neighbours: lines(&form.neighbours),
            generate_tokens: 20,
        };
        let store = engram_datasets::RunStore::open(&settings.runs).map_err(failed)?;
        self.ledger(lm)?;
        let Some(ledger) = self.ledger.as_mut() else {
            return Err(JobError::NoModel);
        };
        let report = engram_editing::jobs::ft::run_ft(lm, model, ledger, &req, &store, ctl)
            .map_err(edit_error)?;
        Ok(FtView {
            report,
            ledger: self.view(),
        })
    }

    /// Compute and apply one ROME edit, probing before and after; stored as an `edit` run.
    pub fn edit(
        &mut self,
        lm: &mut LanguageModel<B>,
        model: &str,
        form: &EditSettings,
        settings: &Settings,
        ctl: &Control,
    ) -> Result<EditView, JobError> {
        let request = checked_request(lm, form)?;
        let mut hp = base_hparams(Some(&lm.source), Some(settings));
        let h = &form.hparams;
        let n_layers = lm.model.config.n_layers;
        if h.layer >= n_layers {
            return Err(failed(EditError::Layer {
                layer: h.layer,
                n_layers,
            }));
        }
        hp.layers = vec![h.layer];
        hp.v_num_grad_steps = h.steps.max(1);
        hp.v_lr = h.lr;
        hp.kl_factor = h.kl_factor;
        hp.clamp_norm_factor = h.clamp_norm_factor;
        hp.v_weight_decay = h.weight_decay;
        hp.key = if h.original_key {
            KeyChoice::Original
        } else {
            KeyChoice::Consistent
        };
        let corpus = form.corpus.trim();
        let key = (h.layer, corpus.to_string(), form.stats_tokens);
        if self.cov.as_ref().map(|(k, _)| k) != Some(&key) {
            let path = (!corpus.is_empty()).then(|| PathBuf::from(corpus));
            let cov = key_covariance(
                lm,
                h.layer,
                path.as_deref(),
                form.stats_tokens,
                settings,
                ctl,
            )
            .map_err(edit_error)?;
            self.cov = Some((key, cov.covariance));
        }
        if self.templates.is_none() {
            ctl.tick("context prefixes", 0, 1);
            self.templates = Some(rome_templates(lm, &hp).map_err(edit_error)?);
        }
        let store = engram_datasets::RunStore::open(&settings.runs).map_err(failed)?;
        self.ledger(lm)?;
        let (Some((_, cov)), Some(templates), Some(ledger)) =
            (&self.cov, &self.templates, self.ledger.as_mut())
        else {
            return Err(JobError::NoModel);
        };
        let req = RomeRequest {
            request,
            hparams: hp,
            paraphrases: lines(&form.paraphrases),
            neighbours: lines(&form.neighbours),
            generate_tokens: 20,
        };
        let report =
            run_rome(lm, model, ledger, &req, cov, templates, &store, ctl).map_err(edit_error)?;
        Ok(EditView {
            report,
            ledger: self.view(),
        })
    }

    /// Check, compute and apply a MEMIT batch, probing each request's prompt
    /// before and after; stored as a `memit` run.
    pub fn memit(
        &mut self,
        lm: &mut LanguageModel<B>,
        model: &str,
        form: &EditSettings,
        z_workers: usize,
        settings: &Settings,
        ctl: &Control,
    ) -> Result<BatchView, JobError> {
        let requests = if form.batch_file.trim().is_empty() {
            parse_batch(&form.batch)?
        } else {
            engram_editing::jobs::setup::load_requests(std::path::Path::new(form.batch_file.trim()))
                .map_err(failed)?
        };
        if requests.is_empty() {
            return Err(failed("the batch has no requests"));
        }
        engram_editing::memit::check_batch(lm, &requests).map_err(edit_error)?;
        let hp = memit_hparams(lm, form, settings);
        let corpus = form.corpus.trim();
        let key = (hp.layers.clone(), corpus.to_string(), form.stats_tokens);
        if self.memit.as_ref().map(|(k, _, _)| k) != Some(&key) {
            let path = (!corpus.is_empty()).then(|| PathBuf::from(corpus));
            let (covs, groups) =
                memit_setup(lm, &hp, path.as_deref(), form.stats_tokens, settings, ctl)
                    .map_err(edit_error)?;
            self.memit = Some((key, covs, groups));
        }
        let store = engram_datasets::RunStore::open(&settings.runs).map_err(failed)?;
        self.ledger(lm)?;
        let (Some((_, covs, groups)), Some(ledger)) = (&self.memit, self.ledger.as_mut()) else {
            return Err(JobError::NoModel);
        };
        let req = MemitRequest {
            requests,
            hparams: hp,
            z_chunk: 16,
            z_workers,
            alphaedit: (form.batch_method == "alphaedit").then(|| alphaedit_options(lm, settings)),
        };
        let report =
            run_memit(lm, model, ledger, &req, covs, groups, &store, ctl).map_err(edit_error)?;
        Ok(BatchView {
            report,
            ledger: self.view(),
        })
    }

    pub fn ledger_op(
        &mut self,
        lm: &mut LanguageModel<B>,
        op: &LedgerOp,
    ) -> Result<LedgerView, JobError> {
        let ledger = self.ledger(lm)?;
        match *op {
            LedgerOp::Set { id, applied } => ledger
                .set_applied(&mut lm.model, id, applied)
                .map_err(edit_error)?,
            LedgerOp::Remove(id) => {
                ledger.remove(&mut lm.model, id).map_err(edit_error)?;
            }
            LedgerOp::RevertAll => ledger.revert_all(&mut lm.model),
        }
        Ok(self.view())
    }

    /// Edit each of the form's evaluation cases on fresh weights and score it
    /// (ROME's CounterFact conventions), stored as an `eval` run: the same job
    /// as `engram eval counterfact`.
    pub fn evaluate(
        &mut self,
        lm: &mut LanguageModel<B>,
        model: &str,
        form: &EditSettings,
        z_workers: usize,
        settings: &Settings,
        ctl: &Control,
    ) -> Result<EvalView, JobError> {
        use engram_editing::jobs::evaluate::{
            run_eval, BenchCase, EvalMethod, EvalOptions, EvalRequest,
        };
        if self
            .ledger
            .as_ref()
            .is_some_and(|l| l.edits().iter().any(|e| e.applied))
        {
            return Err(failed(
                "edits are applied: revert them in the ledger first, so that every case is edited on the original weights",
            ));
        }
        if form.eval_cases == 0 {
            return Err(failed("evaluate at least one case"));
        }
        let data = form.eval_data.trim();
        let cases = if data.is_empty() {
            if !engram_model::source::is_demo(&lm.source, settings) {
                return Err(failed(
                    "choose a CounterFact file to evaluate on (the demo facts serve the demo model only)",
                ));
            }
            engram_editing::jobs::setup::demo_eval_cases()
        } else {
            engram_editing::jobs::setup::counterfact_cases(Path::new(data))
                .map_err(failed)?
                .0
        };
        let cases: Vec<BenchCase> = cases.into_iter().map(BenchCase::CounterFact).collect();
        let n = form.eval_cases;
        let method = match form.eval_method.as_str() {
            "memit" | "alphaedit" => EvalMethod::Memit {
                hparams: memit_hparams(lm, form, settings),
                batch: n,
                z_chunk: 16,
                z_workers,
                z_cache: None,
                alphaedit: (form.eval_method == "alphaedit")
                    .then(|| alphaedit_options(lm, settings)),
            },
            "ft-l" => EvalMethod::Ft(
                engram_editing::jobs::setup::resolve_ft_hparams(&lm.source, None, settings)
                    .map_err(failed)?,
            ),
            m => {
                let mut hp = base_hparams(Some(&lm.source), Some(settings));
                hp.key = if m == "rome" {
                    KeyChoice::Original
                } else {
                    KeyChoice::Consistent
                };
                EvalMethod::Rome(hp)
            }
        };
        let req = EvalRequest {
            cases,
            benchmark: "counterfact".into(),
            options: EvalOptions {
                n,
                sequential: false,
                distinct_subjects: matches!(method, EvalMethod::Memit { .. }),
                checkpoints: Vec::new(),
                fluency_tokens: 0,
                journal: None,
            },
            method,
            corpus: (!form.corpus.trim().is_empty()).then(|| PathBuf::from(form.corpus.trim())),
            stats_tokens: form.stats_tokens,
            dataset: (!data.is_empty()).then(|| PathBuf::from(data)),
            cases_from: None,
            shard: None,
        };
        let store = engram_datasets::RunStore::open(&settings.runs).map_err(failed)?;
        let r = run_eval(lm, model, &req, &store, settings, ctl).map_err(edit_error)?;
        Ok(EvalView {
            method: req.method.name().to_string(),
            cases: r.outcome.rows.len(),
            skipped: r.outcome.skipped.len(),
            seconds: r.outcome.seconds,
            summary: r.summary,
            score: r.score,
            run_id: r.run.id,
        })
    }

    /// Revert every edit, then apply the ledger at `path` (its base must be this model).
    pub fn import(
        &mut self,
        lm: &mut LanguageModel<B>,
        path: &Path,
    ) -> Result<LedgerView, JobError> {
        let hash = engram_model::source::model_hash(&lm.source).map_err(failed)?;
        if let Some(ledger) = self.ledger.as_mut() {
            ledger.revert_all(&mut lm.model);
        }
        let ledger = Ledger::import(path, &mut lm.model, &hash).map_err(edit_error)?;
        self.ledger = Some(ledger);
        Ok(self.view())
    }

    /// Save the model with its applied edits as a new checkpoint directory.
    pub fn save(&mut self, lm: &LanguageModel<B>, out: &Path) -> Result<PathBuf, JobError> {
        if out.as_os_str().is_empty() {
            return Err(failed("choose a directory to save into"));
        }
        self.ledger(lm)?.save(lm, out).map_err(edit_error)
    }
}

/// The model's checked-in MEMIT hyperparameters, else MEMIT's GPT-2 XL values
/// at the form's layer.
/// AlphaEdit's threshold and L2 for the loaded model: its checked-in file,
/// else AlphaEdit's published 2e-2 and 10.
fn alphaedit_options<B: Backend>(
    lm: &LanguageModel<B>,
    settings: &Settings,
) -> engram_editing::jobs::memit::AlphaEditOptions {
    let (threshold, l2) =
        engram_editing::jobs::setup::resolve_alphaedit_hparams(&lm.source, None, settings)
            .map_or((2e-2, 10.0), |h| (h.nullspace_threshold, h.l2));
    engram_editing::jobs::memit::AlphaEditOptions { threshold, l2 }
}

fn memit_hparams<B: Backend>(
    lm: &LanguageModel<B>,
    form: &EditSettings,
    settings: &Settings,
) -> MemitHparams {
    engram_editing::jobs::setup::resolve_memit_hparams(&lm.source, None, settings)
        .ok()
        .or_else(|| {
            MemitHparams::builtin("gpt2-xl").map(|mut h| {
                h.layers = vec![form.hparams.layer];
                h.v_loss_layer = lm.model.config.n_layers.saturating_sub(1);
                h
            })
        })
        .unwrap_or_else(|| MemitHparams {
            layers: vec![form.hparams.layer],
            fact_token: "subject_last".into(),
            v_num_grad_steps: 20,
            v_lr: 0.5,
            v_loss_layer: 0,
            v_weight_decay: 0.5,
            clamp_norm_factor: 0.75,
            kl_factor: 0.0625,
            mom2_adjustment: true,
            mom2_update_weight: 20000.0,
            context_template_length_params: vec![(10, 5)],
            source: String::new(),
        })
}
