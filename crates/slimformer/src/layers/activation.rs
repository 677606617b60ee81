use candle_core::Tensor;
use serde::Deserialize;

/// The activations that real checkpoints name in `hidden_act` / `activation` /
/// `ff_activation`, with transformers' meaning of each name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Activation {
    /// Exact, erf-based (`gelu`, `gelu_python`).
    Gelu,
    /// Tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the same function).
    GeluTanh,
    /// x·σ(1.702x)
    QuickGelu,
    Relu,
    Silu,
    Tanh,
}

impl TryFrom<String> for Activation {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

impl std::str::FromStr for Activation {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        Ok(match name {
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            other => {
                return Err(format!(
                    "unsupported activation {other:?}: expected one of gelu, gelu_new, \
                     gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, silu, swish, tanh"
                ))
            }
        })
    }
}

impl Activation {
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => super::fast::gelu_erf(xs),
            Activation::GeluTanh => super::fast::gelu_tanh(xs),
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
            Activation::Tanh => xs.tanh(),
        }
    }
}
