//! The quantize / dequantize kernels over one slice of working-precision values.
//!
//! Written for the auto-vectorizer of a baseline x86-64 (SSE2) build: no `round`, no
//! float-to-int conversions and no `f32::max` (whose NaN rules cost extra instructions).
//! Rounding is the "magic number" trick: for `0 <= t < 2^23`, the low bits of
//! `(t + 2^23).to_bits()` are `t` rounded to nearest, ties to even (`2^52` for `f64`).
//! Clamps are compare-and-select (`if t > 0 { t } else { 0 }`), which maps onto
//! `maxps`/`minps`. Codes are staged through small aligned stack blocks, so frame bytes may
//! have any alignment.

use std::ops::{Add, Div, Mul, Sub};

use bytemuck::Pod;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::types::{DataType, QuantizationAlgorithm as Alg};

/// Bytes of per-slice metadata in front of the codes: `a`, `b`, `z` as little-endian `f64`
/// (values of the working type, so the conversion is exact).
pub const META_LEN: usize = 24;

/// Elements per stack block.
const BLOCK: usize = 1024;
/// Independent accumulator lanes of the range scan.
const LANES: usize = 16;

/// A working (accumulation) precision: `f32` for f16/bf16/f32 sources, `f64` for f64.
pub trait Work:
    Pod
    + Default
    + PartialOrd
    + Send
    + Sync
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    const ZERO: Self;
    const INF: Self;
    const NEG_INF: Self;
    const NAN: Self;
    /// `2^(mantissa bits)`: adding it rounds a small non-negative value to an integer.
    const MAGIC: Self;
    /// Unit roundoff (half an ulp of 1).
    const EPS: f64;
    /// Exponents `k` for which both `2^k` and `2^-k` are normal.
    const EXP_RANGE: (i32, i32);
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// The low 16 bits of the representation.
    fn low_bits(self) -> u16;
    fn from_u16(v: u16) -> Self;
    fn is_finite(self) -> bool;
    fn max_(self, o: Self) -> Self;
    fn min_(self, o: Self) -> Self;
    fn to_f16s(src: &[Self], dst: &mut [f16]);
    fn to_bf16s(src: &[Self], dst: &mut [bf16]);
    fn from_f16s(src: &[f16], dst: &mut [Self]);
    fn from_bf16s(src: &[bf16], dst: &mut [Self]);
}

