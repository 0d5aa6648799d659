//! Joint calls (`are_peers_pending`, `update_topology`, `optimize_topology`): every live
//! accepted peer votes; the call completes, in the `Idle` topology phase only, once all
//! have voted, and only if all asked for the same thing.

use super::ConnId;
use super::MasterState;
use super::phase::TopologyPhase;
use crate::types::PeerId;
use crate::wire::{FromMaster, VoteKind};

impl MasterState {
    pub(super) fn on_vote(&mut self, conn: ConnId, peer: PeerId, kind: VoteKind) {
        if !self.ring.contains(&peer) {
            return self.violation(conn, "voted before being accepted");
        }
        if self.votes.insert(peer, kind).is_some() {
            return self.violation(conn, "voted twice in one joint call");
        }
        self.try_complete_vote();
    }

    /// Completes the joint call once every live accepted peer has asked.
    pub(super) fn try_complete_vote(&mut self) {
        if !matches!(self.topology_phase, TopologyPhase::Idle) || self.ring.is_empty() {
            return;
        }
        if !self.ring.iter().all(|p| self.votes.contains_key(p)) {
            return;
        }
        let votes = std::mem::take(&mut self.votes);
        // Every answer of this call carries its id, so a peer that missed it when the
        // master died can be given the same answer by the next master (`recovery`).
        self.calls += 1;
        let call = self.calls;
        let Some(first) = votes.values().next().copied() else {
            return; // unreachable: the ring is not empty and all of it voted
        };
        if votes.values().any(|k| *k != first) {
            let why = "peers made different joint calls at the same time".to_string();
            for p in votes.keys() {
                let reason = why.clone();
                self.send_peer(*p, FromMaster::VoteRejected { call, reason });
            }
            return;
        }
        match first {
            VoteKind::ArePeersPending => {
                let pending = self.pending.iter().any(|p| self.may_propose(*p));
                for p in votes.keys() {
                    self.send_peer(*p, FromMaster::PeersPending { call, pending });
                }
            }
            VoteKind::UpdateTopology => self.propose(),
            VoteKind::OptimizeTopology => self.measure_missing(),
        }
    }
}
