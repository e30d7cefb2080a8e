//! Locating facts in a transformer.
//!
//! - [`lens`]: the logit lens (nostalgebraist 2020): each layer's residual stream
//!   read through the final norm and unembedding.
//!
//! - [`trace`]: causal tracing (Meng et al. 2022): corrupt the subject, restore
//!   one clean state at a time, with ROME's noise ([`numpy_random`]).
//!
//! - [`patching`]: clean/corrupted activation patching, TransformerLens style.
//!
//! - [`memories`]: FFN key-value memories (Geva et al. 2021; LM-Debugger):
//!   values in vocabulary space, top memories per prompt, interventions,
//!   trigger examples, knowledge neurons (Dai et al. 2022).
//!
//! - [`probe`]: linear probes per layer with control tasks (Hewitt & Liang 2019).
//!
//! - [`jobs`]: each of these as a job (typed request, typed report, one
//!   [`engram_model::Control`]), stored as a run; the CLI and the workbench call them.

pub mod attribution;
pub mod error;
pub mod jobs;
pub mod lens;
pub mod memories;
pub mod numpy_random;
pub mod patching;
pub mod probe;
pub mod steer;
pub mod trace;

pub use error::{AnalysisError, Result};
