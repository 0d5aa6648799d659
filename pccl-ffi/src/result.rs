//! `pcclResult_t`: PCCL 1.0's result codes with their exact numbers.
//!
//! Append-only: a new code takes the next free number (13, 14, ...), and a retired one
//! stays here as a comment so its number is never reused.

#![allow(non_camel_case_types)]

use pccl::ResultCode;

/// What every `pccl*` function returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum pcclResult_t {
    /// The call did what it says.
    pcclSuccess = 0,
    /// `pcclInit` has not been called.
    pcclNotInitialized = 1,
    /// A bug or unexpected condition inside the library (including a caught Rust panic).
    pcclInternalError = 2,
    /// A pointer is NULL or misaligned, or a value is out of range or inconsistent.
    pcclInvalidArgument = 3,
    /// The call is not allowed now (not connected, connected twice, tag in flight, ...).
    pcclInvalidUsage = 4,
    /// The operation needs at least two peers in the group.
    pcclTooFewPeers = 5,
    /// The master could not be reached, or the connection to it was lost.
    pcclMasterConnectionFailed = 6,
    /// A peer-to-peer connection could not be established.
    pcclRankConnectionFailed = 7,
    /// A peer taking part in the op was lost; the op failed on every survivor: retry it.
    pcclRankConnectionLost = 8,
    /// No peer holds a shared state to synchronise from.
    pcclNoSharedStateAvailable = 9,
    /// Async ops are still in flight and must be awaited first.
    pcclPendingAsyncOps = 10,
    /// The topology update failed (a peer died or could not be reached): retry it.
    pcclUpdateTopologyFailed = 11,
    /// The topology optimisation failed; the old ring stays in use.
    pcclTopologyOptimizationFailed = 12,
}

impl From<ResultCode> for pcclResult_t {
    fn from(code: ResultCode) -> Self {
        match code {
            ResultCode::Success => Self::pcclSuccess,
            ResultCode::NotInitialized => Self::pcclNotInitialized,
            ResultCode::InternalError => Self::pcclInternalError,
            ResultCode::InvalidArgument => Self::pcclInvalidArgument,
            ResultCode::InvalidUsage => Self::pcclInvalidUsage,
            ResultCode::TooFewPeers => Self::pcclTooFewPeers,
            ResultCode::MasterConnectionFailed => Self::pcclMasterConnectionFailed,
            ResultCode::RankConnectionFailed => Self::pcclRankConnectionFailed,
            ResultCode::RankConnectionLost => Self::pcclRankConnectionLost,
            ResultCode::NoSharedStateAvailable => Self::pcclNoSharedStateAvailable,
            ResultCode::PendingAsyncOps => Self::pcclPendingAsyncOps,
            ResultCode::UpdateTopologyFailed => Self::pcclUpdateTopologyFailed,
            ResultCode::TopologyOptimizationFailed => Self::pcclTopologyOptimizationFailed,
        }
    }
}

impl From<pccl::Error> for pcclResult_t {
    /// The error's code. C callers only see the number, so the message is logged, at
    /// debug level (`PCCL_LOG=debug`): many errors, such as a lost peer, are expected.
    fn from(e: pccl::Error) -> Self {
        tracing::debug!(error = %e, "pccl call failed");
        e.code().into()
    }
}

/// The outcome of a body inside the boundary: `Err` carries the code to return.
pub(crate) type FfiResult = Result<(), pcclResult_t>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_pccl_and_the_core() {
        let all = [
            (ResultCode::Success, 0),
            (ResultCode::NotInitialized, 1),
            (ResultCode::InternalError, 2),
            (ResultCode::InvalidArgument, 3),
            (ResultCode::InvalidUsage, 4),
            (ResultCode::TooFewPeers, 5),
            (ResultCode::MasterConnectionFailed, 6),
            (ResultCode::RankConnectionFailed, 7),
            (ResultCode::RankConnectionLost, 8),
            (ResultCode::NoSharedStateAvailable, 9),
            (ResultCode::PendingAsyncOps, 10),
            (ResultCode::UpdateTopologyFailed, 11),
            (ResultCode::TopologyOptimizationFailed, 12),
        ];
        for (code, n) in all {
            assert_eq!(pcclResult_t::from(code) as i32, n);
            assert_eq!(code as i32, n);
        }
    }
}
