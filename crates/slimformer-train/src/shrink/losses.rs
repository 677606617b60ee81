//! The losses of knowledge distillation, as the DistilBERT paper and transformers'
//! distillation research code define them. All are differentiable in the student's
//! inputs (no fused softmax); the teacher's side carries no gradient.

use candle_core::{Tensor, D};
use candle_nn::ops::log_softmax;
use slimformer::Result;

/// The weights and temperature of the combined loss.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DistillWeights {
    pub temperature: f64,
    /// Soft targets: KL to the teacher's distribution at temperature T, times T².
    pub alpha_ce: f64,
    /// Gold labels (task distillation) or masked-LM labels (general distillation).
    pub alpha_hard: f64,
    /// 1 − cosine between student and teacher last hidden states.
    pub alpha_cos: f64,
}

impl Default for DistillWeights {
    fn default() -> Self {
        Self {
            temperature: 2.0,
            alpha_ce: 5.0,
            alpha_hard: 2.0,
            alpha_cos: 1.0,
        }
    }
}

/// T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the rows
/// ("batchmean"): both logits [rows, classes]. The T² keeps the gradient's scale
/// independent of T (Hinton et al.).
pub fn soft_target_loss(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let rows = student.dim(0)?.max(1) as f64;
    let log_p_s = log_softmax(&(student / temperature)?, D::Minus1)?;
    let log_p_t = log_softmax(&(teacher.detach() / temperature)?, D::Minus1)?;
    let p_t = log_p_t.exp()?;
    let kl = (p_t * (log_p_t - log_p_s)?)?.sum_all()?;
    Ok((kl * (temperature * temperature / rows))?)
}

/// Mean over rows of 1 − cos(student_i, teacher_i) (PyTorch's
/// `CosineEmbeddingLoss` with target 1); both [rows, hidden], padding already removed.
pub fn cosine_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let teacher = teacher.detach();
    let dot = (student * &teacher)?.sum(D::Minus1)?;
    let norms = (student.sqr()?.sum(D::Minus1)? * teacher.sqr()?.sum(D::Minus1)?)?;
    // PyTorch's eps (1e-8 on the squared norms' product) keeps a zero row finite.
    let cos = (dot / (norms + 1e-8)?.sqrt()?)?;
    Ok(cos.mean_all()?.affine(-1.0, 1.0)?)
}

/// The combined loss, α_ce·soft + α_hard·hard + α_cos·cos, with its parts for logging.
pub struct LossParts {
    pub total: Tensor,
    pub parts: Vec<(&'static str, f64)>,
}

/// Adds the terms whose weight is non-zero; each `Option` is the term's value.
pub fn combine(
    weights: &DistillWeights,
    soft: Option<Tensor>,
    hard: Option<Tensor>,
    cos: Option<Tensor>,
) -> Result<LossParts> {
    let mut total: Option<Tensor> = None;
    let mut parts = Vec::new();
    for (name, alpha, term) in [
        ("soft", weights.alpha_ce, soft),
        ("hard", weights.alpha_hard, hard),
        ("cos", weights.alpha_cos, cos),
    ] {
        let Some(term) = term else { continue };
        if alpha == 0.0 {
            continue;
        }
        parts.push((
            name,
            term.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?,
        ));
        let weighted = (term * alpha)?;
        total = Some(match total {
            Some(t) => (t + weighted)?,
            None => weighted,
        });
    }
    let total = total.ok_or_else(|| {
        slimformer::Error::Input("every distillation loss weight is 0: nothing to train".into())
    })?;
    Ok(LossParts { total, parts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(rows: &[&[f32]]) -> Tensor {
        let n = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), n), &Device::Cpu).unwrap()
    }

    fn softmax(xs: &[f64]) -> Vec<f64> {
        let m = xs.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = xs.iter().map(|x| (x - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    #[test]
    fn soft_target_loss_is_t_squared_batchmean_kl() {
        let s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]];
        let te = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]];
        let temp = 2.0;
        let mut want = 0.0;
        for (a, b) in s.iter().zip(&te) {
            let ps = softmax(&a.map(|x| x / temp));
            let pt = softmax(&b.map(|x| x / temp));
            want += pt
                .iter()
                .zip(&ps)
                .map(|(p, q)| p * (p / q).ln())
                .sum::<f64>();
        }
        want = want / 2.0 * temp * temp;
        let s32: Vec<Vec<f32>> = s.iter().map(|r| r.map(|x| x as f32).to_vec()).collect();
        let t32: Vec<Vec<f32>> = te.iter().map(|r| r.map(|x| x as f32).to_vec()).collect();
        let got = soft_target_loss(&t(&[&s32[0], &s32[1]]), &t(&[&t32[0], &t32[1]]), temp)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        let same = soft_target_loss(&t(&[&s32[0]]), &t(&[&s32[0]]), temp).unwrap();
        assert!(same.to_scalar::<f32>().unwrap().abs() < 1e-6);
    }

    #[test]
    fn cosine_loss_by_hand() {
        // cos((1,0),(1,1)) = 1/√2; cos((0,2),(0,-3)) = -1.
        let got = cosine_loss(
            &t(&[&[1.0, 0.0], &[0.0, 2.0]]),
            &t(&[&[1.0, 1.0], &[0.0, -3.0]]),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        let want = ((1.0 - 0.5f32.sqrt()) + 2.0) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn combined_loss_weights_and_skips_terms() {
        let w = DistillWeights {
            temperature: 2.0,
            alpha_ce: 5.0,
            alpha_hard: 2.0,
            alpha_cos: 0.0,
        };
        let one = |v: f32| Tensor::new(v, &Device::Cpu).unwrap();
        let out = combine(&w, Some(one(0.5)), Some(one(1.5)), Some(one(7.0))).unwrap();
        assert!((out.total.to_scalar::<f32>().unwrap() - 5.5).abs() < 1e-6);
        assert_eq!(out.parts.len(), 2);
        let none = DistillWeights {
            alpha_ce: 0.0,
            alpha_hard: 0.0,
            ..w
        };
        assert!(combine(&none, Some(one(1.0)), Some(one(1.0)), None).is_err());
    }

    #[test]
    fn losses_pass_gradients_to_the_student_only() {
        let s = candle_core::Var::from_tensor(&t(&[&[1.0, 2.0, 0.5]])).unwrap();
        let teacher = t(&[&[0.0, 1.0, 0.0]]);
        let loss = (soft_target_loss(s.as_tensor(), &teacher, 2.0).unwrap()
            + cosine_loss(s.as_tensor(), &teacher).unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let g = grads
            .get(s.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert!(g.to_scalar::<f32>().unwrap() > 0.0);
    }
}
