//! The simulator's invariants: checked after every step (`check`), and once the cluster
//! has settled, that nothing is left open (`quiesce`, `check_quiet`).

use std::collections::BTreeSet;

use super::Res;
use super::sim::{GROUPS, Key, Life, Op, Sim};
use super::sync_model::SyncCall;
use crate::master::state::{
    Observed, SYNC_TRANSITIONS, SyncPhaseKind, TOPOLOGY_TRANSITIONS, allowed,
};
use crate::types::PeerId;
use crate::wire::{FromMaster, ToMaster};

impl Sim {
    /// Every change of phase the master made since the last call is a row of its
    /// transition tables.
    pub(super) fn check_transitions(&mut self) -> Res {
        for o in self.master.take_observed() {
            let ok = match o {
                Observed::Topology(from, to) => allowed(TOPOLOGY_TRANSITIONS, from, to),
                Observed::Sync(_, from, to) => allowed(SYNC_TRANSITIONS, from, to),
            };
            ensure!(
                ok,
                "phase change {o:?} is not in the master's transition tables"
            );
            self.stats.phase_changes += 1;
        }
        Ok(())
    }

    /// Checked after every step.
    pub(super) fn check(&self) -> Res {
        let ring = self.master.ring();
        let pending = self.master.pending();
        // The master's view holds only peers whose death it has not handled, once.
        let mut seen = BTreeSet::new();
        for id in ring.iter().chain(pending) {
            ensure!(seen.insert(*id), "peer {id} listed twice in ring/pending");
            let p = self.peer_by_id(*id);
            ensure!(
                !self.closed.contains(&p.conn),
                "dead peer {id} (conn {}) still in ring or pending",
                p.conn
            );
        }
        // Invariant: no joint call waits only on dead peers.
        let mut all_voted = !ring.is_empty();
        let voters: BTreeSet<PeerId> = self.master.voters().map(|(id, _)| *id).collect();
        for id in &voters {
            ensure!(ring.contains(id), "vote of {id}, which is not accepted");
        }
        for id in ring {
            all_voted &= voters.contains(id);
        }
        ensure!(
            !all_voted || self.master.proposal_in_flight(),
            "every live accepted peer voted {voters:?} but the joint call is still open"
        );
        // Invariant: no op vote waits only on dead peers, and only current members count.
        let topology = self.master.topology();
        for ((group, tag), (epoch, seq), done) in self.master.op_votes() {
            let members: Vec<PeerId> = topology.group_ring(group).iter().map(|e| e.id).collect();
            ensure!(
                topology.group_epoch(group) == Some(epoch),
                "op vote ({group}, {tag}) at epoch {epoch}, but the group's epoch is {:?}",
                topology.group_epoch(group)
            );
            for id in done {
                ensure!(
                    members.contains(id),
                    "op vote ({group}, {tag}, {epoch}, {seq}) counts {id}, not a member"
                );
            }
            ensure!(
                !members.iter().all(|m| done.contains(m)),
                "every live member of group {group} reported op ({tag}, {epoch}, {seq}) but no verdict"
            );
        }
        // Invariant: a live accepted peer that has received everything sent to it holds
        // the master's topology, so all of them agree on the accepted set and ring order.
        for id in ring {
            let p = self.peer_by_id(*id);
            if p.hostile || p.life != Life::Active || !p.to_peer.is_empty() {
                continue;
            }
            ensure!(
                p.accepted,
                "conn {} is in the ring but was never sent a Commit",
                p.conn
            );
            ensure!(
                p.last_commit.as_ref() == Some(&topology),
                "conn {} holds topology {:?} but the master's is {:?}",
                p.conn,
                p.last_commit,
                topology
            );
        }
        // Invariant: no split run. Once the master is not rebuilding a run, every live
        // peer that holds itself accepted is in the master's one ring (its claim may
        // still be on its way), so, by the check above, all of them run on one topology.
        if !self.master.recovering() {
            for (i, p) in self.peers.iter().enumerate() {
                let claiming = p
                    .to_master
                    .iter()
                    .any(|m| matches!(m, Some(ToMaster::Rejoin(_))));
                if p.hostile || p.life != Life::Active || !p.accepted || claiming {
                    continue;
                }
                ensure!(
                    ring.contains(&p.id),
                    "peer {i} (conn {}) holds itself accepted but is not in the master's ring {ring:?}: a split run",
                    p.conn
                );
            }
        }
        Ok(())
    }

    /// Whether only time can end what is open: a silent peer to time out, a run being
    /// rebuilt (its window), a lone newcomer held by the startup grace.
    fn waits_on_time(&self) -> bool {
        let m = &self.master;
        self.peers.iter().any(|p| p.life == Life::Silent)
            || m.recovering()
            || (m.ring().is_empty() && !m.pending().is_empty())
    }

