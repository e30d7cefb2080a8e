//! Dataset and run-store errors, each naming the file, record and field.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON{}: {message}", line.map(|l| format!(" on line {l}")).unwrap_or_default())]
    Json {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{path}: record {index}: field `{field}`: {message}")]
    Record {
        path: PathBuf,
        index: usize,
        field: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("run store: {0}")]
    Store(String),
    #[error("polars: {0}")]
    Polars(String),
    #[error("figure: {0}")]
    Figure(String),
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

impl DatasetError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DatasetError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<polars::error::PolarsError> for DatasetError {
    fn from(e: polars::error::PolarsError) -> Self {
        DatasetError::Polars(e.to_string())
    }
}
