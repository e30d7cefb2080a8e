//! Locating facts in a transformer.
//!
//! - [`lens`]: the logit lens (nostalgebraist 2020): each layer's residual stream
//!   read through the final norm and unembedding.
//!
//! - [`trace`]: causal tracing (Meng et al. 2022): corrupt the subject, restore
//!   one clean state at a time.
//!
//! - [`patching`]: clean/corrupted activation patching, TransformerLens style.
//!
//! FFN key-value memories build on the same hooked forward pass.

pub mod lens;
pub mod patching;
pub mod trace;
