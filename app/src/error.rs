//! Why a job failed, as the status bar shows it.

use engram_model::ModelError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("no model is loaded; open one on the Model panel")]
    NoModel,
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Model(String),
    #[error("could not load the model: {0}")]
    Load(String),
    #[error("{0}")]
    Failed(String),
    #[error("the job crashed inside the worker: {0} (the worker is still running)")]
    Panicked(String),
}

impl JobError {
    /// A library job's error: [`JobError::Cancelled`] where it ended in
    /// [`engram_model::Cancelled`] (found by type), else its message.
    pub fn from_lib(e: impl std::error::Error + 'static) -> Self {
        if engram_model::is_cancelled(&e) {
            JobError::Cancelled
        } else {
            JobError::Failed(e.to_string())
        }
    }
}

impl From<ModelError> for JobError {
    fn from(e: ModelError) -> Self {
        if engram_model::is_cancelled(&e) {
            JobError::Cancelled
        } else {
            JobError::Model(e.to_string())
        }
    }
}
