use crate::rng::TrainRng;
use candle_core::Tensor;

/// Inverted dropout, drawing from the run's seeded generator; off in inference.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dropout {
    p: f32,
}

impl Dropout {
    pub fn new(p: f32) -> Self {
        Self { p }
    }

    pub fn forward(&self, xs: &Tensor, train: Option<&TrainRng>) -> candle_core::Result<Tensor> {
        let Some(rng) = train else {
            return Ok(xs.clone());
        };
        if self.p <= 0.0 {
            return Ok(xs.clone());
        }
        let keep = 1.0 - self.p;
        let scale = 1.0 / keep;
        let mask: Vec<f32> = rng.with(|r| {
            (0..xs.elem_count())
                .map(|_| if r.next_f32() < keep { scale } else { 0.0 })
                .collect()
        });
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs.mul(&mask)
    }
}
