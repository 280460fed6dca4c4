//! NEON kernels, each block format in two builds: plain NEON (`smull` + pairwise add, exact
//! for any i8 x i8) and NEON + dotprod (`sdot`, four i8 products straight into an i32 lane).
//! Types: Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K and F32, plus the Q8_0/Q8_1/Q8_K activation
//! quantizers (`fcvtns` rounds ties to even exactly as the reference's `round_ties_even`)
//! and the f32 helpers.
//!
//! Every kernel is an `unsafe fn` with `#[target_feature]`, reached only through a safe
//! wrapper that `super` hands out after runtime detection; the wrappers check row lengths,
//! the kernels then read with unaligned loads (`vld1q` has no alignment requirement).

use std::arch::aarch64::*;
use std::arch::asm;

use crate::cpu::k_scales::unpack_q4_k;
use crate::cpu::row_blocks;

/// Generates the safe wrapper of a block kernel `unsafe fn(nb, w, a) -> f32`.
macro_rules! safe_vec_dot {
    ($name:ident => $kernel:ident, $qk:expr, $w_block:expr, $a_block:expr) => {
        pub(super) fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let nb = row_blocks(n, $qk, w, $w_block, a, $a_block);
            // SAFETY: this wrapper is handed out only after runtime detection found the
            // features the kernel is compiled for (`aarch64::missing`), and `row_blocks`
            // checked that `nb` blocks of both rows are in bounds.
            unsafe { $kernel(nb, w.as_ptr(), a.as_ptr()) }
        }
    };
}

const Q4_K_BYTES: usize = 144;
const Q5_K_BYTES: usize = 176;
const Q6_K_BYTES: usize = 210;
const Q8_K_BYTES: usize = 292;
const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 260;

/// An f16 (two little-endian bytes at `p`) as f32, by the base-ISA `fcvt`.
///
/// # Safety
/// `p` must be valid for reading two bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_f16(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes.
    let bits = u16::from_le_bytes(unsafe { p.cast::<[u8; 2]>().read_unaligned() });
    let out: f32;
    // SAFETY: `fcvt` from half to single precision is part of the base aarch64 FP ISA; it
    // touches only the two registers named.
    unsafe {
        asm!("fcvt {0:s}, {1:h}", out(vreg) out, in(vreg) bits as i16,
             options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// An f32 as the two little-endian bytes of an f16, rounded to nearest even (the reference's
/// `half::f16::from_f32` for every finite value).
#[inline]
#[target_feature(enable = "neon")]
fn f16_bytes(x: f32) -> [u8; 2] {
    let out: i16;
    // SAFETY: base-ISA `fcvt` single to half (rounding per FPCR, round-to-nearest-even by
    // default); touches only the two registers named.
    unsafe {
        asm!("fcvt {0:h}, {1:s}", out(vreg) out, in(vreg) x,
             options(pure, nomem, nostack, preserves_flags));
    }
    out.to_le_bytes()
}

/// `acc` plus the products of sixteen i8 pairs, four per lane, without dotprod.
#[inline]
#[target_feature(enable = "neon")]
fn dot16_plain(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let p1 = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, p0), p1)
}

/// `acc` plus the products of sixteen i8 pairs, four per lane, by `sdot`. Written as inline
/// assembly because `vdotq_s32` is still unstable in `std::arch` (`stdarch_neon_dotprod`).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn dot16_sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: `sdot` (FEAT_DotProd) is enabled for this function, which is only reachable
    // after runtime detection of dotprod; it reads and writes only the registers named.
    unsafe {
        asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Lane `j` of a 16-byte vector tests bit `j % 8` of its byte.
const LANE_BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];

