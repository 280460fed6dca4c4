//! CPU operations the model files are built from. They know nothing of models: shapes come in
//! as arguments, buffers are owned by the caller (the session), and nothing here allocates.

pub mod activation;
pub mod attention;
pub mod expf;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod vec;
