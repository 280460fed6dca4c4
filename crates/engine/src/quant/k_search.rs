//! The scale searches of the K-quant reference quantizers (ggml's `make_qx_quants`,
//! `make_q3_quants` and `make_qkx2_quants`, rewritten from their description).
//!
//! A plain min-max or abs-max scale wastes levels: one outlier stretches the grid for the
//! whole group. These searches try a few grids near the naive one and keep the one with the
//! least weighted squared (or absolute) error, re-fitting the scale (and min) of each grid in
//! closed form by least squares. They only build test weights and GGUF files, never run per
//! token, so clarity beats speed here; still nothing allocates (groups are at most 32 long).

/// Largest group any K-quant searches over (the 32-element sub-blocks of Q4_K and Q5_K).
const MAX_GROUP: usize = 32;

/// Below this magnitude a group is treated as all zeros (ggml's `GROUP_MAX_EPS`).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even: what ggml's `nearest_int` float trick computes.
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// The value of largest magnitude with its sign (first on ties), and that magnitude.
#[inline]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric quantization of `x` to levels `-nmax..nmax` (stored in `l` offset by `nmax`),
/// returning the scale: `x[i] ~ scale * (l[i] - nmax)`.
///
/// The naive grid puts the value of largest magnitude on `-nmax`; then 18 nearby grids
/// (`nmax +- 0.1 k`) are tried and the best under weights `x^2` kept (ggml's `make_qx_quants`
/// with `rmse_type = 1`). Used by Q6_K.
pub(crate) fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    debug_assert!(x.len() == l.len() && x.len() <= MAX_GROUP);
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Least-squares scale of a grid: sum(w x l) / sum(w l^2) with w = x^2.
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let q = quant(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let store = |iscale: f32, l: &mut [u8]| {
        for (l, &v) in l.iter_mut().zip(x) {
            *l = (quant(iscale, v) + nmax) as u8;
        }
    };

    let iscale0 = -(nmax as f32) / max;
    store(iscale0, l);
    let (sumlx, suml2) = fit(iscale0);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    // sumlx^2 / suml2 is how much of sum(w x^2) the fit explains: larger is better.
    let mut best = scale * sumlx;
    for k in -9..=9 {
        if k == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * k as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            store(iscale, l);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric quantization of `x` to levels `-nmax..nmax` (stored offset by `nmax`),
/// returning the scale. Starts from the naive grid and then moves single elements to the
/// level that most improves the weighted (w = x^2) least-squares fit, for up to five rounds
/// (ggml's `make_q3_quants` with `do_rmse`). Used by Q3_K.
pub(crate) fn make_q3_quants(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    debug_assert!(x.len() == l.len() && x.len() <= MAX_GROUP);
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut q = [0i32; MAX_GROUP];
    let q = &mut q[..x.len()];
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (q, &v) in q.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sumlx += w * v * *q as f32;
        suml2 += w * (*q * *q) as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (qi, &v) in q.iter_mut().zip(x) {
            let w = v * v;
            // The fit without element i, then the best level for i under that fit's scale.
            let mut slx = sumlx - w * v * *qi as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * (*qi * *qi) as f32;
                let new = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new != *qi {
                    slx += w * v * new as f32;
                    sl2 += w * (new * new) as f32;
                    // Keep the move when it explains more: slx^2/sl2 > sumlx^2/suml2.
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *qi = new;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (l, &q) in l.iter_mut().zip(q.iter()) {
        *l = (q + nmax) as u8;
    }
    // suml2 is 0 only when x^2 underflows (|x| < 1e-22); ggml would return NaN there.
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        1.0 / iscale
    }
}

/// Parameters of the grid search in [`make_qkx2_quants`]: grids `nmax + rmin + rdelta * k`
/// steps wide for `k = 0..=nstep`, error measured as absolute (`use_mad`) or squared.
pub(crate) struct Qkx2Search {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: u32,
    pub use_mad: bool,
}

/// Asymmetric quantization of `x` to levels `0..=nmax` with a minimum:
/// `x[i] ~ scale * l[i] - offset`, returns `(scale, offset)` with `offset >= 0` (the minimum
/// is clamped to at most 0, because K-quants store it as an unsigned 6- or 4-bit multiple).
///
/// Starts from the min-max grid, then for each candidate grid width quantizes, re-fits scale
/// and min by weighted least squares (a 2x2 normal equation) and keeps the best
/// (ggml's `make_qkx2_quants`). Used by Q2_K, Q4_K and Q5_K.
pub(crate) fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l: &mut [u8],
    search: &Qkx2Search,
) -> (f32, f32) {
    debug_assert!(x.len() == l.len() && x.len() == weights.len() && x.len() <= MAX_GROUP);
    let mut min = x.iter().fold(f32::MAX, |m, &v| m.min(v));
    let max = x.iter().fold(-f32::MAX, |m, &v| m.max(v));
    let sum_w: f32 = weights.iter().sum();
    let sum_x: f32 = weights.iter().zip(x).map(|(w, v)| w * v).sum();
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let err = |d: f32, w: f32| {
        if search.use_mad {
            w * d.abs()
        } else {
            w * d * d
        }
    };
    let quant = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);

    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for ((l, &v), &w) in l.iter_mut().zip(x).zip(weights) {
        *l = quant(iscale, v, min) as u8;
        best_error += err(scale * f32::from(*l) + min - v, w);
    }

    let mut laux = [0u8; MAX_GROUP];
    let laux = &mut laux[..x.len()];
    for k in 0..=search.nstep {
        let iscale = (search.rmin + search.rdelta * k as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((la, &v), &w) in laux.iter_mut().zip(x).zip(weights) {
            let q = quant(iscale, v, min);
            *la = q as u8;
            let q = q as f32;
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * v;
        }
        // Minimise sum w (s l + m - x)^2 over (s, m): Cramer's rule on the normal equations.
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            // A positive minimum cannot be stored: fit the scale alone with min = 0.
            this_min = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let error: f32 = laux
            .iter()
            .zip(x)
            .zip(weights)
            .map(|((&q, &v), &w)| err(this_scale * f32::from(q) + this_min - v, w))
            .sum();
        if error < best_error {
            l.copy_from_slice(laux);
            best_error = error;
            scale = this_scale;
            min = this_min;
        }
    }
    (scale, -min)
}