/// Builds one family of block kernels for the given target features and `dot16`.
macro_rules! neon_kernels {
    (
        features = $feat:literal,
        dot16 = $dot16:ident,
        $q4_0:ident, $q4_1:ident, $q5_0:ident, $q8_0:ident, $q4_k:ident, $q5_k:ident,
        $q6_k:ident,
        wrappers: $w4_0:ident, $w4_1:ident, $w5_0:ident, $w8_0:ident, $w4_k:ident,
        $w5_k:ident, $w6_k:ident $(,)?
    ) => {
        safe_vec_dot!($w4_0 => $q4_0, 32, 18, 34);
        safe_vec_dot!($w4_1 => $q4_1, 32, 20, 36);
        safe_vec_dot!($w5_0 => $q5_0, 32, 22, 34);
        safe_vec_dot!($w8_0 => $q8_0, 32, 34, 34);
        safe_vec_dot!($w4_k => $q4_k, 256, Q4_K_BYTES, Q8_K_BYTES);
        safe_vec_dot!($w5_k => $q5_k, 256, Q5_K_BYTES, Q8_K_BYTES);
        safe_vec_dot!($w6_k => $q6_k, 256, Q6_K_BYTES, Q8_K_BYTES);

        /// Q5_0 (22: d, qh u32, 16 nibble bytes) against Q8_0 (34): the fifth bit of element
        /// `j` is bit `j` of `qh`, spread to a byte by testing each lane against its bit.
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q5_0(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `i < nb` of its row; `LANE_BITS` is a
            // 16-byte constant.
            unsafe {
                let m4 = vdupq_n_u8(0x0F);
                let sixteen = vdupq_n_u8(16);
                let bits = vld1q_u8(LANE_BITS.as_ptr());
                let mut acc = vdupq_n_f32(0.0);
                for i in 0..nb {
                    let (x, y) = (w.add(i * 22), a.add(i * 34));
                    let d = load_f16(x) * load_f16(y);
                    let qh = u32::from_le_bytes(x.add(2).cast::<[u8; 4]>().read_unaligned());
                    let spread = |b0: u32, b1: u32| {
                        let v = vcombine_u8(vdup_n_u8(b0 as u8), vdup_n_u8(b1 as u8));
                        vandq_u8(vtstq_u8(v, bits), sixteen)
                    };
                    let (hl, hh) = (spread(qh, qh >> 8), spread(qh >> 16, qh >> 24));
                    let v = vld1q_u8(x.add(6));
                    let lo = vorrq_u8(vandq_u8(v, m4), hl);
                    let hi = vorrq_u8(vshrq_n_u8::<4>(v), hh);
                    let s16 = vreinterpretq_s8_u8(sixteen);
                    let lo = vsubq_s8(vreinterpretq_s8_u8(lo), s16);
                    let hi = vsubq_s8(vreinterpretq_s8_u8(hi), s16);
                    let p = $dot16(vdupq_n_s32(0), lo, vld1q_s8(y.add(2).cast()));
                    let p = $dot16(p, hi, vld1q_s8(y.add(18).cast()));
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), d);
                }
                vaddvq_f32(acc)
            }
        }

        /// Q5_K (176: d, dmin, 12 scale bytes, qh[32], qs[128]) against Q8_K: Q4_K's
        /// arithmetic with a fifth bit per quant, bit `2c` (low half) or `2c + 1` (high half)
        /// of `qh[l]` for element `l` of 64-element chunk `c`.
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` super-blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q5_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside super-block `i < nb` of its row.
            unsafe {
                let m4 = vdupq_n_u8(0x0F);
                let sixteen = vdupq_n_u8(16);
                let mut sum = 0.0f32;
                for i in 0..nb {
                    let (x, y) = (w.add(i * Q5_K_BYTES), a.add(i * Q8_K_BYTES));
                    let dy = f32::from_le_bytes(y.cast::<[u8; 4]>().read_unaligned());
                    let d = load_f16(x) * dy;
                    let dmin = load_f16(x.add(2)) * dy;
                    let (sc, mn) = unpack_q4_k(&*x.add(4).cast::<[u8; 12]>());
                    let bs = y.add(Q8K_BSUMS).cast::<i16>();
                    let sums = vpaddq_s16(vld1q_s16(bs), vld1q_s16(bs.add(8)));
                    let mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn.as_ptr())));
                    let pm = vmull_s16(vget_low_s16(mins), vget_low_s16(sums));
                    let pm = vmlal_high_s16(pm, mins, sums);
                    let (qh0, qh1) = (vld1q_u8(x.add(16)), vld1q_u8(x.add(32)));
                    let qs = x.add(48);
                    let yq = y.add(Q8K_QS).cast::<i8>();
                    let mut sumi = 0i32;
                    for j in 0..4 {
                        let q0 = vld1q_u8(qs.add(32 * j));
                        let q1 = vld1q_u8(qs.add(32 * j + 16));
                        let high = |qh: uint8x16_t, bit: u8| {
                            vandq_u8(vtstq_u8(qh, vdupq_n_u8(bit)), sixteen)
                        };
                        let (bl, bh) = (1u8 << (2 * j), 2u8 << (2 * j));
                        let l0 = vorrq_u8(vandq_u8(q0, m4), high(qh0, bl));
                        let l1 = vorrq_u8(vandq_u8(q1, m4), high(qh1, bl));
                        let h0 = vorrq_u8(vshrq_n_u8::<4>(q0), high(qh0, bh));
                        let h1 = vorrq_u8(vshrq_n_u8::<4>(q1), high(qh1, bh));
                        let yl = yq.add(64 * j);
                        let s8 = vreinterpretq_s8_u8;
                        let plo = $dot16(vdupq_n_s32(0), s8(l0), vld1q_s8(yl));
                        let plo = $dot16(plo, s8(l1), vld1q_s8(yl.add(16)));
                        let phi = $dot16(vdupq_n_s32(0), s8(h0), vld1q_s8(yl.add(32)));
                        let phi = $dot16(phi, s8(h1), vld1q_s8(yl.add(48)));
                        sumi += vaddvq_s32(plo) * i32::from(sc[2 * j])
                            + vaddvq_s32(phi) * i32::from(sc[2 * j + 1]);
                    }
                    sum += d * sumi as f32 - dmin * vaddvq_s32(pm) as f32;
                }
                sum
            }
        }

        /// Q4_0 (18-byte blocks) against Q8_0 (34).
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q4_0(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `i < nb` of its row.
            unsafe {
                let m4 = vdupq_n_u8(0x0F);
                let eight = vdupq_n_s8(8);
                let mut acc = vdupq_n_f32(0.0);
                for i in 0..nb {
                    let (x, y) = (w.add(i * 18), a.add(i * 34));
                    let d = load_f16(x) * load_f16(y);
                    let v = vld1q_u8(x.add(2));
                    let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m4)), eight);
                    let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)), eight);
                    let p = $dot16(vdupq_n_s32(0), lo, vld1q_s8(y.add(2).cast()));
                    let p = $dot16(p, hi, vld1q_s8(y.add(18).cast()));
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), d);
                }
                vaddvq_f32(acc)
            }
        }

        /// Q4_1 (20) against Q8_1 (36).
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q4_1(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `i < nb` of its row.
            unsafe {
                let m4 = vdupq_n_u8(0x0F);
                let mut acc = vdupq_n_f32(0.0);
                let mut summ = 0.0f32;
                for i in 0..nb {
                    let (x, y) = (w.add(i * 20), a.add(i * 36));
                    let d = load_f16(x) * load_f16(y);
                    summ += load_f16(x.add(2)) * load_f16(y.add(2));
                    let v = vld1q_u8(x.add(4));
                    let lo = vreinterpretq_s8_u8(vandq_u8(v, m4));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
                    let p = $dot16(vdupq_n_s32(0), lo, vld1q_s8(y.add(4).cast()));
                    let p = $dot16(p, hi, vld1q_s8(y.add(20).cast()));
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), d);
                }
                vaddvq_f32(acc) + summ
            }
        }

        /// Q8_0 (34) against Q8_0.
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q8_0(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside block `i < nb` of its row.
            unsafe {
                let mut acc = vdupq_n_f32(0.0);
                for i in 0..nb {
                    let (x, y) = (w.add(i * 34), a.add(i * 34));
                    let d = load_f16(x) * load_f16(y);
                    let p = $dot16(
                        vdupq_n_s32(0),
                        vld1q_s8(x.add(2).cast()),
                        vld1q_s8(y.add(2).cast()),
                    );
                    let p = $dot16(p, vld1q_s8(x.add(18).cast()), vld1q_s8(y.add(18).cast()));
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), d);
                }
                vaddvq_f32(acc)
            }
        }

        /// Q4_K (144) against Q8_K (292): per sub-block integer sums times its scale; the
        /// mins against the activations' `bsums`.
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` super-blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q4_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside super-block `i < nb` of its row.
            unsafe {
                let m4 = vdupq_n_u8(0x0F);
                let mut sum = 0.0f32;
                for i in 0..nb {
                    let (x, y) = (w.add(i * Q4_K_BYTES), a.add(i * Q8_K_BYTES));
                    let dy = f32::from_le_bytes(y.cast::<[u8; 4]>().read_unaligned());
                    let d = load_f16(x) * dy;
                    let dmin = load_f16(x.add(2)) * dy;
                    let (sc, mn) = unpack_q4_k(&*x.add(4).cast::<[u8; 12]>());
                    let bs = y.add(Q8K_BSUMS).cast::<i16>();
                    let sums = vpaddq_s16(vld1q_s16(bs), vld1q_s16(bs.add(8)));
                    let mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn.as_ptr())));
                    let pm = vmull_s16(vget_low_s16(mins), vget_low_s16(sums));
                    let pm = vmlal_high_s16(pm, mins, sums);
                    let yq = y.add(Q8K_QS).cast::<i8>();
                    let mut sumi = 0i32;
                    for j in 0..4 {
                        let q0 = vld1q_u8(x.add(16 + 32 * j));
                        let q1 = vld1q_u8(x.add(32 + 32 * j));
                        let yl = yq.add(64 * j);
                        let plo = $dot16(
                            vdupq_n_s32(0),
                            vreinterpretq_s8_u8(vandq_u8(q0, m4)),
                            vld1q_s8(yl),
                        );
                        let plo = $dot16(
                            plo,
                            vreinterpretq_s8_u8(vandq_u8(q1, m4)),
                            vld1q_s8(yl.add(16)),
                        );
                        let phi = $dot16(
                            vdupq_n_s32(0),
                            vreinterpretq_s8_u8(vshrq_n_u8::<4>(q0)),
                            vld1q_s8(yl.add(32)),
                        );
                        let phi = $dot16(
                            phi,
                            vreinterpretq_s8_u8(vshrq_n_u8::<4>(q1)),
                            vld1q_s8(yl.add(48)),
                        );
                        sumi += vaddvq_s32(plo) * i32::from(sc[2 * j])
                            + vaddvq_s32(phi) * i32::from(sc[2 * j + 1]);
                    }
                    sum += d * sumi as f32 - dmin * vaddvq_s32(pm) as f32;
                }
                sum
            }
        }

        /// Q6_K (210) against Q8_K: the unsigned 6-bit quants against the activations, less
        /// `32 * sum_g scale_g * bsum_g`.
        ///
        /// # Safety
        /// The features above present; `w` and `a` valid for `nb` super-blocks.
        #[target_feature(enable = $feat)]
        unsafe fn $q6_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
            // SAFETY: every pointer read is inside super-block `i < nb` of its row.
            unsafe {
                let m4 = vdupq_n_u8(0x0F);
                let m3 = vdupq_n_u8(3);
                let mut sum = 0.0f32;
                for i in 0..nb {
                    let (x, y) = (w.add(i * Q6_K_BYTES), a.add(i * Q8_K_BYTES));
                    let dy = f32::from_le_bytes(y.cast::<[u8; 4]>().read_unaligned());
                    let d = load_f16(x.add(208)) * dy;
                    let sc = &*x.add(192).cast::<[i8; 16]>();
                    let scv = vld1q_s8(sc.as_ptr());
                    let bs = y.add(Q8K_BSUMS).cast::<i16>();
                    let off = vmull_s16(vget_low_s16(vmovl_s8(vget_low_s8(scv))), vld1_s16(bs));
                    let off = vmlal_high_s16(off, vmovl_s8(vget_low_s8(scv)), vld1q_s16(bs));
                    let off = vmlal_s16(off, vget_low_s16(vmovl_high_s8(scv)), vld1_s16(bs.add(8)));
                    let off = vmlal_high_s16(off, vmovl_high_s8(scv), vld1q_s16(bs.add(8)));
                    let yq = y.add(Q8K_QS).cast::<i8>();
                    let mut sumi = 0i32;
                    for h in 0..2 {
                        let ql = x.add(64 * h);
                        let qh = x.add(128 + 32 * h);
                        let y8 = yq.add(128 * h);
                        for t in 0..2 {
                            let hb = vld1q_u8(qh.add(16 * t));
                            let l0 = vld1q_u8(ql.add(16 * t));
                            let l1 = vld1q_u8(ql.add(32 + 16 * t));
                            let q = [
                                vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8::<4>(vandq_u8(hb, m3))),
                                vorrq_u8(
                                    vandq_u8(l1, m4),
                                    vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(hb), m3)),
                                ),
                                vorrq_u8(
                                    vshrq_n_u8::<4>(l0),
                                    vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(hb), m3)),
                                ),
                                vorrq_u8(vshrq_n_u8::<4>(l1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(hb))),
                            ];
                            for (k, &qk) in q.iter().enumerate() {
                                let p = $dot16(
                                    vdupq_n_s32(0),
                                    vreinterpretq_s8_u8(qk),
                                    vld1q_s8(y8.add(32 * k + 16 * t)),
                                );
                                sumi += vaddvq_s32(p) * i32::from(sc[8 * h + t + 2 * k]);
                            }
                        }
                    }
                    sum += d * (sumi - 32 * vaddvq_s32(off)) as f32;
                }
                sum
            }
        }
    };
}

