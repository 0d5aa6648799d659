//! Rebuilding a run after a master restart (docs/ARCHITECTURE.md §14). The peers hold the
//! truth: a peer whose control connection was lost re-registers with `Rejoin`, naming the
//! ring and epochs it last saw, its ops, its joint call and its sync. A master with no run
//! of its own starts a *recovery* at the first such claim and waits, at most
//! `recovery_window`, for every peer the claims name; then it rebuilds the run in one step:
//!
//! - **ids continue above** every epoch, proposal, joint call and sync round any peer that
//!   re-registers saw (a newcomer's claim counts too), so no id is ever reused;
//! - **the highest epoch wins**, per group: the group's ring is the one of the claim with
//!   the highest epoch for it. Its members that came back keep that epoch when all came
//!   back (nothing is re-wired; ops in flight go on), else the group gets a new epoch
//!   (its ops fail everywhere and are retried, exactly as after a death). A peer that
//!   claims membership but is not in its group's winning ring was removed from the run
//!   before the restart and is refused. A peer the winning ring lists that re-registers
//!   as a newcomer never received the `Commit` that admitted it: it waits for the next
//!   update and its group gets a new epoch, as if it had left. (Making it a member would
//!   need the id of the joint call that admitted it, which no claim carries: members
//!   that missed that call's answer would re-vote in a call the newcomer does not make,
//!   and the joint-call sequences would part);
//! - **decisions some peers missed are given again**: an op verdict, a joint-call answer
//!   or a sync result that one peer received is sent, unchanged, to every peer still
//!   waiting for it (matched by op key, call id and sync round), before anything new is
//!   decided; so every peer sees every decision, in the same order. A member still
//!   reporting gets a sync refusal it lost (`missed_refusal`). A member of a group
//!   that keeps its epoch gets, right after the commit, every verdict of that epoch it
//!   has not seen though it waits on none of them (an op it had not started yet): its
//!   next op of the tag would otherwise take a seq the others have settled. What a peer
//!   that re-registered and then left during the recovery saw counts too: the old master
//!   may have told it alone, and the others must not decide otherwise (a verdict it
//!   alone received, given up with its claim, made the survivors fail and retry an op it
//!   had finished);
//! - what was undecided goes on: op votes and joint-call votes are counted again, a
//!   transfer every participant reports in progress is resumed, a sync whose plans only
//!   some peers got fails for all of them alike (the `SyncDone` a receiver still fetching
//!   sends afterwards is ignored), and reports wait for a new election;
//! - the sync history (who synced last, at which revision) is the highest round any
//!   member reports, so the revision rule and "no revision goes backwards" hold across
//!   the restart.
//!
//! A claim waiting in `update_topology` or `optimize_topology` may predate the ring the
//! old master committed last (the commit ending that call may not have reached it): such
//! a recovery finishes no earlier than the end of the startup grace, when every live peer
//! of the old run is back, so that the newest ring is in hand before anyone is refused.
//!
//! Messages a re-registered peer sends before the run is rebuilt wait in a bounded queue
//! and are handled, in order, right after.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Instant;

use super::ops::OpVote;
use super::phase::{SyncPhase, TopologyPhase};
use super::sync::Transfer;
use super::{ConnId, MasterState, Peer};
use crate::master::election::History;
use crate::types::PeerId;
use crate::wire::{
    Answer, FailReason, FromMaster, MAX_REJOIN_OPS, RefusalRecord, Rejoin, SyncClaim, ToMaster,
    VoteKind,
};

/// Messages one re-registered peer may send before the run is rebuilt: an `OpDone` per op
/// it can have in flight, plus a few joint-call and sync messages.
const MAX_QUEUED_PER_PEER: usize = MAX_REJOIN_OPS + 16;
/// Claims of peers that left during one recovery kept for the decisions they saw; beyond
/// this (only churn far beyond any real run's makes so many) the latest are dropped.
const MAX_DEPARTED: usize = 256;
/// The largest id a claim may carry: far above any real run (2^62 ops), far enough below
/// `u64::MAX` that counting on from it never overflows.
const MAX_CLAIMED_ID: u64 = 1 << 62;

