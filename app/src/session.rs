//! The model side of the workbench: a loaded model on some backend, and the
//! typed results each panel shows. Everything here runs on the worker thread.

use std::path::{Path, PathBuf};
use std::time::Instant;

use engram_analysis::lens::LensSite;
use engram_datasets::facts::{load_fact_set, UserFact};
use engram_datasets::OnBadRecord;
use engram_model::backend::{with_backend, BackendJob, Dtype};
use engram_model::burn_tensor::backend::Backend;
use engram_model::generate::generate_with;
use engram_model::lm::{prob_of, top_k_from_logits};
use engram_model::{
    ActivationCache, Batch, BlockSite, Control, DeviceSpec, GenerateConfig, HookPoint,
    LanguageModel, Sampling, Settings, TokenProb,
};

use crate::editor::{BatchView, EditSettings, EditState, EditView, LedgerOp, LedgerView};
use crate::error::JobError;
use crate::memories::{
    AttributionView, LayerTriggers, MemoriesRequest, MemoriesView, TriggersView,
};

/// One token, as shown on a chip.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub text: String,
}

/// What the model card shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    /// What the user typed: a path, a hub id or `demo`.
    pub source: String,
    /// The local path it resolved to.
    pub path: PathBuf,
    pub architecture: String,
    pub model_type: String,
    pub parameters: usize,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_mlp: usize,
    pub gated_mlp: bool,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub vocab_size: usize,
    pub n_ctx: usize,
    pub positions: String,
    pub block: String,
    pub hooks: Vec<String>,
    pub device: DeviceSpec,
    pub dtype: Dtype,
    pub load_seconds: f64,
    /// The model's checked-in ROME hyperparameters, if it has some.
    pub rome: Option<crate::editor::EditHparams>,
    /// What the config check let through but a researcher should know.
    pub warnings: Vec<String>,
}

/// The next-token table for a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct NextTokens {
    pub prompt: String,
    pub tokens: Vec<Token>,
    pub top: Vec<TokenProb>,
}

/// Generation settings as the playground shows them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GenParams {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no nucleus cut.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 12,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl GenParams {
    fn sampling(&self) -> Sampling {
        if self.temperature <= 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature: self.temperature,
                top_k: (self.top_k > 0).then_some(self.top_k),
                top_p: (self.top_p < 1.0).then_some(self.top_p),
                seed: self.seed,
            }
        }
    }
}

/// A steering vector applied to the prompt: its continuation without and with it.
#[derive(Debug, Clone, PartialEq)]
pub struct SteerView {
    pub prompt: String,
    pub layer: usize,
    pub coef: f32,
    pub norm: f32,
    pub before: String,
    pub after: String,
    pub vector_run: String,
    pub apply_run: String,
}

/// A finished (or cancelled-part-way) generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt: String,
    pub new_tokens: Vec<Token>,
    pub text: String,
}

/// The logit lens: `cells[layer][position]` holds the top-k tokens there.
#[derive(Debug, Clone, PartialEq)]
pub struct LensGrid {
    pub prompt: String,
    pub site: LensSite,
    pub tokens: Vec<Token>,
    pub cells: Vec<Vec<Vec<(Token, f32)>>>,
    /// The model's final top-1 token at the last position, and the first layer
    /// at which the lens already ranks it first there.
    pub final_token: Token,
    pub first_top1_layer: Option<usize>,
    /// The stored `lens` run.
    pub run_id: String,
}

/// Attention patterns of every layer: `pattern[layer][head]` is `[query * key]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionPatterns {
    pub prompt: String,
    pub tokens: Vec<Token>,
    pub n_heads: usize,
    pub pattern: Vec<Vec<Vec<f32>>>,
}

/// One fact of a fact set, checked against the model.
#[derive(Debug, Clone, PartialEq)]
pub struct FactCheck {
    pub fact: UserFact,
    pub predicted: Token,
    pub predicted_prob: f32,
    pub target_prob: f32,
    pub correct: bool,
}

/// A fact set run through the model.
#[derive(Debug, Clone, PartialEq)]
pub struct FactReport {
    pub path: PathBuf,
    pub checked: Vec<FactCheck>,
    /// Records the loader skipped, with the reason.
    pub skipped: Vec<String>,
    /// True where the job was cancelled before the end.
    pub partial: bool,
}

