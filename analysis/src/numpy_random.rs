//! numpy's legacy `RandomState`: the Mersenne Twister (MT19937, Matsumoto &
//! Nishimura 1998, from `rand_mt`) seeded as `RandomState(seed)`, with
//! numpy's 53-bit doubles, `randn`'s polar Gaussians and `uniform`.
//!
//! ROME's `causal_trace.py` draws its corruption noise from
//! `numpy.random.RandomState(1)` (`randn(samples, subject_len, d_model)`, or
//! `uniform(-1, 1, …)`), afresh for every traced state; drawing from this, a
//! trace corrupts the same copies with the same numbers.

use rand_mt::Mt;

/// `numpy.random.RandomState`, the draws a causal trace uses.
pub struct RandomState {
    mt: Mt,
    /// The second value of the last polar pair, returned by the next `randn`.
    gauss: Option<f64>,
}

impl RandomState {
    /// `numpy.random.RandomState(seed)` (numpy accepts `0..2^32`).
    pub fn new(seed: u32) -> Self {
        Self {
            mt: Mt::new(seed),
            gauss: None,
        }
    }

    /// `rand()`: uniform on [0, 1) from 27 + 26 bits of two draws.
    pub fn rand(&mut self) -> f64 {
        let a = f64::from(self.mt.next_u32() >> 5);
        let b = f64::from(self.mt.next_u32() >> 6);
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// `uniform(low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.rand()
    }

    /// `randn()`: Marsaglia's polar method; each accepted pair gives two
    /// values, the second kept for the next call, as numpy's `legacy_gauss`.
    pub fn randn(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.rand() - 1.0;
            let x2 = 2.0 * self.rand() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss = Some(f * x1);
                return f * x2;
            }
        }
    }
}
