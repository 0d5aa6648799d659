//! The public error type and the one table of result codes.
//!
//! Each `Error` variant maps onto exactly one PCCL 1.0 result code (`Error::code`). The
//! codes themselves are defined once, in the `result_codes!` table below, together with
//! their name in every API: the C header's enum (`pccl-ffi`, checked against this table
//! by a test), the Python `Result` enum and the Python exception classes (`pccl-py`,
//! generated from this table when the module is imported).

use crate::types::PeerId;

/// One row of the result-code table: a code and its names in the C and Python APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResultCodeInfo {
    /// The code; its number is `code as i32`.
    pub code: ResultCode,
    /// The `pcclResult_t` enumerator in `pccl.h`, as PCCL 1.0 spells it.
    pub c_name: &'static str,
    /// The member of Python's `pccl.Result`.
    pub python_name: &'static str,
    /// The Python exception class raised for this code (`None` for success only).
    pub python_class: Option<&'static str>,
    /// A built-in exception the class also derives from (`ValueError`, `ConnectionError`),
    /// so that callers catching the built-in catch it too.
    pub python_builtin_base: Option<&'static str>,
    /// As written in the table: a leading space, from the `///` comment.
    raw_doc: &'static str,
}

impl ResultCodeInfo {
    /// One sentence saying what the code means: the C comment and the Python docstring.
    pub fn doc(&self) -> &'static str {
        self.raw_doc.trim()
    }
}

/// Declares `ResultCode` and `ResultCode::ALL` from one list of rows:
/// `/// doc` then `Variant = number, c_name, PYTHON_NAME[, PythonClass[(BuiltinBase)]];`.
/// The doc is exactly one line: it becomes the C comment and the Python docstring.
macro_rules! result_codes {
    (@opt) => { None };
    (@opt $x:ident) => { Some(stringify!($x)) };
    ($(
        #[doc = $doc:literal]
        $variant:ident = $n:literal, $c:ident, $py:ident $(, $class:ident $(($base:ident))?)?;
    )+) => {
        /// PCCL 1.0's `pcclResult_t`, with its numbers. Append-only: a new code takes the
        /// next free number, and a retired one keeps its number forever.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum ResultCode {
            $(#[doc = $doc] $variant = $n,)+
        }

        impl ResultCode {
            /// Every code, in numeric order (a test checks the order), with its names.
            pub const ALL: &'static [ResultCodeInfo] = &[$(ResultCodeInfo {
                code: Self::$variant,
                c_name: stringify!($c),
                python_name: stringify!($py),
                python_class: result_codes!(@opt $($class)?),
                python_builtin_base: result_codes!(@opt $($($base)?)?),
                raw_doc: $doc,
            },)+];
        }
    };
}

result_codes! {
    /// The call did what it says.
    Success = 0, pcclSuccess, SUCCESS;
    /// `pcclInit` has not been called (C API only).
    NotInitialized = 1, pcclNotInitialized, NOT_INITIALIZED, NotInitializedError;
    /// A bug or unexpected condition inside the library (including a caught Rust panic).
    InternalError = 2, pcclInternalError, INTERNAL_ERROR, InternalError;
    /// An argument is invalid: NULL or misaligned, out of range, or inconsistent with another.
    InvalidArgument = 3, pcclInvalidArgument, INVALID_ARGUMENT, InvalidArgumentError(ValueError);
    /// The call is not allowed now (not connected, connected twice, tag in flight, ...).
    InvalidUsage = 4, pcclInvalidUsage, INVALID_USAGE, InvalidUsageError;
    /// The operation needs at least two peers in the group.
    TooFewPeers = 5, pcclTooFewPeers, TOO_FEW_PEERS, TooFewPeersError;
    /// The master could not be reached, or the connection to it was lost.
    MasterConnectionFailed = 6, pcclMasterConnectionFailed, MASTER_CONNECTION_FAILED,
        MasterConnectionError(ConnectionError);
    /// A peer-to-peer connection could not be established.
    RankConnectionFailed = 7, pcclRankConnectionFailed, RANK_CONNECTION_FAILED,
        RankConnectionFailedError(ConnectionError);
    /// A peer taking part in the op was lost; the op failed on every survivor: retry it.
    RankConnectionLost = 8, pcclRankConnectionLost, RANK_CONNECTION_LOST,
        ConnectionLostError(ConnectionError);
    /// No peer holds a shared state to synchronise from.
    NoSharedStateAvailable = 9, pcclNoSharedStateAvailable, NO_SHARED_STATE_AVAILABLE,
        NoSharedStateAvailableError;
    /// Async ops are still in flight and must be awaited first.
    PendingAsyncOps = 10, pcclPendingAsyncOps, PENDING_ASYNC_OPS, PendingAsyncOpsError;
    /// The topology update failed (a peer died or could not be reached): retry it.
    UpdateTopologyFailed = 11, pcclUpdateTopologyFailed, UPDATE_TOPOLOGY_FAILED,
        UpdateTopologyFailedError;
    /// The topology optimisation failed; the old ring stays in use.
    TopologyOptimizationFailed = 12, pcclTopologyOptimizationFailed,
        TOPOLOGY_OPTIMIZATION_FAILED, TopologyOptimizationFailedError;
}

