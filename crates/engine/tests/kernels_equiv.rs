//! Every SIMD kernel against the scalar reference of `backstop_engine::quant`, on random blocks.
//!
//! For each (type x variant) the host can run: random weight bytes with sane f16 scales
//! (ordinary, tiny and huge magnitudes), activations both quantized from random floats by the
//! reference and as random bytes, rows of 1..=8 blocks and long rows (2048, 4096 + 256
//! elements). A dot product must equal the reference up to float reassociation:
//! `|simd - ref| <= 1e-5 * bound`, where `bound` sums the magnitudes of every term (of each
//! element product and of each block's result). Quantizers must give identical bytes.
//!
//! Variants the host cannot run are reported as `SKIPPED: host lacks ...` on stderr and do not
//! check anything; the test names say so (`..._or_skip`). Run with `--nocapture` to see them.

use backstop_engine::cpu::interleaved::{self, GroupKernels, GROUP_ROWS};
use backstop_engine::cpu::{Kernels, Tier, TileDotFn, Variant, DECODE_ROWS, TILE_ROWS, TILE_TOKS};
use backstop_engine::quant::{self, GgmlType};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REL_TOL: f64 = 1e-5;

/// Magnitudes of block scales: ordinary, then extremes of the f16 range.
#[derive(Clone, Copy, Debug)]
enum Scale {
    Normal,
    Tiny,
    Huge,
}

fn rand_scale(rng: &mut StdRng, s: Scale) -> f32 {
    let mag = match s {
        Scale::Normal => rng.random_range(1e-4f32..0.1),
        // Down into the f16 subnormals.
        Scale::Tiny => rng.random_range(1e-7f32..1e-5),
        Scale::Huge => rng.random_range(1e3f32..6e4),
    };
    if rng.random_bool(0.2) {
        -mag
    } else {
        mag
    }
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// Quants of Q8 formats stay in -127..=127, as every quantizer writes them.
fn clamp_i8(b: &mut [u8]) {
    for x in b {
        if *x == 0x80 {
            *x = 0x81;
        }
    }
}

/// A row of `n` elements of `ty` from random bytes, with finite, sane scale fields.
fn random_row(rng: &mut StdRng, ty: GgmlType, n: usize, s: Scale) -> Vec<u8> {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let x: Vec<f32> = (0..n)
                .map(|_| rand_scale(rng, s) * rng.random_range(-1.0f32..1.0))
                .collect();
            let mut b = vec![0u8; ty.row_bytes(n).unwrap()];
            quant::quantize_row(ty, &x, &mut b).unwrap();
            return b;
        }
        _ => {}
    }
    let bs = ty.type_size();
    let mut row = vec![0u8; ty.row_bytes(n).unwrap()];
    rng.fill(&mut row[..]);
    for b in row.chunks_exact_mut(bs) {
        let mut sc = || rand_scale(rng, s);
        match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 => put_f16(b, 0, sc()),
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => {
                put_f16(b, 0, sc());
                put_f16(b, 2, sc());
            }
            GgmlType::Q8_0 => {
                put_f16(b, 0, sc());
                clamp_i8(&mut b[2..]);
            }
            GgmlType::Q8_1 => {
                put_f16(b, 0, sc());
                put_f16(b, 2, sc());
                clamp_i8(&mut b[4..]);
            }
            GgmlType::Q2_K => {
                put_f16(b, 80, sc());
                put_f16(b, 82, sc());
            }
            GgmlType::Q3_K => put_f16(b, 108, sc()),
            GgmlType::Q6_K => put_f16(b, 208, sc()),
            GgmlType::Q8_K => {
                b[0..4].copy_from_slice(&sc().to_le_bytes());
                clamp_i8(&mut b[4..260]);
                for g in 0..16 {
                    let sum: i32 = b[4 + 16 * g..4 + 16 * g + 16]
                        .iter()
                        .map(|&q| i32::from(q as i8))
                        .sum();
                    b[260 + 2 * g..262 + 2 * g].copy_from_slice(&(sum as i16).to_le_bytes());
                }
            }
            _ => unreachable!(),
        }
    }
    row
}

