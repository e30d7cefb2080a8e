//! Integration tests of the transformer core, in one binary.
//! Tests that need `../shared` print a skip message and pass where it is absent.

mod autodiff;
mod bad_input;
mod common;
mod cuda;
mod generate;
mod gguf;
mod hooks;
mod layers;
mod padding;
mod parity;
mod tokenizer;
mod wgpu;
