//! Errors of the analysis jobs: the model's, the data's and the run store's,
//! each kept whole, plus what a request got wrong. A cancelled job ends in
//! [`Cancelled`], found by type with [`engram_model::is_cancelled`].

use engram_datasets::DatasetError;
use engram_model::{Cancelled, ModelError};

use crate::patching::PatchError;
use crate::trace::TraceError;

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled(#[from] Cancelled),
}

pub type Result<T, E = AnalysisError> = std::result::Result<T, E>;

/// `return Err(AnalysisError::Invalid(format!(…)))`.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::error::AnalysisError::Invalid(format!($($t)*)))
    };
}
pub(crate) use bail;

/// A message in front of an error or a missing value.
pub(crate) trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| AnalysisError::Invalid(format!("{what}: {e}")))
    }
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| AnalysisError::Invalid(format!("{}: {e}", what())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| AnalysisError::Invalid(what.to_string()))
    }
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| AnalysisError::Invalid(what().to_string()))
    }
}