macro_rules! work {
    ($t:ty, $magic:expr, $eps:expr, $range:expr, $to:ident, $from:ident) => {
        impl Work for $t {
            const ZERO: Self = 0.0;
            const INF: Self = <$t>::INFINITY;
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            const NAN: Self = <$t>::NAN;
            const MAGIC: Self = $magic;
            const EPS: f64 = $eps;
            const EXP_RANGE: (i32, i32) = $range;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn low_bits(self) -> u16 {
                self.to_bits() as u16
            }
            #[inline(always)]
            fn from_u16(v: u16) -> Self {
                <$t>::from(v)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn max_(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            #[inline(always)]
            fn min_(self, o: Self) -> Self {
                <$t>::min(self, o)
            }
            #[inline(always)]
            fn to_f16s(src: &[Self], dst: &mut [f16]) {
                dst.$from(src)
            }
            #[inline(always)]
            fn to_bf16s(src: &[Self], dst: &mut [bf16]) {
                dst.$from(src)
            }
            #[inline(always)]
            fn from_f16s(src: &[f16], dst: &mut [Self]) {
                src.$to(dst)
            }
            #[inline(always)]
            fn from_bf16s(src: &[bf16], dst: &mut [Self]) {
                src.$to(dst)
            }
        }
    };
}
work!(
    f32,
    8_388_608.0,
    1.0 / 16_777_216.0,
    (-126, 126),
    convert_to_f32_slice,
    convert_from_f32_slice
);
work!(
    f64,
    4_503_599_627_370_496.0,
    1.0 / 9_007_199_254_740_992.0,
    (-1022, 1022),
    convert_to_f64_slice,
    convert_from_f64_slice
);

/// The affine map of one slice: code `c` stands for `a + (c - z) * b`; quantizing uses
/// `inv ≈ 1 / b`. For float targets `z = 0`. A *poisoned* slice (a non-finite input) has
/// `a = b = NaN`, so every element dequantizes to NaN.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Params<W> {
    pub a: W,
    pub b: W,
    pub z: W,
    pub inv: W,
}

/// Smallest and largest value of `x` and whether every value is finite.
/// An empty slice is finite with range `(0, 0)`.
pub(crate) fn scan<W: Work>(x: &[W]) -> (W, W, bool) {
    let mut mn = [W::INF; LANES];
    let mut mx = [W::NEG_INF; LANES];
    // x * 0 is 0 for a finite x and NaN otherwise; a sum of zeros stays exactly 0.
    let mut z = [W::ZERO; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        let c: &[W; LANES] = c.try_into().expect("exact chunk");
        for i in 0..LANES {
            let v = c[i];
            mn[i] = if v < mn[i] { v } else { mn[i] };
            mx[i] = if v > mx[i] { v } else { mx[i] };
            z[i] = z[i] + v * W::ZERO;
        }
    }
    for &v in rest {
        mn[0] = if v < mn[0] { v } else { mn[0] };
        mx[0] = if v > mx[0] { v } else { mx[0] };
        z[0] = z[0] + v * W::ZERO;
    }
    let finite = z.iter().all(|&v| v == W::ZERO);
    if x.is_empty() || !finite {
        return (W::ZERO, W::ZERO, finite);
    }
    let lo = mn.iter().fold(W::INF, |a, &v| if v < a { v } else { a });
    let hi = mx
        .iter()
        .fold(W::NEG_INF, |a, &v| if v > a { v } else { a });
    (lo, hi, true)
}

/// Largest code of an integer target (codes are kept unsigned, `0..=L`; i8 stores
/// `code - 128`).
pub(crate) fn levels(target: DataType) -> Option<u16> {
    match target {
        DataType::U8 | DataType::I8 => Some(255),
        DataType::U16 => Some(65_535),
        _ => None,
    }
}

/// `floor(log2(m)) + 1` for a finite positive `m`: `m < 2^e`.
fn exp_above(m: f64) -> i32 {
    let bits = m.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        -1022 // subnormal: clamped by the caller anyway
    } else {
        biased - 1023 + 1
    }
}

/// `2^k` for `k` inside `W::EXP_RANGE`.
fn pow2<W: Work>(k: i32) -> W {
    W::from_f64(f64::from_bits(((k + 1023) as u64) << 52))
}

