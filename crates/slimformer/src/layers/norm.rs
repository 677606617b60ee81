use candle_core::Tensor;
use candle_nn::VarBuilder;

/// LayerNorm over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    /// LayerNorm(xs + residual), in one pass at inference.
    pub fn forward_residual(&self, xs: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let fusable = [xs, residual, &self.weight, &self.bias]
            .iter()
            .all(|t| super::fast::usable(t))
            && xs.dims() == residual.dims();
        if !fusable {
            return self.forward(&(xs + residual)?);
        }
        xs.contiguous()?
            .apply_op2_no_bwd(&residual.contiguous()?, &self.fused()?)
    }

    fn fused(&self) -> candle_core::Result<super::fused::ResidualLayerNorm> {
        Ok(super::fused::ResidualLayerNorm {
            weight: self.weight.to_vec1::<f32>()?,
            bias: self.bias.to_vec1::<f32>()?,
            eps: self.eps as f32,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if [xs, &self.weight, &self.bias]
            .iter()
            .all(|t| super::fast::usable(t))
        {
            return xs.contiguous()?.apply_op1_no_bwd(&self.fused()?);
        }
        // candle's fused kernel has no backward pass: use it only when nothing is trained.
        if xs.track_op() || self.weight.track_op() || self.bias.track_op() {
            let normed = super::rows::normalize(xs, self.eps)?;
            super::rows::add_row(&super::rows::mul_row(&normed, &self.weight)?, &self.bias)
        } else {
            candle_nn::ops::layer_norm(xs, &self.weight, &self.bias, self.eps as f32)
        }
    }
}
