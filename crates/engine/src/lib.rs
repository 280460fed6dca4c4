//! backstop-engine: turns a GGUF file into tokens.
//!
//! Data flows gguf (file on mmap) -> quant (block formats) -> cpu (SIMD kernels) -> ops
//! (matvec, norms, RoPE, attention) -> models (one file per architecture) -> generate, with
//! tokenizer, chat and sampling beside it. This crate knows nothing of HTTP or async.

pub mod backend;
pub mod chat;
pub mod cpu;
pub mod generate;
pub mod gguf;
pub mod grammar;
pub mod models;
pub mod ops;
pub mod quant;
pub mod sampling;
pub mod tokenizer;
pub mod tools;