/// What the Locate panel asks for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TraceRequest {
    pub subject: String,
    pub target: String,
    pub samples: usize,
    pub window: usize,
    /// ν = this × the embedding std of the subjects (ROME: 3).
    pub noise_multiple: f32,
    pub uniform: bool,
    /// Activation patching: the subject of the corrupted prompt (same token length).
    pub corrupt_subject: String,
}

/// Activation patching of one fact, as the Locate panel draws it.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchView {
    pub prompt: String,
    pub corrupted_prompt: String,
    pub tokens: Vec<String>,
    pub answer: String,
    pub corrupted_answer: String,
    pub clean_logit_diff: f32,
    pub corrupted_logit_diff: f32,
    /// `(site, recovery[layer][position or head])`, empty for attribution only.
    pub sites: Vec<(String, Vec<Vec<f32>>)>,
    pub exact_seconds: Option<f64>,
    /// Attribution patching's estimated recovery, the same shape per site.
    pub attribution: Vec<(String, Vec<Vec<f32>>)>,
    pub attribution_seconds: f64,
    /// Spearman's ρ of the estimates against the exact resid/attn/mlp patches.
    pub spearman: Option<f64>,
    /// The stored `patch` run.
    pub run_id: String,
}

impl Default for TraceRequest {
    fn default() -> Self {
        Self {
            subject: "Quinford Belvale".into(),
            target: "Quarnholm".into(),
            samples: 10,
            window: 0,
            noise_multiple: 3.0,
            uniform: false,
            corrupt_subject: "Quinford Salin".into(),
        }
    }
}

/// A causal trace of one fact, as the Locate panel draws it.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceView {
    pub prompt: String,
    pub tokens: Vec<Token>,
    pub subject: std::ops::Range<usize>,
    pub target: Token,
    pub predicted: Token,
    pub clean_prob: f32,
    pub corrupted_prob: f32,
    pub noise_scale: f32,
    /// `(kind name, scores[token][layer])`
    pub kinds: Vec<(String, Vec<Vec<f32>>)>,
    /// The stored `trace` run.
    pub run_id: String,
}

/// How far a job is.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub note: String,
}

/// Called with progress; returns false to ask the job to stop.
pub type ProgressFn<'a> = &'a mut dyn FnMut(Progress) -> bool;

/// A model loaded on one backend. Object-safe so the worker can hold any backend.
pub trait Session {
    fn card(&self) -> &ModelCard;
    fn next_tokens(&self, prompt: &str, k: usize) -> Result<NextTokens, JobError>;
    fn generate(
        &self,
        prompt: &str,
        params: GenParams,
        progress: ProgressFn<'_>,
    ) -> Result<Generation, JobError>;
    /// A steering vector from the form, and the prompt continued without and with it; both stored as runs.
    fn steer(
        &self,
        prompt: &str,
        form: &crate::settings::SteerSettings,
    ) -> Result<SteerView, JobError>;
    fn lens(&self, prompt: &str, site: LensSite, k: usize) -> Result<LensGrid, JobError>;
    fn attention(&self, prompt: &str) -> Result<AttentionPatterns, JobError>;
    fn check_facts(
        &self,
        path: &Path,
        limit: usize,
        progress: ProgressFn<'_>,
    ) -> Result<FactReport, JobError>;
    /// ROME's causal trace of one fact; `noise_subjects` set the noise scale.
    fn trace(
        &self,
        prompt: &str,
        request: &TraceRequest,
        noise_subjects: &[String],
        ctl: &Control,
    ) -> Result<TraceView, JobError>;
    /// Activation patching (clean into corrupted) of one fact, exact where
    /// `exact` and always by attribution patching, stored as a run.
    fn patch(
        &self,
        prompt: &str,
        request: &TraceRequest,
        exact: bool,
    ) -> Result<PatchView, JobError>;
    /// A ROME edit of the loaded weights, recorded in the ledger and stored as a run.
    fn edit(&mut self, form: &EditSettings, ctl: &Control) -> Result<EditView, JobError>;
    /// An FT-L edit of the loaded weights, recorded in the ledger and stored as a run.
    fn edit_ft(
        &mut self,
        form: &EditSettings,
        ctl: &Control,
    ) -> Result<crate::editor::FtView, JobError>;
    /// A MEMIT batch of the loaded weights, recorded in the ledger as one unit and stored.
    fn memit(&mut self, form: &EditSettings, ctl: &Control) -> Result<BatchView, JobError>;
    fn ledger_op(&mut self, op: &LedgerOp) -> Result<LedgerView, JobError>;
    /// An evaluation of the form's method, stored as an `eval` run.
    fn evaluate(
        &mut self,
        form: &EditSettings,
        ctl: &Control,
    ) -> Result<crate::editor::EvalView, JobError>;
    /// Replace the ledger with the one at `path` (a stored edit run's).
    fn import_ledger(&mut self, path: &Path) -> Result<LedgerView, JobError>;
    /// Save the edited model as a new checkpoint directory.
    fn save_model(&mut self, out: &Path) -> Result<PathBuf, JobError>;
    /// The memories behind a prediction, under interventions.
    fn memories(&self, req: &MemoriesRequest) -> Result<MemoriesView, JobError>;
    /// A memory's trigger contexts; each (corpus, layer, token budget) is searched once.
    fn triggers(
        &mut self,
        corpus: Option<&Path>,
        layer: usize,
        memory: usize,
        max_tokens: usize,
        ctl: &Control,
    ) -> Result<TriggersView, JobError>;
    fn attribute(
        &self,
        prompt: &str,
        target: &str,
        ctl: &Control,
    ) -> Result<AttributionView, JobError>;
    /// Linear probes per layer on a labelled prompt set; stored as a run.
    fn probe(
        &self,
        req: &crate::settings::ProbeSettings,
        ctl: &Control,
    ) -> Result<ProbeView, JobError>;
}

