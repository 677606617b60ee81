//! AdamW with decoupled weight decay over the variables of a [`VarMap`], a linear
//! warm-up/decay schedule, and gradient clipping by global norm.
//!
//! Defaults follow `torch.optim.AdamW` and HF `Trainer`: betas (0.9, 0.999), eps 1e-8,
//! weight decay 0.01, none on biases and normalization weights (decided by name:
//! [`decays`]).

use crate::Result;
use candle_core::{backprop::GradStore, DType, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Whether a parameter gets weight decay: not biases, not LayerNorm weights.
pub fn decays(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !(lower.ends_with("bias") || lower.contains("layernorm") || lower.contains("norm"))
}

/// The learning rate at optimizer step `step` (0-based): linear warm-up from 0 over
/// `warmup` steps, then linear decay to 0 at `total` steps (HF's
/// `get_linear_schedule_with_warmup`).
pub fn linear_schedule(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let left = total.saturating_sub(step) as f64;
    let span = total.saturating_sub(warmup).max(1) as f64;
    peak * (left / span).max(0.0)
}

struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW over every variable of a VarMap, in name order.
pub struct AdamW {
    params: Vec<Param>,
    config: AdamWConfig,
    /// Optimizer steps taken (bias correction uses it).
    pub step: usize,
}

/// Gradients summed over the micro-batches of one optimizer step, by parameter index.
pub struct Grads(Vec<Option<Tensor>>);

impl AdamW {
    /// Takes the VarMap's variables as they are now: create new heads before this.
    pub fn new(varmap: &VarMap, config: AdamWConfig) -> Result<Self> {
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut named: Vec<(&String, &Var)> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        let params = named
            .into_iter()
            .filter(|(_, var)| var.dtype().is_float())
            .map(|(name, var)| {
                Ok(Param {
                    name: name.clone(),
                    var: var.clone(),
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    decay: decays(name),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            config,
            step: 0,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// An empty gradient accumulator.
    pub fn zero_grads(&self) -> Grads {
        Grads(vec![None; self.params.len()])
    }

    /// Adds one backward pass's gradients to `acc` (gradient accumulation).
    pub fn accumulate(&self, acc: &mut Grads, grads: &GradStore) -> Result<()> {
        for (slot, p) in acc.0.iter_mut().zip(&self.params) {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                let g = g.detach();
                *slot = Some(match slot.take() {
                    Some(sum) => (sum + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// Scales the gradients so their global L2 norm is at most `max_norm` (like
    /// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
    pub fn clip(&self, grads: &mut Grads, max_norm: f64) -> Result<f64> {
        let mut sq = 0f64;
        for g in grads.0.iter().flatten() {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
        let norm = sq.sqrt();
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for g in grads.0.iter_mut().flatten() {
                *g = (&*g * scale)?;
            }
        }
        Ok(norm)
    }

    /// One AdamW update at learning rate `lr`. Parameters without a gradient are
    /// left alone (as torch does for `grad is None`).
    pub fn apply(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (p, g) in self.params.iter_mut().zip(&grads.0) {
            let Some(g) = g else { continue };
            p.m = ((&p.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            p.v = ((&p.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&p.m / bc1)?;
            let v_hat = (&p.v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let mut w = p.var.as_tensor().detach();
            if p.decay && c.weight_decay > 0.0 {
                w = (&w * (1.0 - lr * c.weight_decay))?;
            }
            p.var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as tensors named `m.NAME` and `v.NAME`, for a safetensors file.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("m.{}", p.name), p.m.clone());
            out.insert(format!("v.{}", p.name), p.v.clone());
        }
        out
    }

    /// Restores the moments written by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for p in &mut self.params {
            for (prefix, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{prefix}.{}", p.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    crate::Error::Input(format!("optimizer state has no tensor {key}"))
                })?;
                if t.dims() != slot.dims() {
                    return Err(crate::Error::Input(format!(
                        "optimizer state {key} has shape {:?}, the parameter {:?}",
                        t.dims(),
                        slot.dims()
                    )));
                }
                *slot = t.to_dtype(slot.dtype())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn decay_by_name() {
        assert!(decays("encoder.layer.0.attention.self.query.weight"));
        assert!(!decays("encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("embeddings.LayerNorm.weight"));
        assert!(!decays("lm_head.layer_norm.weight"));
        assert!(!decays("transformer.layer.0.sa_layer_norm.weight"));
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        assert_eq!(linear_schedule(1.0, 0, 10, 110), 0.0);
        assert!((linear_schedule(1.0, 5, 10, 110) - 0.5).abs() < 1e-12);
        assert!((linear_schedule(1.0, 10, 10, 110) - 1.0).abs() < 1e-12);
        assert!((linear_schedule(1.0, 60, 10, 110) - 0.5).abs() < 1e-12);
        assert_eq!(linear_schedule(1.0, 110, 10, 110), 0.0);
    }

    /// One step against torch.optim.AdamW's formula, worked by hand.
    #[test]
    fn adamw_step_matches_torch_formula() -> Result<()> {
        let varmap = VarMap::new();
        let w = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        varmap
            .data()
            .lock()
            .unwrap()
            .insert("dense.weight".into(), w.clone());
        let mut opt = AdamW::new(&varmap, AdamWConfig::default())?;
        let loss = (w.as_tensor() * 3.0)?.sum_all()?;
        let mut acc = opt.zero_grads();
        opt.accumulate(&mut acc, &loss.backward()?)?;
        opt.apply(&acc, 0.1)?;
        let got = w.as_tensor().to_vec1::<f32>()?;
        // m_hat = g, v_hat = g², update = g/(|g|+eps) ≈ 1; decay: w·(1 - lr·wd).
        for (orig, g) in [(1.0f64, got[0]), (-2.0, got[1])] {
            let want = orig * (1.0 - 0.1 * 0.01) - 0.1 * 3.0 / (3.0 + 1e-8);
            assert!((g as f64 - want).abs() < 1e-6, "{g} vs {want}");
        }
        Ok(())
    }
}
