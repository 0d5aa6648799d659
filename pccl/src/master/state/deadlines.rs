//! The master's deadline table (docs/ARCHITECTURE.md §3, "Deadlines"): every wait of the
//! master on one particular peer has an instant by which that peer must have answered.
//! `poll_timeout` is the earliest entry; `handle_timeout` evicts every peer that missed
//! one, exactly as if it had died, so the others go on without it.
//!
//! The table is derived from the state, not kept beside it: each entry is read from the
//! connection or phase it belongs to, so it cannot outlive what it guards.
//!
//! Not in the table, on purpose: a joint call (`Vote`) or an op (`OpDone`) that a live
//! peer has simply not made yet. Those wait on the user's program, which may be slow
//! (the PCCL semantics); a peer that dies or falls silent still leaves them at once.

use std::time::{Duration, Instant};

use super::phase::{SyncPhase, TopologyPhase};
use super::{ConnId, MasterState, Output};
use crate::types::PeerId;
use crate::wire::FromMaster;

/// How long the master waits for one peer at each point of the protocol. See
/// `MasterConfig` for what each bounds and why the defaults are what they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A connection silent this long is dead.
    pub heartbeat: Duration,
    /// A connection that has said hello must `Register` within this.
    pub registration: Duration,
    /// Every peer of a proposed ring must answer `P2pReady` within this.
    pub proposal: Duration,
    /// A peer asked to measure bandwidth must report within this, plus
    /// `bandwidth_per_target` for each link it was asked to test.
    pub bandwidth: Duration,
    /// Added to `bandwidth` per link a peer tests (the tests run one after another).
    pub bandwidth_per_target: Duration,
    /// Once the first member of a group has sent its `SyncReport`, the others must
    /// within this.
    pub sync_report: Duration,
    /// Once the election has sent its plans, every participant must send `SyncDone`
    /// within this, plus the time the largest fetch takes at `sync_transfer_min_rate`.
    pub sync_transfer: Duration,
    /// The slowest fetch rate (bytes/s) the transfer deadline allows for.
    pub sync_transfer_min_rate: u64,
    /// Once the first peer re-registers with a fresh master, the others it names must
    /// within this, or the run is rebuilt without them (docs/ARCHITECTURE.md §14).
    pub recovery_window: Duration,
    /// A fresh master admits no lone first peer until this has passed since its start, so
    /// the peers of a run whose master restarted re-register first.
    pub startup_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            registration: Duration::from_secs(10),
            proposal: Duration::from_secs(30),
            bandwidth: Duration::from_secs(30),
            bandwidth_per_target: Duration::from_secs(1),
            sync_report: Duration::from_secs(300),
            sync_transfer: Duration::from_secs(60),
            sync_transfer_min_rate: 1 << 20,
            recovery_window: Duration::from_secs(5),
            // The state machine's tests start runs at once; `MasterConfig` sets the
            // operational default.
            startup_grace: Duration::ZERO,
        }
    }
}

/// The longest a transfer deadline may add for the bytes to fetch: sizes come from the
/// peers' reports, and an absurd one must not overflow the clock. A week is beyond any
/// real transfer.
const MAX_TRANSFER_ALLOWANCE: Duration = Duration::from_secs(7 * 24 * 3600);

/// One entry of the deadline table: who or what is waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Wait {
    /// The connection's next frame.
    Heartbeat(ConnId),
    /// The connection's `Register`.
    Registration(ConnId),
    /// `P2pReady` from every peer of the proposed ring.
    Proposal,
    /// `BandwidthReport` from every peer asked to measure.
    Bandwidth,
    /// `SyncReport` from every member of the group.
    SyncReports(u32),
    /// `SyncDone` from every participant of the group's sync.
    SyncTransfer(u32),
    /// `Rejoin` from every peer the re-registered peers name (`recovery`).
    Recovery,
    /// The end of the startup grace, when a waiting first peer is admitted.
    Grace,
}

impl MasterState {
    /// The instant `d` after the latest `now` the driver passed in (`None` before any, when
    /// nothing can wait yet, or if the sum overflows the clock).
    pub(super) fn deadline_in(&self, d: Duration) -> Option<Instant> {
        self.clock.and_then(|now| now.checked_add(d))
    }