/// Activations for weights of `ty`: quantized from random floats by the reference, or random
/// bytes in the activation format.
fn random_act(rng: &mut StdRng, ty: GgmlType, n: usize, s: Scale, from_floats: bool) -> Vec<u8> {
    let act = ty.vec_dot_type();
    if from_floats || act == GgmlType::F32 {
        // Kept so that Q8_1's `s = d * sum(q)` (up to 32 * amax) stays a finite f16.
        let mag = match s {
            Scale::Normal => rng.random_range(0.5f32..10.0),
            Scale::Tiny => rng.random_range(1e-5f32..1e-3),
            Scale::Huge => rng.random_range(500.0f32..2000.0),
        };
        let x: Vec<f32> = (0..n)
            .map(|_| mag * rng.random_range(-1.0f32..1.0))
            .collect();
        let mut b = vec![0u8; act.row_bytes(n).unwrap()];
        quant::quantize_row(act, &x, &mut b).unwrap();
        b
    } else {
        random_row(rng, act, n, s)
    }
}

fn dequant(ty: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; n];
    quant::dequantize_row(ty, b, &mut y);
    y
}

/// Sum of the magnitudes of every term the dot product adds: element products and the
/// reference's result per block. Reassociation errors are a few ulps of this.
fn bound(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f64 {
    let (wd, ad) = (dequant(ty, w, n), dequant(ty.vec_dot_type(), a, n));
    let elems: f64 = wd
        .iter()
        .zip(&ad)
        .map(|(x, y)| (f64::from(*x) * f64::from(*y)).abs())
        .sum();
    let qk = ty.block_size().max(ty.vec_dot_type().block_size());
    let (wb, ab) = (
        ty.row_bytes(qk).unwrap(),
        ty.vec_dot_type().row_bytes(qk).unwrap(),
    );
    let blocks: f64 = (0..n / qk)
        .map(|i| {
            f64::from(quant::vec_dot(
                ty,
                qk,
                &w[i * wb..(i + 1) * wb],
                &a[i * ab..(i + 1) * ab],
            ))
            .abs()
        })
        .sum();
    elems + blocks
}

fn lengths(ty: GgmlType) -> Vec<usize> {
    let qk = ty.block_size().max(ty.vec_dot_type().block_size());
    let mut v: Vec<usize> = (1..=8).map(|k| k * qk).collect();
    if qk == 1 {
        v.extend([1, 3, 7, 9, 15, 17, 31, 33, 63, 65, 577]);
    }
    v.extend([2048, 4096 + 256]);
    v
}

/// Compares `f` with the reference on every length and scale; returns the cases checked.
fn check_vec_dot(name: &str, ty: GgmlType, f: fn(usize, &[u8], &[u8]) -> f32, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed ^ (ty as u64) << 32);
    let mut cases = 0;
    for n in lengths(ty) {
        for s in [Scale::Normal, Scale::Tiny, Scale::Huge] {
            for from_floats in [true, false] {
                let w = random_row(&mut rng, ty, n, s);
                let a = random_act(&mut rng, ty, n, s, from_floats);
                let want = quant::vec_dot(ty, n, &w, &a);
                let got = f(n, &w, &a);
                let b = bound(ty, n, &w, &a);
                let err = (f64::from(got) - f64::from(want)).abs();
                assert!(
                    got.is_finite() && err <= REL_TOL * b + 1e-30,
                    "{name} {} n={n} {s:?} floats={from_floats}: got {got}, reference {want}, \
                     |diff| {err:e} > {REL_TOL:e} * bound {b:e}",
                    ty.name()
                );
                cases += 1;
            }
        }
    }
    cases
}

