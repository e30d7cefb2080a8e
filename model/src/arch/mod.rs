//! One file per architecture family: how its HF `config.json` and checkpoint
//! names map onto the shared [`Transformer`](crate::Transformer).

pub mod gpt2;
pub mod gptj;
pub mod llama;
pub mod neox;
