//! Engram: locate where a language model stores a fact, and edit it.
//!
//! This crate is the facade over the workspace crates and the home of the CLI.
//! - [`model`]: HF checkpoints, tokenizers, the hooked forward pass.
//! - [`analysis`]: logit lens, FFN memories, causal tracing, patching.
//! - [`editing`]: layer statistics, ROME, MEMIT, the edit ledger.
//! - [`datasets`]: fact sets in, the experiment store out.

pub use engram_analysis as analysis;
pub use engram_datasets as datasets;
pub use engram_editing as editing;
pub use engram_model as model;

pub mod backend;
pub mod bench;
pub mod demo;
pub mod edit;
pub mod evaluate;
pub mod hub;
pub mod lens;
pub mod memit;
pub mod memories;
pub mod patch;
pub mod probe;
pub mod runs;
pub mod trace;