/// A finished probe, as the Probe panel shows it.
#[derive(Debug, Clone)]
pub struct ProbeView {
    pub report: engram_analysis::jobs::probe::ProbeReport,
    pub label: String,
}

/// Two views are the same run.
impl PartialEq for ProbeView {
    fn eq(&self, other: &Self) -> bool {
        self.report.run_id == other.report.run_id && self.label == other.label
    }
}

/// Resolve `source` (path, `.gguf`, hub id or `demo`) and load it.
pub fn load_session(
    source: &str,
    device: DeviceSpec,
    dtype: Dtype,
    settings: &Settings,
) -> Result<Box<dyn Session>, JobError> {
    let started = Instant::now();
    let path = engram_model::source::resolve_model(Path::new(source.trim()), settings)
        .map_err(|e| JobError::Load(e.to_string()))?;
    let job = LoadJob {
        source: source.trim().to_string(),
        path,
        device,
        dtype,
        started,
        settings: settings.clone(),
    };
    with_backend(device, dtype, job).map_err(|e| JobError::Load(e.to_string()))
}

struct LoadJob {
    source: String,
    path: PathBuf,
    device: DeviceSpec,
    dtype: Dtype,
    started: Instant,
    settings: Settings,
}

impl BackendJob for LoadJob {
    type Output = Box<dyn Session>;
    type Error = engram_model::ModelError;
    fn run<B: Backend>(self, device: B::Device) -> Result<Box<dyn Session>, Self::Error> {
        let lm = LanguageModel::<B>::load(&self.path, &device)?;
        let c = &lm.model.config;
        let rome = engram_editing::jobs::setup::resolve_hparams(&self.path, None, &self.settings)
            .ok()
            .map(|h| crate::editor::EditHparams::from(&h));
        let card = ModelCard {
            source: self.source,
            path: self.path,
            architecture: c.arch.name().to_string(),
            model_type: c.model_type.clone(),
            parameters: c.parameter_count(),
            n_layers: c.n_layers,
            d_model: c.d_model,
            d_mlp: c.d_mlp,
            gated_mlp: c.gated_mlp,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            d_head: c.d_head,
            vocab_size: c.vocab_size,
            n_ctx: c.n_ctx,
            positions: match c.rotary {
                Some(r) => format!("rotary ({:?}, dim {}, θ {})", r.style, r.dim, r.theta),
                None => "learned".into(),
            },
            block: if c.parallel_attn_mlp {
                "parallel attention + MLP".into()
            } else {
                "sequential".into()
            },
            hooks: lm
                .model
                .hook_points()
                .iter()
                .map(|h| h.to_string())
                .collect(),
            device: self.device,
            dtype: self.dtype,
            load_seconds: self.started.elapsed().as_secs_f64(),
            warnings: c.warnings.clone(),
            rome,
        };
        Ok(Box::new(Loaded {
            lm,
            card,
            edits: EditState::default(),
            triggers: Default::default(),
            settings: self.settings,
        }))
    }
}

