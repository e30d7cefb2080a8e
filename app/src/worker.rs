//! The worker thread: it owns the model and its device, takes typed commands
//! from the panels, and answers with progress and typed results. The UI thread
//! never touches a tensor. Jobs run one at a time, in order; each has a cancel
//! flag that long jobs poll between steps.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use engram_analysis::lens::LensSite;
use engram_model::backend::Dtype;
use engram_model::{Control, DeviceSpec, Settings};

use crate::editor::{BatchView, EditSettings, EditView, LedgerOp, LedgerView};
use crate::error::JobError;
use crate::memories::{AttributionView, MemoriesRequest, MemoriesView, TriggersView};
use crate::session::{
    load_session, AttentionPatterns, FactReport, GenParams, Generation, LensGrid, ModelCard,
    NextTokens, Progress, Session, TraceRequest, TraceView,
};

/// What a panel asks the worker to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Load {
        source: String,
        device: DeviceSpec,
        dtype: Dtype,
    },
    NextTokens {
        prompt: String,
        k: usize,
    },
    Generate {
        prompt: String,
        params: GenParams,
    },
    /// Build a steering vector from the form and continue the prompt without and with it.
    Steer {
        prompt: String,
        form: crate::settings::SteerSettings,
    },
    Lens {
        prompt: String,
        site: LensSite,
        k: usize,
    },
    Attention {
        prompt: String,
    },
    CheckFacts {
        path: PathBuf,
        limit: usize,
    },
    Trace {
        prompt: String,
        request: TraceRequest,
        noise_subjects: Vec<String>,
    },
    /// Activation patching of the prompt's fact, the corrupted subject in the
    /// request: attribution patching always, exact patching where `exact`.
    Patch {
        prompt: String,
        request: TraceRequest,
        exact: bool,
    },
    Edit(Box<EditSettings>),
    /// FT-L on the form's request.
    EditFt(Box<EditSettings>),
    /// A MEMIT batch from the form's batch list or file.
    Memit(Box<EditSettings>),
    /// Evaluate the form's method on CounterFact cases (fresh weights per case).
    Evaluate(Box<EditSettings>),
    Ledger(LedgerOp),
    /// Replace the ledger with a stored run's (its edits applied to the loaded model).
    ImportLedger(PathBuf),
    SaveModel(PathBuf),
    Memories(Box<MemoriesRequest>),
    Triggers {
        /// None: the demo corpus.
        corpus: Option<PathBuf>,
        layer: usize,
        memory: usize,
        max_tokens: usize,
    },
    Attribute {
        prompt: String,
        target: String,
    },
    Probe(Box<crate::settings::ProbeSettings>),
}

impl Command {
    /// A short label for the status bar.
    pub fn label(&self) -> String {
        match self {
            Command::Load { source, .. } => format!("Loading {source}"),
            Command::NextTokens { .. } => "Next-token table".into(),
            Command::Generate { params, .. } => {
                format!("Generating {} tokens", params.max_new_tokens)
            }
            Command::Steer { form, .. } => format!("Steering at layer {}", form.layer),
            Command::Lens { .. } => "Logit lens".into(),
            Command::Attention { .. } => "Attention patterns".into(),
            Command::CheckFacts { path, .. } => format!("Checking facts in {}", path.display()),
            Command::Trace { request, .. } => format!("Tracing {:?}", request.subject),
            Command::Patch { request, .. } => format!("Patching {:?}", request.subject),
            Command::Edit(form) => format!("Editing {:?} -> {:?}", form.subject, form.target),
            Command::EditFt(form) => {
                format!("FT-L {:?} -> {:?}", form.subject, form.target)
            }
            Command::Memit(_) => "MEMIT batch".into(),
            Command::Evaluate(_) => "Evaluation".into(),
            Command::Ledger(_) => "Updating the ledger".into(),
            Command::ImportLedger(_) => "Applying a stored run's ledger".into(),
            Command::SaveModel(out) => format!("Saving to {}", out.display()),
            Command::Memories(_) => "Memories".into(),
            Command::Triggers { layer, memory, .. } => {
                format!("Trigger search for memory {layer}:{memory}")
            }
            Command::Attribute { .. } => "Knowledge-neuron attribution".into(),
            Command::Probe(p) => format!("Probing `{}`", p.label),
        }
    }
}

