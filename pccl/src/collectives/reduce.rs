//! Element-wise reduction kernels for the ring all-reduce.
//!
//! Buffers are raw bytes holding native-endian elements and may be arbitrarily aligned
//! (they come from network buffers and C pointers). When both slices happen to be aligned
//! for the element type they are reinterpreted in place and reduced by a plain zip loop that
//! LLVM vectorizes; otherwise the work goes through small aligned stack buffers (memcpy in,
//! vectorized loop, memcpy out), which keeps the misaligned case close to memory speed too.
//! `f16`/`bf16` are widened to `f32` blockwise, reduced there and rounded back.

use std::iter;

use bytemuck::Pod;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::types::{DataType, ReduceOp};

/// Bytes per bounce block for misaligned input (a multiple of every element size).
const BOUNCE_BYTES: usize = 4096;
/// `f32` values per widening block for `f16`/`bf16`.
const WIDE: usize = 1024;

/// `acc[i] = acc[i] (op) local[i]`, over bytes interpreted as `dtype` elements in native
/// (little-endian) byte order.
///
/// `Avg` behaves as `Sum` here (the division happens once, in [`finish_avg`]). Integer
/// `Sum`/`Avg`/`Prod` wrap. Never panics; precondition (checked in debug builds only):
/// `acc.len() == local.len()` and both are multiples of `dtype.size()`. Should it be violated,
/// only the common whole elements are reduced.
pub(crate) fn reduce_into(op: ReduceOp, dtype: DataType, acc: &mut [u8], local: &[u8]) {
    debug_assert_eq!(acc.len(), local.len(), "reduce_into: length mismatch");
    debug_assert_eq!(acc.len() % dtype.size(), 0, "reduce_into: partial element");
    match dtype {
        DataType::U8 => native::<u8>(op, acc, local),
        DataType::I8 => native::<i8>(op, acc, local),
        DataType::I16 => native::<i16>(op, acc, local),
        DataType::U16 => native::<u16>(op, acc, local),
        DataType::U32 => native::<u32>(op, acc, local),
        DataType::I32 => native::<i32>(op, acc, local),
        DataType::U64 => native::<u64>(op, acc, local),
        DataType::I64 => native::<i64>(op, acc, local),
        DataType::F16 => widened::<f16>(op, acc, local),
        DataType::Bf16 => widened::<bf16>(op, acc, local),
        DataType::F32 => native::<f32>(op, acc, local),
        DataType::F64 => native::<f64>(op, acc, local),
    }
}

/// For `Avg`: `acc[i] = acc[i] / n`.
///
/// Floats divide in their own precision (`f16`/`bf16` via `f32`, rounded back); integers use
/// truncating division of the (wrapped) sum. `n >= 1` (0 is treated as 1).
pub(crate) fn finish_avg(dtype: DataType, acc: &mut [u8], n: usize) {
    debug_assert!(n >= 1, "finish_avg: n must be at least 1");
    debug_assert_eq!(acc.len() % dtype.size(), 0, "finish_avg: partial element");
    let n = n.max(1);
    match dtype {
        DataType::U8 => blocks::<u8>(acc, &[], |a, _| u8::div_all(a, n)),
        DataType::I8 => blocks::<i8>(acc, &[], |a, _| i8::div_all(a, n)),
        DataType::I16 => blocks::<i16>(acc, &[], |a, _| i16::div_all(a, n)),
        DataType::U16 => blocks::<u16>(acc, &[], |a, _| u16::div_all(a, n)),
        DataType::U32 => blocks::<u32>(acc, &[], |a, _| u32::div_all(a, n)),
        DataType::I32 => blocks::<i32>(acc, &[], |a, _| i32::div_all(a, n)),
        DataType::U64 => blocks::<u64>(acc, &[], |a, _| u64::div_all(a, n)),
        DataType::I64 => blocks::<i64>(acc, &[], |a, _| i64::div_all(a, n)),
        DataType::F16 => widen::<f16>(acc, &[], |a, _| f32::div_all(a, n)),
        DataType::Bf16 => widen::<bf16>(acc, &[], |a, _| f32::div_all(a, n)),
        DataType::F32 => blocks::<f32>(acc, &[], |a, _| f32::div_all(a, n)),
        DataType::F64 => blocks::<f64>(acc, &[], |a, _| f64::div_all(a, n)),
    }
}

