//! Explicit little-endian encoding over byte buffers. Decoding reads from a borrowed slice
//! and checks every length against what is left before touching it.

use bytes::BufMut;

/// Why bytes from the network could not be decoded. Any of these closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame ended before a field was complete.
    #[error("frame ended early")]
    UnexpectedEnd,
    /// The frame type byte is not one we know.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A length field exceeds the bound for its kind.
    #[error("length {len} exceeds the maximum {max}")]
    LengthTooLarge { len: u64, max: u64 },
    /// The handshake did not start with our magic bytes.
    #[error("bad magic bytes")]
    BadMagic,
    /// The other side speaks another protocol version.
    #[error("unsupported protocol version {0}")]
    BadVersion(u16),
    /// A payload's CRC32 does not match its header.
    #[error("payload checksum mismatch")]
    ChecksumMismatch,
    /// A field holds a value outside its domain.
    #[error("invalid value for {0}")]
    InvalidValue(&'static str),
    /// Bytes were left over after the last field.
    #[error("{0} trailing bytes after the frame body")]
    TrailingBytes(usize),
}

/// A cursor over a frame body.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::UnexpectedEnd);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_le_bytes)
    }

    pub(crate) fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::InvalidValue("bool")),
        }
    }

    /// A collection length, bounded by `max` and by the bytes left at `min_item` bytes each,
    /// so a forged count can never make the caller reserve more than the frame holds.
    pub(crate) fn len(&mut self, max: usize, min_item: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(WireError::LengthTooLarge {
                len: n as u64,
                max: max as u64,
            });
        }
        if n.saturating_mul(min_item.max(1)) > self.buf.len() {
            return Err(WireError::UnexpectedEnd);
        }
        Ok(n)
    }

    pub(crate) fn string(&mut self, max: usize) -> Result<String, WireError> {
        let n = self.len(max, 1)?;
        let raw = self.bytes(n)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| WireError::InvalidValue("utf-8 string"))
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes(self.buf.len()))
        }
    }
}

pub(crate) fn put_string(out: &mut impl BufMut, s: &str) {
    out.put_u32_le(s.len() as u32);
    out.put_slice(s.as_bytes());
}

pub(crate) fn put_bool(out: &mut impl BufMut, b: bool) {
    out.put_u8(u8::from(b));
}
