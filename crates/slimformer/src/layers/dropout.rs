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

    /// The drop probability and a fresh mask seed, where this dropout is active.
    pub fn draw(&self, train: Option<&TrainRng>) -> Option<(f32, u64)> {
        let rng = train?;
        (self.p > 0.0).then(|| (self.p, rng.with(|r| r.next_u64())))
    }

    // The hidden-state masks still come from the generator's stream, one value at a
    // time: drawn from `kept` instead, the retrain test's 12 steps on rotated labels
    // stopped lowering its holdout accuracy, which is not understood yet.
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

/// Whether value `index` survives a dropout mask drawn with `seed`: a hash of the
/// two (SplitMix64's finalizer), so any part of the mask can be drawn in parallel,
/// or drawn again in the backward pass, without storing it.
#[inline]
pub(crate) fn kept(seed: u64, index: usize, keep: f32) -> bool {
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // 24 random bits as a uniform value in [0, 1).
    ((z >> 40) as f32) * (1.0 / (1u64 << 24) as f32) < keep
}
