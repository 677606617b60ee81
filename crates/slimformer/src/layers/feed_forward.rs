use super::{linear, Activation, Linear};
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

/// Position-wise feed-forward block: `down(act(up(x)))`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    up: Linear,
    down: Linear,
    activation: Activation,
}

impl FeedForward {
    /// `up` and `down` name the two linear layers under `vb`.
    pub fn load(
        vb: &VarBuilder,
        up: &str,
        down: &str,
        hidden: usize,
        intermediate: usize,
        activation: Activation,
    ) -> crate::Result<Self> {
        Ok(Self {
            up: linear(vb, up, hidden, intermediate)?,
            down: linear(vb, down, intermediate, hidden)?,
            activation,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.activation.forward(&self.up.forward(xs)?)?;
        self.down.forward(&h)
    }
}
