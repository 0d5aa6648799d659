//! Topology proposals: a new ring (newcomers appended, or a re-ordered one) is sent to
//! every peer in it; each dials its new neighbour and answers `P2pReady`. All ready:
//! the ring is committed. One failed dial, one death, or one peer silent past the
//! proposal deadline (evicted, `deadlines`): the proposal is aborted and the old ring
//! stays.
//!
//! A newcomer turned away by a failed dial waits out a backoff before it is proposed
//! again, however soon it re-registers: each failed proposal fails every member's
//! `update_topology`, so a newcomer that cannot get in (its neighbour's listener is
//! flooded, a firewall drops it) must not hold the run in a loop of failed updates
//! (docs/ARCHITECTURE.md §3, "Admission backoff").

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::phase::TopologyPhase;
use super::{MasterState, Output};
use crate::types::{PeerId, Topology};
use crate::wire::FromMaster;

/// A ring waiting for its peers' p2p connections.
#[derive(Debug)]
pub(crate) struct Proposal {
    pub(super) id: u64,
    pub(super) topology: Topology,
    pub(super) newcomers: Vec<PeerId>,
    pub(super) ready: BTreeSet<PeerId>,
    /// Peers not ready by then are evicted.
    pub(super) deadline: Option<Instant>,
}

/// The wait after a newcomer's first failed admission; each further failure doubles it.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two admissions of one newcomer.
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// A newcomer not turned away again for this long starts over from `BACKOFF_FIRST`.
const BACKOFF_FORGET: Duration = Duration::from_secs(60);
/// At most this many turned-away newcomers are remembered (a stranger could register
/// under ever new ids); beyond it the one turned away longest ago is forgotten.
const BACKOFF_ENTRIES: usize = 1024;

/// How long a turned-away newcomer waits before its next proposal.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    failures: u32,
    /// Not proposed before this.
    until: Instant,
    /// When it was last turned away.
    at: Instant,
}

impl MasterState {
    /// Whether waiting peer `peer` may be part of the next proposal: it is not inside the
    /// backoff of an earlier failed admission.
    pub(super) fn may_propose(&self, peer: PeerId) -> bool {
        match (self.turned_away.get(&peer), self.clock) {
            (Some(b), Some(now)) => now >= b.until,
            _ => true,
        }
    }

    /// Records that newcomer `peer` was turned away now; its next proposal waits.
    fn back_off(&mut self, peer: PeerId) {
        let Some(now) = self.clock else {
            return;
        };
        self.turned_away
            .retain(|_, b| now.saturating_duration_since(b.at) < BACKOFF_FORGET);
        let failures = self.turned_away.get(&peer).map_or(0, |b| b.failures) + 1;
        if failures == 1 && self.turned_away.len() >= BACKOFF_ENTRIES {
            let oldest = self.turned_away.iter().min_by_key(|(_, b)| b.at);
            if let Some(id) = oldest.map(|(id, _)| *id) {
                self.turned_away.remove(&id);
            }
        }
        let wait = BACKOFF_FIRST
            .saturating_mul(1 << (failures - 1).min(16))
            .min(BACKOFF_MAX);
        let until = now.checked_add(wait).unwrap_or(now);
        tracing::info!(%peer, failures, ?wait, "newcomer turned away: backing off");
        self.turned_away.insert(
            peer,
            Backoff {
                failures,
                until,
                at: now,
            },
        );
    }

    /// Starts admitting every waiting peer outside its backoff: all dial their new ring
    /// neighbour first.
    pub(super) fn propose(&mut self) {
        let (newcomers, deferred): (Vec<PeerId>, Vec<PeerId>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| self.may_propose(*p));
        self.pending = deferred;
        if newcomers.is_empty() {
            for p in self.ring.clone() {
                self.send_peer(
                    p,
                    FromMaster::TopologyUpdated {
                        call: self.calls,
                        result: Ok(()),
                    },
                );
            }
            return;
        }
        let mut ring = self.ring.clone();
        ring.extend(newcomers.iter().copied());
        let mut epochs = self.group_epochs.clone();
        for p in &newcomers {
            let g = self.peers[p].group;
            self.counter += 1;
            epochs.insert(g, self.counter);
        }
        self.start_proposal(&ring, &epochs, newcomers);
    }

