//! `pcclResult_t`: PCCL 1.0's result codes with their exact numbers, as C sees them.
//!
//! The codes are defined once, in the core's table (`pccl::ResultCode::ALL`). cbindgen
//! cannot expand macros, so the enum is spelled out here; the tests below check it and the
//! generated header against that table (names, numbers, order and comments). To add a
//! code, add its row to the table, then here, then regenerate the header.

#![allow(non_camel_case_types)]

use pccl::ResultCode;

/// What every `pccl*` function returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum pcclResult_t {
    /// The call did what it says.
    pcclSuccess = 0,
    /// `pcclInit` has not been called (C API only).
    pcclNotInitialized = 1,
    /// A bug or unexpected condition inside the library (including a caught Rust panic).
    pcclInternalError = 2,
    /// An argument is invalid: NULL or misaligned, out of range, or inconsistent with another.
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

    /// Every row of the core's table maps to the enumerator of that name and number.
    #[test]
    fn the_enum_follows_the_table() {
        for row in ResultCode::ALL {
            let c = pcclResult_t::from(row.code);
            assert_eq!(c as i32, row.code as i32, "{}", row.c_name);
            assert_eq!(format!("{c:?}"), row.c_name);
        }
    }

    /// `include/pccl.h`'s `pcclResult_t` lists exactly the table's rows, in order, each
    /// with its number and its one-line comment.
    #[test]
    fn the_header_enum_is_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../include/pccl.h");
        let header = std::fs::read_to_string(path).expect("include/pccl.h");
        let body = header
            .split_once("typedef enum pcclResult_t {\n")
            .and_then(|(_, rest)| rest.split_once("} pcclResult_t;"))
            .map(|(body, _)| body)
            .expect("the header declares `typedef enum pcclResult_t { ... } pcclResult_t;`");
        let got: Vec<String> = body.lines().map(|l| l.trim().to_owned()).collect();
        let want: Vec<String> = ResultCode::ALL
            .iter()
            .flat_map(|row| {
                [
                    format!("// {}", row.doc()),
                    format!("{} = {},", row.c_name, row.code as i32),
                ]
            })
            .collect();
        assert_eq!(got, want);
    }
}