/// A run being rebuilt from re-registering peers.
#[derive(Debug)]
pub(crate) struct Recovery {
    /// The run is rebuilt at the latest then, with whoever came back.
    pub(super) deadline: Option<Instant>,
    /// What each re-registered member claims.
    pub(super) claims: BTreeMap<PeerId, Rejoin>,
    /// Claims of members that re-registered and then left: no longer a say in who is in
    /// the ring, but the decisions they saw are facts (module docs).
    departed: Vec<Rejoin>,
    /// Messages that arrived meanwhile, in order, and how many per connection.
    queued: Vec<(ConnId, ToMaster)>,
    queued_per_conn: BTreeMap<ConnId, usize>,
}

/// One group's ring as the claim with its highest epoch saw it.
struct View {
    epoch: u64,
    ring: Vec<PeerId>,
}

impl MasterState {
    pub(super) fn on_rejoin(&mut self, conn: ConnId, peer: PeerId, claim: Rejoin) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.registered {
            return self.violation(conn, "registered twice");
        }
        if claim.highest_id() > MAX_CLAIMED_ID {
            return self.violation(conn, "re-registered with an id out of range");
        }
        // Every claim counts, a newcomer's too: it may have seen a proposal of the old
        // master, and its dial for it may still answer (`P2pReady`) on this connection.
        self.continue_ids_above(&claim);
        if !claim.accepted {
            // Not a member yet: it waits like any newcomer (and is a member after all if
            // the winning ring of a recovery lists it).
            let ip = claim.advertise_ip;
            return self.on_register(conn, peer, claim.group, claim.p2p_port, ip);
        }
        if self.recovery.is_none() {
            let idle = matches!(self.topology_phase, TopologyPhase::Idle);
            if !self.ring.is_empty() || !idle {
                let why = "the master runs a run this peer is not part of: it was removed \
                           (a death, an eviction, or the recovery window ended without it), \
                           or the master restarted and began a new run before this peer \
                           re-registered";
                tracing::warn!(%peer, "re-registration refused: {why}");
                self.send(conn, FromMaster::RejoinRefused(why.to_string()));
                return self.close(conn, "re-registration refused");
            }
            tracing::warn!(
                %peer,
                window = ?self.timeouts.recovery_window,
                "a peer of an existing run re-registered: rebuilding the run from its peers"
            );
            self.recovery = Some(Recovery {
                deadline: self.deadline_in(self.timeouts.recovery_window),
                claims: BTreeMap::new(),
                departed: Vec::new(),
                queued: Vec::new(),
                queued_per_conn: BTreeMap::new(),
            });
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.registered = true;
        c.rejoined = true;
        let ip = claim.advertise_ip.unwrap_or(c.ip);
        let static_key = c.static_key;
        self.peers.insert(
            peer,
            Peer {
                conn,
                group: claim.group,
                p2p_addr: SocketAddr::new(ip, claim.p2p_port),
                static_key,
            },
        );
        tracing::info!(%peer, group = claim.group, "peer re-registered");
        if let Some(r) = &mut self.recovery {
            r.claims.insert(peer, claim);
        }
        self.try_finish_recovery();
    }

    /// Makes every id this master hands out from now on larger than any id `claim` names
    /// (epochs and proposal ids share one counter; joint calls and sync rounds have their
    /// own), so that no id means two things to one peer (§14, rule 1).
    fn continue_ids_above(&mut self, claim: &Rejoin) {
        self.counter = self.counter.max(claim.max_seen);
        for (_, e) in &claim.topology.group_epochs {
            self.counter = self.counter.max(*e);
        }
        self.calls = self.calls.max(claim.call);
        let planned = match claim.sync {
            SyncClaim::Planned { round, .. } => Some(round),
            _ => None,
        };
        let rounds = [
            claim.synced.map(|s| s.0),
            claim.result.as_ref().map(|r| r.0),
            planned,
        ];
        for r in rounds.into_iter().flatten() {
            self.rounds = self.rounds.max(r);
        }
    }

