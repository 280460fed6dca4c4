//! Helpers shared by the tests that need the real test models.
#![allow(dead_code)]

use std::path::PathBuf;

/// Path of a test model in `models/`; panics with the command to run when it is missing, so a
/// missing model is a failure, never a silent pass.
pub fn model_path(file: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("models").join(file);
    assert!(
        p.exists(),
        "test model {} is missing: run scripts/fetch-models",
        p.display()
    );
    p
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

pub fn data_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}
