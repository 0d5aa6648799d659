//! The simulator's peer model: how a simulated peer reacts to each message of the master
//! and what it does on its own (start ops, vote, answer proposals), following the
//! protocol as `comm::control` and `collectives::registry` do.

use rand::Rng;

use super::Res;
use super::sim::{Key, Op, Sim, TAGS, short};
use crate::master::drive::Bytes;
use crate::types::Topology;
use crate::wire::{FailReason, FromMaster, ToMaster, VoteKind};

impl Sim {
    /// Delivers the next message of the master to peer `i`, which reacts as a real peer.
    pub(super) fn deliver_to_peer(&mut self, i: usize) -> Res {
        let Some(msg) = self.peers[i].to_peer.pop_front() else {
            return Ok(());
        };
        let conn = i;
        self.log(|| format!("conn {conn} receives {}", short(&msg)));
        if self.peers[i].hostile {
            return Ok(()); // it ignores the master
        }
        match msg {
            FromMaster::HeartbeatAck => {}
            FromMaster::Propose { proposal, .. } => self.peers[i].proposals.push_back(proposal),
            FromMaster::Commit { topology, .. } => self.on_commit(i, topology)?,
            FromMaster::PeersPending { .. } => {
                self.stats.peers_pending_answers += 1;
                self.answer(i, VoteKind::ArePeersPending, true)?;
            }
            FromMaster::TopologyUpdated { result: res, .. } => {
                if res.is_ok() {
                    self.stats.updates_ok += 1;
                } else {
                    self.stats.updates_failed += 1;
                }
                self.answer(i, VoteKind::UpdateTopology, res.is_ok())?;
            }
            // With adversaries in the run, votes may differ: the call fails and is retried.
            FromMaster::VoteRejected { .. } if self.adversarial => {
                let kind = self.peers[i].vote.map(|(_, k)| k);
                if let Some(kind) = kind {
                    self.answer(i, kind, false)?;
                }
            }
            FromMaster::VoteRejected { reason: why, .. } => {
                // Every peer runs the same program, so the joint calls always match.
                return Err(format!(
                    "conn {conn} got VoteRejected({why}) although all peers make the same joint calls (vote {:?})",
                    self.peers[i].vote
                ));
            }
            FromMaster::OpVerdict {
                tag,
                epoch,
                seq,
                failure,
            } => self.on_verdict(i, (tag, epoch, seq), failure.is_none())?,
            FromMaster::SyncPlan { .. }
            | FromMaster::MeasureBandwidth { .. }
            | FromMaster::SyncRefused { .. }
            | FromMaster::SyncResult { .. }
            | FromMaster::RejoinRefused(_) => {
                // The simulated peers never sync shared state nor optimise the topology
                // (covered by the scenario, election and loopback tests).
                return Err(format!(
                    "conn {conn} got a message for a call it never made"
                ));
            }
        }
        Ok(())
    }

    pub(super) fn on_commit(&mut self, i: usize, topology: Topology) -> Res {
        let p = &mut self.peers[i];
        p.accepted = true;
        let epoch = topology.group_epoch(p.group).unwrap_or(0);
        p.last_commit = Some(topology);
        if epoch == p.epoch {
            return Ok(());
        }
        ensure!(
            epoch > p.epoch,
            "conn {i}: group {} epoch went back from {} to {epoch}",
            p.group,
            p.epoch
        );
        // New membership: every op of the old one is aborted and counts restart at zero.
        p.epoch = epoch;
        p.seq.clear();
        let aborted: Vec<Op> = std::mem::take(&mut p.ops).into_values().collect();
        for op in aborted {
            // A peer may still report an aborted op (its report raced the abort); the
            // master must ignore it as stale.
            if let Op::Running((tag, epoch, seq)) = op
                && self.rng.gen_bool(0.3)
            {
                self.send_to_master(
                    i,
                    ToMaster::OpDone {
                        tag,
                        epoch,
                        seq,
                        failure: Some(FailReason::PeerLost),
                    },
                );
            }
        }
        Ok(())
    }

