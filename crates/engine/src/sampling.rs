//! Token sampling: penalties, top-k, top-p, min-p, temperature and a seeded draw, in
//! llama.cpp's default order (penalties -> top-k -> top-p -> min-p -> temperature -> draw).
//! `temperature <= 0` is greedy (argmax after penalties and logit bias).
//!
//! The sampler owns its candidate buffer and penalty window, sized once, so sampling a token
//! allocates nothing. Determinism: the same seed, logits and history give the same token.

/// Sampling settings; defaults are llama.cpp's.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables. Divides positive logits, multiplies negative ones (CTRL paper).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at (llama.cpp's `--repeat-last-n`).
    pub penalty_last_n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Added to a token's logit before anything else (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            penalty_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0xB4C5_7000_5EED,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks what the sampler itself needs, for every front end (CLI flags, both HTTP wire
    /// formats): numbers finite and of the right sign, token ids inside the vocabulary. A
    /// front end may narrow these ranges further (OpenAI's `temperature` stops at 2).
    pub fn validate(&self, n_vocab: usize) -> Result<(), SamplingError> {
        let bad = |field, message: String| Err(SamplingError { field, message });
        for (field, v) in [
            (SamplingField::Temperature, self.temperature),
            (SamplingField::TopP, self.top_p),
            (SamplingField::MinP, self.min_p),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(field, format!("must be a non-negative number, got {v}"));
            }
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(
                SamplingField::RepeatPenalty,
                format!("must be positive, got {}", self.repeat_penalty),
            );
        }
        for (field, v) in [
            (SamplingField::PresencePenalty, self.presence_penalty),
            (SamplingField::FrequencyPenalty, self.frequency_penalty),
        ] {
            if !v.is_finite() {
                return bad(field, format!("must be a finite number, got {v}"));
            }
        }
        if self.top_k > n_vocab {
            return bad(
                SamplingField::TopK,
                format!("must be between 0 and {n_vocab}, got {}", self.top_k),
            );
        }
        for &(id, bias) in &self.logit_bias {
            if id as usize >= n_vocab {
                return bad(
                    SamplingField::LogitBias,
                    format!("key {id} is not a token id below {n_vocab}"),
                );
            }
            if !bias.is_finite() {
                return bad(
                    SamplingField::LogitBias,
                    format!("value for token {id} must be finite, got {bias}"),
                );
            }
        }
        Ok(())
    }
}

/// Which setting a `SamplingError` is about; front ends name it in their own words
/// (`--temp`, `temperature`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplingField {
    Temperature,
    TopK,
    TopP,
    MinP,
    RepeatPenalty,
    PresencePenalty,
    FrequencyPenalty,
    LogitBias,
}

impl SamplingField {
    /// The name OpenAI's API and llama-server use for it.
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Temperature => "temperature",
            Self::TopK => "top_k",
            Self::TopP => "top_p",
            Self::MinP => "min_p",
            Self::RepeatPenalty => "repeat_penalty",
            Self::PresencePenalty => "presence_penalty",
            Self::FrequencyPenalty => "frequency_penalty",
            Self::LogitBias => "logit_bias",
        }
    }
}

/// A sampling setting out of range; `message` reads after the setting's name.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{} {message}", field.api_name())]
pub struct SamplingError {
    pub field: SamplingField,
    pub message: String,
}

/// SplitMix64: tiny, fast and good enough to draw tokens; we own it so a seed means the same
/// thing across crate upgrades.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// (id, logit) then (id, probability); capacity n_vocab.
    cand: Vec<(u32, f32)>,
    /// Ring of the last `penalty_last_n` tokens.
    recent: Vec<u32>,
    recent_next: usize,
}

impl Sampler {
    pub fn new(params: SamplingParams, n_vocab: usize) -> Self {
        let n = params.penalty_last_n;
        Self {
            rng: Rng(params.seed),
            params,
            cand: Vec::with_capacity(n_vocab),
            recent: Vec::with_capacity(n),
            recent_next: 0,
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Record a token (prompt or generated) for the repetition penalties.
    pub fn accept(&mut self, id: u32) {
        let n = self.params.penalty_last_n;
        if n == 0 {
            return;
        }
        if self.recent.len() < n {
            self.recent.push(id);
        } else {
            self.recent[self.recent_next] = id;
            self.recent_next = (self.recent_next + 1) % n;
        }
    }

    fn penalties_active(&self) -> bool {
        let p = &self.params;
        p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0
    }

    /// Apply logit bias and penalties to `logits` in place.
    fn adjust(&self, logits: &mut [f32]) {
        for &(id, b) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += b;
            }
        }
        if !self.penalties_active() {
            return;
        }
        let p = &self.params;
        // Each distinct recent token once, with its count; the window is small (64 by default)
        // so the quadratic scan beats a hash map and allocates nothing.
        for (i, &id) in self.recent.iter().enumerate() {
            if self.recent[..i].contains(&id) {
                continue;
            }
            let count = self.recent[i..].iter().filter(|&&t| t == id).count() as f32;
            let Some(l) = logits.get_mut(id as usize) else {
                continue;
            };
            if *l > 0.0 {
                *l /= p.repeat_penalty;
            } else {
                *l *= p.repeat_penalty;
            }
            *l -= count * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// Choose the next token from `logits` (modified in place by bias and penalties).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.adjust(logits);
        let p = self.params.knobs();
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, desc);
            self.cand.truncate(p.top_k);
        }
        self.cand.sort_unstable_by(desc);
        // Softmax over the survivors (at temperature 1, as llama.cpp's top-p/min-p see them).
        let max = self.cand[0].1;
        let mut sum = 0.0;
        for c in self.cand.iter_mut() {
            c.1 = (c.1 - max).exp();
            sum += c.1;
        }
        self.cand.iter_mut().for_each(|c| c.1 /= sum);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                cum += c.1;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let floor = self.cand[0].1 * p.min_p;
            let keep = self.cand.iter().take_while(|c| c.1 >= floor).count();
            self.cand.truncate(keep.max(1));
        }
        // Temperature on the survivors: p^(1/T) renormalised equals softmax(logit / T).
        let inv_t = 1.0 / p.temperature;
        let mut sum = 0.0;
        for c in self.cand.iter_mut() {
            c.1 = c.1.powf(inv_t);
            sum += c.1;
        }
        let mut r = self.rng.next_f32() * sum;
        for c in &self.cand {
            r -= c.1;
            if r <= 0.0 {
                return c.0;
            }
        }
        self.cand[self.cand.len() - 1].0
    }
}

