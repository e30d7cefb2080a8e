//! The model side of the Edit panel: ROME edits (Meng et al. 2022) and MEMIT
//! batches (Meng et al. 2023) through the `engram-editing` ledger, before/after
//! probes of the prompt, paraphrases and neighbourhood prompts, ledger toggles
//! and saving. Runs on the worker thread.

use std::path::{Path, PathBuf};

use engram::editing::eval::teacher_force;
use engram::editing::memit::compute_z::compute_zs;
use engram::editing::memit::update::LayerMom2;
use engram::editing::memit::{apply_memit, check_batch, MemitHparams};
use engram::editing::rome::compute_u::KeyCovariance;
use engram::editing::rome::compute_v::VStep;
use engram::editing::rome::{rome_edit, EditRequest, KeyChoice, RomeHparams};
use engram::editing::{EditError, EditPayload, Ledger};
use engram::model::burn_tensor::backend::Backend;
use engram::model::{generate, GenerateConfig, LanguageModel, Sampling};
use serde::{Deserialize, Serialize};

use crate::error::JobError;
use crate::session::{Progress, ProgressFn};

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
        Self::from(&base_hparams(None))
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
pub fn base_hparams(model: Option<&Path>) -> RomeHparams {
    model
        .and_then(|m| engram::edit::resolve_hparams(m, None).ok())
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

/// Which list a probed prompt comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Prompt,
    Paraphrase,
    Neighbour,
}

/// One prompt before and after an edit.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    pub kind: ProbeKind,
    pub prompt: String,
    /// The top-1 token and its probability.
    pub before_top: (String, f32),
    pub after_top: (String, f32),
    /// The probability of the whole new target (all its tokens).
    pub before_target: f32,
    pub after_target: f32,
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
}

pub type LedgerView = Vec<LedgerEntry>;

/// One request of a MEMIT batch before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    pub request: EditRequest,
    pub before_top: (String, f32),
    pub after_top: (String, f32),
    pub before_target: f32,
    pub after_target: f32,
}

/// A finished MEMIT batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchView {
    /// The ledger batch; `ids` are its entries (one per layer).
    pub batch: usize,
    pub ids: Vec<usize>,
    pub layers: Vec<usize>,
    pub lambda: f64,
    pub rows: Vec<BatchRow>,
    pub warnings: Vec<String>,
    /// Mean |z − h| before each layer and after the last.
    pub residual_norms: Vec<f32>,
    pub z_seconds: f64,
    pub keys_seconds: f64,
    pub solve_seconds: f64,
    pub ledger: LedgerView,
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