impl ResultCode {
    /// The code with this number, if there is one.
    pub fn from_number(n: i32) -> Option<Self> {
        let i = usize::try_from(n).ok()?;
        Self::ALL.get(i).map(|row| row.code)
    }

    /// This code's row of the table.
    pub fn info(self) -> &'static ResultCodeInfo {
        // `ALL` is in numeric order from 0 without gaps (see the tests).
        &Self::ALL[self as usize]
    }
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
    /// An argument does not fit the ring the op ran on: buffers sized for another world
    /// size or rank, a broadcast root that is not a rank. Its code is `InvalidArgument`;
    /// the other peers of the op fail with `InvalidUsage` (their op's shapes differ).
    #[error("invalid argument: {0}")]
    ArgumentMismatch(String),
    /// The call is not allowed in the current state (before connect, tag in flight, ...).
    #[error("invalid usage: {0}")]
    InvalidUsage(String),
    /// The operation needs at least two peers in the group.
    #[error("too few peers: the operation needs at least two in the group")]
    TooFewPeers,
    /// The master could not be reached, or the connection to it was lost.
    #[error("master connection failed: {0}")]
    MasterConnectionFailed(String),
    /// The master or a peer could not prove the run secret, or we could not: no secret on
    /// one side, a different secret, or a different encryption setting (SECURITY.md §6).
    /// Its code is `MasterConnectionFailed`, the PCCL 1.0 code that fits; the Python API
    /// raises `AuthenticationError`, a subclass of `MasterConnectionError`.
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
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
            Self::InvalidArgument(_) | Self::ArgumentMismatch(_) => ResultCode::InvalidArgument,
            Self::InvalidUsage(_) => ResultCode::InvalidUsage,
            Self::TooFewPeers => ResultCode::TooFewPeers,
            Self::MasterConnectionFailed(_) | Self::AuthenticationFailed(_) => {
                ResultCode::MasterConnectionFailed
            }
            Self::RankConnectionFailed { .. } => ResultCode::RankConnectionFailed,
            Self::RankConnectionLost { .. } => ResultCode::RankConnectionLost,
            Self::NoSharedStateAvailable(_) => ResultCode::NoSharedStateAvailable,
            Self::PendingAsyncOps => ResultCode::PendingAsyncOps,
            Self::UpdateTopologyFailed(_) => ResultCode::UpdateTopologyFailed,
            Self::TopologyOptimizationFailed(_) => ResultCode::TopologyOptimizationFailed,
        }
    }
}

