//! The workbench shell: top bar with the prompt, panel list, status bar with
//! progress and Cancel, and the active panel. All model work goes to the
//! worker as a [`Command`]; results come back as typed [`Reply`]s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use eframe::egui::{self, RichText, Ui};
use engram_analysis::lens::LensSite;
use engram_model::backend::Dtype;
use engram_model::DeviceSpec;

use crate::editor::{EditView, LedgerView};
use crate::error::JobError;
use crate::memories::{AttributionView, MemoriesView, TriggersView};
use crate::panels;
use crate::session::{
    AttentionPatterns, FactReport, Generation, LensGrid, ModelCard, NextTokens, Progress, TraceView,
};
use crate::settings::{LensSiteChoice, PanelKind, Settings};
use crate::worker::{Command, Event, JobHandle, JobId, Reply, Worker};

/// How the app starts: command-line choices override the saved settings.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    pub model: Option<String>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub prompt: Option<String>,
    pub panel: Option<PanelKind>,
    /// Subject and answer for the Locate panel.
    pub subject: Option<String>,
    pub target: Option<String>,
    /// Dark (true) or light theme.
    pub dark: Option<bool>,
    /// A fact set to check as soon as the model is loaded.
    pub facts: Option<PathBuf>,
    /// Where settings are read and saved; `None` keeps them in memory only.
    pub settings_path: Option<PathBuf>,
    /// Where runs and caches live; `None`: from the environment, as the CLI reads it.
    pub paths: Option<engram_model::Settings>,
    /// A stored run to open on the Runs panel (id, or a unique prefix or suffix).
    pub run: Option<String>,
    /// A second run to compare it with.
    pub compare: Option<String>,
}

/// A submitted job, as the status bar shows it.
#[derive(Debug, Clone)]
pub struct RunningJob {
    pub handle: JobHandle,
    pub panel: PanelKind,
    pub started: bool,
    pub progress: Option<Progress>,
}

/// The latest result of each panel.
#[derive(Debug, Default)]
pub struct Results {
    pub next: Option<NextTokens>,
    pub generation: Option<Generation>,
    pub steer: Option<crate::session::SteerView>,
    /// Text generated so far by a running generation.
    pub streaming: Option<String>,
    pub lens: Option<LensGrid>,
    pub attention: Option<AttentionPatterns>,
    pub facts: Option<FactReport>,
    pub trace: Option<TraceView>,
    pub edit: Option<EditView>,
    pub ft_edit: Option<crate::editor::FtView>,
    pub batch: Option<crate::editor::BatchView>,
    pub eval: Option<crate::editor::EvalView>,
    pub patch: Option<crate::session::PatchView>,
    pub memories: Option<MemoriesView>,
    pub triggers: Option<TriggersView>,
    pub attribution: Option<AttributionView>,
    pub probe: Option<crate::session::ProbeView>,
    pub ledger: LedgerView,
    /// Where the model was last saved.
    pub saved: Option<PathBuf>,
    pub errors: HashMap<PanelKind, String>,
}

/// The model-opening form on the Model panel.
#[derive(Debug, Clone)]
pub struct OpenForm {
    pub source: String,
    pub device: String,
    pub dtype: Dtype,
}

pub struct EngramApp {
    pub(crate) worker: Worker,
    pub(crate) settings: Settings,
    settings_path: Option<PathBuf>,
    saved: Settings,
    pub(crate) card: Option<ModelCard>,
    pub(crate) jobs: Vec<RunningJob>,
    pub(crate) results: Results,
    /// The request key each panel last ran with, so a panel reruns only when stale.
    requested: HashMap<PanelKind, String>,
    auto_run: bool,
    check_facts_on_load: bool,
    pub(crate) form: OpenForm,
    pub(crate) status: Option<(String, bool)>,
    pub(crate) lens_selected: Option<(usize, usize)>,
    pub(crate) attention_layer: usize,
    pub(crate) attention_head: usize,
    /// The Locate panel's clicked cell: (kind index, token, layer).
    pub(crate) trace_cell: Option<(usize, usize, usize)>,
    /// Memories switched off (false) or boosted (true): (layer, memory, boost).
    pub(crate) interventions: Vec<(usize, usize, bool)>,
    /// The Probe panel's selected layer (its confusion matrix is shown).
    pub(crate) probe_layer: usize,
    /// The Runs panel: the store, the open run, comparisons, exports.
    pub(crate) runs: crate::panels::runs::RunsState,
    theme_applied: Option<bool>,
}

