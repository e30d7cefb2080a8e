//! Locating facts in a transformer.
//!
//! - [`lens`]: the logit lens (nostalgebraist 2020): each layer's residual stream
//!   read through the final norm and unembedding.
//!
//! Causal tracing, activation patching and FFN key-value memories build on the
//! same hooked forward pass.

pub mod lens;
