//! Building blocks shared by every family, written once. Each block loads from a
//! `VarBuilder` whose names the family passes in, because the families differ in
//! tensor names far more than in computation.

mod activation;
mod attention;
mod embeddings;
mod feed_forward;
mod norm;
mod transformer;

pub use activation::Activation;
pub use attention::{attention_bias, AttentionNames, SelfAttention};
pub use embeddings::{Embeddings, EmbeddingsNames, PositionIds};
pub use feed_forward::FeedForward;
pub use norm::LayerNorm;
pub use transformer::{LayerNames, LayerShape, TransformerLayer};

use candle_core::{Tensor, D};

pub use candle_nn::{Embedding, Linear};

/// Loads a linear layer `name.weight` (out × in) and `name.bias`.
pub fn linear(
    vb: &candle_nn::VarBuilder,
    name: &str,
    d_in: usize,
    d_out: usize,
) -> crate::Result<Linear> {
    Ok(candle_nn::linear(d_in, d_out, vb.pp(name))?)
}

/// Softmax over the last dimension. candle's fused kernel has no backward pass, so it
/// is used only when no gradient can flow through `xs`.
pub fn softmax_last_dim(xs: &Tensor) -> candle_core::Result<Tensor> {
    if xs.track_op() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}