/// An element type with the four binary reductions and the averaging division.
trait Elem: Pod {
    fn sum(self, o: Self) -> Self;
    fn prod(self, o: Self) -> Self;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
    /// `x /= n` for every element.
    fn div_all(xs: &mut [Self], n: usize);
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            #[inline(always)]
            fn sum(self, o: Self) -> Self { self.wrapping_add(o) }
            #[inline(always)]
            fn prod(self, o: Self) -> Self { self.wrapping_mul(o) }
            #[inline(always)]
            fn max(self, o: Self) -> Self { Ord::max(self, o) }
            #[inline(always)]
            fn min(self, o: Self) -> Self { Ord::min(self, o) }
            fn div_all(xs: &mut [Self], n: usize) {
                match <$t>::try_from(n) {
                    // n >= 1, so neither division by zero nor MIN / -1 can happen.
                    Ok(d) => xs.iter_mut().for_each(|x| *x /= d),
                    // n exceeds the type's range: widen (the quotient always fits back).
                    Err(_) => xs.iter_mut().for_each(|x| *x = (i128::from(*x) / n as i128) as $t),
                }
            }
        }
    )*};
}
int_elem!(u8, i8, i16, u16, u32, i32, u64, i64);

macro_rules! float_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            #[inline(always)]
            fn sum(self, o: Self) -> Self { self + o }
            #[inline(always)]
            fn prod(self, o: Self) -> Self { self * o }
            #[inline(always)]
            fn max(self, o: Self) -> Self { <$t>::max(self, o) }
            #[inline(always)]
            fn min(self, o: Self) -> Self { <$t>::min(self, o) }
            fn div_all(xs: &mut [Self], n: usize) {
                let d = n as $t;
                xs.iter_mut().for_each(|x| *x /= d);
            }
        }
    )*};
}
float_elem!(f32, f64);

/// A 16-bit float type reduced by widening to `f32`.
trait Half: Pod {
    fn to_f32s(src: &[Self], dst: &mut [f32]);
    fn from_f32s(src: &[f32], dst: &mut [Self]);
}

macro_rules! half_elem {
    ($($t:ty),*) => {$(
        impl Half for $t {
            #[inline(always)]
            fn to_f32s(src: &[Self], dst: &mut [f32]) { src.convert_to_f32_slice(dst) }
            #[inline(always)]
            fn from_f32s(src: &[f32], dst: &mut [Self]) { dst.convert_from_f32_slice(src) }
        }
    )*};
}
half_elem!(f16, bf16);

/// Reduces elements of a type the kernels handle directly.
fn native<T: Elem>(op: ReduceOp, acc: &mut [u8], local: &[u8]) {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => blocks::<T>(acc, local, |a, l| zip(a, l, T::sum)),
        ReduceOp::Prod => blocks::<T>(acc, local, |a, l| zip(a, l, T::prod)),
        ReduceOp::Max => blocks::<T>(acc, local, |a, l| zip(a, l, T::max)),
        ReduceOp::Min => blocks::<T>(acc, local, |a, l| zip(a, l, T::min)),
    }
}

/// Reduces 16-bit floats in `f32`.
fn widened<H: Half>(op: ReduceOp, acc: &mut [u8], local: &[u8]) {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => widen::<H>(acc, local, |a, l| zip(a, l, f32::sum)),
        ReduceOp::Prod => widen::<H>(acc, local, |a, l| zip(a, l, f32::prod)),
        ReduceOp::Max => widen::<H>(acc, local, |a, l| zip(a, l, <f32 as Elem>::max)),
        ReduceOp::Min => widen::<H>(acc, local, |a, l| zip(a, l, <f32 as Elem>::min)),
    }
}

/// `a[i] = f(a[i], l[i])`; monomorphized per op so LLVM can vectorize it.
#[inline(always)]
fn zip<T: Copy>(a: &mut [T], l: &[T], f: impl Fn(T, T) -> T) {
    for (x, &y) in a.iter_mut().zip(l) {
        *x = f(*x, y);
    }
}

