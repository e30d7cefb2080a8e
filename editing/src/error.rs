//! Errors of the editing crate: each names the input at fault.

use std::path::PathBuf;

use engram_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
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
    #[error("request {index} ({subject:?}): {source}")]
    BadRequest {
        index: usize,
        subject: String,
        #[source]
        source: Box<EditError>,
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
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, EditError>;
