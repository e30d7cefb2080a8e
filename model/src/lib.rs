//! Engram's transformer core.
//!
//! - [`config`]: one [`ModelConfig`] read from HF `config.json` (gpt2, gptj, gpt_neox, llama family).
//! - [`weights`]: memory-mapped safetensors, single or sharded; pickle refused.
//! - [`gguf`]: llama.cpp GGUF files, dequantized, served under HF names.
//! - [`tokenizer`]: HF tokenizers with byte offsets for subject spans.
//! - [`arch`]: one file per family mapping checkpoint names onto [`Transformer`].
//! - [`hooks`]: TransformerLens-named hook points that observe or replace activations.
//! - [`layers`] and [`transformer`]: the single forward pass.
//! - [`job`]: the progress-and-cancel [`Control`] of every long job, and [`Cancelled`].
//! - [`settings`], [`source`], [`backend`]: where things live, where a model comes from, which backend runs it.
//! - [`cpu`]: AVX-512 and AVX2 GEMM and fused kernels under [`layers`] on the CPU backend.

pub mod arch;
pub mod backend;
pub mod config;
pub mod cpu;
pub mod device;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hooks;
pub mod job;
pub mod layers;
pub mod lm;
pub mod save;
pub mod settings;
pub mod source;
pub mod tokenizer;
pub mod train;
pub mod transformer;
pub mod weights;

pub use backend::{with_backend, BackendJob, Dtype};
pub use config::{Architecture, ModelConfig};
pub use device::{Cpu, CpuAutodiff, DeviceSpec, WgpuAdapter};
pub use error::{ModelError, Result};
pub use generate::{generate, generate_hooked, GenerateConfig, Sampling};
pub use hooks::{fn_hook, Activation, ActivationCache, BlockSite, Hook, HookPoint, NoHooks};
pub use job::{is_cancelled, Cancelled, Control, Progress};
pub use lm::{LanguageModel, TokenProb};
pub use settings::Settings;
pub use tokenizer::Tokenizer;
pub use transformer::{Batch, KvCache, Transformer};

pub use burn_tensor;