    /// Peer `peer` left while the run was being rebuilt: its claim no longer names a
    /// member, but what it was told still counts.
    pub(super) fn claimant_left(&mut self, peer: PeerId) {
        let Some(r) = &mut self.recovery else {
            return;
        };
        let Some(claim) = r.claims.remove(&peer) else {
            return;
        };
        if r.departed.len() < MAX_DEPARTED {
            r.departed.push(claim);
        } else {
            tracing::warn!(%peer, "too many peers left during the recovery: its claim is dropped");
        }
    }

    /// Holds a re-registered peer's message until the run is rebuilt.
    pub(super) fn queue_during_recovery(&mut self, conn: ConnId, msg: ToMaster) {
        if matches!(msg, ToMaster::Register { .. } | ToMaster::Rejoin(_)) {
            return self.violation(conn, "registered twice");
        }
        let Some(r) = &mut self.recovery else {
            return;
        };
        let n = r.queued_per_conn.entry(conn).or_insert(0);
        if *n >= MAX_QUEUED_PER_PEER {
            return self.violation(conn, "sent too many messages while the run was rebuilt");
        }
        *n += 1;
        r.queued.push((conn, msg));
    }

    /// Rebuilds the run once every peer the claims name is back (or waits on).
    pub(super) fn try_finish_recovery(&mut self) {
        let due = match self.recovery_hold() {
            None => false,
            Some(None) => true,
            Some(Some(end)) => self.clock.is_some_and(|now| now >= end),
        };
        if due {
            self.finish_recovery();
        }
    }

    /// What the recovery still waits for: `None` while a peer the claims name is not
    /// back; then `Some(None)` if nothing, or `Some(Some(end))`, the end of the startup
    /// grace.
    ///
    /// A claim that waits in `update_topology` or `optimize_topology` may be older than
    /// the ring the old master last committed: the commit that ended that call, and its
    /// answer, may have been lost to this peer, and the newer ring may list peers no claim
    /// in hand names. Such a recovery waits until the grace ends, by when every live peer
    /// of the old run has re-dialled (the grace is twice the longest re-dial delay), so
    /// that the highest epoch in the run is in hand before anyone is turned away.
    pub(super) fn recovery_hold(&self) -> Option<Option<Instant>> {
        let r = self.recovery.as_ref()?;
        if r.claims.is_empty() {
            // Every claimant left: the members still to come must hear what the departed
            // were told, so the recovery holds them (`departed`) until the window ends.
            return None;
        }
        let views = winning_views(&r.claims);
        let back = |p: &PeerId| r.claims.contains_key(p) || self.pending.contains(p);
        if !views.values().all(|v| v.ring.iter().all(back)) {
            return None;
        }
        let topology_call = r.claims.values().any(|c| {
            matches!(
                c.vote,
                Some(VoteKind::UpdateTopology | VoteKind::OptimizeTopology)
            )
        });
        Some(self.grace_end().filter(|_| topology_call))
    }

