//! A small seeded random number generator (SplitMix64). candle's CPU generator
//! cannot be seeded, and a training run must repeat exactly from its seed.

use std::sync::Mutex;

#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.next_f32().max(f32::MIN_POSITIVE);
        let u2 = self.next_f32();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// The randomness of a training forward pass (dropout). Passing `None` instead
/// means inference: dropout off.
#[derive(Debug)]
pub struct TrainRng(Mutex<Rng>);

impl TrainRng {
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(Rng::new(seed)))
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        let mut rng = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut rng)
    }
}
