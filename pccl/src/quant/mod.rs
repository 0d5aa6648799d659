//! Payload quantization for the ring all-reduce (docs/ARCHITECTURE.md §5), as pure functions: no
//! sockets, no clock, no randomness.
//!
//! # Where it applies
//!
//! Float sources only (f16, bf16, f32, f64), into u8, i8, u16, f16 or bf16, for `Sum`,
//! `Avg`, `Max` and `Min`. `Prod` is rejected (a relative error per hop compounds
//! multiplicatively and no useful bound exists), and so are integer sources (their sums
//! are exact and wrap; a lossy wire would break that contract). See [`validate`].
//!
//! # Working precision
//!
//! Values are dequantized into, accumulated in and quantized from the *working type*: `f32`
//! for f16, bf16 and f32 sources, `f64` for f64 sources. The result is converted to the
//! source type once, when it is written (one more rounding for f16/bf16 sources).
//!
//! # The map
//!
//! Each slice (the ring's pipeline unit) is quantized on its own and carries its map as
//! [`META_LEN`] bytes of metadata in front of the codes: `a`, `b`, `z` (little-endian `f64`
//! holding working-type values exactly). A code `c` stands for `a + (c - z) * b`, computed
//! in the working type. Integer codes are handled unsigned, `u` in `0..=L` (`L` = 255 for
//! u8/i8, 65535 for u16; i8 stores `u - 128`, so it behaves exactly like u8). Let `lo`, `hi`
//! be the slice's smallest and largest value and `ε` the working type's unit roundoff.
//!
//! * **min_max, integer targets**: `a = (lo + hi) / 2`, `z = L / 2`, `b = (hi - lo) / L`;
//!   `u = round((x - a) / b + z)`, clamped to `0..=L`. Error per element ≤ `b / 2`.
//! * **zero_point_scale, integer targets**: the range is widened to contain 0
//!   (`lo' = min(lo, 0)`, `hi' = max(hi, 0)`), `a = 0`, `b = (hi' - lo') / L` and the zero
//!   point `z = round(-lo' / b)` is an integer code, so **0.0 is exact**. Error ≤ `b` (the
//!   rounded zero point can push an end of the range half a code outside `0..=L`).
//! * **min_max, float targets**: `a = (lo + hi) / 2`, `b = (hi - lo) / 2`, `z = 0`; the code
//!   is `(x - a) / b` (in `[-1, 1]`) rounded to the target. Error ≤ `(hi - lo)/2 · 2^-11`
//!   for f16, `· 2^-8` for bf16.
//! * **zero_point_scale, float targets**: `a = 0`, `z = 0` and `b` is a power of two chosen
//!   so the largest magnitude `m` lands below 2^15 (f16) or below 1 (bf16); scaling is then
//!   exact and the only error is the target's rounding: relative, ≤ `|x| · 2^-11` (f16) or
//!   `|x| · 2^-8` (bf16), plus the target's subnormal spacing `≤ m · 2^-39` (f16).
//!
//! Every bound also carries a floating-point slack of `8 ε · max(|lo|, |hi|)` plus a tiny
//! absolute floor (see [`error_bound`]). Rounding is to nearest, ties to even.
//!
//! Special cases, all deterministic (parity never depends on them):
//! * A **constant slice** (`lo == hi`) is exact with min_max (`b = 0`, every code decodes to
//!   `a`), and an all-zero slice is exact with zero_point_scale.
//! * **NaN or ±inf** anywhere in a slice *poisons* it: the metadata is NaN and every element
//!   of that slice decodes to NaN (a non-finite gradient is garbage either way; we never
//!   silently turn it into a finite number). `Max`/`Min` follow the unquantized ops in
//!   ignoring a NaN operand when the other is a number, before re-quantizing.
//! * **Huge ranges**: the map is computed from halves (`hi/2 - lo/2`), so ranges up to the
//!   full `±MAX` of the working type neither overflow nor produce NaN. When the extreme
//!   codes would dequantize past `±MAX` (a range within ~1 % of it), the scale is shrunk
//!   by growing steps until they do not; in that saturating regime the bound doubles. Float targets
//!   can still round a value within one target ulp of `MAX` to ±inf, exactly as a cast would.
//!
//! # In the ring
//!
//! Each hop of the reduce-scatter dequantizes the incoming slice, combines it with the
//! local values in the working type and quantizes again; the owner quantizes the final
//! value once, and every peer (owner included) writes the dequantization of those same
//! bytes (see `collectives/ring/`). A result element therefore went through `n`
//! quantizations (the first sender's, `n - 2` hops', the owner's); for `Sum` and `Max`/`Min`
//! the error is at most the sum of those `n` per-slice bounds (each for the range of that
//! partial result), plus the working type's accumulation error; for `Avg` the first
//! `n - 1` are divided by `n` (the division happens before the owner's quantization).

mod kernels;
#[cfg(test)]
mod tests;

use half::{bf16, f16};