impl std::fmt::Debug for EngramApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngramApp")
            .field("model", &self.card.as_ref().map(|c| &c.source))
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

impl EngramApp {
    /// Start the worker and ask it to load the model.
    pub fn new(ctx: &egui::Context, options: AppOptions) -> Self {
        let (mut settings, problem) = match &options.settings_path {
            Some(path) => Settings::load(path),
            None => (Settings::default(), None),
        };
        let saved = settings.clone();
        if let Some(m) = options.model {
            settings.model = m;
        }
        if let Some(d) = options.device {
            settings.device = d;
        }
        if let Some(d) = options.dtype {
            settings.dtype = d;
        }
        if let Some(p) = options.prompt {
            settings.prompt = p;
        }
        if let Some(p) = options.panel {
            settings.panel = p;
        }
        if let Some(s) = options.subject {
            settings.trace.subject = s;
        }
        if let Some(t) = options.target {
            settings.trace.target = t;
        }
        if let Some(d) = options.dark {
            settings.dark = d;
        }
        let check_facts_on_load = options.facts.is_some();
        if let Some(f) = &options.facts {
            settings.facts_path = f.display().to_string();
            settings.panel = PanelKind::Facts;
        }
        ctx.global_style_mut(|style| {
            style.spacing.item_spacing = egui::vec2(8.0, 6.0);
            style.spacing.button_padding = egui::vec2(8.0, 3.0);
        });
        let wake_ctx = ctx.clone();
        let paths = options
            .paths
            .clone()
            .unwrap_or_else(|| engram_model::Settings::from_vars(|k| std::env::var_os(k)));
        let mut runs = crate::panels::runs::RunsState::new(&paths.runs);
        if options.run.is_some() {
            settings.panel = PanelKind::Runs;
        }
        if let Some(id) = &options.run {
            runs.open(ctx, id, options.compare.as_deref());
        }
        let worker = Worker::spawn(move || wake_ctx.request_repaint(), paths);
        let form = OpenForm {
            source: settings.model.clone(),
            device: settings.device.clone(),
            dtype: settings.dtype.parse().unwrap_or_default(),
        };
        let mut app = Self {
            worker,
            settings,
            settings_path: options.settings_path,
            saved,
            card: None,
            jobs: Vec::new(),
            results: Results::default(),
            requested: HashMap::new(),
            auto_run: false,
            check_facts_on_load,
            form,
            status: problem.map(|p| (p, true)),
            lens_selected: None,
            attention_layer: 0,
            attention_head: 0,
            trace_cell: None,
            interventions: Vec::new(),
            probe_layer: 0,
            runs,
            theme_applied: None,
        };
        app.open_model();
        app
    }