struct Loaded<B: Backend> {
    lm: LanguageModel<B>,
    card: ModelCard,
    edits: EditState<B>,
    /// Trigger searches done, by (corpus, layer, token budget).
    triggers: std::collections::HashMap<(Option<PathBuf>, usize, usize), LayerTriggers>,
    settings: Settings,
}

impl<B: Backend> Loaded<B> {
    fn token(&self, id: u32) -> Token {
        Token {
            id,
            text: self.lm.tokenizer.token_text(id),
        }
    }

    fn tokens(&self, ids: &[u32]) -> Vec<Token> {
        ids.iter().map(|&id| self.token(id)).collect()
    }
}

impl<B: Backend> Loaded<B> {
    fn check_fact(&self, fact: &UserFact) -> Result<FactCheck, JobError> {
        let target = self.lm.target_tokens(&fact.prompt, &fact.target)?;
        let logits = self.lm.next_logits(&fact.prompt)?;
        let top = top_k_from_logits(&logits, 1, |id| self.lm.tokenizer.token_text(id));
        let best = top
            .first()
            .cloned()
            .ok_or(JobError::Failed("empty vocabulary".into()))?;
        Ok(FactCheck {
            correct: best.id == target[0],
            predicted: self.token(best.id),
            predicted_prob: best.prob,
            target_prob: prob_of(&logits, target[0]),
            fact: fact.clone(),
        })
    }
}

impl<B: Backend> Session for Loaded<B> {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn edit(&mut self, form: &EditSettings, ctl: &Control) -> Result<EditView, JobError> {
        // Coefficients above an edited layer change: earlier searches are stale.
        self.triggers.clear();
        let model = self.card.source.clone();
        self.edits
            .edit(&mut self.lm, &model, form, &self.settings, ctl)
    }

    fn edit_ft(
        &mut self,
        form: &EditSettings,
        ctl: &Control,
    ) -> Result<crate::editor::FtView, JobError> {
        self.triggers.clear();
        let model = self.card.source.clone();
        self.edits
            .edit_ft(&mut self.lm, &model, form, &self.settings, ctl)
    }

    fn memit(&mut self, form: &EditSettings, ctl: &Control) -> Result<BatchView, JobError> {
        self.triggers.clear();
        let workers = engram_editing::jobs::setup::z_workers(0, &self.card.device);
        let model = self.card.source.clone();
        self.edits
            .memit(&mut self.lm, &model, form, workers, &self.settings, ctl)
    }

    fn evaluate(
        &mut self,
        form: &EditSettings,
        ctl: &Control,
    ) -> Result<crate::editor::EvalView, JobError> {
        let workers = engram_editing::jobs::setup::z_workers(0, &self.card.device);
        let model = self.card.source.clone();
        self.edits
            .evaluate(&mut self.lm, &model, form, workers, &self.settings, ctl)
    }

    fn import_ledger(&mut self, path: &Path) -> Result<LedgerView, JobError> {
        self.triggers.clear();
        self.edits.import(&mut self.lm, path)
    }

    fn ledger_op(&mut self, op: &LedgerOp) -> Result<LedgerView, JobError> {
        self.triggers.clear();
        self.edits.ledger_op(&mut self.lm, op)
    }

    fn save_model(&mut self, out: &Path) -> Result<PathBuf, JobError> {
        self.edits.save(&self.lm, out)
    }

    fn memories(&self, req: &MemoriesRequest) -> Result<MemoriesView, JobError> {
        let store =
            engram_datasets::RunStore::open(&self.settings.runs).map_err(JobError::from_lib)?;
        crate::memories::memories(&self.lm, &self.card.source, req, &store)
    }

    fn triggers(
        &mut self,
        corpus: Option<&Path>,
        layer: usize,
        memory: usize,
        max_tokens: usize,
        ctl: &Control,
    ) -> Result<TriggersView, JobError> {
        let key = (corpus.map(Path::to_path_buf), layer, max_tokens);
        if !self.triggers.contains_key(&key) {
            let found = crate::memories::search_layer(&self.lm, corpus, layer, max_tokens, ctl)?;
            self.triggers.insert(key.clone(), found);
        }
        let found = self.triggers.get(&key).ok_or(JobError::NoModel)?;
        crate::memories::triggers_view(&self.lm, found, layer, memory)
    }

