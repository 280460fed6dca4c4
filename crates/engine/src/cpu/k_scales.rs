//! The 6-bit scale/min packing shared by Q4_K and Q5_K, unpacked once per super-block by every
//! SIMD variant (ggml's `get_scale_min_k4`, done for all eight sub-blocks at once).
//!
//! The 12 bytes hold eight 6-bit scales and eight 6-bit mins: sub-blocks 0..4 keep theirs in
//! the low six bits of bytes 0..4 (scales) and 4..8 (mins); sub-blocks 4..8 keep their low four
//! bits in the nibbles of bytes 8..12 and their top two bits in the spare top bits of bytes 0..8.

/// `(scales, mins)` of the eight 32-element sub-blocks.
#[inline(always)]
#[allow(dead_code)] // not every architecture's build uses it
pub(crate) fn unpack_q4_k(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = q[j] & 63;
        mn[j] = q[j + 4] & 63;
        sc[j + 4] = (q[j + 8] & 0x0F) | ((q[j] >> 6) << 4);
        mn[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
    (sc, mn)
}