    pub fn card(&self) -> Option<&ModelCard> {
        self.card.as_ref()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The Runs panel's state (its store, open run, export form).
    pub fn runs_panel(&mut self) -> &mut crate::panels::runs::RunsState {
        &mut self.runs
    }

    /// What the status bar says now.
    pub fn status_line(&self) -> Option<String> {
        self.status.as_ref().map(|(s, _)| s.clone())
    }

    /// The last FT-L edit's view.
    pub fn last_ft_edit(&self) -> Option<&crate::editor::FtView> {
        self.results.ft_edit.as_ref()
    }

    /// The Playground's last steered continuation.
    pub fn last_steer(&self) -> Option<&crate::session::SteerView> {
        self.results.steer.as_ref()
    }

    /// The last edit's before/after view.
    pub fn last_edit(&self) -> Option<&EditView> {
        self.results.edit.as_ref()
    }

    /// The last activation patching.
    pub fn last_patch(&self) -> Option<&crate::session::PatchView> {
        self.results.patch.as_ref()
    }

    /// The last evaluation.
    pub fn last_eval(&self) -> Option<&crate::editor::EvalView> {
        self.results.eval.as_ref()
    }

    /// The last MEMIT batch.
    pub fn last_batch(&self) -> Option<&crate::editor::BatchView> {
        self.results.batch.as_ref()
    }

    /// The edit ledger as last reported by the worker.
    pub fn ledger(&self) -> &LedgerView {
        &self.results.ledger
    }

    /// Where the edited model was last saved.
    pub fn saved_model(&self) -> Option<&PathBuf> {
        self.results.saved.as_ref()
    }

    pub fn memories_view(&self) -> Option<&MemoriesView> {
        self.results.memories.as_ref()
    }

    pub fn triggers_view(&self) -> Option<&TriggersView> {
        self.results.triggers.as_ref()
    }

    pub fn attribution(&self) -> Option<&AttributionView> {
        self.results.attribution.as_ref()
    }

    pub fn probe_view(&self) -> Option<&crate::session::ProbeView> {
        self.results.probe.as_ref()
    }

    /// The memories request for the current prompt, fact and interventions.
    pub(crate) fn memories_command(&self) -> Command {
        Command::Memories(Box::new(crate::memories::MemoriesRequest {
            prompt: self.settings.prompt.clone(),
            subject: self.settings.trace.subject.clone(),
            target: self.settings.trace.target.clone(),
            per_layer: self.settings.memories.per_layer,
            interventions: self.interventions.clone(),
            generate: self.settings.memories.continuation,
        }))
    }

    /// The errors panels show now, one per panel.
    pub fn panel_errors(&self) -> Vec<String> {
        self.results.errors.values().cloned().collect()
    }

    /// Whether any job is queued or running.
    pub fn is_busy(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Load what the open form says.
    pub(crate) fn open_model(&mut self) {
        let device: DeviceSpec = match self.form.device.parse() {
            Ok(d) => d,
            Err(e) => {
                self.status = Some((format!("{e}"), true));
                return;
            }
        };
        let command = Command::Load {
            source: self.form.source.trim().to_string(),
            device,
            dtype: self.form.dtype,
        };
        self.submit(PanelKind::Model, command);
    }

    /// Queue `command` for `panel`, replacing that panel's unfinished job.
    pub(crate) fn submit(&mut self, panel: PanelKind, command: Command) {
        for job in &self.jobs {
            if job.panel == panel {
                job.handle.cancel.cancel();
            }
        }
        if let Some(key) = self.request_key_of(&command) {
            self.requested.insert(panel, key);
        }
        let handle = self.worker.submit(command);
        self.results.errors.remove(&panel);
        self.jobs.push(RunningJob {
            handle,
            panel,
            started: false,
            progress: None,
        });
    }

    pub(crate) fn pending(&self, panel: PanelKind) -> bool {
        self.jobs.iter().any(|j| j.panel == panel)
    }

    pub(crate) fn lens_site(&self) -> LensSite {
        match self.settings.lens_site {
            LensSiteChoice::Pre => LensSite::Pre,
            LensSiteChoice::Mid => LensSite::Mid,
            LensSiteChoice::Post => LensSite::Post,
        }
    }

    fn request_key_of(&self, command: &Command) -> Option<String> {
        match command {
            Command::NextTokens { prompt, k } => Some(format!("{k}\u{0}{prompt}")),
            Command::Lens { prompt, site, .. } => Some(format!("{site:?}\u{0}{prompt}")),
            Command::Attention { prompt } => Some(prompt.clone()),
            Command::Memories(r) => Some(format!("{r:?}")),
            _ => None,
        }
    }

    /// The command that refreshes `panel` for the current prompt, if it has one.
    fn panel_command(&self, panel: PanelKind) -> Option<Command> {
        let prompt = self.settings.prompt.clone();
        match panel {
            PanelKind::Playground => Some(Command::NextTokens {
                prompt,
                k: self.settings.top_k,
            }),
            PanelKind::Lens => Some(Command::Lens {
                prompt,
                site: self.lens_site(),
                k: 5,
            }),
            PanelKind::Attention => Some(Command::Attention { prompt }),
            PanelKind::Locate => Some(Command::Trace {
                prompt,
                request: self.settings.trace.clone(),
                noise_subjects: self.noise_subjects(),
            }),
            PanelKind::Memories => Some(self.memories_command()),
            PanelKind::Model
            | PanelKind::Facts
            | PanelKind::Edit
            | PanelKind::Probe
            | PanelKind::Runs => None,
        }
    }

    /// Subjects whose embedding spread sets the trace noise: every record of
    /// the checked fact set (as ROME's `collect_embedding_std` and `engram
    /// trace`), else (empty) the traced subject's own.
    fn noise_subjects(&self) -> Vec<String> {
        self.results
            .facts
            .iter()
            .flat_map(|report| report.checked.iter().map(|c| c.fact.subject.clone()))
            .collect()
    }

    /// Check the fact set named in the settings.
    pub(crate) fn check_facts(&mut self) {
        let command = Command::CheckFacts {
            path: PathBuf::from(self.settings.facts_path.trim()),
            limit: self.settings.facts_limit,
        };
        self.submit(PanelKind::Facts, command);
    }

    /// Run the active panel on the current prompt.
    pub(crate) fn run_active(&mut self) {
        let panel = self.settings.panel;
        if let Some(command) = self.panel_command(panel) {
            self.submit(panel, command);
        }
    }

    /// Ask for a refresh of the active panel when its result is stale.
    pub(crate) fn request_auto_run(&mut self) {
        self.auto_run = true;
    }

    fn auto_run_if_stale(&mut self) {
        if !self.auto_run || self.card.is_none() {
            return;
        }
        self.auto_run = false;
        let panel = self.settings.panel;
        let Some(command) = self.panel_command(panel) else {
            return;
        };
        let key = self.request_key_of(&command);
        if key.is_some() && self.requested.get(&panel) != key.as_ref() {
            self.submit(panel, command);
        }
    }

    /// Drain the worker's events into the panels' state.
    fn handle_events(&mut self) {
        while let Some(event) = self.worker.poll() {
            match event {
                Event::Started(id) => {
                    if let Some(j) = self.job_mut(id) {
                        j.started = true;
                    }
                }
                Event::Progress(id, p) => {
                    let is_generation = self
                        .job_mut(id)
                        .map(|j| {
                            let g = j.handle.label.starts_with("Generating");
                            j.progress = Some(p.clone());
                            g
                        })
                        .unwrap_or(false);
                    if is_generation {
                        self.results.streaming = Some(p.note);
                    }
                }
                Event::Finished(id, result) => self.finish(id, result),
            }
        }
    }

    fn job_mut(&mut self, id: JobId) -> Option<&mut RunningJob> {
        self.jobs.iter_mut().find(|j| j.handle.id == id)
    }

    fn finish(&mut self, id: JobId, result: Result<Reply, JobError>) {
        let Some(index) = self.jobs.iter().position(|j| j.handle.id == id) else {
            return;
        };
        let job = self.jobs.remove(index);
        match result {
            Ok(reply) => {
                let stored = match &reply {
                    Reply::Trace(t) => Some(t.run_id.clone()),
                    Reply::Lens(l) => Some(l.run_id.clone()),
                    Reply::Memories(m) => Some(m.run_id.clone()),
                    Reply::Edited(e) => Some(e.run.id.clone()),
                    Reply::EditedFt(e) => Some(e.report.run.id.clone()),
                    Reply::Batch(b) => Some(b.run.id.clone()),
                    Reply::Evaluated(e) => Some(e.run_id.clone()),
                    Reply::Patched(p) => Some(p.run_id.clone()),
                    Reply::Probe(p) => Some(p.report.run_id.clone()),
                    _ => None,
                };
                let message = match stored {
                    Some(id) => format!("{}: done, stored as run {id}", job.handle.label),
                    None => format!("{}: done", job.handle.label),
                };
                self.status = Some((message, false));
                self.accept(reply);
            }
            Err(JobError::Cancelled) => {
                if job.handle.label.starts_with("Generating") {
                    self.results.streaming = None;
                }
                self.status = Some((format!("{}: cancelled", job.handle.label), false));
            }
            Err(e) => {
                let message = e.to_string();
                if job.panel == PanelKind::Playground {
                    self.results.streaming = None;
                }
                self.results.errors.insert(job.panel, message.clone());
                self.status = Some((message, true));
            }
        }
    }

    fn accept(&mut self, reply: Reply) {
        match reply {
            Reply::Loaded(card) => {
                self.settings.model = card.source.clone();
                self.settings.device = card.device.to_string();
                self.settings.dtype = card.dtype.to_string();
                self.results = Results::default();
                self.requested.clear();
                self.lens_selected = None;
                self.attention_layer = 0;
                self.attention_head = 0;
                if let Some(h) = card.rome {
                    self.settings.edit.hparams = h;
                }
                let last = card.n_layers.saturating_sub(1);
                self.settings.edit.hparams.layer = self.settings.edit.hparams.layer.min(last);
                self.card = Some(*card);
                self.request_auto_run();
                if std::mem::take(&mut self.check_facts_on_load) {
                    self.check_facts();
                }
            }
            Reply::NextTokens(n) => self.results.next = Some(n),
            Reply::Generated(g) => {
                self.results.streaming = None;
                self.results.generation = Some(g);
            }
            Reply::Steered(v) => self.results.steer = Some(v),
            Reply::Lens(l) => self.results.lens = Some(l),
            Reply::Attention(a) => {
                let layers = a.pattern.len();
                self.attention_layer = self.attention_layer.min(layers.saturating_sub(1));
                self.attention_head = self.attention_head.min(a.n_heads.saturating_sub(1));
                self.results.attention = Some(a);
            }
            Reply::Facts(f) => self.results.facts = Some(f),
            Reply::Trace(t) => {
                self.trace_cell = None;
                self.results.trace = Some(*t);
            }
            Reply::Edited(e) => {
                self.results.ledger = e.ledger.clone();
                self.results.edit = Some(*e);
                self.results.ft_edit = None;
                self.weights_changed();
            }
            Reply::EditedFt(e) => {
                self.results.ledger = e.ledger.clone();
                self.results.ft_edit = Some(*e);
                self.results.edit = None;
                self.weights_changed();
            }
            Reply::Batch(b) => {
                self.results.ledger = b.ledger.clone();
                self.results.batch = Some(*b);
                self.weights_changed();
            }
            Reply::Evaluated(e) => self.results.eval = Some(*e),
            Reply::Patched(p) => self.results.patch = Some(*p),
            Reply::Ledger(l) => {
                self.results.ledger = l;
                self.weights_changed();
            }
            Reply::Memories(m) => self.results.memories = Some(*m),
            Reply::Triggers(t) => self.results.triggers = Some(t),
            Reply::Attribution(a) => self.results.attribution = Some(*a),
            Reply::Probe(p) => {
                self.probe_layer = p
                    .report
                    .layers
                    .iter()
                    .max_by(|a, b| a.accuracy.mean.total_cmp(&b.accuracy.mean))
                    .map_or(0, |l| l.layer);
                self.results.probe = Some(*p);
            }
            Reply::Saved(p) => {
                self.status = Some((format!("saved the edited model as {}", p.display()), false));
                self.results.saved = Some(p);
            }
        }
    }

    /// After an edit or a ledger change, the quick panels' results are stale:
    /// drop them so they rerun when shown. (A trace stays, as the record of
    /// where the fact was found.)
    fn weights_changed(&mut self) {
        self.requested.clear();
        self.results.next = None;
        self.results.lens = None;
        self.results.attention = None;
        self.results.generation = None;
        self.results.memories = None;
        self.results.attribution = None;
    }

    fn save_settings_if_changed(&mut self) {
        let Some(path) = &self.settings_path else {
            return;
        };
        if self.settings == self.saved {
            return;
        }
        match self.settings.save(path) {
            Ok(()) => self.saved = self.settings.clone(),
            Err(e) => {
                // Keep running; say so once.
                self.status = Some((format!("settings not saved: {e}"), true));
                self.saved = self.settings.clone();
            }
        }
    }

    fn apply_theme(&mut self, ctx: &egui::Context) {
        if self.theme_applied != Some(self.settings.dark) {
            ctx.set_theme(if self.settings.dark {
                egui::Theme::Dark
            } else {
                egui::Theme::Light
            });
            self.theme_applied = Some(self.settings.dark);
        }
    }

    fn top_bar(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            ui.heading(RichText::new("Engram").strong());
            ui.separator();
            match &self.card {
                Some(c) => {
                    ui.label(RichText::new(&c.source).strong());
                    ui.label(
                        RichText::new(format!(
                            "{} · {} layers · {} · {}",
                            c.architecture, c.n_layers, c.device, c.dtype
                        ))
                        .weak(),
                    );
                }
                None => {
                    ui.label(RichText::new("no model loaded").weak());
                }
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let label = if self.settings.dark {
                    "Light theme"
                } else {
                    "Dark theme"
                };
                if ui.button(label).on_hover_text("Switch theme").clicked() {
                    self.settings.dark = !self.settings.dark;
                }
            });
        });
        ui.add_space(2.0);
        ui.horizontal(|ui| {
            ui.label("Prompt");
            let edit = egui::TextEdit::singleline(&mut self.settings.prompt)
                .hint_text("Type a prompt, then Enter")
                .desired_width(ui.available_width() - 90.0)
                .font(egui::TextStyle::Monospace);
            let response = ui.add(edit);
            let enter = response.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            let can_run = self.card.is_some();
            let run = ui
                .add_enabled(can_run, egui::Button::new("Run"))
                .on_hover_text("Run the current panel on this prompt (Enter)");
            if (enter || run.clicked()) && can_run {
                if self.settings.panel == PanelKind::Model
                    || self.settings.panel == PanelKind::Facts
                {
                    self.settings.panel = PanelKind::Playground;
                }
                self.run_active();
            }
        });
        ui.add_space(2.0);
    }

    fn nav(&mut self, ui: &mut Ui) {
        ui.add_space(6.0);
        for panel in PanelKind::ALL {
            let selected = self.settings.panel == panel;
            let busy = if self.pending(panel) { " …" } else { "" };
            let text = RichText::new(format!("{}{busy}", panel.title())).size(15.0);
            if ui
                .add_sized(
                    [ui.available_width(), 28.0],
                    egui::Button::selectable(selected, text),
                )
                .clicked()
                && !selected
            {
                self.settings.panel = panel;
                self.request_auto_run();
            }
        }
    }

    fn status_bar(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            if let Some(job) = self.jobs.first() {
                ui.spinner();
                ui.label(&job.handle.label);
                if let Some(p) = &job.progress {
                    if p.total > 0 {
                        let frac = p.done as f32 / p.total as f32;
                        ui.add(
                            egui::ProgressBar::new(frac)
                                .desired_width(180.0)
                                .text(format!("{}/{}", p.done, p.total)),
                        );
                    }
                }
                if self.jobs.len() > 1 {
                    ui.label(RichText::new(format!("+{} queued", self.jobs.len() - 1)).weak());
                }
                if ui.button("Cancel").clicked() {
                    for j in &self.jobs {
                        j.handle.cancel.cancel();
                    }
                }
            } else if let Some((text, is_error)) = &self.status {
                let rich = RichText::new(text);
                ui.label(if *is_error {
                    rich.color(ui.visuals().error_fg_color)
                } else {
                    rich.weak()
                });
            } else {
                ui.label(RichText::new("ready").weak());
            }
        });
    }
}

