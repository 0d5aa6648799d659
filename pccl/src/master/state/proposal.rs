//! Topology proposals: a new ring (newcomers appended, or a re-ordered one) is sent to
//! every peer in it; each dials its new neighbour and answers `P2pReady`. All ready:
//! the ring is committed. One failed dial, one death, or one peer silent past the
//! proposal deadline (evicted, `deadlines`): the proposal is aborted and the old ring
//! stays.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

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

impl MasterState {
    /// Starts admitting every waiting peer: all dial their new ring neighbour first.
    pub(super) fn propose(&mut self) {
        if self.pending.is_empty() {
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
        let newcomers = std::mem::take(&mut self.pending);
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
    /// turned away when the failure may be theirs (an unreachable newcomer must not block
    /// every later update); otherwise they wait for the next update.
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
