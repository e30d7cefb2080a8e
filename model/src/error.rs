//! Typed errors of the transformer core. Every variant names the file,
//! tensor, field or token at fault, so a researcher can fix the input.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: missing field `{field}`")]
    MissingField { path: PathBuf, field: String },
    #[error("{path}: field `{field}`: {message}")]
    InvalidField {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: unsupported model_type `{found}`; supported: {}", supported.join(", "))]
    UnsupportedArchitecture {
        path: PathBuf,
        found: String,
        supported: Vec<&'static str>,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tensor `{tensor}` not found")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{tensor}` has unsupported dtype {dtype}; supported: F32, F16, BF16")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error(
        "{path}: PyTorch pickle checkpoints are refused: loading them executes arbitrary code. \
         Convert the model to safetensors (e.g. `model.save_pretrained(dir, safe_serialization=True)`)"
    )]
    PickleRefused { path: PathBuf },
    #[error("{path}: not a valid GGUF file: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error(
        "{path}: no checkpoint found (expected model.safetensors or model.safetensors.index.json)"
    )]
    NoCheckpoint { path: PathBuf },
    #[error("{path} already exists; saving never overwrites, choose a new directory")]
    OutputExists { path: PathBuf },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Encode(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the target is empty; give the answer the model should produce, e.g. \"Paris\"")]
    EmptyTarget,
    #[error(
        "the target {target:?} is not in the tokenizer's vocabulary: it maps to the unknown \
         token `{unk}`, and an edit toward it would teach the model `{unk}`"
    )]
    UnknownTarget { target: String, unk: String },
    #[error("the prompt has {len} tokens, longer than the model's context of {n_ctx}")]
    PromptTooLong { len: usize, n_ctx: usize },
    #[error("token id {id} at position {position} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        id: u32,
        position: usize,
        vocab: usize,
    },
    #[error("batch rows have different lengths ({first} and {other}); pad them and pass an attention mask")]
    RaggedBatch { first: usize, other: usize },
    #[error("subject {subject:?} not found in prompt {prompt:?}")]
    SubjectNotFound { subject: String, prompt: String },
    #[error("hook at `{point}` returned shape {found:?}, expected {expected:?}")]
    HookShape {
        point: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("hook at `{point}` returned a rank-{found} tensor, expected rank {expected}")]
    HookRank {
        point: String,
        expected: usize,
        found: usize,
    },
    #[error("unknown hook point `{0}`")]
    UnknownHook(String),
    #[error("layer {layer} out of range: the model has {n_layers} layers")]
    LayerOutOfRange { layer: usize, n_layers: usize },
    #[error("{path}: tensor `{tensor}` holds {count} NaN or infinite values of {total}")]
    NonFiniteWeights {
        path: PathBuf,
        tensor: String,
        count: usize,
        total: usize,
    },
    #[error("option `{option}`: {message}")]
    InvalidOption { option: String, message: String },
    #[error(
        "the forward pass produced non-finite values ({what}), first at `{point}`; \
         the checkpoint's weights or config (e.g. rope_theta, norm eps) are broken"
    )]
    NonFinite { point: String, what: String },
    #[error("tensor data: {0}")]
    Data(String),
    #[error("device: {0}")]
    Device(String),
    #[error("cancelled")]
    Cancelled(#[from] crate::job::Cancelled),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