impl eframe::App for EngramApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.handle_events();
        self.auto_run_if_stale();
        self.apply_theme(ctx);
        self.save_settings_if_changed();
        if self.is_busy() {
            ctx.request_repaint_after(Duration::from_millis(100));
        }
    }

    fn ui(&mut self, ui: &mut Ui, _frame: &mut eframe::Frame) {
        egui::Panel::top("top_bar")
            .frame(egui::Frame::side_top_panel(ui.style()).inner_margin(8))
            .show(ui, |ui| self.top_bar(ui));
        egui::Panel::bottom("status_bar").show(ui, |ui| self.status_bar(ui));
        egui::Panel::left("nav")
            .resizable(false)
            .exact_size(150.0)
            .show(ui, |ui| self.nav(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::both()
                .auto_shrink([false, false])
                .show(ui, |ui| match self.settings.panel {
                    PanelKind::Model => panels::model::show(self, ui),
                    PanelKind::Playground => panels::playground::show(self, ui),
                    PanelKind::Lens => panels::lens::show(self, ui),
                    PanelKind::Attention => panels::attention::show(self, ui),
                    PanelKind::Facts => panels::facts::show(self, ui),
                    PanelKind::Locate => panels::locate::show(self, ui),
                    PanelKind::Memories => panels::memories::show(self, ui),
                    PanelKind::Probe => panels::probe::show(self, ui),
                    PanelKind::Edit => panels::edit::show(self, ui),
                    PanelKind::Runs => panels::runs::show(self, ui),
                });
        });
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.save_settings_if_changed();
    }
}

/// The error a panel last got, shown in its place.
pub(crate) fn panel_error(app: &EngramApp, ui: &mut Ui, panel: PanelKind) {
    if let Some(e) = app.results.errors.get(&panel) {
        ui.label(RichText::new(e).color(ui.visuals().error_fg_color));
    }
}

/// What a panel shows before a model is loaded.
pub(crate) fn need_model(app: &EngramApp, ui: &mut Ui) -> bool {
    if app.card.is_some() {
        return false;
    }
    if app.pending(PanelKind::Model) {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("Loading the model…");
        });
    } else {
        ui.label("No model is loaded. Open one on the Model panel.");
        panel_error(app, ui, PanelKind::Model);
    }
    true
}