impl Error {
    /// An error with this code and a placeholder message (`None` for success). It lets
    /// the C and Python layers test their translation of every code.
    #[doc(hidden)]
    pub fn example(code: ResultCode) -> Option<Self> {
        let what = || format!("example of {code:?}");
        Some(match code {
            ResultCode::Success => return None,
            ResultCode::NotInitialized => Self::NotInitialized,
            ResultCode::InternalError => Self::Internal(what()),
            ResultCode::InvalidArgument => Self::InvalidArgument("example"),
            ResultCode::InvalidUsage => Self::InvalidUsage(what()),
            ResultCode::TooFewPeers => Self::TooFewPeers,
            ResultCode::MasterConnectionFailed => Self::MasterConnectionFailed(what()),
            ResultCode::RankConnectionFailed => Self::RankConnectionFailed {
                peer: PeerId([0; 16]),
                reason: what(),
            },
            ResultCode::RankConnectionLost => Self::RankConnectionLost {
                tag: 0,
                reason: what(),
            },
            ResultCode::NoSharedStateAvailable => Self::NoSharedStateAvailable(what()),
            ResultCode::PendingAsyncOps => Self::PendingAsyncOps,
            ResultCode::UpdateTopologyFailed => Self::UpdateTopologyFailed(what()),
            ResultCode::TopologyOptimizationFailed => Self::TopologyOptimizationFailed(what()),
        })
    }
}

/// Result alias for pccl calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// PCCL 1.0's numbers, written out once more on purpose: the table must not drift.
    #[test]
    fn codes_match_pccl_numbers() {
        let pccl = [
            "pcclSuccess",
            "pcclNotInitialized",
            "pcclInternalError",
            "pcclInvalidArgument",
            "pcclInvalidUsage",
            "pcclTooFewPeers",
            "pcclMasterConnectionFailed",
            "pcclRankConnectionFailed",
            "pcclRankConnectionLost",
            "pcclNoSharedStateAvailable",
            "pcclPendingAsyncOps",
            "pcclUpdateTopologyFailed",
            "pcclTopologyOptimizationFailed",
        ];
        let table: Vec<(i32, &str)> = ResultCode::ALL
            .iter()
            .map(|row| (row.code as i32, row.c_name))
            .collect();
        let want: Vec<(i32, &str)> = (0..).zip(pccl).collect();
        assert_eq!(table, want);
    }

    /// The table is in numeric order from 0 (which `info` relies on) and every code
    /// round-trips through its number and its row.
    #[test]
    fn every_code_has_one_row_and_round_trips() {
        for (i, row) in ResultCode::ALL.iter().enumerate() {
            let n = row.code as i32;
            assert_eq!(usize::try_from(n), Ok(i), "{:?} is out of order", row.code);
            assert_eq!(ResultCode::from_number(n), Some(row.code));
            assert_eq!(row.code.info(), row);
        }
        let len = i32::try_from(ResultCode::ALL.len()).unwrap();
        assert_eq!(ResultCode::from_number(len), None);
        assert_eq!(ResultCode::from_number(-1), None);
    }

    /// Names are unique per API; only success has no exception class; docs are one
    /// sentence.
    #[test]
    fn names_are_unique_and_complete() {
        let mut seen = HashSet::new();
        for row in ResultCode::ALL {
            assert!(seen.insert(row.c_name), "{} twice", row.c_name);
            assert!(seen.insert(row.python_name), "{} twice", row.python_name);
            let class = row.python_class;
            assert_eq!(
                class.is_none(),
                row.code == ResultCode::Success,
                "{:?}",
                row.code
            );
            if let Some(class) = class {
                assert!(seen.insert(class), "{class} twice");
                assert!(class.ends_with("Error"), "{class}");
            }
            assert!(row.python_builtin_base.is_none() || class.is_some());
            assert!(row.c_name.starts_with("pccl"));
            let upper = row.python_name.chars();
            assert!(upper.clone().all(|c| c.is_ascii_uppercase() || c == '_'));
            let doc = row.doc();
            assert!(doc.ends_with('.') && !doc.contains('\n'), "{doc:?}");
            assert!(
                doc.starts_with(|c: char| c.is_uppercase() || c == '`'),
                "{doc:?}"
            );
        }
    }

    /// Every code but success is the code of some `Error`, and `Error::code` agrees with
    /// the example built for each code.
    #[test]
    fn every_error_code_has_an_error() {
        for row in ResultCode::ALL {
            match Error::example(row.code) {
                Some(e) => assert_eq!(e.code(), row.code, "{e}"),
                None => assert_eq!(row.code, ResultCode::Success),
            }
        }
        let lost = Error::RankConnectionLost {
            tag: 1,
            reason: String::new(),
        };
        assert_eq!(lost.code() as i32, 8);
    }
}