    /// Rebuilds the run from the claims in hand (see the module docs).
    pub(super) fn finish_recovery(&mut self) {
        let Some(rec) = self.recovery.take() else {
            return;
        };
        let claims = rec.claims;
        // Every claim that says what the old master decided, departed ones included.
        let told: Vec<&Rejoin> = claims.values().chain(&rec.departed).collect();

        // The ring: per group, the winning view's members that came back as members. A
        // peer the view lists that came back as a newcomer never saw the Commit that
        // admitted it: it waits for the next update, as if it had left (see the module
        // docs).
        let views = winning_views(&claims);
        let mut ring: Vec<PeerId> = Vec::new();
        let mut epochs = BTreeMap::new();
        let mut kept = BTreeSet::new();
        for (g, v) in &views {
            // Each peer once, though a claim (forged or corrupt) may list it twice.
            let mut members: Vec<PeerId> = Vec::new();
            for p in &v.ring {
                let in_group = self.peers.get(p).is_some_and(|rec| rec.group == *g);
                if claims.contains_key(p) && in_group && !ring.contains(p) && !members.contains(p) {
                    members.push(*p);
                }
            }
            if members.is_empty() {
                continue;
            }
            let epoch = if members == v.ring {
                kept.insert(*g);
                v.epoch
            } else {
                self.counter += 1;
                self.counter
            };
            ring.extend(&members);
            epochs.insert(*g, epoch);
        }
        let in_ring: BTreeSet<PeerId> = ring.iter().copied().collect();
        self.pending.retain(|p| !in_ring.contains(p));
        let refused: Vec<PeerId> = claims
            .keys()
            .filter(|p| !in_ring.contains(p))
            .copied()
            .collect();
        let members: BTreeMap<PeerId, &Rejoin> = claims
            .iter()
            .filter(|(p, _)| in_ring.contains(p))
            .map(|(p, c)| (*p, c))
            .collect();

        // Verdicts some peers missed, before the commit (they belong to the old epochs).
        let decided: BTreeMap<(u64, u64, u32), Option<FailReason>> = told
            .iter()
            .flat_map(|c| c.verdicts.iter())
            .map(|v| ((v.tag, v.epoch, v.seq), v.failure))
            .collect();
        let mut replayed = BTreeSet::new();
        for (p, c) in &members {
            for op in &c.ops {
                if let Some(f) = decided.get(&(op.tag, op.epoch, op.seq)) {
                    replayed.insert((*p, op.tag));
                    let (tag, epoch, seq, failure) = (op.tag, op.epoch, op.seq, *f);
                    let msg = FromMaster::OpVerdict {
                        tag,
                        epoch,
                        seq,
                        failure,
                    };
                    self.send_peer(*p, msg);
                }
            }
        }

        self.ring = ring;
        self.group_epochs = epochs;
        self.ops.clear();
        self.op_seq.clear();
        self.votes.clear();
        let mut failed_ops = BTreeMap::new();
        for g in &kept {
            self.rebuild_ops(*g, &members, &decided, &replayed, &mut failed_ops);
        }
        tracing::warn!(
            world = self.ring.len(),
            refused = refused.len(),
            waiting = self.pending.len(),
            "run rebuilt after a master restart"
        );
        self.broadcast_commit();
        for g in &kept {
            self.resend_missed_verdicts(*g, &members, &decided, &replayed);
        }

        for (key, failure) in failed_ops {
            self.decide_op(key, failure);
        }
        let op_keys: Vec<(u32, u64)> = self.ops.keys().copied().collect();
        for key in op_keys {
            let members = self.group_members(key.0);
            if members.iter().all(|m| self.ops[&key].done.contains(m)) {
                self.decide_op(key, None);
            }
        }

        self.rebuild_votes(&told, &members);
        let groups: Vec<u32> = self.group_epochs.keys().copied().collect();
        let mut reports = Vec::new();
        for g in groups {
            reports.extend(self.rebuild_sync(g, &told, &members));
        }

        for p in refused {
            if let Some(conn) = self.by_peer.get(&p).copied() {
                let why = "the run was rebuilt without this peer: a newer view of its \
                           group no longer lists it (it had been removed before the \
                           master restarted)";
                tracing::warn!(peer = %p, "re-registration refused: {why}");
                self.send(conn, FromMaster::RejoinRefused(why.to_string()));
                self.close(conn, "re-registration refused");
            }
        }
        // The clock is set: a claim arrived with a `now`.
        if let Some(now) = self.clock {
            for (conn, msg) in reports.into_iter().chain(rec.queued) {
                self.handle_message(now, conn, msg);
            }
        }
        self.try_complete_vote();
        self.admit_first_if_empty();
    }