/// Runs `g` over `acc`/`local` viewed as `T` slices of equal length.
///
/// An empty `local` means "unary": `g` then gets an empty second slice. Aligned input is
/// reinterpreted in place; otherwise it is copied through aligned stack buffers.
#[inline(always)]
fn blocks<T: Pod>(acc: &mut [u8], local: &[u8], mut g: impl FnMut(&mut [T], &[T])) {
    let size = size_of::<T>();
    let unary = local.is_empty();
    let len = acc.len().min(if unary { usize::MAX } else { local.len() });
    let acc = &mut acc[..len / size * size];
    let local = &local[..local.len().min(acc.len())];
    // An empty slice may have a dangling, unaligned pointer: don't let it force a bounce.
    let l = match unary {
        true => Ok(&[][..]),
        false => bytemuck::try_cast_slice::<u8, T>(local),
    };
    if let (Ok(a), Ok(l)) = (bytemuck::try_cast_slice_mut::<u8, T>(acc), l) {
        return g(a, l);
    }
    // u64 storage: aligned for every element type.
    let (mut ba, mut bl) = ([0u64; BOUNCE_BYTES / 8], [0u64; BOUNCE_BYTES / 8]);
    let locals = local.chunks(BOUNCE_BYTES).chain(iter::repeat(&[][..]));
    for (a, l) in acc.chunks_mut(BOUNCE_BYTES).zip(locals) {
        let ba = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut ba)[..a.len()];
        let bl = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut bl)[..l.len()];
        ba.copy_from_slice(a);
        bl.copy_from_slice(l);
        g(bytemuck::cast_slice_mut(ba), bytemuck::cast_slice(bl));
        a.copy_from_slice(ba);
    }
}

