//! Shared-state sync rounds, one per group: members report their state (`Reporting`);
//! once every live member has, the election (`master::election`) tells each what to
//! fetch and each holder whom to serve (`Transferring`); once every live participant is done, all get one result and
//! a success becomes the group's sync history. Both waits have deadlines (`deadlines`):
//! a member that has not reported some time after the first report, or a participant
//! not done in time for its largest fetch, is evicted and the round goes on without it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::phase::SyncPhase;
use super::{ConnId, MasterState};
pub(crate) use crate::master::election::Report;
use crate::master::election::{Decision, History, elect};
use crate::types::{PeerId, SyncStrategy};
use crate::wire::{Fetch, FromMaster, TensorReport};

/// The transfer of one group's elected state.
#[derive(Debug)]
pub(crate) struct Transfer {
    /// The round's id: plans and the result carry it (`recovery` matches them up).
    pub(super) round: u64,
    pub(super) revision: u64,
    pub(super) participants: BTreeSet<PeerId>,
    pub(super) done: BTreeSet<PeerId>,
    pub(super) failed: Option<String>,
    /// Participants not done by then are evicted.
    pub(super) deadline: Option<Instant>,
}

impl MasterState {
    pub(super) fn on_sync_report(
        &mut self,
        conn: ConnId,
        peer: PeerId,
        revision: u64,
        strategy: SyncStrategy,
        tensors: Vec<TensorReport>,
    ) {
        let Some(group) = self.ring.contains(&peer).then(|| self.peers[&peer].group) else {
            return self.violation(conn, "synced before being accepted");
        };
        self.stale_sync_done.remove(&peer);
        if !self.syncs.contains_key(&group) {
            let deadline = self.deadline_in(self.timeouts.sync_report);
            self.set_sync_phase(
                group,
                SyncPhase::Reporting {
                    reports: BTreeMap::new(),
                    deadline,
                },
            );
        }
        let Some(SyncPhase::Reporting { reports, .. }) = self.syncs.get_mut(&group) else {
            return self.violation(conn, "reported twice in one shared-state sync");
        };
        if reports.contains_key(&peer) {
            return self.violation(conn, "reported twice in one shared-state sync");
        }
        tracing::debug!(%peer, group, revision, "shared-state report");
        reports.insert(
            peer,
            Report {
                revision,
                strategy,
                tensors,
            },
        );
        self.try_elect(group);
    }

    /// Elects once every live member of the group has reported.
    pub(super) fn try_elect(&mut self, group: u32) {
        let members = self.group_members(group);
        let Some(SyncPhase::Reporting { reports, .. }) = self.syncs.get(&group) else {
            return;
        };
        if !members.iter().all(|m| reports.contains_key(m)) {
            return;
        }
        let history = self.sync_history.get(&group).cloned().unwrap_or_default();
        let decisions = elect(reports, &history);
        tracing::debug!(group, peers = decisions.len(), "shared state elected");
        self.rounds += 1;
        let round = self.rounds;
        let mut participants = BTreeSet::new();
        let mut revision = 0;
        let mut msgs = Vec::new();
        let mut largest_fetch = 0;
        for (peer, d) in decisions {
            match d {
                Decision::Plan {
                    revision: r,
                    fetch,
                    serve,
                } => {
                    let bytes = reports.get(&peer).map_or(0, |r| fetch_bytes(r, &fetch));
                    largest_fetch = largest_fetch.max(bytes);
                    participants.insert(peer);
                    revision = r;
                    msgs.push((
                        peer,
                        FromMaster::SyncPlan {
                            round,
                            revision: r,
                            fetch,
                            serve,
                        },
                    ));
                }
                Decision::Refuse(kind, reason) => {
                    msgs.push((
                        peer,
                        FromMaster::SyncRefused {
                            round,
                            kind,
                            reason,
                        },
                    ));
                }
            }
        }
        let next = if participants.is_empty() {
            SyncPhase::Idle
        } else {
            SyncPhase::Transferring(Transfer {
                round,
                revision,
                participants,
                done: BTreeSet::new(),
                failed: None,
                deadline: self.deadline_in(self.transfer_allowance(largest_fetch)),
            })
        };
        self.set_sync_phase(group, next);
        for (peer, m) in msgs {
            self.send_peer(peer, m);
        }
    }

    pub(super) fn on_sync_done(&mut self, conn: ConnId, peer: PeerId, ok: bool) {
        if self.stale_sync_done.remove(&peer) {
            tracing::debug!(%peer, "stale SyncDone of a sync the recovery ended");
            return;
        }
        let Some(group) = self.peers.get(&peer).map(|p| p.group) else {
            return self.violation(conn, "reported a sync it is not part of");
        };
        let Some(SyncPhase::Transferring(t)) = self.syncs.get_mut(&group) else {
            return self.violation(conn, "reported a sync it is not part of");
        };
        if !t.participants.contains(&peer) {
            return self.violation(conn, "reported a sync it is not part of");
        }
        t.done.insert(peer);
        if !ok {
            t.failed
                .get_or_insert_with(|| format!("peer {peer} could not fetch the shared state"));
        }
        self.try_finish_sync(group);
    }

    /// Ends the sync once every live participant is done: the same result for all.
    pub(super) fn try_finish_sync(&mut self, group: u32) {
        let Some(SyncPhase::Transferring(t)) = self.syncs.get(&group) else {
            return;
        };
        if !t.participants.iter().all(|p| t.done.contains(p)) {
            return;
        }
        let SyncPhase::Transferring(t) = self.set_sync_phase(group, SyncPhase::Idle) else {
            return; // unreachable: checked above
        };
        let result = match t.failed {
            Some(why) => Err(why),
            None => {
                self.sync_history.insert(
                    group,
                    History {
                        members: t.participants.clone(),
                        revision: Some(t.revision),
                    },
                );
                Ok(())
            }
        };
        for p in t.participants {
            let result = result.clone();
            self.send_peer(
                p,
                FromMaster::SyncResult {
                    round: t.round,
                    result,
                },
            );
        }
    }
}

/// The bytes a peer fetches under `fetch`, by the sizes it reported (saturating: sizes
/// come from the network).
fn fetch_bytes(report: &Report, fetch: &[Fetch]) -> u64 {
    fetch
        .iter()
        .filter_map(|f| report.tensors.iter().find(|t| t.name == f.name))
        .map(|t| t.count.saturating_mul(t.dtype.size() as u64))
        .fold(0, u64::saturating_add)
}