/// The map for a slice with range `[lo, hi]` (`finite`: no NaN or ±inf in it).
pub(crate) fn params<W: Work>(alg: Alg, target: DataType, lo: W, hi: W, finite: bool) -> Params<W> {
    let two = W::from_f64(2.0);
    if !finite {
        return Params {
            a: W::NAN,
            b: W::NAN,
            z: W::ZERO,
            inv: W::ZERO,
        };
    }
    let inverse = |b: W| {
        let inv = W::from_f64(1.0) / b;
        if inv.is_finite() { inv } else { W::ZERO }
    };
    match (levels(target), alg) {
        (Some(l), Alg::ZeroPointScale) => {
            let l = W::from_u16(l);
            let lo = lo.min_(W::ZERO);
            let hi = hi.max_(W::ZERO);
            if lo == hi {
                return Params {
                    a: W::ZERO,
                    b: W::ZERO,
                    z: W::ZERO,
                    inv: W::ZERO,
                };
            }
            let mut b = (hi / two - lo / two) / (l / two);
            let inv = inverse(b);
            let z0 = W::ZERO - lo * inv;
            let z0 = if z0 > W::ZERO { z0 } else { W::ZERO };
            let z0 = if z0 < l { z0 } else { l };
            let z = (z0 + W::MAGIC) - W::MAGIC;
            let mut p = Params {
                a: W::ZERO,
                b,
                z,
                inv,
            };
            // Saturating regime (range within ~1 % of W::MAX): keep the zero point and
            // shrink the scale, by growing steps, until the extreme codes dequantize to
            // finite values.
            let mut shrink = 4.0 * W::EPS;
            for _ in 0..16 {
                if dq(p, W::ZERO).is_finite() && dq(p, l).is_finite() {
                    break;
                }
                b = b * W::from_f64(1.0 - shrink);
                shrink *= 2.0;
                p.b = b;
                p.inv = inverse(b);
            }
            p
        }
        (Some(l), _) => {
            let l = W::from_u16(l);
            let half_l = l / two;
            if lo == hi {
                return Params {
                    a: lo,
                    b: W::ZERO,
                    z: half_l,
                    inv: W::ZERO,
                };
            }
            let a = lo / two + hi / two;
            let mut b = (hi / two - lo / two) / half_l;
            let mut p = Params {
                a,
                b,
                z: half_l,
                inv: W::ZERO,
            };
            let mut shrink = 4.0 * W::EPS;
            for _ in 0..16 {
                p.b = b;
                p.inv = inverse(b);
                if dq(p, W::ZERO).is_finite() && dq(p, l).is_finite() {
                    break;
                }
                b = b * W::from_f64(1.0 - shrink);
                shrink *= 2.0;
            }
            p
        }
        (None, Alg::ZeroPointScale) => {
            let m = (W::ZERO - lo).max_(hi).to_f64();
            // Codes stay below 2^15 (f16 max 65504) or below 1 (bf16 has f32's range).
            let top = if target == DataType::F16 { 15 } else { 0 };
            let k = if m > 0.0 { exp_above(m) - top } else { 0 };
            let k = k.clamp(W::EXP_RANGE.0, W::EXP_RANGE.1);
            Params {
                a: W::ZERO,
                b: pow2(k),
                z: W::ZERO,
                inv: pow2(-k),
            }
        }
        (None, _) => {
            if lo == hi {
                return Params {
                    a: lo,
                    b: W::ZERO,
                    z: W::ZERO,
                    inv: W::ZERO,
                };
            }
            let b = hi / two - lo / two;
            Params {
                a: lo / two + hi / two,
                b,
                z: W::ZERO,
                inv: inverse(b),
            }
        }
    }
}

/// Dequantizes one (unsigned integer or float) code value.
#[inline(always)]
fn dq<W: Work>(p: Params<W>, c: W) -> W {
    p.a + (c - p.z) * p.b
}

/// Writes the metadata of `p`.
pub(crate) fn write_meta<W: Work>(p: Params<W>, out: &mut [u8]) {
    out[0..8].copy_from_slice(&p.a.to_f64().to_le_bytes());
    out[8..16].copy_from_slice(&p.b.to_f64().to_le_bytes());
    out[16..24].copy_from_slice(&p.z.to_f64().to_le_bytes());
}

/// Reads metadata written by [`write_meta`] (`inv` is not carried: receivers only
/// dequantize).
pub(crate) fn read_meta<W: Work>(m: &[u8]) -> Params<W> {
    let f = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&m[i..i + 8]);
        W::from_f64(f64::from_le_bytes(b))
    };
    Params {
        a: f(0),
        b: f(8),
        z: f(16),
        inv: W::ZERO,
    }
}

/// Quantizes `x` into `out` = metadata + `x.len()` codes of `target`. Returns the map used.
///
/// Precondition: `out.len() == META_LEN + x.len() * target.size()` and `target` is one of
/// u8, i8, u16, f16, bf16 (otherwise only the metadata is written).
pub(crate) fn quantize<W: Work>(alg: Alg, target: DataType, x: &[W], out: &mut [u8]) -> Params<W> {
    debug_assert_eq!(out.len(), META_LEN + x.len() * target.size());
    let (lo, hi, finite) = scan(x);
    let p = params(alg, target, lo, hi, finite);
    let (meta, codes) = out.split_at_mut(META_LEN);
    write_meta(p, meta);
    if !finite {
        codes.fill(0);
        return p;
    }
    encode_codes(p, target, x, codes);
    p
}