/// Like [`blocks`] for 16-bit floats, handing `g` the values widened to `f32`.
#[inline(always)]
fn widen<H: Half>(acc: &mut [u8], local: &[u8], mut g: impl FnMut(&mut [f32], &[f32])) {
    let (mut fa, mut fl) = ([0f32; WIDE], [0f32; WIDE]);
    blocks::<H>(acc, local, |a, l| {
        for (a, l) in a
            .chunks_mut(WIDE)
            .zip(l.chunks(WIDE).chain(iter::repeat(&[][..])))
        {
            let (fa, fl) = (&mut fa[..a.len()], &mut fl[..l.len()]);
            H::to_f32s(a, fa);
            H::to_f32s(l, fl);
            g(fa, fl);
            H::from_f32s(fa, a);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const SEED: u64 = 0x7ecc_1a11_5eed;

    fn rng(salt: u64) -> StdRng {
        let seed = SEED ^ salt;
        println!("seed = {seed:#x}");
        StdRng::seed_from_u64(seed)
    }

    /// A float worth testing: mostly ordinary values, sometimes specials or random bits.
    fn float(rng: &mut StdRng) -> f64 {
        const SPECIAL: [f64; 9] = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e-40,
            7e4,
        ];
        match rng.gen_range(0..10) {
            0 => SPECIAL[rng.gen_range(0..SPECIAL.len())],
            1 => f64::from(f32::from_bits(rng.r#gen())),
            _ => rng.gen_range(-100.0..100.0),
        }
    }

    /// `count` random elements of `dtype` as bytes.
    fn random(rng: &mut StdRng, dtype: DataType, count: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(count * dtype.size());
        for _ in 0..count {
            let x = float(rng);
            match dtype {
                DataType::F16 => out.extend(f16::from_f64(x).to_ne_bytes()),
                DataType::Bf16 => out.extend(bf16::from_f64(x).to_ne_bytes()),
                DataType::F32 => out.extend((x as f32).to_ne_bytes()),
                DataType::F64 => out.extend(x.to_ne_bytes()),
                _ => out.extend((0..dtype.size()).map(|_| rng.r#gen::<u8>())),
            }
        }
        out
    }

    /// Straightforward scalar reference for one element.
    fn reference(op: ReduceOp, dtype: DataType, a: &[u8], b: &[u8]) -> Vec<u8> {
        macro_rules! int {
            ($t:ty) => {{
                let x = <$t>::from_ne_bytes(a.try_into().unwrap());
                let y = <$t>::from_ne_bytes(b.try_into().unwrap());
                let r = match op {
                    ReduceOp::Sum | ReduceOp::Avg => x.wrapping_add(y),
                    ReduceOp::Prod => x.wrapping_mul(y),
                    ReduceOp::Max => Ord::max(x, y),
                    ReduceOp::Min => Ord::min(x, y),
                };
                r.to_ne_bytes().to_vec()
            }};
        }
        macro_rules! float {
            ($t:ty, $to:expr, $from:expr) => {{
                let x = $to(<$t>::from_ne_bytes(a.try_into().unwrap()));
                let y = $to(<$t>::from_ne_bytes(b.try_into().unwrap()));
                let r = match op {
                    ReduceOp::Sum | ReduceOp::Avg => x + y,
                    ReduceOp::Prod => x * y,
                    ReduceOp::Max => x.max(y),
                    ReduceOp::Min => x.min(y),
                };
                let r: $t = $from(r);
                r.to_ne_bytes().to_vec()
            }};
        }
        match dtype {
            DataType::U8 => int!(u8),
            DataType::I8 => int!(i8),
            DataType::I16 => int!(i16),
            DataType::U16 => int!(u16),
            DataType::U32 => int!(u32),
            DataType::I32 => int!(i32),
            DataType::U64 => int!(u64),
            DataType::I64 => int!(i64),
            DataType::F16 => float!(f16, f16::to_f32, f16::from_f32),
            DataType::Bf16 => float!(bf16, bf16::to_f32, bf16::from_f32),
            DataType::F32 => float!(f32, |x| x, |x| x),
            DataType::F64 => float!(f64, |x| x, |x| x),
        }
    }

    /// A float element's value (for NaN / signed-zero leniency); `None` for integers.
    fn as_float(dtype: DataType, b: &[u8]) -> Option<f64> {
        Some(match dtype {
            DataType::F16 => f16::from_ne_bytes(b.try_into().unwrap()).to_f64(),
            DataType::Bf16 => bf16::from_ne_bytes(b.try_into().unwrap()).to_f64(),
            DataType::F32 => f64::from(f32::from_ne_bytes(b.try_into().unwrap())),
            DataType::F64 => f64::from_ne_bytes(b.try_into().unwrap()),
            _ => return None,
        })
    }

    /// Bit-exact, except that any NaN matches any NaN (payloads are unspecified) and, for
    /// Max/Min, ±0 matches ±0 (Rust leaves the sign of an equal-zero max/min unspecified).
    fn assert_same(op: ReduceOp, dtype: DataType, got: &[u8], want: &[u8], ctx: &str) {
        let size = dtype.size();
        for (i, (g, w)) in got
            .chunks_exact(size)
            .zip(want.chunks_exact(size))
            .enumerate()
        {
            if g == w {
                continue;
            }
            if let (Some(gf), Some(wf)) = (as_float(dtype, g), as_float(dtype, w)) {
                let zero = gf == 0.0 && wf == 0.0 && matches!(op, ReduceOp::Max | ReduceOp::Min);
                if (gf.is_nan() && wf.is_nan()) || zero {
                    continue;
                }
            }
            panic!("{ctx}: {op:?} {dtype:?} element {i}: got {g:?}, want {w:?}");
        }
        assert_eq!(got.len(), want.len(), "{ctx}");
    }

    /// `bytes` placed at byte offset `off` of an 8-aligned buffer.
    fn placed(bytes: &[u8], off: usize) -> (Vec<u64>, std::ops::Range<usize>) {
        let mut store = vec![0u64; (bytes.len() + off).div_ceil(8) + 1];
        let range = off..off + bytes.len();
        bytemuck::cast_slice_mut::<u64, u8>(&mut store)[range.clone()].copy_from_slice(bytes);
        (store, range)
    }

    #[test]
    fn every_dtype_and_op_matches_reference() {
        let mut rng = rng(1);
        // Lengths straddle the bounce block (4 KiB) and the widening block (1024 values).
        for count in [1, 3, 17, 1023, 1025, 5000] {
            for dtype in DataType::ALL {
                let a = random(&mut rng, dtype, count);
                let b = random(&mut rng, dtype, count);
                for op in ReduceOp::ALL {
                    let want: Vec<u8> = (a.chunks_exact(dtype.size()))
                        .zip(b.chunks_exact(dtype.size()))
                        .flat_map(|(x, y)| reference(op, dtype, x, y))
                        .collect();
                    for (oa, ob) in [(0, 0), (1, 0), (0, 1), (1, 3), (2, 2)] {
                        let (mut sa, ra) = placed(&a, oa);
                        let (sb, rb) = placed(&b, ob);
                        let acc = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut sa)[ra];
                        reduce_into(op, dtype, acc, &bytemuck::cast_slice(&sb)[rb]);
                        let ctx = format!("count {count}, offsets ({oa}, {ob})");
                        assert_same(op, dtype, acc, &want, &ctx);
                    }
                }
            }
        }
    }

    #[test]
    fn nan_and_inf_follow_rust_semantics() {
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        let a = [nan, 1.0, inf, inf, nan, -inf, 2.0];
        let b = [1.0, nan, -inf, 5.0, nan, 3.0, 0.5];
        let run = |op, dtype: DataType, a: &[f32], b: &[f32]| {
            let conv = |v: &[f32]| -> Vec<u8> {
                match dtype {
                    DataType::F16 => v
                        .iter()
                        .flat_map(|x| f16::from_f32(*x).to_ne_bytes())
                        .collect(),
                    DataType::Bf16 => v
                        .iter()
                        .flat_map(|x| bf16::from_f32(*x).to_ne_bytes())
                        .collect(),
                    DataType::F64 => v.iter().flat_map(|x| f64::from(*x).to_ne_bytes()).collect(),
                    _ => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
                }
            };
            let mut acc = conv(a);
            reduce_into(op, dtype, &mut acc, &conv(b));
            let size = dtype.size();
            acc.chunks_exact(size)
                .map(|c| as_float(dtype, c).unwrap())
                .collect::<Vec<_>>()
        };
        for dtype in [DataType::F16, DataType::Bf16, DataType::F32, DataType::F64] {
            let max = run(ReduceOp::Max, dtype, &a, &b);
            assert_eq!(
                max[..4],
                [1.0, 1.0, f64::INFINITY, f64::INFINITY],
                "{dtype:?}"
            );
            assert!(max[4].is_nan());
            let min = run(ReduceOp::Min, dtype, &a, &b);
            assert_eq!(min[..4], [1.0, 1.0, f64::NEG_INFINITY, 5.0], "{dtype:?}");
            assert_eq!(min[5..], [f64::NEG_INFINITY, 0.5], "{dtype:?}");
            let sum = run(ReduceOp::Sum, dtype, &a, &b);
            assert!(
                sum[0].is_nan() && sum[1].is_nan() && sum[2].is_nan(),
                "{dtype:?}"
            );
            assert_eq!(sum[3], f64::INFINITY);
            assert_eq!(sum[5..], [f64::NEG_INFINITY, 2.5], "{dtype:?}");
            let prod = run(ReduceOp::Prod, dtype, &[inf, 0.0, -2.0], &[0.0, -3.0, 4.0]);
            assert!(prod[0].is_nan());
            assert_eq!(prod[2], -8.0);
            assert!(prod[1] == 0.0 && prod[1].is_sign_negative(), "{dtype:?}");
        }
    }

    #[test]
    fn integers_wrap() {
        let mut acc = [250u8, 2, 7];
        reduce_into(ReduceOp::Sum, DataType::U8, &mut acc, &[10, 255, 0]);
        assert_eq!(acc, [4, 1, 7]);
        let mut acc = (i32::MAX).to_ne_bytes();
        reduce_into(ReduceOp::Avg, DataType::I32, &mut acc, &1i32.to_ne_bytes());
        assert_eq!(i32::from_ne_bytes(acc), i32::MIN);
        let mut acc = ((1u64 << 32) + 1).to_ne_bytes();
        reduce_into(
            ReduceOp::Prod,
            DataType::U64,
            &mut acc,
            &((1u64 << 32) + 1).to_ne_bytes(),
        );
        assert_eq!(u64::from_ne_bytes(acc), (1 << 33) + 1);
        let mut acc = [-128i8 as u8, 100];
        reduce_into(ReduceOp::Prod, DataType::I8, &mut acc, &[-1i8 as u8, 3]);
        assert_eq!(acc, [-128i8 as u8, 44]);
    }

    /// Reference for `finish_avg` on one element.
    fn avg_reference(dtype: DataType, x: &[u8], n: usize) -> Vec<u8> {
        macro_rules! int {
            ($t:ty) => {{
                let v = i128::from(<$t>::from_ne_bytes(x.try_into().unwrap()));
                (<$t>::try_from(v / n as i128).unwrap())
                    .to_ne_bytes()
                    .to_vec()
            }};
        }
        match dtype {
            DataType::U8 => int!(u8),
            DataType::I8 => int!(i8),
            DataType::I16 => int!(i16),
            DataType::U16 => int!(u16),
            DataType::U32 => int!(u32),
            DataType::I32 => int!(i32),
            DataType::U64 => int!(u64),
            DataType::I64 => int!(i64),
            DataType::F16 => {
                let v = f16::from_ne_bytes(x.try_into().unwrap()).to_f32();
                f16::from_f32(v / n as f32).to_ne_bytes().to_vec()
            }
            DataType::Bf16 => {
                let v = bf16::from_ne_bytes(x.try_into().unwrap()).to_f32();
                bf16::from_f32(v / n as f32).to_ne_bytes().to_vec()
            }
            DataType::F32 => (f32::from_ne_bytes(x.try_into().unwrap()) / n as f32)
                .to_ne_bytes()
                .to_vec(),
            DataType::F64 => (f64::from_ne_bytes(x.try_into().unwrap()) / n as f64)
                .to_ne_bytes()
                .to_vec(),
        }
    }

    #[test]
    fn finish_avg_matches_reference() {
        let mut rng = rng(2);
        for dtype in DataType::ALL {
            let mut x = random(&mut rng, dtype, 3000);
            // The extremes, where signed division and the wide fallback are delicate.
            for (i, fill) in [0x00, 0xff, 0x80, 0x7f].into_iter().enumerate() {
                x[i * dtype.size()..][..dtype.size()].fill(fill);
            }
            x[4 * dtype.size()..][..dtype.size()].fill(0);
            x[4 * dtype.size() + dtype.size() - 1] = 0x80; // MIN for signed types
            for n in [
                1,
                2,
                3,
                7,
                127,
                128,
                129,
                255,
                256,
                300,
                65_536,
                1 << 33,
                usize::MAX,
            ] {
                let want: Vec<u8> = x
                    .chunks_exact(dtype.size())
                    .flat_map(|e| avg_reference(dtype, e, n))
                    .collect();
                for off in [0, 1, 3] {
                    let (mut s, r) = placed(&x, off);
                    let acc = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut s)[r];
                    finish_avg(dtype, acc, n);
                    let ctx = format!("finish_avg n {n}, offset {off}");
                    assert_same(ReduceOp::Avg, dtype, acc, &want, &ctx);
                }
            }
        }
    }

    #[test]
    fn avg_end_to_end() {
        // Three peers averaging f32 and i32: reduce twice, then divide once.
        let vals = [[1.0f32, -4.0], [2.0, 5.0], [4.0, 0.5]];
        let mut acc: Vec<u8> = bytemuck::cast_slice(&vals[0]).to_vec();
        for v in &vals[1..] {
            reduce_into(
                ReduceOp::Avg,
                DataType::F32,
                &mut acc,
                bytemuck::cast_slice(v),
            );
        }
        finish_avg(DataType::F32, &mut acc, 3);
        assert_eq!(
            bytemuck::pod_read_unaligned::<[f32; 2]>(&acc),
            [7.0 / 3.0, 0.5]
        );
        let mut acc: Vec<u8> = bytemuck::cast_slice(&[-7i32, 9]).to_vec();
        reduce_into(
            ReduceOp::Avg,
            DataType::I32,
            &mut acc,
            bytemuck::cast_slice(&[0i32, 2]),
        );
        finish_avg(DataType::I32, &mut acc, 2);
        assert_eq!(bytemuck::pod_read_unaligned::<[i32; 2]>(&acc), [-3, 5]);
    }

    #[test]
    fn zero_length_is_a_no_op() {
        for dtype in DataType::ALL {
            for op in ReduceOp::ALL {
                reduce_into(op, dtype, &mut [], &[]);
                let mut store = [0u8; 3];
                reduce_into(op, dtype, &mut store[1..1], &[]);
            }
            finish_avg(dtype, &mut [], 5);
        }
    }
}
