//! The linear layer every block uses: candle's differentiable product whenever a
//! gradient may flow (training, or weights that are training variables), and at
//! inference the packed kernel of [`super::gemm`], with bias and GELU fused in.

use super::gemm::{self, Epilogue, PackedWeight};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};
use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    /// Packed at the first inference call; `None` where the weights cannot be
    /// (not f32 on the CPU). Shared by clones, which share the weights.
    packed: Arc<OnceLock<Option<Packed>>>,
}

#[derive(Debug)]
struct Packed {
    weight: PackedWeight,
    bias: Option<Vec<f32>>,
}

impl Linear {
    /// `weight`: out × in, as in PyTorch.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            inner: candle_nn::Linear::new(weight, bias),
            packed: Arc::default(),
        }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// `xs·Wᵀ + b`, then GELU when `epilogue` says so.
    pub fn forward_with(&self, xs: &Tensor, epilogue: Epilogue) -> candle_core::Result<Tensor> {
        if let Some(packed) = self.packed_for(xs) {
            return xs
                .contiguous()?
                .apply_op1_no_bwd(&PackedLinear { packed, epilogue });
        }
        let out = self.inner.forward(xs)?;
        match epilogue {
            Epilogue::None => Ok(out),
            Epilogue::GeluErf => super::fast::gelu_erf(&out),
        }
    }

    /// The packed weights when this call may use them: nothing is trained through
    /// the input or the weights, and both are f32 on the CPU.
    fn packed_for(&self, xs: &Tensor) -> Option<&Packed> {
        let weight = self.inner.weight();
        if !super::fast::usable(xs) || weight.track_op() {
            return None;
        }
        if self.inner.bias().is_some_and(|b| b.track_op()) {
            return None;
        }
        self.packed
            .get_or_init(|| pack(weight, self.inner.bias()))
            .as_ref()
    }
}

fn pack(weight: &Tensor, bias: Option<&Tensor>) -> Option<Packed> {
    if weight.dtype() != DType::F32 || !weight.device().is_cpu() {
        return None;
    }
    let (n, k) = weight.dims2().ok()?;
    let values = weight.flatten_all().ok()?.to_vec1::<f32>().ok()?;
    let bias = match bias {
        Some(b) if b.dtype() == DType::F32 => Some(b.flatten_all().ok()?.to_vec1::<f32>().ok()?),
        Some(_) => return None,
        None => None,
    };
    Some(Packed {
        weight: PackedWeight::pack(&values, n, k),
        bias,
    })
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(xs, Epilogue::None)
    }
}

struct PackedLinear<'a> {
    packed: &'a Packed,
    epilogue: Epilogue,
}

impl CustomOp1 for PackedLinear<'_> {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = super::fast::contiguous_f32(storage, layout)?;
        let w = &self.packed.weight;
        let mut dims = layout.shape().dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == w.in_features() => *last = w.out_features(),
            _ => candle_core::bail!(
                "linear layer of {} inputs applied to a tensor of shape {:?}",
                w.in_features(),
                layout.shape()
            ),
        }
        let m = xs.len() / w.in_features().max(1);
        let out = gemm::linear(xs, m, w, self.packed.bias.as_deref(), self.epilogue);
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}
