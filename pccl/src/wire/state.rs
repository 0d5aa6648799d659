//! Shared-state transfer frames: a receiver asks a holder for one tensor by name, the
//! holder answers with a status and the tensor's raw bytes. Lengths are checked against
//! what the receiver expects before any byte is written.

use bytes::BufMut;

use super::codec::{Reader, WireError, put_string};
use super::control::MAX_NAME;

/// "Send me tensor `name`, which I expect to be `len` bytes."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRequest {
    pub name: String,
    pub len: u64,
}

/// The holder's answer header; `Ok(len)` is followed by `len` raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateResponse {
    Ok(u64),
    /// The holder does not serve this tensor (not a holder, unknown name, wrong length).
    Refused,
}

/// Encoded size of a response header.
pub const RESPONSE_LEN: usize = 9;

impl StateRequest {
    pub fn encode(&self, out: &mut impl BufMut) {
        put_string(out, &self.name);
        out.put_u64_le(self.len);
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        let req = Self {
            name: r.string(MAX_NAME)?,
            len: r.u64()?,
        };
        r.finish()?;
        Ok(req)
    }
}

impl StateResponse {
    pub fn encode(&self) -> [u8; RESPONSE_LEN] {
        let mut out = [0u8; RESPONSE_LEN];
        if let Self::Ok(len) = self {
            out[0] = 1;
            out[1..].copy_from_slice(&len.to_le_bytes());
        }
        out
    }

    pub fn decode(buf: &[u8; RESPONSE_LEN]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        let status = r.u8()?;
        let len = r.u64()?;
        match status {
            0 => Ok(Self::Refused),
            1 => Ok(Self::Ok(len)),
            _ => Err(WireError::InvalidValue("transfer status")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let req = StateRequest {
            name: "layer.0.weight".into(),
            len: 1 << 30,
        };
        let mut buf = Vec::new();
        req.encode(&mut buf);
        assert_eq!(StateRequest::decode(&buf), Ok(req));
        for r in [StateResponse::Ok(12345), StateResponse::Refused] {
            assert_eq!(StateResponse::decode(&r.encode()), Ok(r));
        }
        assert!(StateResponse::decode(&[7; RESPONSE_LEN]).is_err());
    }
}