/// A tile kernel of `rows` x `toks` against its own variant's dot product, pair by pair, bit
/// for bit (prefill and decode must compute the same numbers): rows and activations with gaps
/// between them (strides larger than a row), on every length and scale; returns the cases
/// checked.
fn check_tile(
    v: Variant,
    ty: GgmlType,
    tile: TileDotFn,
    (rows, toks): (usize, usize),
    seed: u64,
) -> usize {
    let dot = v.vec_dot(ty).expect("a tile comes with a dot product");
    let mut rng = StdRng::seed_from_u64(seed ^ (ty as u64) << 32);
    let mut cases = 0;
    for n in lengths(ty) {
        for s in [Scale::Normal, Scale::Tiny, Scale::Huge] {
            let wrows: Vec<Vec<u8>> = (0..rows).map(|_| random_row(&mut rng, ty, n, s)).collect();
            let arows: Vec<Vec<u8>> = (0..toks)
                .map(|t| random_act(&mut rng, ty, n, s, t % 2 == 0))
                .collect();
            let (ws, as_, os) = (wrows[0].len() + 3, arows[0].len() + 5, toks + 2);
            let mut w = vec![0u8; ws * rows];
            let mut a = vec![0u8; as_ * toks];
            for (r, row) in wrows.iter().enumerate() {
                w[r * ws..r * ws + row.len()].copy_from_slice(row);
            }
            for (t, row) in arows.iter().enumerate() {
                a[t * as_..t * as_ + row.len()].copy_from_slice(row);
            }
            let mut out = vec![f32::NAN; os * rows];
            tile(n, &w, ws, &a, as_, &mut out, os);
            for (r, wr) in wrows.iter().enumerate() {
                for (t, ar) in arows.iter().enumerate() {
                    let want = dot(n, wr, ar);
                    let got = out[r * os + t];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{v} {rows}x{toks} tile {} n={n} {s:?} pair ({r}, {t}): got {got}, dot {want}",
                        ty.name()
                    );
                    cases += 1;
                }
            }
        }
    }
    cases
}

/// The activation rows as a group tile reads them, and their stride: each row, its extension
/// if the tile reads one ([`GroupKernels::tile_ext`]), then a gap of `gap` bytes.
fn tile_rows(g: GroupKernels, n: usize, arows: &[Vec<u8>], gap: usize) -> (Vec<u8>, usize) {
    let trows: Vec<Vec<u8>> = arows
        .iter()
        .map(|r| match g.tile_ext {
            Some((extend, per_block)) => {
                let mut e = r.clone();
                e.resize(r.len() + n / 32 * per_block, 0);
                extend(n, r, &mut e[r.len()..]);
                e
            }
            None => r.clone(),
        })
        .collect();
    let stride = trows[0].len() + gap;
    let mut a = vec![0u8; stride * trows.len()];
    for (t, row) in trows.iter().enumerate() {
        a[t * stride..t * stride + row.len()].copy_from_slice(row);
    }
    (a, stride)
}

/// The kernels for interleaved row groups against the scalar group reference, bit for bit, one
/// token, a tile of tokens and the small tile (with gaps between activation rows and output columns); the
/// group reference in turn equals the row-major dot product of each row to the bit.
fn check_groups(v: Variant, ty: GgmlType, g: GroupKernels, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed ^ (ty as u64) << 32);
    let mut cases = 0;
    for n in lengths(ty) {
        for s in [Scale::Normal, Scale::Tiny, Scale::Huge] {
            let rows: Vec<u8> = (0..GROUP_ROWS)
                .flat_map(|_| random_row(&mut rng, ty, n, s))
                .collect();
            let packed = interleaved::interleave(ty, &rows, n, GROUP_ROWS).unwrap();
            let toks = g.toks;
            let arows: Vec<Vec<u8>> = (0..toks)
                .map(|t| random_act(&mut rng, ty, n, s, t % 2 == 0))
                .collect();
            let (a, as_) = tile_rows(g, n, &arows, 5);
            let os = toks + 2;
            let mut tile = vec![f32::NAN; os * GROUP_ROWS];
            (g.tile)(n, &packed, &a, as_, &mut tile, (os, 1));
            // Each narrow tile on the first of the same rows.
            let narrow: Vec<(Vec<f32>, usize)> = g
                .narrow
                .iter()
                .map(|&(kernel, k)| {
                    assert!(k >= 1 && k < toks, "narrow tile of {k} tokens");
                    let mut out = vec![f32::NAN; os * GROUP_ROWS];
                    kernel(n, &packed, &a, as_, &mut out, (os, 1));
                    (out, k)
                })
                .collect();
            let rb = rows.len() / GROUP_ROWS;
            for (t, ar) in arows.iter().enumerate() {
                let mut want = [0.0f32; GROUP_ROWS];
                interleaved::group_ref(ty, n, &packed, ar, &mut want);
                let mut one = vec![f32::NAN; GROUP_ROWS];
                (g.one)(n, &packed, ar, 0, &mut one, (1, 1));
                for (j, w) in want.iter().enumerate() {
                    let (got_tile, got_one) = (tile[j * os + t], one[j]);
                    assert_eq!(
                        (got_tile.to_bits(), got_one.to_bits()),
                        (w.to_bits(), w.to_bits()),
                        "{v} {} group n={n} {s:?} row {j} token {t}: tile {got_tile}, one {got_one}, ref {w}",
                        ty.name()
                    );
                    for (out, k) in narrow.iter().filter(|(_, k)| t < *k) {
                        let got = out[j * os + t];
                        assert_eq!(
                            got.to_bits(),
                            w.to_bits(),
                            "{v} {} group n={n} {s:?} row {j} token {t}: {k}-token tile {got}, ref {w}",
                            ty.name()
                        );
                    }
                    let row = &rows[j * rb..(j + 1) * rb];
                    let row_major = quant::vec_dot(ty, n, row, ar);
                    assert_eq!(
                        w.to_bits(),
                        row_major.to_bits(),
                        "{} group reference n={n} {s:?} row {j}: {w} vs row-major {row_major}",
                        ty.name()
                    );
                    cases += 1;
                }
            }
        }
    }
    cases
}

