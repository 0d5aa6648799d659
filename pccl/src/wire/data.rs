//! The frames of a ring (`P2p`) connection. A data frame is a fixed-size header followed
//! by `len` payload bytes whose CRC32 the header carries. A keepalive is a header-sized
//! frame of its own type with no payload: a dialler sends it on a link that has carried
//! nothing for a while, so the acceptor can tell an idle link from a dead one
//! (docs/PROTOCOL.md §4.1).
//!
//! Unquantized, the payload is the slice's elements in the source type. Quantized (the
//! header's `quant` is set), it is the slice's metadata (`quant::META_LEN` bytes) followed by
//! one code per element in the quantized type; `offset` still counts source-type bytes.

use bytes::BufMut;

use super::codec::{Reader, WireError};
use crate::quant::META_LEN;
use crate::types::{Collective, DataType, Quantization, QuantizationAlgorithm, ReduceOp};

/// Frame type byte of a data frame.
const DATA_FRAME: u8 = 1;
/// Frame type byte of a keepalive.
const KEEPALIVE_FRAME: u8 = 2;
/// A keepalive, as sent: its type byte, then zeros to the length of a data header.
pub const KEEPALIVE: [u8; DATA_HEADER_LEN] = {
    let mut b = [0u8; DATA_HEADER_LEN];
    b[0] = KEEPALIVE_FRAME;
    b
};

/// One frame of a ring connection, as its first `DATA_HEADER_LEN` bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingFrame {
    /// A data frame: `len` payload bytes follow.
    Data(DataHeader),
    /// A keepalive: nothing follows.
    Keepalive,
}

impl RingFrame {
    /// Decodes the fixed-size start of a ring frame: a data header (see
    /// [`DataHeader::decode`]) or a keepalive, whose bytes after the type must all be zero.
    pub fn decode(buf: &[u8; DATA_HEADER_LEN]) -> Result<Self, WireError> {
        if buf[0] != KEEPALIVE_FRAME {
            return DataHeader::decode(buf).map(Self::Data);
        }
        if buf[1..].iter().any(|b| *b != 0) {
            return Err(WireError::InvalidValue("keepalive"));
        }
        Ok(Self::Keepalive)
    }
}
/// Encoded header size.
pub const DATA_HEADER_LEN: usize = 1 + 8 + 8 + 4 + 8 + 1 + 1 + 1 + 2 + 4 + 8 + 4 + 4 + 1 + 4;
/// Largest slice of source data one frame may carry.
pub const MAX_SLICE_BYTES: usize = 64 << 20;
/// Largest payload one frame may carry: a slice, plus quantization metadata.
pub const MAX_PAYLOAD_BYTES: usize = MAX_SLICE_BYTES + META_LEN;

/// Names the op a frame belongs to and where its payload goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    pub tag: u64,
    /// Epoch of the group membership the sender's ring was computed from.
    pub epoch: u64,
    /// How many times this (tag, epoch) failed before, as both ends know.
    pub seq: u32,
    /// The op's element count, type and op, so a mismatched call is detected.
    pub count: u64,
    pub dtype: DataType,
    pub op: ReduceOp,
    /// The op's payload quantization (`None`: the payload is in `dtype`), so a peer that
    /// quantizes differently is detected. One byte: `algorithm << 4 | quantized dtype`, 0 for none.
    pub quant: Option<Quantization>,
    /// Ring step the payload belongs to (0..2n-2 for an all-reduce; 0..n-1 for the other
    /// collectives).
    pub step: u16,
    /// Slice index within the chunk.
    pub slice: u32,
    /// Byte offset of the payload in the op's buffer.
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
    /// The collective (and a broadcast's root rank), so a peer that calls another
    /// collective with the same tag is detected. Two fields on the wire: the kind's code
    /// (one byte) and the root (`u32`, 0 for kinds without one).
    pub kind: Collective,
}

