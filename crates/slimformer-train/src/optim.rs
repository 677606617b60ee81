//! AdamW with decoupled weight decay over the variables of a [`VarMap`], a linear
//! warm-up/decay schedule, and gradient clipping by global norm.
//!
//! Defaults follow `torch.optim.AdamW` and HF `Trainer`: betas (0.9, 0.999), eps 1e-8,
//! weight decay 0.01, none on biases and normalization weights (decided by name:
//! [`decays`]).
//!
//! The update runs as one parallel pass per parameter over its weights, gradient and
//! moments (as torch's fused AdamW does): written with tensor ops it made about ten
//! full-size temporaries per parameter and step, a gigabyte of memory traffic for
//! MiniLM, most of it the 30k×384 word embeddings.

use candle_core::{backprop::GradStore, CpuStorage, DType, Storage, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;
use slimformer::Result;
use slimformer_kernels::math::lane_fold;
use std::collections::HashMap;

/// Calls `f` with the values of an f32 tensor: its storage in place where it is
/// contiguous f32, else a copy.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&data[start..end]));
        }
    }
    let copy: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(f(&copy))
}

/// Values per parallel task of the update.
const CHUNK: usize = 1 << 14;

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
    m: Vec<f32>,
    v: Vec<f32>,
    decay: bool,
}

/// AdamW over every variable of a VarMap, in name order.
pub struct AdamW {
    params: Vec<Param>,
    config: AdamWConfig,
    /// Optimizer steps taken (bias correction uses it).
    pub step: usize,
}

/// Gradients summed over the micro-batches of one optimizer step, by parameter index,
/// and the factor clipping scales them by (applied in the update, not by a copy).
pub struct Grads {
    tensors: Vec<Option<Tensor>>,
    scale: f64,
}

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
                    m: vec![0.0; var.elem_count()],
                    v: vec![0.0; var.elem_count()],
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
        Grads {
            tensors: vec![None; self.params.len()],
            scale: 1.0,
        }
    }

    /// Adds one backward pass's gradients to `acc` (gradient accumulation).
    pub fn accumulate(&self, acc: &mut Grads, grads: &GradStore) -> Result<()> {
        for (slot, p) in acc.tensors.iter_mut().zip(&self.params) {
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
        for g in grads.tensors.iter().flatten() {
            // Chunk sums collected in order, then added in order: rayon's own `sum`
            // groups them by how its tasks were stolen, and the last bits of the norm,
            // so of a clipped step, would vary from run to run.
            // Each chunk's Σ x² in f64 over 16 lanes: a plain `sum` is one serial
            // chain of additions, latency-bound (2.4% of a step).
            let square = |a: f64, x: f32| a + x as f64 * x as f64;
            let chunks: Vec<f64> = with_f32(g, |g| {
                g.par_chunks(CHUNK)
                    .map(|c| lane_fold(c, 0f64, square, |a, b| a + b))
                    .collect()
            })?;
            sq += chunks.iter().sum::<f64>();
        }
        let norm = sq.sqrt() * grads.scale;
        if max_norm > 0.0 && norm > max_norm {
            grads.scale *= max_norm / (norm + 1e-6);
        }
        Ok(norm)
    }

    /// One AdamW update at learning rate `lr`. Parameters without a gradient are
    /// left alone (as torch does for `grad is None`).
    pub fn apply(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        for (p, g) in self.params.iter_mut().zip(&grads.tensors) {
            let Some(g) = g else { continue };
            let rule = Rule {
                config: c,
                lr,
                keep: if p.decay {
                    1.0 - lr * c.weight_decay
                } else {
                    1.0
                },
                scale: grads.scale,
                corrections: (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t)),
            };
            with_f32(g, |g| {
                let step = Step {
                    grad: g,
                    moments: std::cell::RefCell::new((&mut p.m, &mut p.v)),
                    rule,
                };
                let var = p.var.as_tensor();
                if var.dtype() == DType::F32 && var.is_contiguous() {
                    // In the variable's own storage: a new tensor and `Var::set` would
                    // allocate, fault in and copy the whole weight each step, and
                    // glibc unmaps blocks as large as the word embeddings on free.
                    return var.inplace_op1(&step).map_err(slimformer::Error::from);
                }
                let mut w: Vec<f32> = var.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                step.update(&mut w);
                let w = Tensor::from_vec(w, var.shape(), var.device())?;
                Ok(p.var.set(&w.to_dtype(var.dtype())?)?)
            })??;
        }
        Ok(())
    }

    /// The moments as tensors named `m.NAME` and `v.NAME`, for a safetensors file.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            let shape = p.var.shape();
            out.insert(
                format!("m.{}", p.name),
                Tensor::from_slice(&p.m, shape, p.var.device())?,
            );
            out.insert(
                format!("v.{}", p.name),
                Tensor::from_slice(&p.v, shape, p.var.device())?,
            );
        }
        Ok(out)
    }

    /// Restores the moments written by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for p in &mut self.params {
            let dims = p.var.dims().to_vec();
            for (prefix, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{prefix}.{}", p.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    slimformer::Error::Input(format!("optimizer state has no tensor {key}"))
                })?;
                if t.dims() != dims.as_slice() {
                    return Err(slimformer::Error::Input(format!(
                        "optimizer state {key} has shape {:?}, the parameter {:?}",
                        t.dims(),
                        dims
                    )));
                }
                *slot = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The numbers one parameter's update takes.