/// Rows for the quantizers: random, plus blocks made to hit every edge of the rounding.
fn quantizer_inputs(rng: &mut StdRng, qk: usize) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    for blocks in [1usize, 2, 3, 8, 17] {
        for mag in [1e-30f32, 1e-6, 1.0, 300.0, 1e30] {
            rows.push(
                (0..blocks * qk)
                    .map(|_| mag * rng.random_range(-1.0f32..1.0))
                    .collect(),
            );
        }
    }
    // Exact ties: a scale of exactly 1 (|max| = 127) and values at k + 0.5.
    for sign in [1.0f32, -1.0] {
        let mut x: Vec<f32> = (0..2 * qk)
            .map(|i| ((i % 200) as f32 - 100.0) + 0.5)
            .collect();
        x[0] = 127.0 * sign;
        x[qk] = -127.0 * sign;
        rows.push(x);
    }
    // All zeros, a single non-zero, equal magnitudes of both signs (first one wins in Q8_K).
    rows.push(vec![0.0; 2 * qk]);
    let mut x = vec![0.0; qk];
    x[qk - 1] = -3.0;
    rows.push(x);
    let mut x: Vec<f32> = (0..qk).map(|i| (i as f32 * 0.37).sin()).collect();
    x[5] = -2.0;
    x[9] = 2.0;
    rows.push(x.clone());
    x[5] = 2.0;
    x[9] = -2.0;
    rows.push(x);
    rows
}

fn check_quantizers(v: Variant) -> usize {
    let mut rng = StdRng::seed_from_u64(7);
    let mut cases = 0;
    for act in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
        let Some(q) = v.quantize(act) else {
            eprintln!(
                "  {v}: no own {} quantizer (tier uses the reference)",
                act.name()
            );
            continue;
        };
        for x in quantizer_inputs(&mut rng, act.block_size()) {
            let n = x.len();
            let mut want = vec![0u8; act.row_bytes(n).unwrap()];
            let mut got = vec![0xAAu8; want.len()];
            quant::quantize_row(act, &x, &mut want).unwrap();
            q(&x, &mut got);
            if got != want {
                let bs = act.type_size();
                let blk = (0..n / act.block_size())
                    .find(|&i| got[i * bs..(i + 1) * bs] != want[i * bs..(i + 1) * bs])
                    .unwrap();
                panic!(
                    "{v} quantize {} n={n}: block {blk} differs\n got  {:?}\n want {:?}",
                    act.name(),
                    &got[blk * bs..(blk + 1) * bs],
                    &want[blk * bs..(blk + 1) * bs]
                );
            }
            cases += 1;
        }
    }
    cases
}

