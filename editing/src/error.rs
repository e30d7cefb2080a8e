//! Errors of the editing crate: each names the input at fault.

use std::path::PathBuf;

use engram_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(
        "{path} changed since this run {was} it (another engram wrote it): not overwritten, \
         so no edit is lost. This run's edit is stored with its run; run it again to add it \
         on top of the ledger as it is now"
    )]
    LedgerChanged { path: PathBuf, was: &'static str },
    #[error("the new target {target:?} is already the model's answer to {prompt:?}")]
    TargetIsCurrent { prompt: String, target: String },
    #[error("{what} became {value} at step {step}: the edit was not applied")]
    NonFinite {
        what: &'static str,
        value: f32,
        step: usize,
    },
    #[error("layer {layer} is out of range: the model has {n_layers} layers")]
    Layer { layer: usize, n_layers: usize },
    #[error("the statistics are for {what}, but {expected} was asked for")]
    StatsMismatch { what: String, expected: String },
    #[error("the key second moment is not positive definite (pivot {pivot} at row {row}); collect statistics over more text")]
    NotPositiveDefinite { row: usize, pivot: f64 },
    #[error("no edit with id {0} in the ledger")]
    NoSuchEdit(usize),
    #[error("this ledger was made on model {expected}, not on {found}")]
    WrongBase { expected: String, found: String },
    #[error("request {index} ({subject:?}): {cause}")]
    BadRequest {
        index: usize,
        subject: String,
        /// In the message, not a `#[source]`: printed once, also by `{:#}` chains.
        cause: Box<EditError>,
    },
    #[error("requests {first} and {second} ask {prompt:?} to answer both {first_target:?} and {second_target:?}")]
    Conflict {
        first: usize,
        second: usize,
        prompt: String,
        first_target: String,
        second_target: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Dataset(#[from] engram_datasets::DatasetError),
    #[error("cancelled")]
    Cancelled(#[from] engram_model::Cancelled),
}

pub type Result<T> = std::result::Result<T, EditError>;

/// `return Err(EditError::Invalid(format!(…)))`.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::error::EditError::Invalid(format!($($t)*)))
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
        self.map_err(|e| EditError::Invalid(format!("{what}: {e}")))
    }
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| EditError::Invalid(format!("{}: {e}", what())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| EditError::Invalid(what.to_string()))
    }
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| EditError::Invalid(what().to_string()))
    }
}
