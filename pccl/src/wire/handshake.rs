//! The first bytes on every connection: magic, version, connection kind and identity.
//! Pure: the caller moves the bytes.

use bytes::BufMut;

use super::codec::{Reader, WireError};
use crate::types::PeerId;

/// Magic bytes that open every pccl connection.
pub const MAGIC: [u8; 4] = *b"PCCL";
/// Protocol version; bumped on any incompatible change.
pub const VERSION: u16 = 7;
/// Bytes in an encoded hello.
pub const HELLO_LEN: usize = 4 + 2 + 1 + 16;
/// Set in the kind byte by a side that holds a run secret (SECURITY.md §6): the Noise
/// handshake follows the hellos. Never set in plain mode, so that wire is unchanged.
pub const SECURED_FLAG: u8 = 0x80;

/// What a connection will carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectionKind {
    /// Peer <-> master control messages.
    Control = 1,
    /// Collective data from a ring neighbour.
    P2p = 2,
    /// Shared-state transfer.
    SharedState = 3,
    /// Bandwidth measurement.
    Benchmark = 4,
}

impl ConnectionKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Control),
            2 => Some(Self::P2p),
            3 => Some(Self::SharedState),
            4 => Some(Self::Benchmark),
            _ => None,
        }
    }
}

/// The opening message, sent by the side that dials; the acceptor answers with its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub kind: ConnectionKind,
    pub peer: PeerId,
}

impl Hello {
    /// The plain-mode hello (no run secret).
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        self.encode_flagged(false)
    }

    /// The hello, saying whether this side holds a run secret ([`SECURED_FLAG`]).
    pub fn encode_flagged(&self, secured: bool) -> [u8; HELLO_LEN] {
        let mut out = Vec::with_capacity(HELLO_LEN);
        out.put_slice(&MAGIC);
        out.put_u16_le(VERSION);
        let flag = if secured { SECURED_FLAG } else { 0 };
        out.put_u8(self.kind as u8 | flag);
        out.put_slice(&self.peer.0);
        out.try_into().expect("hello has a fixed length")
    }

    /// Decodes a plain-mode hello; one with [`SECURED_FLAG`] set is refused.
    pub fn decode(buf: &[u8; HELLO_LEN]) -> Result<Self, WireError> {
        match Self::decode_flagged(buf)? {
            (h, false) => Ok(h),
            (_, true) => Err(WireError::InvalidValue("connection kind")),
        }
    }

    /// Decodes a hello and whether its sender holds a run secret.
    pub fn decode_flagged(buf: &[u8; HELLO_LEN]) -> Result<(Self, bool), WireError> {
        let mut r = Reader::new(buf);
        if r.array::<4>()? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(WireError::BadVersion(version));
        }
        let byte = r.u8()?;
        let secured = byte & SECURED_FLAG != 0;
        let kind = ConnectionKind::from_u8(byte & !SECURED_FLAG)
            .ok_or(WireError::InvalidValue("connection kind"))?;
        let peer = PeerId(r.array()?);
        r.finish()?;
        Ok((Self { kind, peer }, secured))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let h = Hello {
            kind: ConnectionKind::P2p,
            peer: PeerId([7; 16]),
        };
        let bytes = h.encode();
        assert_eq!(Hello::decode(&bytes), Ok(h));
        let mut bad = bytes;
        bad[0] = b'X';
        assert_eq!(Hello::decode(&bad), Err(WireError::BadMagic));
        let mut bad = bytes;
        bad[4] = 9;
        assert_eq!(Hello::decode(&bad), Err(WireError::BadVersion(9)));
        let mut bad = bytes;
        bad[6] = 0;
        assert!(Hello::decode(&bad).is_err());
        // The secured flag: byte 6's high bit, refused by the plain decoder.
        let flagged = h.encode_flagged(true);
        assert_eq!(flagged[6], ConnectionKind::P2p as u8 | SECURED_FLAG);
        assert_eq!(flagged[..6], bytes[..6]);
        assert_eq!(flagged[7..], bytes[7..]);
        assert_eq!(Hello::decode_flagged(&flagged), Ok((h, true)));
        assert_eq!(Hello::decode_flagged(&bytes), Ok((h, false)));
        assert!(Hello::decode(&flagged).is_err());
        let mut bad = flagged;
        bad[6] = SECURED_FLAG;
        assert!(Hello::decode_flagged(&bad).is_err());
    }
}