    /// How long a peer asked to test `targets` links may take to report.
    pub(super) fn bandwidth_allowance(&self, targets: usize) -> Duration {
        let n = u32::try_from(targets).unwrap_or(u32::MAX);
        self.timeouts
            .bandwidth
            .saturating_add(self.timeouts.bandwidth_per_target.saturating_mul(n))
    }

    /// How long the participants of a sync may take when the largest fetch is `bytes`.
    pub(super) fn transfer_allowance(&self, bytes: u64) -> Duration {
        let rate = self.timeouts.sync_transfer_min_rate.max(1);
        let extra = Duration::from_secs(bytes / rate).min(MAX_TRANSFER_ALLOWANCE);
        self.timeouts.sync_transfer.saturating_add(extra)
    }

    /// Every entry of the deadline table.
    pub(crate) fn deadline_table(&self) -> Vec<(Wait, Instant)> {
        let mut table = Vec::new();
        for (id, c) in &self.conns {
            if let Some(t) = c.last_seen.checked_add(self.timeouts.heartbeat) {
                table.push((Wait::Heartbeat(*id), t));
            }
            if !c.registered
                && let Some(t) = c.connected_at.checked_add(self.timeouts.registration)
            {
                table.push((Wait::Registration(*id), t));
            }
        }
        let topology = match &self.topology_phase {
            TopologyPhase::Idle => None,
            TopologyPhase::Measuring { waiting } => waiting
                .values()
                .flatten()
                .min()
                .map(|t| (Wait::Bandwidth, *t)),
            TopologyPhase::Proposing(p) => p.deadline.map(|t| (Wait::Proposal, t)),
        };
        table.extend(topology);
        for (group, phase) in &self.syncs {
            let entry = match phase {
                SyncPhase::Idle => None,
                SyncPhase::Reporting { deadline, .. } => {
                    deadline.map(|t| (Wait::SyncReports(*group), t))
                }
                SyncPhase::Transferring(t) => t.deadline.map(|d| (Wait::SyncTransfer(*group), d)),
            };
            table.extend(entry);
        }
        if let Some(window) = self.recovery.as_ref().and_then(|r| r.deadline) {
            // Everyone is back but the grace still holds the recovery: it ends then.
            let grace = self.recovery_hold().flatten();
            let t = grace.map_or(window, |g| g.min(window));
            table.push((Wait::Recovery, t));
        }
        if self.ring.is_empty() && !self.pending.is_empty() && self.recovery.is_none() {
            table.extend(self.grace_end().map(|t| (Wait::Grace, t)));
        }
        table
    }

    /// When the startup grace ends (`None` without a start or a grace).
    pub(super) fn grace_end(&self) -> Option<Instant> {
        let grace = self.timeouts.startup_grace;
        if grace.is_zero() {
            return None;
        }
        self.started.and_then(|s| s.checked_add(grace))
    }

    /// Whether the startup grace still holds back a lone first peer.
    pub(super) fn in_startup_grace(&self) -> bool {
        match (self.grace_end(), self.clock) {
            (Some(end), Some(now)) => now < end,
            _ => false,
        }
    }

    /// The instant of entry `wait`, if it is in the table.
    fn deadline_of(&self, wait: Wait) -> Option<Instant> {
        self.deadline_table()
            .into_iter()
            .find(|(w, _)| *w == wait)
            .map(|(_, t)| t)
    }

    /// Fires every entry due at `now`. Each is checked again just before it fires, since
    /// an earlier one may have ended it; an entry armed meanwhile lies after `now`.
    pub(super) fn fire_due(&mut self, now: Instant) {
        let due: Vec<Wait> = self
            .deadline_table()
            .into_iter()
            .filter(|(_, t)| *t <= now)
            .map(|(w, _)| w)
            .collect();
        for wait in due {
            if self.deadline_of(wait).is_some_and(|t| t <= now) {
                self.fire(wait, now);
            }
        }
    }