    /// Adversity stops and every peer does what it must for the open calls to finish;
    /// then every joint call, proposal and op vote must have completed.
    pub(super) fn quiesce(&mut self) -> Res {
        // The adversaries leave first (their sockets reset): the honest peers must then
        // settle as if they had never been there.
        for i in 0..self.peers.len() {
            let conn = self.peers[i].conn;
            if self.peers[i].hostile && !self.closed.contains(&conn) {
                self.log(|| format!("hostile conn {conn} leaves"));
                self.mark_dead(conn);
                self.master.handle_disconnect(conn, "reset");
                self.drain()?;
            }
        }
        for _ in 0..200 {
            // Peers whose master crashed come back first.
            if let Some((at, _)) = self.next_redial() {
                self.advance_to(at)?;
                self.check()?;
                continue;
            }
            // Deliver everything; heartbeat acks alone are no progress.
            let mut progress = false;
            for i in 0..self.peers.len() {
                while !self.peers[i].to_master.is_empty() {
                    progress |= !matches!(
                        self.peers[i].to_master.front(),
                        Some(Some(ToMaster::Heartbeat))
                    );
                    self.deliver_to_master(i)?;
                }
                while !self.peers[i].to_peer.is_empty() {
                    progress |= self.peers[i].to_peer.front() != Some(&FromMaster::HeartbeatAck);
                    self.deliver_to_peer(i)?;
                }
                self.check()?;
            }
            for i in 0..self.peers.len() {
                progress |= self.finish_calls(i);
            }
            if progress {
                continue;
            }
            // Quiet: only time can move things on.
            if !self.waits_on_time() {
                return self.check_quiet();
            }
            self.idle_jump()?;
            self.check()?;
        }
        Err("the cluster does not settle".into())
    }

    /// Peer `i` answers proposals, finishes its ops, and joins the ops and joint calls
    /// its group mates have started. Returns whether it did anything.
    pub(super) fn finish_calls(&mut self, i: usize) -> bool {
        let p = &self.peers[i];
        if p.life != Life::Active || p.hostile {
            return false;
        }
        if let Some(&proposal) = p.proposals.front() {
            self.peers[i].proposals.pop_front();
            self.send_to_master(i, ToMaster::P2pReady { proposal, ok: true });
            return true;
        }
        if !p.accepted {
            return false;
        }
        let mut did = false;
        // Join ops that a member of the same group runs in the same epoch.
        let mut to_start = Vec::new();
        for q in &self.peers {
            if q.life != Life::Active || q.group != p.group || !q.accepted {
                continue;
            }
            for op in q.ops.values() {
                let (Op::Running(k) | Op::Reported(k, _)) = *op;
                let next = p.seq.get(&k.0).copied().unwrap_or(0);
                if k.1 == p.epoch && k.2 == next && !p.ops.contains_key(&k.0) {
                    to_start.push(k);
                }
            }
        }
        for k in to_start {
            self.peers[i].ops.entry(k.0).or_insert(Op::Running(k));
            did = true;
        }
        let running: Vec<Key> = self.peers[i]
            .ops
            .values()
            .filter_map(|op| match op {
                Op::Running(k) => Some(*k),
                Op::Reported(..) => None,
            })
            .collect();
        for k in running {
            self.report(i, k, None);
            did = true;
        }
        // Fetch what a sync plan lists.
        did |= self.fetch(i);
        // Make the next call of the program if another live accepted peer waits in one
        // (a joint call, or a sync of this group: every peer's program makes it too).
        let p = &self.peers[i];
        let others_wait = self.master.sync_phase(p.group) == SyncPhaseKind::Reporting
            || self.peers.iter().any(|q| {
                q.conn != p.conn
                    && q.life == Life::Active
                    && q.accepted
                    && (q.vote.is_some()
                        || matches!(q.shared.call, Some(SyncCall::Reported { .. })))
            });
        if p.vote.is_none() && p.shared.call.is_none() && others_wait {
            self.next_call(i);
            did = true;
        }
        did
    }

    /// After `quiesce`: nothing is left open.
    pub(super) fn check_quiet(&self) -> Res {
        ensure!(
            !self.master.proposal_in_flight(),
            "a proposal is still in flight after the cluster settled"
        );
        ensure!(
            self.master.voters().next().is_none(),
            "votes still open after the cluster settled: {:?}",
            self.master.voters().collect::<Vec<_>>()
        );
        ensure!(
            self.master.op_votes().next().is_none(),
            "op votes still open after the cluster settled: {:?}",
            self.master.op_votes().collect::<Vec<_>>()
        );
        ensure!(
            !self.master.recovering(),
            "the master still rebuilds the run after the cluster settled"
        );
        for g in 0..GROUPS {
            ensure!(
                self.master.sync_phase(g) == SyncPhaseKind::Idle,
                "group {g}'s sync is still {:?} after the cluster settled",
                self.master.sync_phase(g)
            );
        }
        for p in &self.peers {
            if p.life == Life::Active && p.accepted {
                ensure!(
                    p.vote.is_none() && p.ops.is_empty() && p.shared.call.is_none(),
                    "conn {} still waits after the cluster settled: vote {:?}, ops {:?}, sync {:?}",
                    p.conn,
                    p.vote,
                    p.ops,
                    p.shared.call
                );
            }
        }
        Ok(())
    }
}