    fn attribute(
        &self,
        prompt: &str,
        target: &str,
        ctl: &Control,
    ) -> Result<AttributionView, JobError> {
        crate::memories::attribute(&self.lm, prompt, target, ctl)
    }

    fn probe(
        &self,
        req: &crate::settings::ProbeSettings,
        ctl: &Control,
    ) -> Result<ProbeView, JobError> {
        let data = if req.data.trim() == crate::settings::DEMO_PROBE_DATA {
            // The demo relation set, compiled in: written once under the cache.
            let path = self.settings.cache.join("demo-relations.jsonl");
            let text = engram_datasets::demo::DEMO_RELATIONS_JSONL;
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
                std::fs::create_dir_all(&self.settings.cache).map_err(|e| {
                    JobError::Failed(format!("{}: {e}", self.settings.cache.display()))
                })?;
                engram_datasets::store::write_atomic(&path, text.as_bytes())
                    .map_err(JobError::from_lib)?;
            }
            path
        } else {
            PathBuf::from(req.data.trim())
        };
        let subject = req.subject.trim();
        let args = engram_analysis::jobs::probe::ProbeArgs {
            data: &data,
            label: req.label.trim(),
            text: req.text.trim(),
            subject: (!subject.is_empty()).then_some(subject),
            hook: req.hook.trim(),
            position: req.position.trim(),
            control: req.control,
            folds: 5,
            seed: 0,
            min_count: req.min_count,
            regress: false,
            shard: None,
        };
        let store =
            engram_datasets::RunStore::open(&self.settings.runs).map_err(JobError::from_lib)?;
        let report = engram_analysis::jobs::probe::probe_report(
            &self.lm,
            &self.card.source,
            &args,
            &store,
            &self.settings,
            ctl,
        )
        .map_err(JobError::from_lib)?;
        Ok(ProbeView {
            report,
            label: req.label.clone(),
        })
    }

    fn next_tokens(&self, prompt: &str, k: usize) -> Result<NextTokens, JobError> {
        let ids = self.lm.encode_prompt(prompt)?;
        let logits = self.lm.next_logits(prompt)?;
        Ok(NextTokens {
            prompt: prompt.to_string(),
            tokens: self.tokens(&ids),
            top: top_k_from_logits(&logits, k, |id| self.lm.tokenizer.token_text(id)),
        })
    }

    fn generate(
        &self,
        prompt: &str,
        params: GenParams,
        progress: ProgressFn<'_>,
    ) -> Result<Generation, JobError> {
        let ids = self.lm.encode_prompt(prompt)?;
        let cfg = GenerateConfig {
            max_new_tokens: params.max_new_tokens,
            sampling: params.sampling(),
            stop_at_eos: true,
            kv_cache: true,
        };
        let total = params.max_new_tokens;
        let mut cancelled = false;
        let out = generate_with(&self.lm.model, &[ids], &cfg, |rows| {
            let so_far = &rows[0];
            let text = self.lm.tokenizer.decode(so_far).unwrap_or_default();
            let go_on = progress(Progress {
                done: so_far.len(),
                total,
                note: text,
            });
            cancelled |= !go_on;
            go_on
        })?;
        if cancelled {
            return Err(JobError::Cancelled);
        }
        let new = out.into_iter().next().unwrap_or_default();
        Ok(Generation {
            prompt: prompt.to_string(),
            text: self.lm.tokenizer.decode(&new)?,
            new_tokens: self.tokens(&new),
        })
    }

    fn steer(
        &self,
        prompt: &str,
        form: &crate::settings::SteerSettings,
    ) -> Result<SteerView, JobError> {
        use engram_analysis::jobs::steer::{run_apply, run_build, ApplyRequest, BuildRequest};
        let lines = |t: &str| -> Vec<String> {
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        };
        let n_layers = self.card.n_layers;
        if form.layer >= n_layers {
            return Err(JobError::Failed(format!(
                "layer {} is past the model's {n_layers} layers",
                form.layer
            )));
        }
        let store =
            engram_datasets::RunStore::open(&self.settings.runs).map_err(JobError::from_lib)?;
        let req = BuildRequest {
            positive: lines(&form.positive),
            negative: lines(&form.negative),
            point: engram_model::HookPoint::resid_pre(form.layer),
            reduce: engram_analysis::steer::Reduce::Last,
        };
        let built =
            run_build(&self.lm, &self.card.source, &req, &store).map_err(JobError::from_lib)?;
        let applied = run_apply(
            &self.lm,
            &self.card.source,
            &ApplyRequest {
                vector: built.vector.clone(),
                coef: form.coef,
                prompt: prompt.to_string(),
                max_new_tokens: form.tokens.max(1),
            },
            &store,
        )
        .map_err(JobError::from_lib)?;
        Ok(SteerView {
            prompt: prompt.to_string(),
            layer: form.layer,
            coef: form.coef,
            norm: built.vector.norm(),
            before: applied.before,
            after: applied.after,
            vector_run: built.run.id,
            apply_run: applied.run.id,
        })
    }

    fn lens(&self, prompt: &str, site: LensSite, k: usize) -> Result<LensGrid, JobError> {
        use engram_analysis::jobs::lens::{run_lens, LensRequest};
        let store =
            engram_datasets::RunStore::open(&self.settings.runs).map_err(JobError::from_lib)?;
        let req = LensRequest {
            prompt: prompt.to_string(),
            site,
            k,
        };
        let r = run_lens(&self.lm, &self.card.source, &req, &store).map_err(JobError::from_lib)?;
        let n_layers = r.n_layers;
        let mut cells = vec![Vec::with_capacity(r.top.len()); n_layers];
        for at in &r.top {
            for (layer, top) in at.iter().enumerate() {
                cells[layer].push(top.iter().map(|&(id, p)| (self.token(id), p)).collect());
            }
        }
        let ids = self.lm.encode_prompt(prompt)?;
        Ok(LensGrid {
            prompt: prompt.to_string(),
            site,
            tokens: self.tokens(&ids),
            cells,
            final_token: self.token(r.final_token),
            first_top1_layer: r.first_top1_layer,
            run_id: r.run.id,
        })
    }

    fn attention(&self, prompt: &str) -> Result<AttentionPatterns, JobError> {
        let ids = self.lm.encode_prompt(prompt)?;
        let mut cache = ActivationCache::<B>::new(|p| p.site() == Some(BlockSite::Pattern));
        self.lm.model.forward(&Batch::single(&ids), &mut cache)?;
        let n_layers = self.lm.model.config.n_layers;
        let n_heads = self.lm.model.config.n_heads;
        let s = ids.len();
        let mut pattern = Vec::with_capacity(n_layers);
        for layer in 0..n_layers {
            let point = HookPoint::block(layer, BlockSite::Pattern);
            let act = cache
                .get(point)
                .ok_or_else(|| JobError::Failed(format!("{point} was not recorded")))?;
            // [1, head, query, key]
            let flat = act.to_vec()?;
            pattern.push(
                (0..n_heads)
                    .map(|h| flat[h * s * s..(h + 1) * s * s].to_vec())
                    .collect(),
            );
        }
        Ok(AttentionPatterns {
            prompt: prompt.to_string(),
            tokens: self.tokens(&ids),
            n_heads,
            pattern,
        })
    }

    fn trace(
        &self,
        prompt: &str,
        request: &TraceRequest,
        noise_subjects: &[String],
        ctl: &Control,
    ) -> Result<TraceView, JobError> {
        self.run_trace(prompt, request, noise_subjects, ctl)
    }

    fn patch(
        &self,
        prompt: &str,
        request: &TraceRequest,
        exact: bool,
    ) -> Result<PatchView, JobError> {
        use engram_analysis::jobs::patch::{prepare, run_patch, Corruption};
        use engram_analysis::patching::PatchSite;
        let subject = request.subject.trim();
        let corruption = Corruption::Subject(request.corrupt_subject.trim().to_string());
        let setup = prepare(&self.lm, prompt, subject, &request.target, &corruption)
            .map_err(JobError::from_lib)?;
        let store =
            engram_datasets::RunStore::open(&self.settings.runs).map_err(JobError::from_lib)?;
        let sites: &[PatchSite] = if exact { &PatchSite::ALL } else { &[] };
        let out = run_patch(
            &self.lm,
            &self.card.source,
            &store,
            subject,
            &setup,
            sites,
            true,
        )
        .map_err(JobError::from_lib)?;
        let report = out.report;
        let attribution = out.attribution;
        Ok(PatchView {
            prompt: setup.clean_prompt.clone(),
            corrupted_prompt: setup.corrupted_prompt.clone(),
            tokens: setup
                .clean
                .iter()
                .map(|&t| self.lm.tokenizer.token_text(t))
                .collect(),
            answer: self.lm.tokenizer.token_text(setup.answer),
            corrupted_answer: self.lm.tokenizer.token_text(setup.wrong),
            clean_logit_diff: report.clean_logit_diff,
            corrupted_logit_diff: report.corrupted_logit_diff,
            sites: report
                .sites
                .into_iter()
                .map(|s| (s.site.name().to_string(), s.recovery))
                .collect(),
            exact_seconds: exact.then_some(out.exact_seconds),
            attribution: attribution
                .iter()
                .flat_map(|a| &a.recovery)
                .map(|(site, rec)| (site.name().to_string(), rec.clone()))
                .collect(),
            attribution_seconds: attribution.as_ref().map_or(0.0, |a| a.seconds),
            spearman: attribution.as_ref().and_then(|a| a.spearman).map(|r| r.0),
            run_id: out.run.id,
        })
    }

    fn check_facts(
        &self,
        path: &Path,
        limit: usize,
        progress: ProgressFn<'_>,
    ) -> Result<FactReport, JobError> {
        let loaded =
            load_fact_set(path, OnBadRecord::Skip).map_err(|e| JobError::Failed(e.to_string()))?;
        let facts: Vec<UserFact> = loaded.records.into_iter().take(limit).collect();
        let total = facts.len();
        let mut checked = Vec::with_capacity(total);
        let mut skipped: Vec<String> = loaded.skipped.iter().map(|e| e.to_string()).collect();
        let mut partial = false;
        for (i, fact) in facts.into_iter().enumerate() {
            if !progress(Progress {
                done: i,
                total,
                note: fact.prompt.clone(),
            }) {
                partial = true;
                break;
            }
            match self.check_fact(&fact) {
                Ok(c) => checked.push(c),
                Err(e) => skipped.push(format!("{:?}: {e}", fact.prompt)),
            }
        }
        Ok(FactReport {
            path: path.to_path_buf(),
            checked,
            skipped,
            partial,
        })
    }
}

