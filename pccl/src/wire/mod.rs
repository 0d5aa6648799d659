//! The wire format, as a pure codec: no sockets, no clock (docs/PROTOCOL.md).
//!
//! Every connection opens with a [`Hello`] in each direction. Control connections then
//! carry `u32 length | body` frames holding [`ToMaster`] / [`FromMaster`]; p2p connections
//! carry [`DataHeader`] + payload frames and keepalives ([`RingFrame`]). Every length is checked against a `MAX_*` bound
//! before anything is allocated.

mod codec;
pub mod control;
pub mod data;
pub mod handshake;
pub mod rejoin;
pub mod state;
pub mod stats;

pub use codec::WireError;
pub use control::{
    FailReason, Fetch, FromMaster, MAX_CONTROL_FRAME, Serve, SyncRefusal, TensorReport, ToMaster,
    VoteKind,
};
pub use data::{DATA_HEADER_LEN, DataHeader, KEEPALIVE, MAX_SLICE_BYTES, RingFrame};
pub use handshake::{ConnectionKind, HELLO_LEN, Hello};
pub use rejoin::{Answer, MAX_REJOIN_OPS, OpClaim, OpRecord, RefusalRecord, Rejoin, SyncClaim};
pub use state::{StateRequest, StateResponse};
pub use stats::{MAX_RECENT_OPS, PeerSummary};

/// Checks a control frame's length prefix before its body is read or allocated.
pub fn check_control_len(len: u32) -> Result<usize, WireError> {
    let len = len as usize;
    if len == 0 {
        return Err(WireError::UnexpectedEnd);
    }
    if len > MAX_CONTROL_FRAME {
        return Err(WireError::LengthTooLarge {
            len: len as u64,
            max: MAX_CONTROL_FRAME as u64,
        });
    }
    Ok(len)
}
