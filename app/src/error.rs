//! Why a job failed, as the status bar shows it.

use engram::model::ModelError;

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
    /// An `anyhow` chain from the facade, kept whole.
    pub fn load(e: anyhow::Error) -> Self {
        JobError::Load(format!("{e:#}"))
    }
}

impl From<ModelError> for JobError {
    fn from(e: ModelError) -> Self {
        JobError::Model(e.to_string())
    }
}