/// Codes of `x` under `p` (no metadata).
pub(crate) fn encode_codes<W: Work>(p: Params<W>, target: DataType, x: &[W], codes: &mut [u8]) {
    let Params { a, inv, z, .. } = p;
    match target {
        DataType::U8 | DataType::I8 => {
            let flip = if target == DataType::I8 { 0x80 } else { 0 };
            let l = W::from_u16(255);
            for (o, &v) in codes.iter_mut().zip(x) {
                let t = (v - a) * inv + z;
                let t = if t > W::ZERO { t } else { W::ZERO };
                let t = if t < l { t } else { l };
                *o = ((t + W::MAGIC).low_bits() as u8) ^ flip;
            }
        }
        DataType::U16 => {
            let l = W::from_u16(65_535);
            let mut blk = [0u16; BLOCK];
            for (o, x) in codes.chunks_mut(2 * BLOCK).zip(x.chunks(BLOCK)) {
                let blk = &mut blk[..x.len()];
                for (c, &v) in blk.iter_mut().zip(x) {
                    let t = (v - a) * inv + z;
                    let t = if t > W::ZERO { t } else { W::ZERO };
                    let t = if t < l { t } else { l };
                    *c = (t + W::MAGIC).low_bits();
                }
                o.copy_from_slice(bytemuck::cast_slice(blk));
            }
        }
        DataType::F16 => float_codes::<W, f16>(a, inv, x, codes, W::to_f16s),
        DataType::Bf16 => float_codes::<W, bf16>(a, inv, x, codes, W::to_bf16s),
        _ => {}
    }
}

#[inline(always)]
fn float_codes<W: Work, H: Pod + Default>(
    a: W,
    inv: W,
    x: &[W],
    codes: &mut [u8],
    conv: fn(&[W], &mut [H]),
) {
    let mut t = [W::ZERO; BLOCK];
    let mut h = [H::default(); BLOCK];
    for (o, x) in codes.chunks_mut(2 * BLOCK).zip(x.chunks(BLOCK)) {
        let (t, h) = (&mut t[..x.len()], &mut h[..x.len()]);
        for (t, &v) in t.iter_mut().zip(x) {
            *t = (v - a) * inv;
        }
        conv(t, h);
        o.copy_from_slice(bytemuck::cast_slice(h));
    }
}

/// Dequantizes `codes` of `target` under the metadata `p` into `out`
/// (`out.len() * target.size() == codes.len()`; extra on either side is ignored).
pub(crate) fn decode_codes<W: Work>(p: Params<W>, target: DataType, codes: &[u8], out: &mut [W]) {
    let Params { a, b, z, .. } = p;
    match target {
        DataType::U8 | DataType::I8 => {
            let flip = if target == DataType::I8 { 0x80 } else { 0 };
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = a + (W::from_u16(u16::from(c ^ flip)) - z) * b;
            }
        }
        DataType::U16 => {
            let mut blk = [0u16; BLOCK];
            for (o, c) in out.chunks_mut(BLOCK).zip(codes.chunks(2 * BLOCK)) {
                let n = o.len().min(c.len() / 2);
                let blk = &mut blk[..n];
                bytemuck::cast_slice_mut(blk).copy_from_slice(&c[..2 * n]);
                for (o, &c) in o.iter_mut().zip(blk.iter()) {
                    *o = a + (W::from_u16(c) - z) * b;
                }
            }
        }
        DataType::F16 => float_decode::<W, f16>(a, b, codes, out, W::from_f16s),
        DataType::Bf16 => float_decode::<W, bf16>(a, b, codes, out, W::from_bf16s),
        _ => out.fill(W::NAN),
    }
}

#[inline(always)]
fn float_decode<W: Work, H: Pod + Default>(
    a: W,
    b: W,
    codes: &[u8],
    out: &mut [W],
    conv: fn(&[H], &mut [W]),
) {
    let mut h = [H::default(); BLOCK];
    for (o, c) in out.chunks_mut(BLOCK).zip(codes.chunks(2 * BLOCK)) {
        let n = o.len().min(c.len() / 2);
        let h = &mut h[..n];
        bytemuck::cast_slice_mut(h).copy_from_slice(&c[..2 * n]);
        let o = &mut o[..n];
        conv(h, o);
        for v in o.iter_mut() {
            *v = a + *v * b;
        }
    }
}

/// Dequantizes a whole frame payload (metadata + codes) into `out`.
pub(crate) fn dequantize<W: Work>(target: DataType, frame: &[u8], out: &mut [W]) {
    if frame.len() < META_LEN {
        out.fill(W::NAN);
        return;
    }
    let (meta, codes) = frame.split_at(META_LEN);
    decode_codes(read_meta::<W>(meta), target, codes, out);
}
