//! CPU operations the model files are built from. They know nothing of models: shapes come in
//! as arguments, buffers are owned by the caller (the session), and nothing here allocates.

pub mod activation;
pub mod attention;
pub mod expf;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod vec;

/// Elements below which a row-wise element-wise step (norm, quantization, activation, RoPE)
/// is not split further between threads. A batch of eight decode rows is a few thousand
/// elements: forked per row, each of some thirty such steps per layer paid a pool wake-up and
/// join worth more than the work, and the other thread mostly waited.
pub const ELEMS_PER_TASK: usize = 4096;

/// Rows of `width` elements per task for [`ELEMS_PER_TASK`] (`with_min_len` of a row-wise
/// parallel iterator).
pub fn rows_per_task(width: usize) -> usize {
    (ELEMS_PER_TASK / width.max(1)).max(1)
}
