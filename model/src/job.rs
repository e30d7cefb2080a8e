//! One progress-and-cancel handle for every long job (traces, statistics, edits,
//! evaluations), and the one error kind a cancelled job ends with.
//!
//! Front ends make a [`Control`], keep a clone to cancel from another thread,
//! and give it a sink for [`Progress`]; jobs call [`Control::tick`] (false once
//! cancelled) and end with [`Cancelled`], found by type with [`is_cancelled`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A job stopped because its [`Control`] was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// Whether `err`, or any error in its source chain, is [`Cancelled`].
pub fn is_cancelled(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cur) = e {
        if cur.is::<Cancelled>() {
            return true;
        }
        e = cur.source();
    }
    false
}

/// How far a job has got: `done` of `total` units of its current `stage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub stage: String,
    pub done: u64,
    pub total: u64,
}

type Sink = Arc<dyn Fn(&Progress) + Send + Sync>;

/// The progress-and-cancel handle passed to every job. Clones share one flag.
#[derive(Clone, Default)]
pub struct Control {
    cancel: Arc<AtomicBool>,
    sink: Option<Sink>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("cancelled", &self.is_cancelled())
            .field("reports", &self.sink.is_some())
            .finish()
    }
}

impl Control {
    /// A handle that reports nowhere.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle that hands every [`Progress`] to `sink` (called on the job's thread).
    pub fn with_sink(sink: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        Self {
            cancel: Arc::default(),
            sink: Some(Arc::new(sink)),
        }
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Report progress; false once cancelled (the shape of the crates' progress callbacks).
    pub fn tick(&self, stage: &str, done: u64, total: u64) -> bool {
        if let Some(sink) = &self.sink {
            sink(&Progress {
                stage: stage.to_string(),
                done,
                total,
            });
        }
        !self.is_cancelled()
    }
}
