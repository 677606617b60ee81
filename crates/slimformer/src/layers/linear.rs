//! The linear layer every block uses: candle's differentiable product whenever a
//! gradient may flow (training, or weights that are training variables), and at
//! inference the packed kernel of [`slimformer_kernels::gemm`], with bias and GELU fused in.

use super::precision::{precision, Precision};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Storage, Tensor};
use slimformer_kernels::gemm::{self, Epilogue, PackedWeight};
use slimformer_kernels::gemm_bf16::{self, PackedBf16Weight};
use slimformer_kernels::gemm_int8::{self, PackedInt8Weight};
use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    /// Packed at the first inference call in each precision; `None` where the
    /// weights cannot be (not f32 on the CPU). Shared by clones, which share the weights.
    packed: Arc<[OnceLock<Option<Packed>>; 3]>,
}

#[derive(Debug)]
enum PackedWeights {
    F32(PackedWeight),
    Int8(PackedInt8Weight),
    Bf16(PackedBf16Weight),
}

#[derive(Debug)]
struct Packed {
    weight: PackedWeights,
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
            let op = PackedLinear {
                packed,
                epilogue,
                then: None,
            };
            return xs.contiguous()?.apply_op1_no_bwd(&op);
        }
        let (weight, bias) = (self.inner.weight(), self.inner.bias());
        let out = if super::fast::enabled() && super::linear_train::takes(xs, weight, bias) {
            super::rows::apply_last(xs, |rows| {
                super::linear_train::linear(rows, weight, bias, precision())
            })?
        } else {
            // candle's Linear adds the bias by broadcasting, whose gradient is slow to sum.
            let product = candle_nn::Linear::new(weight.clone(), None).forward(xs)?;
            match bias {
                Some(bias) => super::rows::add_row(&product, bias)?,
                None => product,
            }
        };
        match epilogue {
            Epilogue::None => Ok(out),
            Epilogue::GeluErf => super::fast::gelu_erf(&out),
            Epilogue::GeluTanh => super::fast::gelu_tanh(&out),
        }
    }

    /// `down(epilogue(up(xs)))` as one op where both layers run int8 or bf16: the
    /// inner activation goes from one product to the next in the low-precision
    /// kernels' input format, without a pass over memory of its own. `None` where
    /// they do not.
    pub fn chained(
        up: &Linear,
        down: &Linear,
        xs: &Tensor,
        epilogue: Epilogue,
    ) -> candle_core::Result<Option<Tensor>> {
        let (Some(first), Some(second)) = (up.packed_for(xs), down.packed_for(xs)) else {
            return Ok(None);
        };
        if !matches!(
            (&first.weight, &second.weight),
            (PackedWeights::Int8(_), PackedWeights::Int8(_))
                | (PackedWeights::Bf16(_), PackedWeights::Bf16(_))
        ) {
            return Ok(None);
        }
        let op = PackedLinear {
            packed: first,
            epilogue,
            then: Some(second),
        };
        xs.contiguous()?.apply_op1_no_bwd(&op).map(Some)
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
        let precision = precision();
        self.packed[precision as usize]
            .get_or_init(|| pack(weight, self.inner.bias(), precision))
            .as_ref()
    }
}

fn pack(weight: &Tensor, bias: Option<&Tensor>, precision: Precision) -> Option<Packed> {
    if weight.dtype() != DType::F32 || !weight.device().is_cpu() {
        return None;
    }
    let (n, k) = weight.dims2().ok()?;
    let bias = match bias {
        Some(b) if b.dtype() == DType::F32 => Some(b.flatten_all().ok()?.to_vec1::<f32>().ok()?),
        Some(_) => return None,
        None => None,
    };
    // Packed from candle's storage in place (no copy of the weights first).
    let (storage, layout) = weight.storage_and_layout();
    let values = match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => &data[start..end],
        _ => return None,
    };
    let weight = match precision {
        Precision::Fp32 => PackedWeights::F32(PackedWeight::pack(values, n, k)),
        Precision::Int8 => PackedWeights::Int8(PackedInt8Weight::pack(values, n, k)),
        Precision::Bf16 => PackedWeights::Bf16(PackedBf16Weight::pack(values, n, k)),
    };
    Some(Packed { weight, bias })
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(xs, Epilogue::None)
    }
}

struct PackedLinear<'a> {
    packed: &'a Packed,
    epilogue: Epilogue,
    /// A second layer applied to the output in the same op (see [`Linear::chained`]).
    then: Option<&'a Packed>,
}

impl Packed {
    /// (in, out) features.
    fn features(&self) -> (usize, usize) {
        match &self.weight {
            PackedWeights::F32(w) => (w.in_features(), w.out_features()),
            PackedWeights::Int8(w) => (w.in_features(), w.out_features()),
            PackedWeights::Bf16(w) => (w.in_features(), w.out_features()),
        }
    }
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
        let (k, inner) = self.packed.features();
        let n = match self.then {
            Some(then) if then.features().0 == inner => then.features().1,
            Some(then) => candle_core::bail!(
                "a layer of {inner} outputs chained to one of {} inputs",
                then.features().0
            ),
            None => inner,
        };
        let mut dims = layout.shape().dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == k => *last = n,
            _ => candle_core::bail!(
                "linear layer of {k} inputs applied to a tensor of shape {:?}",
                layout.shape()
            ),
        }
        let m = xs.len() / k.max(1);
        let bias = self.packed.bias.as_deref();
        if let Some(then) = self.then {
            let down_bias = then.bias.as_deref();
            let out = match (&self.packed.weight, &then.weight) {
                (PackedWeights::Int8(up), PackedWeights::Int8(down)) => {
                    gemm_int8::chained(xs, m, (up, bias), self.epilogue, (down, down_bias))
                }
                (PackedWeights::Bf16(up), PackedWeights::Bf16(down)) => {
                    gemm_bf16::chained(xs, m, (up, bias), self.epilogue, (down, down_bias))
                }
                _ => candle_core::bail!("only int8 or bf16 layers are chained"),
            };
            return Ok((CpuStorage::F32(out), Shape::from(dims)));
        }
        let out = match &self.packed.weight {
            PackedWeights::F32(w) => gemm::linear(xs, m, w, bias, self.epilogue),
            PackedWeights::Int8(w) => gemm_int8::linear(xs, m, w, bias, self.epilogue),
            PackedWeights::Bf16(w) => gemm_bf16::linear(xs, m, w, bias, self.epilogue),
        };
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}
