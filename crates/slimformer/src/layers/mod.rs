//! Building blocks shared by every family, written once. Each block loads from a
//! `VarBuilder` whose names the family passes in, because the families differ in
//! tensor names far more than in computation.

mod activation;
mod attention;
mod attention_train;
mod dropout;
mod embeddings;
pub mod fast;
mod feed_forward;
pub mod fused;
mod linear;
mod linear_train;
mod norm;
mod precision;

pub mod rows;
mod transformer;

pub use activation::Activation;
pub use attention::{attention_bias, AttentionNames, SelfAttention};
pub use dropout::Dropout;
pub use embeddings::{Embeddings, EmbeddingsNames, PositionIds};
pub use feed_forward::FeedForward;
pub use norm::LayerNorm;
pub use transformer::{LayerNames, LayerShape, TransformerLayer};

pub use candle_nn::Embedding;
pub use linear::Linear;
pub use precision::{precision, set_precision, Precision};

/// transformers' initialization of new weights: normal(0, initializer_range).
pub const INIT_STD: f64 = 0.02;

/// Loads a linear layer `name.weight` (out × in) and `name.bias`. When the
/// VarBuilder creates missing weights (a new head), they start as transformers'
/// do: normal(0, 0.02) weights, zero bias.
pub fn linear(
    vb: &candle_nn::VarBuilder,
    name: &str,
    d_in: usize,
    d_out: usize,
) -> crate::Result<Linear> {
    let vb = vb.pp(name);
    let init = candle_nn::Init::Randn {
        mean: 0.0,
        stdev: INIT_STD,
    };
    let weight = vb.get_with_hints((d_out, d_in), "weight", init)?;
    let bias = vb.get_with_hints(d_out, "bias", candle_nn::Init::Const(0.0))?;
    Ok(Linear::new(weight, Some(bias)))
}

pub use fast::softmax_last_dim;

/// Runs `work` on a thread of rayon's pool, as its caller if it already is one.
/// A caller outside the pool (the command's main thread, a server's blocking
/// thread) would otherwise hand each parallel op to the pool and sleep until it
/// ends: two wake-ups through the kernel per op, and on a machine with as many
/// cores as pool threads, a third thread contending with the pool's.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    match rayon::current_thread_index() {
        Some(_) => work(),
        None => rayon::scope(|_| work()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// max |a − b| over two tensors of one shape (any float dtype), for the layers' tests.
    pub(crate) fn max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.to_dtype(candle_core::DType::F64))
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f64>())
            .unwrap()
    }
}
