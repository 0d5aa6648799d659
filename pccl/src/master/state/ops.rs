//! Op votes: every member of a group reports each collective op (group, tag, epoch, seq)
//! done or failed; one verdict goes to all once every live member has reported, or at
//! the first failure. Votes of different (group, tag) are independent and concurrent;
//! a new epoch of the group discards its open votes and restarts its counts.

use std::collections::BTreeSet;

use super::{ConnId, MasterState};
use crate::types::PeerId;
use crate::wire::{FailReason, FromMaster};

/// Votes of one op (group, tag) at one (epoch, seq).
#[derive(Debug)]
pub(crate) struct OpVote {
    pub(super) epoch: u64,
    pub(super) seq: u32,
    pub(super) done: BTreeSet<PeerId>,
}

impl MasterState {
    pub(super) fn on_op_done(
        &mut self,
        conn: ConnId,
        peer: PeerId,
        tag: u64,
        epoch: u64,
        seq: u32,
        failure: Option<FailReason>,
    ) {
        let Some(group) = self.ring.contains(&peer).then(|| self.peers[&peer].group) else {
            return self.violation(conn, "reported an op before being accepted");
        };
        let key = (group, tag);
        let current = self.group_epochs.get(&group).copied();
        let next_seq = self.op_seq.get(&key).copied().unwrap_or(0);
        if current != Some(epoch) || seq < next_seq {
            // A stale op: the peer has aborted it or already has its verdict.
            return;
        }
        if seq > next_seq {
            return self.violation(conn, "reported an op ahead of its verdicts");
        }
        let vote = self.ops.entry(key).or_insert_with(|| OpVote {
            epoch,
            seq,
            done: BTreeSet::new(),
        });
        vote.done.insert(peer);
        if let Some(f) = failure {
            return self.decide_op(key, Some(f));
        }
        let members = self.group_members(group);
        if members.iter().all(|m| self.ops[&key].done.contains(m)) {
            self.decide_op(key, None);
        }
    }

    /// Sends one verdict for op `key` to every live member of its group.
    pub(super) fn decide_op(&mut self, key: (u32, u64), failure: Option<FailReason>) {
        let Some(vote) = self.ops.remove(&key) else {
            return;
        };
        *self.op_seq.entry(key).or_insert(0) += 1;
        let msg = FromMaster::OpVerdict {
            tag: key.1,
            epoch: vote.epoch,
            seq: vote.seq,
            failure,
        };
        for m in self.group_members(key.0) {
            self.send_peer(m, msg.clone());
        }
    }

    /// A new membership starts every op count of the group from zero; open votes belong
    /// to the old membership and their peers abort them on the new topology.
    pub(super) fn reset_group_ops(&mut self, group: u32) {
        self.ops.retain(|(g, _), _| *g != group);
        self.op_seq.retain(|(g, _), _| *g != group);
    }
}