neon_kernels! {
    features = "neon",
    dot16 = dot16_plain,
    q4_0_q8_0, q4_1_q8_1, q5_0_q8_0, q8_0_q8_0, q4_k_q8_k, q5_k_q8_k, q6_k_q8_k,
    wrappers: vec_dot_q4_0_q8_0, vec_dot_q4_1_q8_1, vec_dot_q5_0_q8_0, vec_dot_q8_0_q8_0,
    vec_dot_q4_k_q8_k, vec_dot_q5_k_q8_k, vec_dot_q6_k_q8_k,
}

neon_kernels! {
    features = "neon,dotprod",
    dot16 = dot16_sdot,
    q4_0_q8_0_dot, q4_1_q8_1_dot, q5_0_q8_0_dot, q8_0_q8_0_dot, q4_k_q8_k_dot,
    q5_k_q8_k_dot, q6_k_q8_k_dot,
    wrappers: vec_dot_q4_0_q8_0_dot, vec_dot_q4_1_q8_1_dot, vec_dot_q5_0_q8_0_dot,
    vec_dot_q8_0_q8_0_dot, vec_dot_q4_k_q8_k_dot, vec_dot_q5_k_q8_k_dot, vec_dot_q6_k_q8_k_dot,
}

safe_vec_dot!(vec_dot_f32 => dot_f32_raw, 1, 4, 4);