/// A typed result, one per command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Loaded(Box<ModelCard>),
    NextTokens(NextTokens),
    Generated(Generation),
    Steered(crate::session::SteerView),
    Lens(LensGrid),
    Attention(AttentionPatterns),
    Facts(FactReport),
    Trace(Box<TraceView>),
    Edited(Box<EditView>),
    EditedFt(Box<crate::editor::FtView>),
    Batch(Box<BatchView>),
    Patched(Box<crate::session::PatchView>),
    Evaluated(Box<crate::editor::EvalView>),
    Ledger(LedgerView),
    Saved(PathBuf),
    Memories(Box<MemoriesView>),
    Triggers(TriggersView),
    Attribution(Box<AttributionView>),
    Probe(Box<crate::session::ProbeView>),
}

pub type JobId = u64;

/// What the worker reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started(JobId),
    Progress(JobId, Progress),
    Finished(JobId, Result<Reply, JobError>),
}

/// The job's progress-and-cancel handle: the UI keeps a clone to cancel, the
/// job reports progress through it.
pub type CancelToken = Control;

/// The UI's handle on a submitted job.
#[derive(Debug, Clone)]
pub struct JobHandle {
    pub id: JobId,
    pub label: String,
    pub cancel: CancelToken,
}

struct Request {
    id: JobId,
    command: Command,
    cancel: CancelToken,
}

/// The UI's end of the worker.
pub struct Worker {
    requests: Option<Sender<Request>>,
    events: Receiver<Event>,
    /// The worker's event channel, for the jobs' progress.
    progress: Sender<Event>,
    wake: Arc<dyn Fn() + Send + Sync>,
    next_id: JobId,
    outstanding: Vec<CancelToken>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("next_id", &self.next_id)
            .finish()
    }
}

impl Worker {
    /// Start the thread. `wake` is called after every event (the UI repaints);
    /// `settings` say where runs and caches live.
    pub fn spawn(wake: impl Fn() + Send + Sync + 'static, settings: Settings) -> Self {
        let (req_tx, req_rx) = channel::<Request>();
        let (ev_tx, ev_rx) = channel::<Event>();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(wake);
        let (thread_tx, thread_wake) = (ev_tx.clone(), wake.clone());
        let spawned = std::thread::Builder::new()
            .name("engram-worker".into())
            .spawn(move || serve(req_rx, thread_tx, move || thread_wake(), settings));
        Self {
            // Without a thread every submit answers with an error, below.
            requests: spawned.ok().map(|_| req_tx),
            events: ev_rx,
            progress: ev_tx,
            wake,
            next_id: 1,
            outstanding: Vec::new(),
        }
    }

    /// Queue a command.
    pub fn submit(&mut self, command: Command) -> JobHandle {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, wake) = (self.progress.clone(), self.wake.clone());
        let cancel = Control::with_sink(move |p| {
            let _ = tx.send(Event::Progress(
                id,
                Progress {
                    done: p.done as usize,
                    total: p.total as usize,
                    note: format!("{}: {}/{}", p.stage, p.done, p.total),
                },
            ));
            wake();
        });
        let label = command.label();
        let request = Request {
            id,
            command,
            cancel: cancel.clone(),
        };
        if let Some(tx) = &self.requests {
            if tx.send(request).is_err() {
                self.requests = None;
            }
        }
        // Recent jobs' handles, cancelled when the worker is dropped.
        if self.outstanding.len() >= 64 {
            self.outstanding.remove(0);
        }
        self.outstanding.push(cancel.clone());
        JobHandle { id, label, cancel }
    }

    /// The next event, if any; never blocks.
    pub fn poll(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Whether the worker thread is gone (it never should be).
    pub fn is_dead(&self) -> bool {
        self.requests.is_none()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        for c in &self.outstanding {
            c.cancel();
        }
    }
}