impl DataHeader {
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u8(DATA_FRAME);
        out.put_u64_le(self.tag);
        out.put_u64_le(self.epoch);
        out.put_u32_le(self.seq);
        out.put_u64_le(self.count);
        out.put_u8(self.dtype as u8);
        out.put_u8(self.op as u8);
        out.put_u8(
            self.quant
                .map_or(0, |q| (q.algorithm as u8) << 4 | q.dtype as u8),
        );
        out.put_u16_le(self.step);
        out.put_u32_le(self.slice);
        out.put_u64_le(self.offset);
        out.put_u32_le(self.len);
        out.put_u32_le(self.crc);
        out.put_u8(self.kind.code());
        out.put_u32_le(self.kind.root());
    }

    /// Decodes a header and checks its payload length against [`MAX_PAYLOAD_BYTES`].
    pub fn decode(buf: &[u8; DATA_HEADER_LEN]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        let ty = r.u8()?;
        if ty != DATA_FRAME {
            return Err(WireError::UnknownFrameType(ty));
        }
        let h = Self {
            tag: r.u64()?,
            epoch: r.u64()?,
            seq: r.u32()?,
            count: r.u64()?,
            dtype: DataType::from_u8(r.u8()?).ok_or(WireError::InvalidValue("data type"))?,
            op: ReduceOp::from_u8(r.u8()?).ok_or(WireError::InvalidValue("reduce op"))?,
            quant: decode_quant(r.u8()?)?,
            step: r.u16()?,
            slice: r.u32()?,
            offset: r.u64()?,
            len: r.u32()?,
            crc: r.u32()?,
            kind: {
                let code = r.u8()?;
                Collective::from_wire(code, r.u32()?)
                    .ok_or(WireError::InvalidValue("collective"))?
            },
        };
        r.finish()?;
        if h.len as usize > MAX_PAYLOAD_BYTES {
            return Err(WireError::LengthTooLarge {
                len: u64::from(h.len),
                max: MAX_PAYLOAD_BYTES as u64,
            });
        }
        Ok(h)
    }

    /// Checks the payload against the header's CRC.
    pub fn verify(&self, payload: &[u8]) -> Result<(), WireError> {
        if crc32fast::hash(payload) == self.crc {
            Ok(())
        } else {
            Err(WireError::ChecksumMismatch)
        }
    }
}

/// The quantization byte: 0, or a known algorithm (not `None`) and data type.
fn decode_quant(v: u8) -> Result<Option<Quantization>, WireError> {
    if v == 0 {
        return Ok(None);
    }
    const BAD: WireError = WireError::InvalidValue("quantization");
    let algorithm = QuantizationAlgorithm::from_u8(v >> 4).ok_or(BAD)?;
    let dtype = DataType::from_u8(v & 0x0f).ok_or(BAD)?;
    if algorithm == QuantizationAlgorithm::None {
        return Err(BAD);
    }
    Ok(Some(Quantization { algorithm, dtype }))
}