fn check_f32_helpers(v: Variant) -> usize {
    let mut rng = StdRng::seed_from_u64(11);
    let mut cases = 0;
    for n in [0usize, 1, 5, 8, 15, 16, 17, 31, 64, 65, 100, 256, 1000] {
        let a: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let bound: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y).abs()).sum();
        if let Some(dot) = v.dot_f32() {
            let (got, want) = (
                dot(&a, &b),
                backstop_engine::cpu::reference::dot_f32(&a, &b),
            );
            assert!(
                (f64::from(got) - f64::from(want)).abs() <= REL_TOL * bound + 1e-30,
                "{v} dot_f32 n={n}: {got} vs {want}"
            );
            cases += 1;
        }
        if let Some(sa) = v.scale_add() {
            let s = rng.random_range(-2.0f32..2.0);
            let (mut got, mut want) = (a.clone(), a.clone());
            sa(&mut got, &b, s);
            backstop_engine::cpu::reference::scale_add(&mut want, &b, s);
            for i in 0..n {
                // One fused multiply-add against a multiply then add: within one rounding.
                let tol = 2.0 * f32::EPSILON * (a[i].abs() + (s * b[i]).abs()) + 1e-30;
                assert!((got[i] - want[i]).abs() <= tol, "{v} scale_add n={n} i={i}");
            }
            cases += 1;
        }
    }
    cases
}