    /// The members of group `g` (as this master has them) with their claims.
    fn group_claims<'a>(
        &self,
        g: u32,
        members: &BTreeMap<PeerId, &'a Rejoin>,
    ) -> Vec<(PeerId, &'a Rejoin)> {
        members
            .iter()
            .filter(|(p, _)| self.peers.get(p).is_some_and(|rec| rec.group == g))
            .map(|(p, c)| (*p, *c))
            .collect()
    }

    /// Op votes of group `g`, whose epoch was kept: each tag goes on from the highest seq
    /// any member saw decided, and the ops members report at that seq are counted.
    fn rebuild_ops(
        &mut self,
        g: u32,
        members: &BTreeMap<PeerId, &Rejoin>,
        decided: &BTreeMap<(u64, u64, u32), Option<FailReason>>,
        replayed: &BTreeSet<(PeerId, u64)>,
        failed: &mut BTreeMap<(u32, u64), Option<FailReason>>,
    ) {
        let Some(epoch) = self.group_epochs.get(&g).copied() else {
            return;
        };
        let mut next: BTreeMap<u64, u32> = BTreeMap::new();
        for (tag, e, seq) in decided.keys() {
            if *e == epoch {
                let n = next.entry(*tag).or_insert(0);
                *n = (*n).max(seq.saturating_add(1));
            }
        }
        for (tag, n) in &next {
            self.op_seq.insert((g, *tag), *n);
        }
        for (p, c) in self.group_claims(g, members) {
            for op in &c.ops {
                let seq = next.get(&op.tag).copied().unwrap_or(0);
                if op.epoch != epoch || op.seq != seq || replayed.contains(&(p, op.tag)) {
                    continue;
                }
                let vote = self.ops.entry((g, op.tag)).or_insert_with(|| OpVote {
                    epoch,
                    seq,
                    done: BTreeSet::new(),
                });
                if let Some(f) = op.done {
                    vote.done.insert(p);
                    if f.is_some() {
                        failed.entry((g, op.tag)).or_insert(f);
                    }
                }
            }
        }
    }

    /// Group `g` kept its epoch: each member gets, in order, every verdict of that epoch
    /// it has not seen, though it holds no op it waits on for it (those were replayed
    /// before the commit). Its next op of the tag takes the seq after the last verdict
    /// it saw (`Registry::start`): without the verdicts it missed, it would run an op the
    /// others have settled and report it as stale, and the others' next op of the tag
    /// would wait for it for ever. A failure verdict of an op it has not started fails
    /// its call of that op, as it failed everyone else's (`Registry::verdict`).
    ///
    /// What it has seen: the verdicts its claim lists and the op it runs of each tag (at
    /// the seq after its last verdict). A member whose claim names an older epoch has
    /// seen none of this one: the commit just sent starts its counts at zero.
    fn resend_missed_verdicts(
        &mut self,
        g: u32,
        members: &BTreeMap<PeerId, &Rejoin>,
        decided: &BTreeMap<(u64, u64, u32), Option<FailReason>>,
        replayed: &BTreeSet<(PeerId, u64)>,
    ) {
        let Some(epoch) = self.group_epochs.get(&g).copied() else {
            return;
        };
        for (p, c) in self.group_claims(g, members) {
            let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
            if c.topology.group_epoch(g) == Some(epoch) {
                let verdicts = c
                    .verdicts
                    .iter()
                    .map(|v| (v.tag, v.epoch, v.seq.saturating_add(1)));
                // An op replayed before the commit has its verdict now.
                let ops = c.ops.iter().map(|op| {
                    let replay = replayed.contains(&(p, op.tag));
                    (op.tag, op.epoch, op.seq.saturating_add(u32::from(replay)))
                });
                for (tag, e, next) in verdicts.chain(ops) {
                    if e == epoch {
                        let n = seen.entry(tag).or_insert(0);
                        *n = (*n).max(next);
                    }
                }
            }
            // Keys sort by tag, then seq: each tag's verdicts go in the order given.
            let missed: Vec<FromMaster> = decided
                .iter()
                .filter(|((tag, e, seq), _)| {
                    *e == epoch && *seq >= seen.get(tag).copied().unwrap_or(0)
                })
                .map(|(&(tag, epoch, seq), &failure)| FromMaster::OpVerdict {
                    tag,
                    epoch,
                    seq,
                    failure,
                })
                .collect();
            for msg in missed {
                self.send_peer(p, msg);
            }
        }
    }

    /// Joint calls: a member that missed the answer to the last call gets it; the other
    /// members' waiting votes count for the next call.
    ///
    /// The last call is the highest any claim names. A claim may name it without its
    /// answer: a newcomer counts calls from the one that admitted it, which it did not
    /// vote in (`Memory::committed`). Only a successful `update_topology` admits a peer
    /// into a run that has members (an empty run admits its first peer alone, and nobody
    /// waits on a call there), so that call's answer was `TopologyUpdated(Ok)`.
    fn rebuild_votes(&mut self, told: &[&Rejoin], members: &BTreeMap<PeerId, &Rejoin>) {
        let top = told.iter().map(|c| c.call).max().unwrap_or(0);
        let admitted = Answer::TopologyUpdated(Ok(()));
        let last = told
            .iter()
            .filter(|c| c.call == top)
            .find_map(|c| c.answer.as_ref())
            .or_else(|| (top > 0).then_some(&admitted))
            .map(|a| (top, a));
        for (p, c) in members {
            let Some(kind) = c.vote else {
                continue;
            };
            match last {
                Some((call, answer)) if c.call < call => {
                    self.send_peer(*p, answer_message(call, answer, kind));
                }
                _ => {
                    self.votes.insert(*p, kind);
                }
            }
        }
    }

    /// Group `g`'s sync: results some members missed are given again; a transfer every
    /// participant reports is resumed; plans only some got fail for all; reports wait
    /// for a new election (returned, to be handled after the commit). Also rebuilds the
    /// group's sync history.
    fn rebuild_sync(
        &mut self,
        g: u32,
        told: &[&Rejoin],
        members: &BTreeMap<PeerId, &Rejoin>,
    ) -> Vec<(ConnId, ToMaster)> {
        let in_group = self.group_claims(g, members);
        let results: BTreeMap<u64, &Result<(), String>> = told
            .iter()
            .filter(|c| c.group == g)
            .filter_map(|c| c.result.as_ref().map(|(r, res)| (*r, res)))
            .collect();
        let mut synced: BTreeMap<PeerId, (u64, u64)> = in_group
            .iter()
            .filter_map(|(p, c)| c.synced.map(|s| (*p, s)))
            .collect();
        let mut planned = Vec::new();
        let mut reported = Vec::new();
        for (p, c) in &in_group {
            match &c.sync {
                SyncClaim::Idle => {}
                SyncClaim::Planned {
                    round,
                    revision,
                    done,
                } => match results.get(round) {
                    Some(res) => {
                        if res.is_ok() {
                            synced.insert(*p, (*round, *revision));
                        }
                        if done.is_none() {
                            self.stale_sync_done.insert(*p);
                        }
                        let result = (*res).clone();
                        self.send_peer(
                            *p,
                            FromMaster::SyncResult {
                                round: *round,
                                result,
                            },
                        );
                    }
                    None => planned.push((*p, *round, *revision, *done)),
                },
                SyncClaim::Reported { .. } if let Some(f) = missed_refusal(g, c, told) => {
                    let (round, kind, reason) = (f.round, f.kind, f.reason.clone());
                    self.send_peer(
                        *p,
                        FromMaster::SyncRefused {
                            round,
                            kind,
                            reason,
                        },
                    );
                }
                SyncClaim::Reported {
                    revision,
                    strategy,
                    tensors,
                } => reported.push((
                    *p,
                    ToMaster::SyncReport {
                        revision: *revision,
                        strategy: *strategy,
                        tensors: tensors.clone(),
                    },
                )),
            }
        }
        if let Some(&(round, revision)) = synced.values().max_by_key(|s| s.0) {
            let members = synced
                .iter()
                .filter(|(_, s)| s.0 == round)
                .map(|(p, _)| *p)
                .collect();
            let revision = Some(revision);
            self.sync_history.insert(g, History { members, revision });
        }
        let Some(&(_, round, revision, _)) = planned.first() else {
            return reported
                .into_iter()
                .filter_map(|(p, m)| self.peers.get(&p).map(|rec| (rec.conn, m)))
                .collect();
        };
        let same = planned
            .iter()
            .all(|(_, r, v, _)| *r == round && *v == revision);
        if same && reported.is_empty() {
            let participants: BTreeSet<PeerId> = planned.iter().map(|x| x.0).collect();
            let done = planned
                .iter()
                .filter(|x| x.3.is_some())
                .map(|x| x.0)
                .collect();
            let failed = planned
                .iter()
                .find(|x| x.3 == Some(false))
                .map(|x| format!("peer {} could not fetch the shared state", x.0));
            let allowance = self.transfer_allowance(0).max(self.timeouts.sync_report);
            let transfer = Transfer {
                round,
                revision,
                participants,
                done,
                failed,
                deadline: self.deadline_in(allowance),
            };
            self.set_sync_phase(g, SyncPhase::Transferring(transfer));
            self.try_finish_sync(g);
            return Vec::new();
        }
        // Plans went out and not everyone got theirs: nobody may go on alone. A receiver
        // still fetching sends its `SyncDone` all the same (`shared_state::sync`): it is
        // stale when it arrives, not a report of a sync the peer is not part of.
        let why = "the master restarted while this sync was being planned; retry it";
        for (p, r, _, done) in &planned {
            if done.is_none() {
                self.stale_sync_done.insert(*p);
            }
            let result = Err(why.to_string());
            self.send_peer(*p, FromMaster::SyncResult { round: *r, result });
        }
        for (p, _) in &reported {
            let result = Err(why.to_string());
            self.send_peer(*p, FromMaster::SyncResult { round, result });
        }
        Vec::new()
    }
}