/// The numbers the sampling steps read, copied so `self.cand` can be borrowed mutably.
#[derive(Clone, Copy)]
struct Knobs {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
}

impl SamplingParams {
    fn knobs(&self) -> Knobs {
        Knobs {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
        }
    }
}

/// Index of the largest logit; the lowest index wins a tie, as llama.cpp's greedy sampler.
///
/// The first index of the largest value (NaNs never win; index 0 if `logits[0]` is NaN). Two
/// passes the compiler vectorises, the maximum in 16 lanes and then its first position: a
/// scalar scan carrying its best index was a serial 3 % of a Gemma decode step of eight
/// sequences (262144 logits each).
pub fn argmax(logits: &[f32]) -> u32 {
    let Some(&first) = logits.first() else {
        return 0;
    };
    if first.is_nan() {
        return 0;
    }
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = logits.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .fold(first, |m, &x| if x > m { x } else { m });
    logits.iter().position(|&x| x == max).unwrap_or(0) as u32
}

/// The scalar scan [`argmax`] must agree with.
#[cfg(test)]
fn argmax_scan(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_setting() {
        assert!(SamplingParams::default().validate(100).is_ok());
        let p = SamplingParams {
            temperature: f32::NAN,
            ..SamplingParams::default()
        };
        assert_eq!(
            p.validate(100).unwrap_err().field,
            SamplingField::Temperature
        );
        let p = SamplingParams {
            top_k: 101,
            ..SamplingParams::default()
        };
        let e = p.validate(100).unwrap_err();
        assert_eq!(e.field, SamplingField::TopK);
        assert_eq!(e.to_string(), "top_k must be between 0 and 100, got 101");
        let p = SamplingParams {
            logit_bias: vec![(100, 1.0)],
            ..SamplingParams::default()
        };
        assert_eq!(p.validate(100).unwrap_err().field, SamplingField::LogitBias);
        let p = SamplingParams {
            repeat_penalty: 0.0,
            ..SamplingParams::default()
        };
        assert_eq!(
            p.validate(100).unwrap_err().field,
            SamplingField::RepeatPenalty
        );
    }

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37 % 100) as f32) / 10.0).collect()
    }

    #[test]
    fn argmax_is_the_first_largest_as_a_scan_finds_it() {
        let mut rng = 12345u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as u32
        };
        for len in [0usize, 1, 2, 15, 16, 17, 33, 1000, 4099] {
            for case in 0..20 {
                // Few distinct values, so ties are common; some NaNs and infinities.
                let v: Vec<f32> = (0..len)
                    .map(|_| match next() % 50 {
                        0 if case % 3 == 0 => f32::NAN,
                        1 if case % 4 == 0 => f32::INFINITY,
                        2 => f32::NEG_INFINITY,
                        r => (r % 7) as f32 - 3.0,
                    })
                    .collect();
                assert_eq!(argmax(&v), argmax_scan(&v), "{v:?}");
            }
        }
        assert_eq!(argmax(&[f32::NAN, 1.0, 2.0]), 0);
        assert_eq!(argmax(&[1.0, f32::NAN, 2.0, 2.0]), 2);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 40]), 0);
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy(), 100);
        let mut l = logits();
        let best = argmax(&l);
        assert_eq!(s.sample(&mut l), best);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let run = |seed| {
            let params = SamplingParams {
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed,
                ..Default::default()
            };
            let mut s = Sampler::new(params, 100);
            (0..50).map(|_| s.sample(&mut logits())).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let params = SamplingParams {
            temperature: 2.0,
            top_k: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(params, 100);
        let best = argmax(&logits());
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits()), best);
        }
    }

    #[test]
    fn repeat_penalty_moves_greedy_off_a_repeated_token() {
        let mut l = vec![1.0, 2.0, 1.9];
        let params = SamplingParams {
            repeat_penalty: 1.5,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params, 3);
        s.accept(1);
        assert_eq!(s.sample(&mut l), 2);
    }

    #[test]
    fn logit_bias_can_force_a_token() {
        let params = SamplingParams {
            logit_bias: vec![(3, 100.0)],
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params, 100);
        assert_eq!(s.sample(&mut logits()), 3);
    }

    #[test]
    fn min_p_and_top_p_only_keep_likely_tokens() {
        // One dominant token: min-p 0.5 must leave only it, whatever the draw.
        let mut l = vec![0.0; 10];
        l[4] = 10.0;
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            ..Default::default()
        };
        let mut s = Sampler::new(params, 10);
        for _ in 0..50 {
            assert_eq!(s.sample(&mut l.clone()), 4);
        }
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            ..Default::default()
        };
        let mut s = Sampler::new(params, 10);
        for _ in 0..50 {
            assert_eq!(s.sample(&mut l.clone()), 4);
        }
    }
}