/// f32 x f32 over `n` elements: four accumulators of four.
///
/// # Safety
/// NEON present; `w` and `a` valid for `4 * n` bytes.
#[target_feature(enable = "neon")]
unsafe fn dot_f32_raw(n: usize, w: *const u8, a: *const u8) -> f32 {
    let (x, y) = (w.cast::<f32>(), a.cast::<f32>());
    // SAFETY: every read is of elements `< n` (caller's contract); `vld1q_f32` and
    // `read_unaligned` need no alignment.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let o = i + 4 * k;
                *acc = vfmaq_f32(*acc, vld1q_f32(x.add(o)), vld1q_f32(y.add(o)));
            }
            i += 16;
        }
        while i + 4 <= n {
            acc[0] = vfmaq_f32(acc[0], vld1q_f32(x.add(i)), vld1q_f32(y.add(i)));
            i += 4;
        }
        let mut sum = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        while i < n {
            sum += x.add(i).read_unaligned() * y.add(i).read_unaligned();
            i += 1;
        }
        sum
    }
}

/// The f32 dot product of two slices (attention scores).
pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32 lengths");
    // SAFETY: handed out only after runtime detection of NEON; both slices hold `a.len()` f32s.
    unsafe { dot_f32_raw(a.len(), a.as_ptr().cast(), b.as_ptr().cast()) }
}