#[cfg(test)]
impl DataHeader {
    /// A one-element f32 sum header of payload length `len`; tests change what they test.
    pub(crate) fn sample(len: u32) -> Self {
        Self {
            tag: 0,
            epoch: 0,
            seq: 0,
            count: 1,
            dtype: DataType::F32,
            op: ReduceOp::Sum,
            quant: None,
            step: 0,
            slice: 0,
            offset: 0,
            len,
            crc: 0,
            kind: Collective::AllReduce,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn round_trip(tag: u64, epoch: u64, seq: u32, count: u64, d in 0u8..12, o in 0u8..5,
                      qa in 0u8..3, qd in 0u8..12,
                      step: u16, slice: u32, offset: u64, len in 0u32..(MAX_PAYLOAD_BYTES as u32), crc: u32,
                      k in 0u8..4, root: u32) {
            let quant = (qa > 0).then(|| Quantization {
                algorithm: QuantizationAlgorithm::from_u8(qa).unwrap(),
                dtype: DataType::from_u8(qd).unwrap(),
            });
            let h = DataHeader { tag, epoch, seq, count, dtype: DataType::from_u8(d).unwrap(),
                op: ReduceOp::from_u8(o).unwrap(), quant, step, slice, offset, len, crc,
                kind: Collective::from_wire(k, if k == 3 { root } else { 0 }).unwrap() };
            let mut buf = Vec::new();
            h.encode(&mut buf);
            prop_assert_eq!(buf.len(), DATA_HEADER_LEN);
            prop_assert_eq!(DataHeader::decode(&buf.try_into().unwrap()), Ok(h));
        }

        #[test]
        fn garbage_never_panics(bytes: [u8; DATA_HEADER_LEN]) {
            let _ = DataHeader::decode(&bytes);
            let _ = RingFrame::decode(&bytes);
        }

        /// A ring frame is a data header exactly when `DataHeader::decode` says so, and a
        /// keepalive only as the one fixed byte string.
        #[test]
        fn ring_frames_decode_as_data_or_keepalive(mut bytes: [u8; DATA_HEADER_LEN], ty in 0u8..4) {
            bytes[0] = ty;
            match RingFrame::decode(&bytes) {
                Ok(RingFrame::Data(h)) => prop_assert_eq!(DataHeader::decode(&bytes), Ok(h)),
                Ok(RingFrame::Keepalive) => prop_assert_eq!(bytes, KEEPALIVE),
                Err(_) => prop_assert!(bytes != KEEPALIVE && DataHeader::decode(&bytes).is_err()),
            }
        }
    }

    #[test]
    fn keepalive_round_trip() {
        assert_eq!(RingFrame::decode(&KEEPALIVE), Ok(RingFrame::Keepalive));
        assert!(DataHeader::decode(&KEEPALIVE).is_err(), "not a data frame");
        for i in 1..DATA_HEADER_LEN {
            let mut b = KEEPALIVE;
            b[i] = 1;
            assert_eq!(
                RingFrame::decode(&b),
                Err(WireError::InvalidValue("keepalive")),
                "byte {i}"
            );
        }
    }

    #[test]
    fn oversized_payload_rejected() {
        let h = DataHeader::sample(u32::MAX);
        let mut buf = Vec::new();
        h.encode(&mut buf);
        assert!(matches!(
            DataHeader::decode(&buf.try_into().unwrap()),
            Err(WireError::LengthTooLarge { .. })
        ));
    }

    #[test]
    fn quantization_byte_is_checked() {
        let mut h = DataHeader {
            quant: Some(Quantization::new(
                QuantizationAlgorithm::MinMax,
                DataType::U8,
            )),
            ..DataHeader::sample(25)
        };
        let mut buf = Vec::new();
        h.encode(&mut buf);
        assert_eq!(buf[31], 0x10);
        assert_eq!(DataHeader::decode(&buf.clone().try_into().unwrap()), Ok(h));
        for bad in [0x0a, 0x3a, 0x1c, 0xff] {
            buf[31] = bad;
            assert!(
                DataHeader::decode(&buf.clone().try_into().unwrap()).is_err(),
                "{bad:#x}"
            );
        }
        h.quant = None;
        let mut buf = Vec::new();
        h.encode(&mut buf);
        assert_eq!(buf[31], 0);
    }

    #[test]
    fn collective_bytes_are_checked() {
        let mut h = DataHeader {
            kind: Collective::Broadcast { root: 3 },
            ..DataHeader::sample(4)
        };
        let mut buf = Vec::new();
        h.encode(&mut buf);
        assert_eq!(buf[54..], [3, 3, 0, 0, 0]);
        assert_eq!(DataHeader::decode(&buf.clone().try_into().unwrap()), Ok(h));
        // An unknown kind, and a root on a kind that has none, are refused.
        for (code, root) in [(4u8, 0u8), (0xff, 0), (0, 1), (1, 1), (2, 7)] {
            buf[54] = code;
            buf[55] = root;
            assert_eq!(
                DataHeader::decode(&buf.clone().try_into().unwrap()),
                Err(WireError::InvalidValue("collective")),
                "{code} {root}"
            );
        }
        h.kind = Collective::ReduceScatter;
        let mut buf = Vec::new();
        h.encode(&mut buf);
        assert_eq!(buf[54..], [1, 0, 0, 0, 0]);
    }
}