/// The refusal of sync round `r` that `claim`, still reporting in group `g`, never got
/// while members of the same membership did: it was lost in the old master's crash, and
/// the others went on, so its report would wait for an election that never comes. Only
/// a refusal given in the epoch the claim still holds (so this peer was a member of that
/// election, and its report was part of it), newer than any sync outcome the claim saw,
/// and of a round that planned nobody (else the lost outcome may have been a plan, and
/// the rules for plans apply).
fn missed_refusal<'a>(g: u32, claim: &Rejoin, told: &[&'a Rejoin]) -> Option<&'a RefusalRecord> {
    let epoch = claim.topology.group_epoch(g)?;
    let seen = [
        claim.result.as_ref().map(|r| r.0),
        claim.refused.as_ref().map(|r| r.round),
        claim.synced.map(|s| s.0),
    ]
    .into_iter()
    .flatten()
    .max();
    let in_group = || told.iter().filter(|c| c.group == g);
    let refusal = in_group()
        .filter_map(|c| c.refused.as_ref())
        .filter(|f| f.epoch == epoch && seen.is_none_or(|s| f.round > s))
        .max_by_key(|f| f.round)?;
    let planned = in_group().any(|c| {
        c.result.as_ref().is_some_and(|r| r.0 == refusal.round)
            || matches!(c.sync, SyncClaim::Planned { round, .. } if round == refusal.round)
    });
    (!planned).then_some(refusal)
}