/// `out[i] += s * x[i]`.
pub(super) fn scale_add(out: &mut [f32], x: &[f32], s: f32) {
    assert_eq!(out.len(), x.len(), "scale_add lengths");
    // SAFETY: handed out only after runtime detection of NEON; both slices hold `out.len()`
    // f32s and `out` is exclusively borrowed.
    unsafe { scale_add_raw(out.len(), out.as_mut_ptr(), x.as_ptr(), s) }
}

/// # Safety
/// NEON present; `out` and `x` valid for `n` f32s, `out` writable.
#[target_feature(enable = "neon")]
unsafe fn scale_add_raw(n: usize, out: *mut f32, x: *const f32, s: f32) {
    // SAFETY: every access is to elements `< n` (caller's contract).
    unsafe {
        let mut i = 0;
        while i + 4 <= n {
            vst1q_f32(
                out.add(i),
                vfmaq_n_f32(vld1q_f32(out.add(i)), vld1q_f32(x.add(i)), s),
            );
            i += 4;
        }
        while i < n {
            *out.add(i) += s * *x.add(i);
            i += 1;
        }
    }
}

/// Quantizes 32 floats as the Q8_0 reference: returns `(d, sum of quants)`, stores the quants.
///
/// # Safety
/// NEON present; `x` valid for 32 f32 reads, `qs` for 32 byte writes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn quantize_block_q8(x: *const f32, qs: *mut u8) -> (f32, i32) {
    // SAFETY: reads x[0..32], writes qs[0..32] (caller's contract).
    unsafe {
        let v: [float32x4_t; 8] = std::array::from_fn(|k| vld1q_f32(x.add(4 * k)));
        let mut m = vabsq_f32(v[0]);
        for vk in &v[1..] {
            m = vmaxq_f32(m, vabsq_f32(*vk));
        }
        let amax = vmaxvq_f32(m);
        let d = amax / 127.0;
        // As the reference (ggml's x86 arithmetic): multiplier 127/amax, not 1/d.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        // fcvtns: round to nearest, ties to even, as the reference's `round_ties_even`; then
        // saturating narrows, as `as i8` saturates.
        let q32: [int32x4_t; 8] = std::array::from_fn(|k| vcvtnq_s32_f32(vmulq_n_f32(v[k], id)));
        let q16: [int16x8_t; 4] =
            std::array::from_fn(|k| vqmovn_high_s32(vqmovn_s32(q32[2 * k]), q32[2 * k + 1]));
        let q8 = [
            vqmovn_high_s16(vqmovn_s16(q16[0]), q16[1]),
            vqmovn_high_s16(vqmovn_s16(q16[2]), q16[3]),
        ];
        vst1q_s8(qs.cast(), q8[0]);
        vst1q_s8(qs.add(16).cast(), q8[1]);
        let sum = vaddlvq_s8(q8[0]) + vaddlvq_s8(q8[1]);
        (d, i32::from(sum))
    }
}

