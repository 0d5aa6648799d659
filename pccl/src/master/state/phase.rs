//! The master's phases and the transitions allowed between them, in one place.
//!
//! What is exclusive is a phase; what runs concurrently is a table:
//!
//! - **The topology phase** ([`TopologyPhase`]), one for the whole run: `Idle` (joint
//!   calls may complete), `Measuring` (bandwidth tests of an `optimize_topology` call are
//!   running) or `Proposing` (a new ring waits for every peer's p2p connections). A
//!   joint call completes only in `Idle`; votes that arrive meanwhile wait in the votes
//!   table.
//! - **The shared-state sync phase** ([`SyncPhase`]), one per group, independent of the
//!   other groups and of the topology phase: `Idle`, `Reporting` (members report their
//!   state until every live member has) and `Transferring` (losers fetch until every
//!   participant is done).
//! - **Concurrent tables, not phases**: the joint-call votes (one per accepted peer), the
//!   op votes (one per (group, tag), each open at one (epoch, seq), any number at once),
//!   the bandwidth figures, and each peer's membership (connected, then registered and
//!   waiting, then accepted into the ring).
//!
//! Every change of phase goes through `MasterState::set_topology_phase` or
//! `MasterState::set_sync_phase`; the tables [`TOPOLOGY_TRANSITIONS`] and
//! [`SYNC_TRANSITIONS`] list every change they may make, and the master's tests check
//! each change the state machine makes against them (and that each row is reachable).

use std::collections::BTreeMap;
use std::time::Instant;

use super::proposal::Proposal;
use super::sync::{Report, Transfer};
use crate::types::PeerId;

/// The run's topology phase; exactly one at a time.
#[derive(Debug, Default)]
pub(crate) enum TopologyPhase {
    /// Nothing in flight: the next joint call completes when every live accepted peer
    /// has voted.
    #[default]
    Idle,
    /// An `optimize_topology` call waits for the bandwidth reports of these peers, each
    /// by its own deadline (it scales with the links the peer tests).
    Measuring {
        waiting: BTreeMap<PeerId, Option<Instant>>,
    },
    /// A ring was sent to its peers, who dial their neighbours and answer `P2pReady`.
    Proposing(Proposal),
}

/// One group's shared-state sync; groups sync independently.
#[derive(Debug, Default)]
pub(crate) enum SyncPhase {
    /// No sync in progress.
    #[default]
    Idle,
    /// Reports received so far; the election runs once every live member has reported.
    /// Members that have not reported by `deadline` are evicted.
    Reporting {
        reports: BTreeMap<PeerId, Report>,
        deadline: Option<Instant>,
    },
    /// The elected state is being fetched; ends when every live participant is done.
    Transferring(Transfer),
}

/// The name of a `TopologyPhase`, without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TopologyPhaseKind {
    /// Joint calls may complete.
    Idle,
    /// Bandwidth tests are running.
    Measuring,
    /// A proposed ring waits for its p2p connections.
    Proposing,
}

/// The name of a `SyncPhase`, without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyncPhaseKind {
    /// No sync in progress.
    Idle,
    /// Waiting for every live member's report.
    Reporting,
    /// Waiting for every participant to finish fetching.
    Transferring,
}

/// One allowed change of phase and the inputs that cause it.
#[derive(Clone, Copy, Debug)]
pub struct Transition<K> {
    /// The phase left.
    pub from: K,
    /// The phase entered.
    pub to: K,
    /// What causes it.
    pub on: &'static str,
}

const fn t<K>(from: K, to: K, on: &'static str) -> Transition<K> {
    Transition { from, to, on }
}

/// Every change of the run's topology phase the master may make.
pub const TOPOLOGY_TRANSITIONS: &[Transition<TopologyPhaseKind>] = {
    use TopologyPhaseKind::*;
    &[
        t(
            Idle,
            Measuring,
            "an optimize_topology call completes and some link has no figure yet",
        ),
        t(
            Idle,
            Proposing,
            "an update_topology call completes with peers waiting, or an optimize_topology \
             call completes with every link measured and a better ring",
        ),
        t(
            Measuring,
            Proposing,
            "the last bandwidth report arrives and a better ring exists",
        ),
        t(
            Measuring,
            Idle,
            "the last bandwidth report arrives and the ring is already the best, or a ring \
             member dies or is evicted for missing its report deadline (the call fails, \
             retryable)",
        ),
        t(
            Proposing,
            Idle,
            "every peer of the ring is ready (commit), or one could not dial, died or was \
             evicted for missing the proposal deadline (abort)",
        ),
    ]
};

/// Every change of one group's sync phase the master may make.
pub const SYNC_TRANSITIONS: &[Transition<SyncPhaseKind>] = {
    use SyncPhaseKind::*;
    &[
        t(Idle, Reporting, "a member's first report"),
        t(
            Idle,
            Transferring,
            "a restarted master rebuilds a transfer every participant reports in progress",
        ),
        t(
            Reporting,
            Transferring,
            "every live member has reported (the last report, or the death or eviction of \
             the last member missing) and the election gives someone a plan",
        ),
        t(
            Reporting,
            Idle,
            "every live member has reported (as above) and the election refuses every one of \
             them",
        ),
        t(
            Transferring,
            Idle,
            "every live participant is done (the last SyncDone, or the death or eviction of \
             the last participant missing): one result for all",
        ),
    ]
};

/// Whether `from -> to` is a row of `table`.
pub fn allowed<K: PartialEq>(table: &[Transition<K>], from: K, to: K) -> bool {
    table.iter().any(|r| r.from == from && r.to == to)
}

impl TopologyPhase {
    /// This phase's name.
    pub(crate) fn kind(&self) -> TopologyPhaseKind {
        match self {
            Self::Idle => TopologyPhaseKind::Idle,
            Self::Measuring { .. } => TopologyPhaseKind::Measuring,
            Self::Proposing(_) => TopologyPhaseKind::Proposing,
        }
    }
}

impl SyncPhase {
    /// This phase's name.
    pub(crate) fn kind(&self) -> SyncPhaseKind {
        match self {
            Self::Idle => SyncPhaseKind::Idle,
            Self::Reporting { .. } => SyncPhaseKind::Reporting,
            Self::Transferring(_) => SyncPhaseKind::Transferring,
        }
    }
}

/// A change of phase the master made, recorded in test builds so the tests can check
/// it against the tables.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Observed {
    Topology(TopologyPhaseKind, TopologyPhaseKind),
    Sync(u32, SyncPhaseKind, SyncPhaseKind),
}