#[derive(Clone, Copy)]
struct Rule {
    config: AdamWConfig,
    lr: f64,
    /// Weight decay's factor on the weights (1 without decay).
    keep: f64,
    /// Clipping's factor on the gradient.
    scale: f64,
    /// Bias corrections of the two moments: 1 − βᵗ.
    corrections: (f64, f64),
}

/// One parameter's AdamW update, applied to its weights in place.
struct Step<'a> {
    grad: &'a [f32],
    moments: std::cell::RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    rule: Rule,
}

impl Step<'_> {
    /// One parallel pass over weights, gradient and moments, in f32 as torch's
    /// AdamW computes for f32 weights (in f64 the square root and division ran
    /// at a quarter of the rate, over 22.7 million values a step for MiniLM).
    fn update(&self, w: &mut [f32]) {
        let Rule {
            config: c,
            lr,
            keep,
            scale,
            corrections: (bc1, bc2),
        } = self.rule;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let (keep, scale) = (keep as f32, scale as f32);
        let (step_size, bc2_sqrt) = ((lr / bc1) as f32, bc2.sqrt() as f32);
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(self.grad.par_chunks(CHUNK))
            .for_each(|(((w, m), v), g)| {
                for (((w, m), v), &g) in w.iter_mut().zip(m).zip(v).zip(g) {
                    let g = g * scale;
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    *w = *w * keep - step_size * (*m / denom);
                }
            })
    }
}

impl candle_core::InplaceOp1 for Step<'_> {
    fn name(&self) -> &'static str {
        "adamw-step"
    }

    fn cpu_fwd(
        &self,
        storage: &mut CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(w), Some((start, end))) if end - start == self.grad.len() => {
                self.update(&mut w[start..end]);
                Ok(())
            }
            _ => candle_core::bail!(
                "AdamW updates contiguous f32 weights of the gradient's size in place"
            ),
        }
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

    /// Two clipped steps against the same formula in f64: clipping scales the
    /// gradient the moments see (the second step shows it; the first is scale-free).
    #[test]
    fn clipped_steps_match_the_formula() -> Result<()> {
        let varmap = VarMap::new();
        let w = Var::new(&[0.5f32, -1.0, 2.0], &Device::Cpu)?;
        varmap.data().lock().unwrap().insert("w".into(), w.clone());
        let mut opt = AdamW::new(&varmap, AdamWConfig::default())?;
        let (lr, c) = (0.05, AdamWConfig::default());
        let mut want = [0.5f64, -1.0, 2.0];
        let (mut m, mut v) = ([0f64; 3], [0f64; 3]);
        for (step, factor) in [(1, 3.0f64), (2, 1.0)] {
            // loss = factor · Σ w²: gradient 2·factor·w, clipped to norm 1.
            let loss = (w.as_tensor().sqr()? * factor)?.sum_all()?;
            let mut acc = opt.zero_grads();
            opt.accumulate(&mut acc, &loss.backward()?)?;
            let g: Vec<f64> = want.iter().map(|x| 2.0 * factor * x).collect();
            let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
            let got_norm = opt.clip(&mut acc, 1.0)?;
            assert!(
                (got_norm - norm).abs() < 1e-4 * norm,
                "{got_norm} vs {norm}"
            );
            opt.apply(&acc, lr)?;
            let (bc1, bc2) = (1.0 - c.beta1.powi(step), 1.0 - c.beta2.powi(step));
            for i in 0..3 {
                let gi = g[i] / (norm + 1e-6);
                m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * gi;
                v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * gi * gi;
                let update = (m[i] / bc1) / ((v[i] / bc2).sqrt() + c.eps);
                want[i] = want[i] * (1.0 - lr * c.weight_decay) - lr * update;
            }
            let got = w.as_tensor().to_vec1::<f32>()?;
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() < 1e-5,
                    "step {step}: {got:?} vs {want:?}"
                );
            }
        }
        Ok(())
    }
}
