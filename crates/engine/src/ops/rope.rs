//! Rotary position embeddings. Two layouts exist and a model must use the one its weights were
//! converted for:
//! - `Normal` (llama.cpp's LLAMA arch): rotates adjacent pairs (x[2i], x[2i+1]); llama.cpp's
//!   converter permutes the Q/K weights of HF llama checkpoints so this layout is right.
//! - `Neox` (Gemma, Qwen, Phi-3): rotates (x[i], x[i + d/2]).
//!
//! Angles: theta_i = pos * base^(-2i/n_rot), computed as ggml does (start at `pos`, multiply by
//! base^(-2/n_rot) per pair, in f32) so our angles round the same way as llama.cpp's. Files with
//! per-pair frequency factors (`rope_freqs.weight`: Llama 3.1+'s long-context scaling) divide
//! theta_i by factor_i, as ggml does, before the linear `freq_scale`.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    Normal,
    Neox,
}

#[derive(Clone, Debug)]
pub struct RopeCache {
    pub layout: RopeLayout,
    /// Number of rotated dimensions per head (<= head_dim); the rest pass through.
    pub n_rot: usize,
    theta_scale: f32,
    freq_scale: f32,
    /// Per-pair divisors of the angle (n_rot / 2 of them), from `rope_freqs.weight`.
    factors: Option<Vec<f32>>,
}

impl RopeCache {
    pub fn new(layout: RopeLayout, n_rot: usize, base: f32, freq_scale: f32) -> Self {
        let theta_scale = base.powf(-2.0 / n_rot as f32);
        Self {
            layout,
            n_rot,
            theta_scale,
            freq_scale,
            factors: None,
        }
    }

    /// Divide pair `i`'s angle by `factors[i]` (`n_rot / 2` values, checked by the loader).
    pub fn with_factors(mut self, factors: Option<Vec<f32>>) -> Self {
        debug_assert!(factors.as_ref().is_none_or(|f| f.len() == self.n_rot / 2));
        self.factors = factors;
        self
    }

    /// Rotated pairs per head: the length of an angle table ([`RopeCache::angles`]).
    pub fn pairs(&self) -> usize {
        self.n_rot / 2
    }

    /// Each pair's `(sin, cos)` at position `pos`, into `table` (`pairs()` entries). The same
    /// for every head and every layer sharing this RoPE, so a pass computes it once per row.
    pub fn angles(&self, pos: usize, table: &mut [(f32, f32)]) {
        let mut theta = pos as f32;
        for (i, sc) in table[..self.pairs()].iter_mut().enumerate() {
            let t = match &self.factors {
                Some(f) => theta / f[i],
                None => theta,
            };
            *sc = (t * self.freq_scale).sin_cos();
            theta *= self.theta_scale;
        }
    }

    /// Rotate every head of `x` (n_heads * head_dim, heads contiguous) for position `pos`.
    /// Builds its own angle table: for one-off use; a forward pass computes each row's table
    /// once ([`RopeCache::angles`]) and rotates with [`RopeCache::apply_angles`].
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let mut table = vec![(0.0, 1.0); self.pairs()];
        self.angles(pos, &mut table);
        self.apply_angles(x, head_dim, &table);
    }

    /// [`RopeCache::apply`] with the row's angles already computed ([`RopeCache::angles`]).
    pub fn apply_angles(&self, x: &mut [f32], head_dim: usize, table: &[(f32, f32)]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has FMA (checked just above).
            return unsafe { self.apply_angles_fma(x, head_dim, table) };
        }
        self.rotate(x, head_dim, table)
    }

    /// [`RopeCache::rotate`] compiled with FMA enabled: the same bits, but each `mul_add`
    /// one instruction instead of a libm call (the portable build's), which had made the
    /// rotation cost more than the `sin_cos` it follows.
    ///
    /// # Safety
    /// The CPU must have FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "fma")]
    unsafe fn apply_angles_fma(&self, x: &mut [f32], head_dim: usize, table: &[(f32, f32)]) {
        self.rotate(x, head_dim, table)
    }

    #[inline(always)]
    fn rotate(&self, x: &mut [f32], head_dim: usize, table: &[(f32, f32)]) {
        debug_assert_eq!(x.len() % head_dim, 0);
        let half = self.pairs();
        let table = &table[..half];
        for head in x.chunks_exact_mut(head_dim) {
            for (i, &(sin, cos)) in table.iter().enumerate() {
                let (a, b) = match self.layout {
                    RopeLayout::Normal => (2 * i, 2 * i + 1),
                    RopeLayout::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                // ggml's `rotate_pairs` computes `x0*cos - x1*sin` and `x0*sin + x1*cos`; GCC
                // contracts each into one fma over the first product (checked bit-exact against
                // llama.cpp's ROPE output), so the second product is rounded and the first not.
                head[a] = x0.mul_add(cos, -(x1 * sin));
                head[b] = x0.mul_add(sin, x1 * cos);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        for layout in [RopeLayout::Normal, RopeLayout::Neox] {
            let rope = RopeCache::new(layout, 8, 10000.0, 1.0);
            let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut x = orig.clone();
            rope.apply(&mut x, 8, 0);
            assert_eq!(x, orig);
            rope.apply(&mut x, 8, 17);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3);
        }
    }

    /// Factors divide each pair's angle: factor 1 changes nothing, and a pair with factor f at
    /// position p is rotated as the unfactored pair is at p / f (p a multiple of f, so exact).
    #[test]
    fn frequency_factors_divide_each_pairs_angle() {
        let x: Vec<f32> = (0..8).map(|i| (i as f32 * 0.7).cos()).collect();
        let plain = RopeCache::new(RopeLayout::Normal, 8, 10000.0, 1.0);
        let ones = plain.clone().with_factors(Some(vec![1.0; 4]));
        let (mut a, mut b) = (x.clone(), x.clone());
        plain.apply(&mut a, 8, 12);
        ones.apply(&mut b, 8, 12);
        assert_eq!(a, b);
        let fourth = plain.clone().with_factors(Some(vec![1.0, 1.0, 1.0, 4.0]));
        let (mut a, mut b) = (x.clone(), x.clone());
        fourth.apply(&mut a, 8, 12);
        plain.apply(&mut b, 8, 3);
        assert_eq!(a[6..8], b[6..8], "pair 3 at 12 / 4");
        let mut c = x.clone();
        plain.apply(&mut c, 8, 12);
        assert_eq!(a[..6], c[..6], "pairs 0..3 unchanged");
    }

    #[test]
    fn relative_property_dot_depends_on_distance_only() {
        let rope = RopeCache::new(RopeLayout::Neox, 8, 10000.0, 1.0);
        let q0: Vec<f32> = (0..8).map(|i| (i as f32).sin()).collect();
        let k0: Vec<f32> = (0..8).map(|i| (i as f32).cos()).collect();
        let d = |pq: usize, pk: usize| {
            let (mut q, mut k) = (q0.clone(), k0.clone());
            rope.apply(&mut q, 8, pq);
            rope.apply(&mut k, 8, pk);
            crate::ops::vec::dot(&q, &k)
        };
        assert!((d(5, 2) - d(13, 10)).abs() < 1e-4);
    }
}