impl<B: Backend> Loaded<B> {
    fn run_trace(
        &self,
        prompt: &str,
        request: &TraceRequest,
        noise_subjects: &[String],
        ctl: &Control,
    ) -> Result<TraceView, JobError> {
        use engram_analysis::jobs::trace::{run_trace, NoiseLevel, Outcome, TraceOptions};
        use engram_analysis::trace::TraceKind;
        let fact = UserFact {
            subject: request.subject.trim().to_string(),
            prompt: prompt.to_string(),
            target: request.target.clone(),
            relation: None,
        };
        let options = TraceOptions {
            kinds: TraceKind::ALL.to_vec(),
            samples: request.samples.max(1),
            window: request.window,
            uniform: request.uniform,
            noise: NoiseLevel::Spread {
                multiple: request.noise_multiple,
            },
            ..TraceOptions::default()
        };
        let mut req = engram_analysis::jobs::trace::TraceRequest::one(fact, options);
        req.noise_subjects = noise_subjects.to_vec();
        let store =
            engram_datasets::RunStore::open(&self.settings.runs).map_err(JobError::from_lib)?;
        let run = run_trace(&self.lm, &self.card.source, &req, &store, ctl)
            .map_err(JobError::from_lib)?;
        let scale = run.noise_scale;
        let Some(Outcome::Traced(trace)) = run.outcomes.into_iter().next().map(|o| o.outcome)
        else {
            return Err(JobError::Failed("the fact was not traced".into()));
        };
        let trace = *trace;
        let input = trace.input.clone();
        Ok(TraceView {
            prompt: prompt.to_string(),
            tokens: self.tokens(&input.ids),
            subject: input.subject.clone(),
            target: self.token(input.target),
            predicted: self.token(trace.predicted),
            clean_prob: trace.clean_prob,
            corrupted_prob: trace.corrupted_prob,
            noise_scale: scale,
            kinds: trace
                .kinds
                .into_iter()
                .map(|k| (k.kind.name().to_string(), k.scores))
                .collect(),
            run_id: run.info.id,
        })
    }
}
