//! candle ops over the fused kernels of `slimformer_kernels::attention`: attention
//! from the projections in one tensor, and residual + LayerNorm. Used only where no
//! gradient flows.

use super::fast::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape};
use slimformer_kernels::attention::{self, AttentionShape};

/// softmax(q·kᵀ·scale + bias)·v from the projections side by side in one tensor,
/// [batch, len, 3·heads·head_dim] (queries, then keys, then values: what one fused
/// product of the three weights gives); `bias`: [batch, len], added to every
/// query's scores for each key. Returns [batch, len, heads·head_dim].
pub struct Attention {
    pub bias: Vec<f32>,
    pub heads: usize,
    pub scale: f32,
    /// Both products in bf16 on AMX where the CPU has it (`Precision::Bf16` or
    /// `Int8`: measured on MiniLM, int8's embeddings keep their 0.99906 cosine to
    /// fp32, and its classifier's test accuracy does not move).
    pub bf16: bool,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(qkv, layout)?;
        let (batch, len, width) = layout.shape().dims3()?;
        let shape = AttentionShape {
            batch,
            len,
            heads: self.heads,
            scale: self.scale,
        };
        let out = attention::attention(qkv, &self.bias, shape, self.bf16)
            .map_err(|e| candle_core::Error::Msg(format!("fused attention: {e}")))?;
        Ok((CpuStorage::F32(out), Shape::from((batch, len, width / 3))))
    }
}

/// LayerNorm(x + residual) over the last dimension; as a one-input op, LayerNorm(x).
pub struct ResidualLayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

impl ResidualLayerNorm {
    fn run(
        &self,
        x: &[f32],
        residual: &[f32],
        shape: &Shape,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = attention::residual_layer_norm(x, residual, &self.weight, &self.bias, self.eps)
            .map_err(|e| candle_core::Error::Msg(format!("LayerNorm: {e}")))?;
        Ok((CpuStorage::F32(out), shape.clone()))
    }
}

impl CustomOp2 for ResidualLayerNorm {
    fn name(&self) -> &'static str {
        "fused-residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        r: &CpuStorage,
        r_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, r) = (contiguous_f32(x, x_layout)?, contiguous_f32(r, r_layout)?);
        if x.len() != r.len() {
            candle_core::bail!("residual LayerNorm: the input and the residual differ in shape");
        }
        self.run(x, r, x_layout.shape())
    }
}

impl CustomOp1 for ResidualLayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(contiguous_f32(x, layout)?, &[], layout.shape())
    }
}