/// Per group, the ring of the claim with the highest epoch for it (ties: the claim of the
/// smallest peer id, so every master picks the same).
fn winning_views(claims: &BTreeMap<PeerId, Rejoin>) -> BTreeMap<u32, View> {
    let mut views: BTreeMap<u32, View> = BTreeMap::new();
    for c in claims.values() {
        for (g, e) in &c.topology.group_epochs {
            if views.get(g).is_some_and(|v| v.epoch >= *e) {
                continue;
            }
            let ring = c
                .topology
                .ring
                .iter()
                .filter(|p| p.group == *g)
                .map(|p| p.id)
                .collect();
            views.insert(*g, View { epoch: *e, ring });
        }
    }
    views
}

/// The message that gave `answer` to joint call `call`. An answer that does not fit the
/// waiting vote's kind (only a forged claim makes one) is given as a rejection, which
/// every kind of call understands.
fn answer_message(call: u64, answer: &Answer, kind: VoteKind) -> FromMaster {
    match (answer, kind) {
        (Answer::PeersPending(pending), VoteKind::ArePeersPending) => FromMaster::PeersPending {
            call,
            pending: *pending,
        },
        (
            Answer::TopologyUpdated(result),
            VoteKind::UpdateTopology | VoteKind::OptimizeTopology,
        ) => FromMaster::TopologyUpdated {
            call,
            result: result.clone(),
        },
        (Answer::VoteRejected(reason), _) => FromMaster::VoteRejected {
            call,
            reason: reason.clone(),
        },
        _ => FromMaster::VoteRejected {
            call,
            reason: "peers made different joint calls at the same time".into(),
        },
    }
}
