use super::{linear, Activation, Dropout, Linear};
use crate::rng::TrainRng;
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use slimformer_kernels::gemm::Epilogue;

/// Position-wise feed-forward block: `down(dropout(act(up(x))))`. Only XLNet
/// drops out inside the block; the other families pass `Dropout::default()`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    up: Linear,
    down: Linear,
    activation: Activation,
    inner_dropout: Dropout,
}

impl FeedForward {
    /// `up` and `down` name the two linear layers under `vb`.
    pub fn load(
        vb: &VarBuilder,
        (up, down): (&str, &str),
        hidden: usize,
        intermediate: usize,
        activation: Activation,
        inner_dropout: Dropout,
    ) -> crate::Result<Self> {
        Ok(Self {
            up: linear(vb, up, hidden, intermediate)?,
            down: linear(vb, down, intermediate, hidden)?,
            activation,
            inner_dropout,
        })
    }

    pub fn forward(&self, xs: &Tensor, train: Option<&TrainRng>) -> candle_core::Result<Tensor> {
        // GELU (exact in most checkpoints, tanh in ALBERT's) runs in the product's epilogue.
        let epilogue = match self.activation {
            Activation::Gelu => Some(Epilogue::GeluErf),
            Activation::GeluTanh => Some(Epilogue::GeluTanh),
            _ => None,
        };
        if let (Some(epilogue), None) = (epilogue, train) {
            if let Some(out) = Linear::chained(&self.up, &self.down, xs, epilogue)? {
                return Ok(out);
            }
        }
        let h = match self.activation {
            Activation::Gelu => self.up.forward_with(xs, Epilogue::GeluErf)?,
            Activation::GeluTanh => self.up.forward_with(xs, Epilogue::GeluTanh)?,
            other => other.forward(&self.up.forward(xs)?)?,
        };
        self.down.forward(&self.inner_dropout.forward(&h, train)?)
    }
}