fn serve(requests: Receiver<Request>, events: Sender<Event>, wake: impl Fn(), settings: Settings) {
    let mut session: Option<Box<dyn Session>> = None;
    let send = |ev: Event| {
        let _ = events.send(ev);
        wake();
    };
    while let Ok(Request {
        id,
        command,
        cancel,
    }) = requests.recv()
    {
        if cancel.is_cancelled() {
            send(Event::Finished(id, Err(JobError::Cancelled)));
            continue;
        }
        send(Event::Started(id));
        let mut progress = |p: Progress| {
            send(Event::Progress(id, p));
            !cancel.is_cancelled()
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(&mut session, command, &mut progress, &cancel, &settings)
        }));
        let result = match outcome {
            Ok(r) => r,
            Err(payload) => Err(JobError::Panicked(panic_message(payload.as_ref()))),
        };
        // A job that finished after its cancel still reports as cancelled.
        let result = match result {
            Ok(_) if cancel.is_cancelled() => Err(JobError::Cancelled),
            r => r,
        };
        send(Event::Finished(id, result));
    }
}

fn run(
    session: &mut Option<Box<dyn Session>>,
    command: Command,
    progress: &mut dyn FnMut(Progress) -> bool,
    ctl: &Control,
    settings: &Settings,
) -> Result<Reply, JobError> {
    fn model(session: &Option<Box<dyn Session>>) -> Result<&dyn Session, JobError> {
        session.as_deref().ok_or(JobError::NoModel)
    }
    fn model_mut(
        session: &mut Option<Box<dyn Session>>,
    ) -> Result<&mut (dyn Session + 'static), JobError> {
        session.as_deref_mut().ok_or(JobError::NoModel)
    }
    Ok(match command {
        Command::Load {
            source,
            device,
            dtype,
        } => {
            progress(Progress {
                done: 0,
                total: 1,
                note: format!("loading {source} on {device} ({dtype})"),
            });
            let loaded = load_session(&source, device, dtype, settings)?;
            let card = loaded.card().clone();
            *session = Some(loaded);
            Reply::Loaded(Box::new(card))
        }
        Command::NextTokens { prompt, k } => {
            Reply::NextTokens(model(session)?.next_tokens(&prompt, k)?)
        }
        Command::Generate { prompt, params } => {
            Reply::Generated(model(session)?.generate(&prompt, params, progress)?)
        }
        Command::Steer { prompt, form } => Reply::Steered(model(session)?.steer(&prompt, &form)?),
        Command::Lens { prompt, site, k } => Reply::Lens(model(session)?.lens(&prompt, site, k)?),
        Command::Attention { prompt } => Reply::Attention(model(session)?.attention(&prompt)?),
        Command::CheckFacts { path, limit } => {
            Reply::Facts(model(session)?.check_facts(&path, limit, progress)?)
        }
        Command::Trace {
            prompt,
            request,
            noise_subjects,
        } => Reply::Trace(Box::new(model(session)?.trace(
            &prompt,
            &request,
            &noise_subjects,
            ctl,
        )?)),
        Command::Patch {
            prompt,
            request,
            exact,
        } => Reply::Patched(Box::new(model(session)?.patch(&prompt, &request, exact)?)),
        Command::Edit(form) => Reply::Edited(Box::new(model_mut(session)?.edit(&form, ctl)?)),
        Command::EditFt(form) => {
            Reply::EditedFt(Box::new(model_mut(session)?.edit_ft(&form, ctl)?))
        }
        Command::Memit(form) => Reply::Batch(Box::new(model_mut(session)?.memit(&form, ctl)?)),
        Command::Evaluate(form) => {
            Reply::Evaluated(Box::new(model_mut(session)?.evaluate(&form, ctl)?))
        }
        Command::Ledger(op) => Reply::Ledger(model_mut(session)?.ledger_op(&op)?),
        Command::ImportLedger(path) => Reply::Ledger(model_mut(session)?.import_ledger(&path)?),
        Command::SaveModel(out) => Reply::Saved(model_mut(session)?.save_model(&out)?),
        Command::Memories(req) => Reply::Memories(Box::new(model(session)?.memories(&req)?)),
        Command::Triggers {
            corpus,
            layer,
            memory,
            max_tokens,
        } => Reply::Triggers(model_mut(session)?.triggers(
            corpus.as_deref(),
            layer,
            memory,
            max_tokens,
            ctl,
        )?),
        Command::Probe(req) => Reply::Probe(Box::new(model(session)?.probe(&req, ctl)?)),
        Command::Attribute { prompt, target } => {
            Reply::Attribution(Box::new(model(session)?.attribute(&prompt, &target, ctl)?))
        }
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