/// The two-group kernel ([`GroupKernels::two_groups`]), where the variant has one, against the
/// scalar group reference of each of its two groups, bit for bit (with gaps between activation
/// rows and output columns, and with sixteen rows side by side as prefill writes them).
fn check_two_groups(v: Variant, ty: GgmlType, g: GroupKernels, seed: u64) -> usize {
    let Some((two, toks)) = g.two_groups else {
        return 0;
    };
    let mut rng = StdRng::seed_from_u64(seed ^ (ty as u64) << 32);
    let mut cases = 0;
    for n in lengths(ty) {
        for s in [Scale::Normal, Scale::Tiny, Scale::Huge] {
            let rows: Vec<u8> = (0..2 * GROUP_ROWS)
                .flat_map(|_| random_row(&mut rng, ty, n, s))
                .collect();
            let packed = interleaved::interleave(ty, &rows, n, 2 * GROUP_ROWS).unwrap();
            let gb = packed.len() / 2;
            let arows: Vec<Vec<u8>> = (0..toks)
                .map(|t| random_act(&mut rng, ty, n, s, t % 2 == 0))
                .collect();
            let (a, as_) = tile_rows(g, n, &arows, 3);
            // Rows apart (decode's transposed scratch) and side by side (prefill's output).
            let os_cols = toks + 1;
            let mut by_rows = vec![f32::NAN; os_cols * 2 * GROUP_ROWS];
            two(n, &packed, &a, as_, &mut by_rows, (os_cols, 1));
            let os_rows = 2 * GROUP_ROWS + 4;
            let mut by_toks = vec![f32::NAN; os_rows * toks];
            two(n, &packed, &a, as_, &mut by_toks, (1, os_rows));
            for (t, ar) in arows.iter().enumerate() {
                for (gi, group) in packed.chunks_exact(gb).enumerate() {
                    let mut want = [0.0f32; GROUP_ROWS];
                    interleaved::group_ref(ty, n, group, ar, &mut want);
                    for (j, w) in want.iter().enumerate() {
                        let r = gi * GROUP_ROWS + j;
                        let (got_r, got_t) = (by_rows[r * os_cols + t], by_toks[t * os_rows + r]);
                        assert_eq!(
                            (got_r.to_bits(), got_t.to_bits()),
                            (w.to_bits(), w.to_bits()),
                            "{v} {} two groups n={n} {s:?} row {r} token {t}: {got_r} / {got_t}, ref {w}",
                            ty.name()
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    cases
}

/// Runs every check of one variant, or says plainly that the host cannot run it.
fn run_variant(v: Variant) {
    if let Some(missing) = v.missing_features() {
        eprintln!("SKIPPED: host lacks {missing}: the {v} kernels were NOT tested");
        return;
    }
    let mut cases = 0;
    let mut own = Vec::new();
    let mut fallback = Vec::new();
    let mut tiles = Vec::new();
    let mut row_tiles = Vec::new();
    let mut groups = Vec::new();
    let mut two_groups = Vec::new();
    for ty in GgmlType::ALL {
        match v.vec_dot(ty) {
            Some(f) => {
                cases += check_vec_dot(v.name(), ty, f, 42);
                own.push(ty.name());
            }
            None => fallback.push(ty.name()),
        }
        if let Some(tile) = v.vec_dot_tile(ty) {
            cases += check_tile(v, ty, tile, (TILE_ROWS, TILE_TOKS), 43);
            tiles.push(ty.name());
        }
        if let Some(tile) = v.vec_dot_rows(ty) {
            cases += check_tile(v, ty, tile, (DECODE_ROWS, 1), 44);
            row_tiles.push(ty.name());
        }
        if let Some(g) = v.group_kernels(ty) {
            cases += check_groups(v, ty, g, 45);
            groups.push(ty.name());
            let pairs = check_two_groups(v, ty, g, 46);
            if pairs > 0 {
                cases += pairs;
                two_groups.push(ty.name());
            }
        }
    }
    cases += check_quantizers(v);
    cases += check_f32_helpers(v);
    eprintln!(
        "{v}: {cases} cases passed; own vec_dot for {own:?}; none of its own for {fallback:?} \
         (its tier uses a lower variant or the reference); prefill tiles for {tiles:?}, decode \
         row tiles for {row_tiles:?}, interleaved groups for {groups:?}, two-group kernels \
         for {two_groups:?}"
    );
    assert!(
        cases > 0 && !own.is_empty(),
        "{v} has no kernels of its own"
    );
}

#[test]
fn avx2_matches_reference_or_skip() {
    run_variant(Variant::Avx2);
}

#[test]
fn avx2vnni_matches_reference_or_skip() {
    run_variant(Variant::Avx2Vnni);
}

#[test]
fn avx512_matches_reference_or_skip() {
    run_variant(Variant::Avx512);
}

#[test]
fn avx512vnni_matches_reference_or_skip() {
    run_variant(Variant::Avx512Vnni);
}

#[test]
fn neon_matches_reference_or_skip() {
    run_variant(Variant::Neon);
}

#[test]
fn neon_dotprod_matches_reference_or_skip() {
    run_variant(Variant::NeonDotprod);
}

/// Each whole tier table (own kernels, then the tiers below, then the reference) for every
/// type, and the list of what ran and what did not.
#[test]
fn every_available_tier_matches_reference() {
    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    for tier in Tier::ALL {
        let k = match Kernels::new(tier) {
            Ok(k) => k,
            Err(e) => {
                skipped.push(format!("{tier} ({e})"));
                continue;
            }
        };
        for ty in GgmlType::ALL {
            check_vec_dot(tier.name(), ty, k.vec_dot(ty), 1234);
        }
        for act in [
            GgmlType::Q8_0,
            GgmlType::Q8_1,
            GgmlType::Q8_K,
            GgmlType::F32,
        ] {
            let x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.731).sin() * 3.0).collect();
            let mut want = vec![0u8; act.row_bytes(512).unwrap()];
            let mut got = vec![0u8; want.len()];
            quant::quantize_row(act, &x, &mut want).unwrap();
            k.quantize(act)(&x, &mut got);
            assert_eq!(got, want, "{tier} quantize {}", act.name());
        }
        ran.push(tier.name());
    }
    let variants: Vec<String> = Variant::ALL
        .iter()
        .map(|v| match v.missing_features() {
            None => format!("{v}: ran"),
            Some(m) => format!("{v}: SKIPPED (host lacks {m})"),
        })
        .collect();
    eprintln!("tiers tested: {ran:?}");
    eprintln!("tiers SKIPPED: {skipped:?}");
    eprintln!("variants: {variants:#?}");
    assert!(ran.contains(&"ref"));
}

#[test]
fn tier_selection_api() {
    let best = Kernels::detect();
    assert!(best.tier.is_supported());
    let tiers = Kernels::available_tiers();
    assert_eq!(tiers[0], Tier::Ref);
    assert!(tiers.contains(&best.tier));
    assert_eq!(Kernels::new(Tier::Ref), Ok(Kernels::REFERENCE));
    for t in Tier::ALL {
        assert_eq!(t.name().parse::<Tier>(), Ok(t));
        assert_eq!(Kernels::new(t).is_ok(), tiers.contains(&t), "{t}");
    }
    assert!("sse9".parse::<Tier>().is_err());
    #[cfg(target_arch = "x86_64")]
    assert!(Kernels::new(Tier::Neon).is_err());
    #[cfg(target_arch = "aarch64")]
    assert!(Kernels::new(Tier::Avx2).is_err());
}