pub use kernels::{META_LEN, Work};

use crate::error::{Error, Result};
use crate::types::{DataType, Quantization, QuantizationAlgorithm, ReduceDescriptor, ReduceOp};

/// Target types a payload can be quantized into.
pub const TARGETS: [DataType; 5] = [
    DataType::U8,
    DataType::I8,
    DataType::U16,
    DataType::F16,
    DataType::Bf16,
];

/// Checks the descriptor's quantization setting: `Ok` for none, else the combination must be
/// supported (float source, a target from [`TARGETS`], op `Sum`/`Avg`/`Max`/`Min`).
pub fn validate(desc: &ReduceDescriptor) -> Result<()> {
    let Some(q) = desc.quantization else {
        return Ok(());
    };
    if q.algorithm == QuantizationAlgorithm::None {
        return Ok(());
    }
    if !desc.dtype.is_float() {
        return Err(Error::InvalidArgument(
            "quantization applies to float data only (f16, bf16, f32, f64); integer sums are exact",
        ));
    }
    if !TARGETS.contains(&q.dtype) {
        return Err(Error::InvalidArgument(
            "the quantized data type must be u8, i8, u16, f16 or bf16",
        ));
    }
    if desc.op == ReduceOp::Prod {
        return Err(Error::InvalidArgument(
            "quantization supports sum, avg, max and min, not prod (errors compound)",
        ));
    }
    Ok(())
}

/// Payload bytes of a frame carrying `elems` elements under `q`.
pub fn frame_len(q: Quantization, elems: usize) -> usize {
    META_LEN + elems * q.dtype.size()
}

/// Quantizes `x` into `out` (which must be [`frame_len`] long): metadata then codes.
pub fn quantize<W: Work>(q: Quantization, x: &[W], out: &mut [u8]) {
    kernels::quantize(q.algorithm, q.dtype, x, out);
}

/// Dequantizes a frame payload made by [`quantize`] into `out`.
pub fn dequantize<W: Work>(q: Quantization, frame: &[u8], out: &mut [W]) {
    kernels::dequantize(q.dtype, frame, out);
}

/// The documented bound on `|dequantize(quantize(x)) - x|` for an element `x` of a slice
/// whose values are finite and lie in `[lo, hi]`, with the working type's roundoff `eps`
/// (`2^-24` for f32, `2^-53` for f64). Holds outside the saturating regime (see the module
/// docs), where it doubles.
pub fn error_bound(q: Quantization, lo: f64, hi: f64, x: f64, eps: f64) -> f64 {
    let m = lo.abs().max(hi.abs());
    let slack = 8.0 * eps * m + if eps > 1e-10 { 1e-30 } else { 1e-290 };
    let base = match (kernels::levels(q.dtype), q.algorithm) {
        (_, QuantizationAlgorithm::None) => 0.0,
        (Some(l), QuantizationAlgorithm::MinMax) => (hi - lo) / f64::from(l) / 2.0,
        (Some(l), QuantizationAlgorithm::ZeroPointScale) => {
            (hi.max(0.0) - lo.min(0.0)) / f64::from(l)
        }
        (None, QuantizationAlgorithm::MinMax) => {
            (hi - lo) / 2.0
                * if q.dtype == DataType::F16 {
                    2f64.powi(-11)
                } else {
                    2f64.powi(-8)
                }
        }
        (None, QuantizationAlgorithm::ZeroPointScale) => {
            if q.dtype == DataType::F16 {
                x.abs() * 2f64.powi(-11) + m * 2f64.powi(-39)
            } else {
                x.abs() * 2f64.powi(-8) + m * 2f64.powi(-120)
            }
        }
    };
    base + slack
}

/// Reusable buffers of one op's quantized path.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    w32: Vec<f32>,
    w32b: Vec<f32>,
    w64: Vec<f64>,
    w64b: Vec<f64>,
    half: Vec<u16>,
    bytes: Vec<u8>,
}

/// One op's quantization: source type, op and setting. The ring's only entry points.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Codec {
    q: Quantization,
    src: DataType,
    op: ReduceOp,
}

impl Codec {
    /// `None` when the descriptor does not quantize (validated descriptors only).
    pub(crate) fn new(desc: &ReduceDescriptor) -> Option<Self> {
        let q = desc.quantization?;
        (q.algorithm != QuantizationAlgorithm::None).then_some(Self {
            q,
            src: desc.dtype,
            op: desc.op,
        })
    }

    /// The setting, as frames carry it.
    pub(crate) fn quantization(&self) -> Quantization {
        self.q
    }

    /// Payload bytes for `elems` elements.
    pub(crate) fn frame_len(&self, elems: usize) -> usize {
        frame_len(self.q, elems)
    }

    /// Quantizes source bytes into `out` (`frame_len` long).
    pub(crate) fn encode(&self, src: &[u8], s: &mut Scratch, out: &mut [u8]) {
        if self.src == DataType::F64 {
            load(self.src, src, &mut s.w64, &mut s.half);
            quantize(self.q, &s.w64, out);
        } else {
            load(self.src, src, &mut s.w32, &mut s.half);
            quantize(self.q, &s.w32, out);
        }
    }

