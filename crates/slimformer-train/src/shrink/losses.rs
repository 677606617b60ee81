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
    /// Mean squared error between the hidden states of mapped layers, the
    /// embeddings' output included, through a learned projection when the widths
    /// differ (TinyBERT).
    #[serde(default)]
    pub alpha_hidden: f64,
    /// KL between the attention distributions of mapped layers (TinyBERT, MiniLM).
    #[serde(default)]
    pub alpha_attention: f64,
}

impl DistillWeights {
    /// Whether a term needs the layers inside, not only the last hidden state.
    pub fn uses_inner_layers(&self) -> bool {
        self.alpha_hidden > 0.0 || self.alpha_attention > 0.0
    }
}

impl Default for DistillWeights {
    fn default() -> Self {
        Self {
            temperature: 2.0,
            alpha_ce: 5.0,
            alpha_hard: 2.0,
            alpha_cos: 1.0,
            alpha_hidden: 0.0,
            alpha_attention: 0.0,
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

/// Mean over rows and columns of (student − teacher)²; both [rows, width], padding
/// already removed, the student's already projected to the teacher's width.
pub fn hidden_state_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    Ok((student - teacher.detach())?.sqr()?.mean_all()?)
}

/// KL(teacher ‖ student) between attention distributions, summed over the keys and
/// averaged over the heads and the real query positions. Both are log-probabilities
/// [batch, heads, len, len]; `query_mask` [batch, len] is 1 for a real token. A padded
/// key's teacher probability is 0, so it adds nothing.
pub fn attention_loss(student: &Tensor, teacher: &Tensor, query_mask: &Tensor) -> Result<Tensor> {
    let (b, heads, l, _) = student.dims4()?;
    let teacher = teacher.detach();
    let per_query = (teacher.exp()? * (&teacher - student)?)?.sum(D::Minus1)?;
    let mask = query_mask.to_dtype(per_query.dtype())?.reshape((b, 1, l))?;
    let queries = mask
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let total = per_query.broadcast_mul(&mask)?.sum_all()?;
    Ok((total / (queries * heads as f64).max(1.0))?)
}

/// The combined loss, α_ce·soft + α_hard·hard + α_cos·cos, with its parts for logging.
pub struct LossParts {
    pub total: Tensor,
    pub parts: Vec<(&'static str, f64)>,
}

/// The value of each term of the loss that was computed.
#[derive(Default)]
pub struct Terms {
    pub soft: Option<Tensor>,
    pub hard: Option<Tensor>,
    pub cos: Option<Tensor>,
    pub hidden: Option<Tensor>,
    pub attention: Option<Tensor>,
}

/// Adds the terms whose weight is non-zero.
pub fn combine(weights: &DistillWeights, terms: Terms) -> Result<LossParts> {
    let mut total: Option<Tensor> = None;
    let mut parts = Vec::new();
    for (name, alpha, term) in [
        ("soft", weights.alpha_ce, terms.soft),
        ("hard", weights.alpha_hard, terms.hard),
        ("cos", weights.alpha_cos, terms.cos),
        ("hidden", weights.alpha_hidden, terms.hidden),
        ("attention", weights.alpha_attention, terms.attention),
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
            alpha_hidden: 3.0,
            alpha_attention: 0.0,
        };
        let one = |v: f32| Some(Tensor::new(v, &Device::Cpu).unwrap());
        let terms = Terms {
            soft: one(0.5),
            hard: one(1.5),
            cos: one(7.0),
            hidden: one(0.25),
            attention: one(9.0),
        };
        let out = combine(&w, terms).unwrap();
        assert!((out.total.to_scalar::<f32>().unwrap() - 6.25).abs() < 1e-6);
        assert_eq!(out.parts.len(), 3);
        let none = DistillWeights {
            alpha_ce: 0.0,
            alpha_hard: 0.0,
            alpha_hidden: 0.0,
            ..w
        };
        let terms = Terms {
            soft: one(1.0),
            hard: one(1.0),
            ..Terms::default()
        };
        assert!(combine(&none, terms).is_err());
    }

    #[test]
    fn hidden_state_loss_is_the_mean_squared_error() {
        let got = hidden_state_loss(
            &t(&[&[1.0, 2.0], &[0.0, 0.0]]),
            &t(&[&[0.0, 2.0], &[3.0, 0.0]]),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!((got - 10.0 / 4.0).abs() < 1e-6, "{got}");
    }

    #[test]
    fn attention_loss_averages_kl_over_heads_and_real_queries() {
        // One sequence of 2 positions, the second padding; 1 head. Only query 0
        // counts; key 1 is padded (log-probability very negative on both sides).
        let pad = -3.0e38f32;
        let student = [0.25f32.ln(), pad, 0.5f32.ln(), 0.5f32.ln()];
        let teacher = [0.0, pad, 0.9f32.ln(), 0.1f32.ln()];
        let as4 = |v: [f32; 4]| Tensor::from_vec(v.to_vec(), (1, 1, 2, 2), &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
        let got = attention_loss(&as4(student), &as4(teacher), &mask)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // KL(1 ‖ 0.25) on the real key: ln 4.
        assert!((got - 4f32.ln()).abs() < 1e-5, "{got}");
        let same = attention_loss(&as4(teacher), &as4(teacher), &mask).unwrap();
        assert!(same.to_scalar::<f32>().unwrap().abs() < 1e-6);
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