/// Q8_0 activations, bytes identical to `quant::q8_0::quantize_row`.
pub(super) fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    let nb = src.len() / 32;
    assert!(
        nb * 32 == src.len() && dst.len() == nb * 34,
        "quantize Q8_0 lengths"
    );
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        // SAFETY: handed out only after runtime detection of NEON; `x` holds 32 floats and
        // `y` 34 bytes, of which the quants take the last 32.
        let (d, _) = unsafe { quantize_block_q8(x.as_ptr(), y.as_mut_ptr().add(2)) };
        // SAFETY: as above.
        y[..2].copy_from_slice(&unsafe { f16_bytes(d) });
    }
}

/// Q8_1 activations, bytes identical to `quant::q8_1::quantize_row`.
pub(super) fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    let nb = src.len() / 32;
    assert!(
        nb * 32 == src.len() && dst.len() == nb * 36,
        "quantize Q8_1 lengths"
    );
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(36)) {
        // SAFETY: handed out only after runtime detection of NEON; `x` holds 32 floats and
        // `y` 36 bytes, of which the quants take the last 32.
        let (d, sum) = unsafe { quantize_block_q8(x.as_ptr(), y.as_mut_ptr().add(4)) };
        // SAFETY: as above.
        let (db, sb) = unsafe { (f16_bytes(d), f16_bytes(sum as f32 * d)) };
        y[..2].copy_from_slice(&db);
        y[2..4].copy_from_slice(&sb);
    }
}