    fn fire(&mut self, wait: Wait, now: Instant) {
        match wait {
            Wait::Heartbeat(conn) => {
                let reason = format!(
                    "{} for {:?}",
                    super::HEARTBEAT_DEATH,
                    self.timeouts.heartbeat
                );
                self.close(conn, &reason);
            }
            Wait::Registration(conn) => {
                let reason = format!(
                    "did not register within {:?} of its hello",
                    self.timeouts.registration
                );
                tracing::warn!(conn, %reason, "closing connection");
                self.close(conn, &reason);
            }
            Wait::Proposal => {
                let TopologyPhase::Proposing(p) = &self.topology_phase else {
                    return;
                };
                let missing: Vec<PeerId> = p
                    .topology
                    .ring
                    .iter()
                    .map(|e| e.id)
                    .filter(|id| !p.ready.contains(id))
                    .collect();
                let reason = format!(
                    "did not answer topology proposal {} within {:?}",
                    p.id, self.timeouts.proposal
                );
                // The first eviction aborts the proposal (retryable for the others).
                self.evict_all(&missing, &reason);
            }
            Wait::Bandwidth => {
                let TopologyPhase::Measuring { waiting } = &self.topology_phase else {
                    return;
                };
                let missing: Vec<PeerId> = waiting
                    .iter()
                    .filter(|(_, t)| t.is_some_and(|t| t <= now))
                    .map(|(id, _)| *id)
                    .collect();
                // The first eviction ends the measuring (retryable for the others).
                self.evict_all(&missing, "did not report its bandwidth tests in time");
            }
            Wait::SyncReports(group) => {
                let Some(SyncPhase::Reporting { reports, .. }) = self.syncs.get(&group) else {
                    return;
                };
                let missing: Vec<PeerId> = self
                    .group_members(group)
                    .into_iter()
                    .filter(|m| !reports.contains_key(m))
                    .collect();
                let reason = format!(
                    "did not report its shared state within {:?} of the first report",
                    self.timeouts.sync_report
                );
                // Once the last of them is gone, the election runs on the reports.
                self.evict_all(&missing, &reason);
            }
            Wait::SyncTransfer(group) => {
                let Some(SyncPhase::Transferring(t)) = self.syncs.get(&group) else {
                    return;
                };
                let missing: Vec<PeerId> = t.participants.difference(&t.done).copied().collect();
                // Once the last of them is gone, the others get their one result.
                self.evict_all(&missing, "did not finish its shared-state sync in time");
            }
            Wait::Recovery => {
                let window = self.recovery.as_ref().and_then(|r| r.deadline);
                if window.is_some_and(|t| t > now) {
                    // The startup grace ended and nobody is missing.
                    self.try_finish_recovery();
                } else {
                    tracing::warn!(
                        window = ?self.timeouts.recovery_window,
                        "recovery window over: the run goes on with the peers that re-registered"
                    );
                    self.finish_recovery();
                }
            }
            Wait::Grace => self.admit_first_if_empty(),
        }
        // Every wait above has someone missing while it is open (it ends at the last
        // answer), so the evictions end it. Should that ever not hold, end the topology
        // wait anyway rather than fire forever; a wait armed meanwhile lies after `now`.
        if self.deadline_of(wait).is_some_and(|t| t <= now) {
            tracing::error!(?wait, "a fired deadline did not end its wait");
            match wait {
                Wait::Proposal => self.abort_proposal("the proposal timed out", false),
                Wait::Bandwidth => self.fail_measuring("the bandwidth tests timed out"),
                _ => {}
            }
        }
    }

    /// Evicts each of `peers` for `reason`, as if it had died.
    fn evict_all(&mut self, peers: &[PeerId], reason: &str) {
        for peer in peers {
            let Some(conn) = self.by_peer.get(peer).copied() else {
                continue;
            };
            tracing::warn!(%peer, reason, "evicting peer");
            self.close(conn, reason);
        }
    }

    /// Closes `conn` for `reason` and handles it as a death.
    pub(super) fn close(&mut self, conn: ConnId, reason: &str) {
        self.outputs
            .push_back(Output::Close(conn, reason.to_string()));
        self.handle_disconnect(conn, reason);
    }

    /// Ends the `Measuring` phase with a retryable failure for every accepted peer.
    pub(super) fn fail_measuring(&mut self, why: &str) {
        self.set_topology_phase(TopologyPhase::Idle);
        for p in self.ring.clone() {
            self.send_peer(
                p,
                FromMaster::TopologyUpdated {
                    call: self.calls,
                    result: Err(why.to_string()),
                },
            );
        }
    }
}