    /// The answer to a joint call: only ever one per call this peer made.
    pub(super) fn answer(&mut self, i: usize, kind: VoteKind, ok: bool) -> Res {
        let p = &mut self.peers[i];
        let Some((pos, voted)) = p.vote.take() else {
            return Err(format!(
                "conn {i} got an answer to {kind:?} without a joint call"
            ));
        };
        ensure!(
            voted == kind,
            "conn {i} voted {voted:?} but got the answer to {kind:?}"
        );
        // A failed update is retried: the program stays at the same call.
        if ok {
            p.pos = pos + 1;
        }
        Ok(())
    }

    pub(super) fn on_verdict(&mut self, i: usize, key: Key, ok: bool) -> Res {
        let p = &mut self.peers[i];
        let (tag, epoch, seq) = key;
        // Commits and verdicts share the connection, so a verdict always arrives in the
        // epoch it was given in.
        ensure!(
            epoch == p.epoch,
            "conn {i} got a verdict for {key:?} in epoch {}",
            p.epoch
        );
        // Every member sees every verdict of its group, in order: seqs agree.
        let next = p.seq.get(&tag).copied().unwrap_or(0);
        ensure!(
            seq == next,
            "conn {i} got a verdict for {key:?} but expected seq {next}"
        );
        if ok {
            ensure!(
                p.ops.get(&tag) == Some(&Op::Reported(key, true)),
                "conn {i} got a success verdict for {key:?} but its op is {:?}",
                p.ops.get(&tag)
            );
        }
        p.seq.insert(tag, seq + 1);
        if let Some(Op::Running(k) | Op::Reported(k, _)) = p.ops.get(&tag)
            && *k == key
        {
            p.ops.remove(&tag);
        }
        Ok(())
    }

    /// Peer `i` does one thing its user program or its protocol code would do.
    pub(super) fn peer_act(&mut self, i: usize) -> Res {
        if self.peers[i].hostile {
            // Any well-formed message, with values that often name real state.
            let bytes: [u8; 32] = self.rng.r#gen();
            let known: Vec<_> = self.peers.iter().map(|p| p.id).collect();
            let msg = crate::master::drive::message(&mut Bytes::new(&bytes), &known);
            self.send_to_master(i, msg);
            return Ok(());
        }
        let roll = self.rng.gen_range(0..10);
        let p = &mut self.peers[i];
        if !p.proposals.is_empty() && (roll < 3 || !p.accepted) {
            // Dialing the new neighbour finished (it occasionally fails).
            let proposal = p.proposals.pop_front().expect("checked");
            let ok = self.rng.gen_bool(0.97);
            self.send_to_master(i, ToMaster::P2pReady { proposal, ok });
            return Ok(());
        }
        if !p.accepted {
            return Ok(());
        }
        if roll < 5 {
            if p.vote.is_none() {
                let pos = p.pos;
                let kind = Self::script_at(&mut self.script, &mut self.rng, pos);
                self.peers[i].vote = Some((pos, kind));
                self.send_to_master(i, ToMaster::Vote(kind));
            }
            return Ok(());
        }
        let tag = self.rng.gen_range(0..TAGS);
        match p.ops.get(&tag).copied() {
            None => {
                let key = (tag, p.epoch, p.seq.get(&tag).copied().unwrap_or(0));
                p.ops.insert(tag, Op::Running(key));
            }
            Some(Op::Running(key)) => {
                let failure = self.rng.gen_bool(0.08).then_some(FailReason::Corrupt);
                self.report(i, key, failure);
            }
            Some(Op::Reported(..)) => {}
        }
        Ok(())
    }

    pub(super) fn report(&mut self, i: usize, key: Key, failure: Option<FailReason>) {
        self.peers[i]
            .ops
            .insert(key.0, Op::Reported(key, failure.is_none()));
        let (tag, epoch, seq) = key;
        self.send_to_master(
            i,
            ToMaster::OpDone {
                tag,
                epoch,
                seq,
                failure,
            },
        );
    }
}