/// Q8_K activations, bytes identical to `quant::q8_k::quantize_row`.
pub(super) fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    let nb = src.len() / 256;
    assert!(
        nb * 256 == src.len() && dst.len() == nb * Q8_K_BYTES,
        "quantize Q8_K lengths"
    );
    for (x, y) in src.chunks_exact(256).zip(dst.chunks_exact_mut(Q8_K_BYTES)) {
        // The reference keeps the sign of the first element of largest magnitude.
        let (mut max, mut amax) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            y.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        // SAFETY: handed out only after runtime detection of NEON; `x` holds 256 floats and
        // `y` one 292-byte block.
        unsafe { quantize_quants_q8_k(x.as_ptr(), iscale, y.as_mut_ptr()) };
        y[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

/// # Safety
/// NEON present; `x` valid for 256 f32 reads, `y` for 292 byte writes.
#[target_feature(enable = "neon")]
unsafe fn quantize_quants_q8_k(x: *const f32, iscale: f32, y: *mut u8) {
    // SAFETY: reads x[0..256], writes y[4..292] (caller's contract).
    unsafe {
        let hi = vdupq_n_s32(127);
        for g in 0..16 {
            let q32: [int32x4_t; 4] = std::array::from_fn(|k| {
                // fcvtns: round to nearest, ties to even, as the reference's nearest_int.
                let r = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x.add(16 * g + 4 * k)), iscale));
                vminq_s32(r, hi)
            });
            let q16 = [
                vqmovn_high_s32(vqmovn_s32(q32[0]), q32[1]),
                vqmovn_high_s32(vqmovn_s32(q32[2]), q32[3]),
            ];
            let q8 = vqmovn_high_s16(vqmovn_s16(q16[0]), q16[1]);
            vst1q_s8(y.add(Q8K_QS + 16 * g).cast(), q8);
            let s = vaddlvq_s8(q8);
            y.add(Q8K_BSUMS + 2 * g)
                .cast::<[u8; 2]>()
                .write_unaligned(s.to_le_bytes());
        }
    }
}
