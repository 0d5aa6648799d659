//! The public error type. Each variant maps onto exactly one PCCL 1.0 result code
//! (`Error::code`); the C and Python layers translate only at their edge.

use crate::types::PeerId;

/// PCCL 1.0's `pcclResult_t`, with its numbers. Append-only: new codes take new numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ResultCode {
    Success = 0,
    NotInitialized = 1,
    InternalError = 2,
    InvalidArgument = 3,
    InvalidUsage = 4,
    TooFewPeers = 5,
    MasterConnectionFailed = 6,
    RankConnectionFailed = 7,
    RankConnectionLost = 8,
    NoSharedStateAvailable = 9,
    PendingAsyncOps = 10,
    UpdateTopologyFailed = 11,
    TopologyOptimizationFailed = 12,
}

/// Everything that can go wrong in a pccl call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The library was used before it was initialised (C API only).
    #[error("pccl is not initialised")]
    NotInitialized,
    /// A bug or an unexpected internal condition; the message says where.
    #[error("internal error: {0}")]
    Internal(String),
    /// An argument is invalid on its own (null, zero, out of range, mismatched sizes).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The call is not allowed in the current state (before connect, tag in flight, ...).
    #[error("invalid usage: {0}")]
    InvalidUsage(String),
    /// The operation needs at least two peers in the group.
    #[error("too few peers: the operation needs at least two in the group")]
    TooFewPeers,
    /// The master could not be reached, or the connection to it was lost.
    #[error("master connection failed: {0}")]
    MasterConnectionFailed(String),
    /// A peer-to-peer connection could not be established.
    #[error("connection to peer {peer} failed: {reason}")]
    RankConnectionFailed { peer: PeerId, reason: String },
    /// A peer taking part in the op was lost; the op failed on every survivor, retry it.
    #[error("op {tag} failed: a peer was lost ({reason})")]
    RankConnectionLost { tag: u64, reason: String },
    /// No peer holds a shared state to synchronise from.
    #[error("no shared state available: {0}")]
    NoSharedStateAvailable(String),
    /// Async ops are still in flight and must be awaited first.
    #[error("async ops are still in flight")]
    PendingAsyncOps,
    /// The topology update failed (a peer died or could not be reached); retry it.
    #[error("topology update failed: {0}")]
    UpdateTopologyFailed(String),
    /// The topology optimisation failed; the old ring stays in use.
    #[error("topology optimisation failed: {0}")]
    TopologyOptimizationFailed(String),
}

impl Error {
    /// The PCCL result code of this error.
    pub fn code(&self) -> ResultCode {
        match self {
            Self::NotInitialized => ResultCode::NotInitialized,
            Self::Internal(_) => ResultCode::InternalError,
            Self::InvalidArgument(_) => ResultCode::InvalidArgument,
            Self::InvalidUsage(_) => ResultCode::InvalidUsage,
            Self::TooFewPeers => ResultCode::TooFewPeers,
            Self::MasterConnectionFailed(_) => ResultCode::MasterConnectionFailed,
            Self::RankConnectionFailed { .. } => ResultCode::RankConnectionFailed,
            Self::RankConnectionLost { .. } => ResultCode::RankConnectionLost,
            Self::NoSharedStateAvailable(_) => ResultCode::NoSharedStateAvailable,
            Self::PendingAsyncOps => ResultCode::PendingAsyncOps,
            Self::UpdateTopologyFailed(_) => ResultCode::UpdateTopologyFailed,
            Self::TopologyOptimizationFailed(_) => ResultCode::TopologyOptimizationFailed,
        }
    }
}

/// Result alias for pccl calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_pccl_numbers() {
        assert_eq!(Error::NotInitialized.code() as i32, 1);
        assert_eq!(Error::TooFewPeers.code() as i32, 5);
        let lost = Error::RankConnectionLost {
            tag: 1,
            reason: String::new(),
        };
        assert_eq!(lost.code() as i32, 8);
        assert_eq!(Error::PendingAsyncOps.code() as i32, 10);
        assert_eq!(
            Error::TopologyOptimizationFailed(String::new()).code() as i32,
            12
        );
    }
}