/// A finished edit.
#[derive(Debug, Clone, PartialEq)]
pub struct EditView {
    pub id: usize,
    pub request: EditRequest,
    pub layer: usize,
    pub key: KeyChoice,
    pub stats_tokens: u64,
    pub seconds: f64,
    pub steps: Vec<VStep>,
    pub probes: Vec<ProbeRow>,
    pub generation_before: String,
    pub generation_after: String,
    pub ledger: LedgerView,
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
    match e {
        EditError::Cancelled => JobError::Cancelled,
        other => failed(other),
    }
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
            let hash = engram::lens::model_hash(&lm.source).map_err(failed)?;
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
                    },
                    seconds: e.edit.seconds(),
                }
            })
            .collect()
    }

    /// Compute and apply one ROME edit, probing before and after.
    pub fn edit(
        &mut self,
        lm: &mut LanguageModel<B>,
        form: &EditSettings,
        progress: ProgressFn<'_>,
    ) -> Result<EditView, JobError> {
        let request = EditRequest {
            prompt: form.prompt.trim_end().to_string(),
            subject: form.subject.trim().to_string(),
            target: form.target.clone(),
        };
        // Refuse a bad request before any long work.
        request.template().map_err(edit_error)?;
        let mut hp = base_hparams(Some(&lm.source));
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
            let mut on_stats = |done: u64, total: u64| {
                progress(Progress {
                    done: done as usize,
                    total: total as usize,
                    note: format!("layer {} statistics: {done}/{total} key vectors", h.layer),
                })
            };
            let (cov, _, _) = engram::edit::key_covariance_with(
                lm,
                &lm.source,
                h.layer,
                path.as_deref(),
                form.stats_tokens,
                &mut on_stats,
            )
            .map_err(|e| {
                if e.downcast_ref::<EditError>()
                    .is_some_and(|e| matches!(e, EditError::Cancelled))
                {
                    JobError::Cancelled
                } else {
                    JobError::Failed(format!("{e:#}"))
                }
            })?;
            self.cov = Some((key, cov));
        }
        if self.templates.is_none() {
            progress(Progress {
                done: 0,
                total: hp.v_num_grad_steps,
                note: "context prefixes".into(),
            });
            self.templates = Some(
                engram::editing::rome::context::context_templates(
                    &lm.model,
                    &lm.tokenizer,
                    &hp.context_template_length_params,
                    0,
                )
                .map_err(edit_error)?,
            );
        }
        let (Some((_, cov)), Some(templates)) = (&self.cov, &self.templates) else {
            return Err(JobError::NoModel);
        };
        let probes: Vec<(ProbeKind, String)> =
            std::iter::once((ProbeKind::Prompt, request.prompt.clone()))
                .chain(
                    lines(&form.paraphrases)
                        .into_iter()
                        .map(|p| (ProbeKind::Paraphrase, p)),
                )
                .chain(
                    lines(&form.neighbours)
                        .into_iter()
                        .map(|p| (ProbeKind::Neighbour, p)),
                )
                .collect();
        let before = probe(lm, &probes, &request.target)?;
        let generation_before = greedy(lm, &request.prompt)?;
        let edit = rome_edit(lm, &request, &hp, cov, templates, &mut |step, total| {
            progress(Progress {
                done: step,
                total,
                note: format!("v* step {}/{total}", step + 1),
            })
        })
        .map_err(edit_error)?;
        let (layer, key, stats_tokens, seconds, steps) = (
            edit.layer,
            edit.key,
            edit.stats_tokens,
            edit.seconds,
            edit.steps.clone(),
        );
        let id = self
            .ledger(lm)?
            .push(&mut lm.model, edit)
            .map_err(edit_error)?;
        let after = probe(lm, &probes, &request.target)?;
        let generation_after = greedy(lm, &request.prompt)?;
        let probes = probes
            .into_iter()
            .zip(before.into_iter().zip(after))
            .map(|((kind, prompt), (b, a))| ProbeRow {
                kind,
                prompt,
                before_top: b.0,
                after_top: a.0,
                before_target: b.1,
                after_target: a.1,
            })
            .collect();
        Ok(EditView {
            id,
            request,
            layer,
            key,
            stats_tokens,
            seconds,
            steps,
            probes,
            generation_before,
            generation_after,
            ledger: self.view(),
        })
    }

    /// Check, compute and apply a MEMIT batch, probing each request's prompt
    /// before and after.
    pub fn memit(
        &mut self,
        lm: &mut LanguageModel<B>,
        form: &EditSettings,
        z_workers: usize,
        progress: ProgressFn<'_>,
    ) -> Result<BatchView, JobError> {
        let requests = if form.batch_file.trim().is_empty() {
            parse_batch(&form.batch)?
        } else {
            engram::edit::load_requests(std::path::Path::new(form.batch_file.trim()))
                .map_err(|e| failed(format!("{e:#}")))?
        };
        if requests.is_empty() {
            return Err(failed("the batch has no requests"));
        }
        let warnings = check_batch(lm, &requests).map_err(edit_error)?;
        let hp = memit_hparams(lm, form);
        let corpus = form.corpus.trim();
        let key = (hp.layers.clone(), corpus.to_string(), form.stats_tokens);
        if self.memit.as_ref().map(|(k, _, _)| k) != Some(&key) {
            let path = (!corpus.is_empty()).then(|| PathBuf::from(corpus));
            let layers = hp.layers.clone();
            let (covs, groups) = engram::edit::memit_setup(
                lm,
                &lm.source,
                &hp,
                path.as_deref(),
                form.stats_tokens,
                &mut |done, total| {
                    progress(Progress {
                        done: done as usize,
                        total: total as usize,
                        note: format!("layers {layers:?} statistics: {done}/{total} key vectors"),
                    })
                },
            )
            .map_err(|e| {
                if e.downcast_ref::<EditError>()
                    .is_some_and(|e| matches!(e, EditError::Cancelled))
                {
                    JobError::Cancelled
                } else {
                    JobError::Failed(format!("{e:#}"))
                }
            })?;
            self.memit = Some((key, covs, groups));
        }
        let Some((_, covs, groups)) = &self.memit else {
            return Err(JobError::NoModel);
        };
        let prompts: Vec<(ProbeKind, String)> = requests
            .iter()
            .map(|r| (ProbeKind::Prompt, r.prompt.clone()))
            .collect();
        let before: Vec<Probe> = requests
            .iter()
            .zip(&prompts)
            .map(|(r, p)| probe(lm, std::slice::from_ref(p), &r.target).map(|mut v| v.remove(0)))
            .collect::<Result<_, _>>()?;
        let flat: Vec<String> = groups.iter().flatten().cloned().collect();
        let n = requests.len();
        let (zs, z_seconds) = compute_zs(
            lm,
            &requests,
            &hp,
            &flat,
            16,
            z_workers,
            &mut |done, total| {
                progress(Progress {
                    done,
                    total,
                    note: format!("z: {done}/{total} requests"),
                })
            },
        )
        .map_err(edit_error)?;
        let (covs, groups) = (covs.clone(), groups.clone());
        let ledger = self.ledger(lm)?;
        let out = apply_memit(
            lm,
            ledger,
            &requests,
            &zs,
            &hp,
            &covs,
            &groups,
            &mut |i, l| {
                progress(Progress {
                    done: n,
                    total: n,
                    note: format!("update: layer {}/{l}", i + 1),
                })
            },
        )
        .map_err(edit_error)?;
        let rows = requests
            .iter()
            .zip(before)
            .map(|(r, b)| {
                let a = probe(lm, &[(ProbeKind::Prompt, r.prompt.clone())], &r.target)?.remove(0);
                Ok(BatchRow {
                    request: r.clone(),
                    before_top: b.0,
                    after_top: a.0,
                    before_target: b.1,
                    after_target: a.1,
                })
            })
            .collect::<Result<_, JobError>>()?;
        Ok(BatchView {
            batch: out.batch,
            ids: out.ids.clone(),
            layers: hp.layers.clone(),
            lambda: hp.mom2_update_weight,
            rows,
            warnings,
            residual_norms: out.residual_norms.clone(),
            z_seconds,
            keys_seconds: out.keys_seconds,
            solve_seconds: out.solve_seconds,
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
fn memit_hparams<B: Backend>(lm: &LanguageModel<B>, form: &EditSettings) -> MemitHparams {
    engram::edit::resolve_memit_hparams(&lm.source, None)
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

/// A prompt's top-1 token with its probability, and p(target).
type Probe = ((String, f32), f32);

/// Probe each prompt.
fn probe<B: Backend>(
    lm: &LanguageModel<B>,
    prompts: &[(ProbeKind, String)],
    target: &str,
) -> Result<Vec<Probe>, JobError> {
    prompts
        .iter()
        .map(|(_, p)| {
            let top = lm.top_k(p, 1)?;
            let best = top
                .first()
                .map(|t| (t.token.clone(), t.prob))
                .unwrap_or_default();
            let forced = teacher_force(lm, std::slice::from_ref(p), target).map_err(edit_error)?;
            let logp: f32 = forced
                .first()
                .map_or(f32::NEG_INFINITY, |f| f.logp.iter().sum());
            Ok((best, logp.exp()))
        })
        .collect()
}

/// The prompt and up to 20 greedy tokens after it (fewer where the context ends).
fn greedy<B: Backend>(lm: &LanguageModel<B>, prompt: &str) -> Result<String, JobError> {
    let ids = lm.encode_prompt(prompt)?;
    let room = lm.model.config.n_ctx.saturating_sub(ids.len()).min(20);
    if room == 0 {
        return Ok(String::new());
    }
    let cfg = GenerateConfig {
        max_new_tokens: room,
        sampling: Sampling::Greedy,
        stop_at_eos: true,
        kv_cache: true,
    };
    let mut all = ids.clone();
    all.extend(generate(&lm.model, &[ids], &cfg)?.into_iter().flatten());
    Ok(lm.tokenizer.decode(&all)?)
}
