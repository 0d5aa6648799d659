//! The simulator's peer model: how a simulated peer reacts to each message of the master
//! and what it does on its own (start ops, vote, answer proposals), following the
//! protocol as `comm::control` and `collectives::registry` do.

use rand::Rng;

use super::Res;
use super::sim::{Key, Op, Sim, TAGS, short};
use crate::collectives::registry::OpKey;
use crate::master::drive::Bytes;
use crate::types::Topology;
use crate::wire::{Answer, FailReason, FromMaster, ToMaster, VoteKind};

impl Sim {
    /// Delivers the next message of the master to peer `i`, which reacts as a real peer.
    pub(super) fn deliver_to_peer(&mut self, i: usize) -> Res {
        let Some(msg) = self.peers[i].to_peer.pop_front() else {
            return Ok(());
        };
        let conn = self.peers[i].conn;
        self.log(|| format!("peer {i} (conn {conn}) receives {}", short(&msg)));
        if self.peers[i].hostile {
            return Ok(()); // it ignores the master
        }
        match msg {
            FromMaster::HeartbeatAck => {}
            FromMaster::Propose { proposal, topology } => {
                self.peers[i].memory.saw_id(proposal);
                let alive = self.alive();
                let ring = topology.ring.iter().map(|e| e.id).collect();
                let meaning = (ring, topology.group_epochs);
                self.proposals
                    .record(proposal, meaning, i, "proposal", alive)?;
                self.peers[i].proposals.push_back(proposal);
            }
            FromMaster::Commit { topology, call } => self.on_commit(i, topology, call)?,
            FromMaster::PeersPending { call, pending } => {
                self.stats.peers_pending_answers += 1;
                self.answered(i, call, Answer::PeersPending(pending))?;
                self.answer(i, VoteKind::ArePeersPending, true)?;
            }
            FromMaster::TopologyUpdated { call, result: res } => {
                if res.is_ok() {
                    self.stats.updates_ok += 1;
                } else {
                    self.stats.updates_failed += 1;
                }
                let ok = res.is_ok();
                self.answered(i, call, Answer::TopologyUpdated(res))?;
                self.answer(i, VoteKind::UpdateTopology, ok)?;
            }
            // With adversaries in the run, votes may differ: the call fails and is retried.
            FromMaster::VoteRejected { call, reason } if self.adversarial => {
                self.answered(i, call, Answer::VoteRejected(reason))?;
                let kind = self.peers[i].vote.map(|(_, k)| k);
                if let Some(kind) = kind {
                    self.answer(i, kind, false)?;
                }
            }
            FromMaster::VoteRejected { reason: why, .. } => {
                // Every peer runs the same program, so the joint calls always match.
                return Err(format!(
                    "peer {i} (conn {conn}) got VoteRejected({why}) although all peers make the same joint calls (vote {:?})",
                    self.peers[i].vote
                ));
            }
            FromMaster::OpVerdict {
                tag,
                epoch,
                seq,
                failure,
            } => {
                let key = OpKey { tag, epoch, seq };
                self.peers[i].memory.verdict(key, failure);
                self.on_verdict(i, (tag, epoch, seq), failure.is_none())?
            }
            FromMaster::SyncPlan {
                round,
                revision,
                fetch,
                ..
            } => self.on_sync_plan(i, round, revision, fetch)?,
            FromMaster::SyncRefused {
                round,
                kind,
                reason,
            } => self.on_sync_refused(i, round, kind, &reason)?,
            FromMaster::SyncResult { round, result } => self.on_sync_result(i, round, result)?,
            FromMaster::MeasureBandwidth { .. } | FromMaster::RejoinRefused(_) => {
                // The simulated peers never optimise the topology (covered by the scenario
                // and loopback tests), and a refusal comes with a close, which ends the
                // peer before it reads anything more.
                return Err(format!(
                    "peer {i} (conn {conn}) got a message for a call it never made"
                ));
            }
        }
        Ok(())
    }

    /// Peer `i` received the answer to joint call `call`: recorded as `comm::control`
    /// does, and checked to be the answer every peer got for that call.
    fn answered(&mut self, i: usize, call: u64, answer: Answer) -> Res {
        let alive = self.alive();
        let text = format!("{answer:?}");
        self.answers.record(call, text, i, "joint call", alive)?;
        self.peers[i].memory.answered(call, answer);
        Ok(())
    }

    pub(super) fn on_commit(&mut self, i: usize, topology: Topology, call: u64) -> Res {
        let alive = self.alive();
        for (g, e) in &topology.group_epochs {
            let members = topology.group_ring(*g).iter().map(|e| e.id).collect();
            self.epochs.record(*e, (*g, members), i, "epoch", &alive)?;
        }
        let p = &mut self.peers[i];
        let me_in = topology.contains(p.id);
        p.memory.committed(me_in, call, &topology.group_epochs);
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
        // One op, one verdict, on every peer that holds it, across masters.
        let group = p.group;
        let alive = self.alive();
        self.verdicts
            .record((group, key), ok, i, "op verdict", alive)?;
        let p = &mut self.peers[i];
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
        let roll = self.rng.gen_range(0..12);
        if roll >= 10 {
            // The shared state: fetch what a sync plan lists.
            self.fetch(i);
            return Ok(());
        }
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
            self.next_call(i);
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
