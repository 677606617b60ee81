use crate::rng::TrainRng;
use candle_core::Tensor;
use rayon::prelude::*;

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

    pub fn forward(&self, xs: &Tensor, train: Option<&TrainRng>) -> candle_core::Result<Tensor> {
        match self.draw(train) {
            Some((p, seed)) => xs.mul(&mask(xs, p, seed)?),
            None => Ok(xs.clone()),
        }
    }
}

/// The mask drawn with `seed`, shaped like `like` and scaled by 1/keep.
pub(crate) fn mask(like: &Tensor, p: f32, seed: u64) -> candle_core::Result<Tensor> {
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..like.elem_count())
        .into_par_iter()
        .map(|i| if kept(seed, i, keep) { 1.0 / keep } else { 0.0 })
        .collect();
    Tensor::from_vec(mask, like.shape(), like.device())?.to_dtype(like.dtype())
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