    /// A reduce-scatter hop: dequantizes `frame`, combines it with the local source bytes
    /// at full precision, divides by `avg_n` if given (`Avg`, at the owner), and quantizes
    /// the result into `out` (`frame_len` long).
    pub(crate) fn combine(
        &self,
        frame: &[u8],
        local: &[u8],
        avg_n: Option<usize>,
        s: &mut Scratch,
        out: &mut [u8],
    ) {
        let elems = local.len() / self.src.size();
        if self.src == DataType::F64 {
            combine_in(
                self,
                frame,
                local,
                avg_n,
                elems,
                &mut s.w64,
                &mut s.w64b,
                &mut s.half,
                out,
            );
        } else {
            combine_in(
                self,
                frame,
                local,
                avg_n,
                elems,
                &mut s.w32,
                &mut s.w32b,
                &mut s.half,
                out,
            );
        }
    }

    /// The source-type bytes a frame stands for (every peer writes exactly these).
    pub(crate) fn decode<'s>(&self, frame: &[u8], elems: usize, s: &'s mut Scratch) -> &'s [u8] {
        if self.src == DataType::F64 {
            s.w64.resize(elems, 0.0);
            dequantize(self.q, frame, &mut s.w64);
            store(self.src, &s.w64, &mut s.half, &mut s.bytes);
        } else {
            s.w32.resize(elems, 0.0);
            dequantize(self.q, frame, &mut s.w32);
            store(self.src, &s.w32, &mut s.half, &mut s.bytes);
        }
        &s.bytes
    }
}

#[allow(clippy::too_many_arguments)]
fn combine_in<W: Work + SourceIo>(
    c: &Codec,
    frame: &[u8],
    local: &[u8],
    avg_n: Option<usize>,
    elems: usize,
    acc: &mut Vec<W>,
    loc: &mut Vec<W>,
    half: &mut Vec<u16>,
    out: &mut [u8],
) {
    acc.resize(elems, W::ZERO);
    dequantize(c.q, frame, acc);
    load(c.src, local, loc, half);
    match c.op {
        ReduceOp::Max => acc
            .iter_mut()
            .zip(loc.iter())
            .for_each(|(a, &l)| *a = a.max_(l)),
        ReduceOp::Min => acc
            .iter_mut()
            .zip(loc.iter())
            .for_each(|(a, &l)| *a = a.min_(l)),
        _ => acc
            .iter_mut()
            .zip(loc.iter())
            .for_each(|(a, &l)| *a = *a + l),
    }
    if let Some(n) = avg_n {
        let d = W::from_f64(n.max(1) as f64);
        acc.iter_mut().for_each(|a| *a = *a / d);
    }
    quantize(c.q, acc, out);
}

/// Source bytes to and from the working type.
trait SourceIo: Work {
    /// Reinterprets bytes of the working type itself.
    fn copy_in(src: &[u8], dst: &mut [Self]) {
        let n = size_of_val(dst);
        bytemuck::cast_slice_mut::<Self, u8>(dst).copy_from_slice(&src[..n]);
    }
}
impl SourceIo for f32 {}
impl SourceIo for f64 {}

/// `dst` = the `src` bytes of type `dtype` in the working type.
fn load<W: Work + SourceIo>(dtype: DataType, src: &[u8], dst: &mut Vec<W>, half: &mut Vec<u16>) {
    let elems = src.len() / dtype.size();
    dst.resize(elems, W::ZERO);
    match dtype {
        DataType::F16 | DataType::Bf16 => {
            half.resize(elems, 0);
            bytemuck::cast_slice_mut::<u16, u8>(half).copy_from_slice(&src[..elems * 2]);
            if dtype == DataType::F16 {
                W::from_f16s(bytemuck::cast_slice::<u16, f16>(half), dst);
            } else {
                W::from_bf16s(bytemuck::cast_slice::<u16, bf16>(half), dst);
            }
        }
        // F32 into f32, F64 into f64: the working type is the source type.
        _ => W::copy_in(src, dst),
    }
}

/// `out` = `w` as bytes of `dtype`.
fn store<W: Work>(dtype: DataType, w: &[W], half: &mut Vec<u16>, out: &mut Vec<u8>) {
    out.clear();
    match dtype {
        DataType::F16 | DataType::Bf16 => {
            half.resize(w.len(), 0);
            if dtype == DataType::F16 {
                W::to_f16s(w, bytemuck::cast_slice_mut::<u16, f16>(half));
            } else {
                W::to_bf16s(w, bytemuck::cast_slice_mut::<u16, bf16>(half));
            }
            out.extend_from_slice(bytemuck::cast_slice(half));
        }
        _ => out.extend_from_slice(bytemuck::cast_slice(w)),
    }
}