    /// Sends `ring` to everyone in it to dial, and waits for their `P2pReady`.
    pub(super) fn start_proposal(
        &mut self,
        ring: &[PeerId],
        epochs: &BTreeMap<u32, u64>,
        newcomers: Vec<PeerId>,
    ) {
        self.counter += 1;
        let id = self.counter;
        let topology = self.topology_of(ring, epochs);
        tracing::info!(
            proposal = id,
            newcomers = newcomers.len(),
            "topology proposed"
        );
        for p in ring {
            self.send_peer(
                *p,
                FromMaster::Propose {
                    proposal: id,
                    topology: topology.clone(),
                },
            );
        }
        self.set_topology_phase(TopologyPhase::Proposing(Proposal {
            id,
            topology,
            newcomers,
            ready: BTreeSet::new(),
            deadline: self.deadline_in(self.timeouts.proposal),
        }));
    }

    pub(super) fn on_p2p_ready(&mut self, peer: PeerId, proposal: u64, ok: bool) {
        let TopologyPhase::Proposing(p) = &mut self.topology_phase else {
            return;
        };
        if p.id != proposal || !p.topology.contains(peer) {
            return;
        }
        if !ok {
            return self.abort_proposal(
                &format!("peer {peer} could not connect to its neighbour"),
                true,
            );
        }
        p.ready.insert(peer);
        if p.topology.ring.iter().all(|e| p.ready.contains(&e.id)) {
            self.commit_proposal();
        }
    }

    /// Ends the proposal, if one is in flight, and returns it.
    fn take_proposal(&mut self) -> Option<Proposal> {
        if !matches!(self.topology_phase, TopologyPhase::Proposing(_)) {
            return None;
        }
        match self.set_topology_phase(TopologyPhase::Idle) {
            TopologyPhase::Proposing(p) => Some(p),
            _ => None,
        }
    }

    fn commit_proposal(&mut self) {
        let Some(p) = self.take_proposal() else {
            return;
        };
        self.ring = p.topology.ring.iter().map(|e| e.id).collect();
        for n in &p.newcomers {
            self.turned_away.remove(n);
        }
        for (g, e) in &p.topology.group_epochs {
            if self.group_epochs.insert(*g, *e) != Some(*e) {
                self.reset_group_ops(*g);
            }
        }
        tracing::info!(world = self.ring.len(), "topology committed");
        self.broadcast_commit();
        for id in self.ring.clone() {
            if !p.newcomers.contains(&id) {
                self.send_peer(
                    id,
                    FromMaster::TopologyUpdated {
                        call: self.calls,
                        result: Ok(()),
                    },
                );
            }
        }
        self.try_complete_vote();
    }

    /// Gives up on the proposal: accepted peers get a retryable failure. Newcomers are
    /// turned away, and back off, when the failure may be theirs (an unreachable newcomer
    /// must not block every later update); otherwise they wait for the next update.
    pub(super) fn abort_proposal(&mut self, why: &str, kick_newcomers: bool) {
        let Some(p) = self.take_proposal() else {
            return;
        };
        tracing::warn!(proposal = p.id, why, "topology update failed");
        for id in self.ring.clone() {
            self.send_peer(
                id,
                FromMaster::TopologyUpdated {
                    call: self.calls,
                    result: Err(why.to_string()),
                },
            );
        }
        for n in p.newcomers.into_iter().rev() {
            let Some(conn) = self.peers.get(&n).map(|rec| rec.conn) else {
                continue;
            };
            if kick_newcomers {
                self.back_off(n);
                self.outputs
                    .push_back(Output::Close(conn, format!("not admitted: {why}")));
                self.handle_disconnect(conn, why);
            } else {
                self.pending.insert(0, n);
            }
        }
        self.try_complete_vote();
    }
}
