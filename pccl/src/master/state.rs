//! The master's state machine (DESIGN §3). Deterministic: no sockets, no clock, no
//! unseeded randomness — the driver passes `now` into every call and moves the messages.
//!
//! Calling contract:
//! - feed inputs with `handle_connect`, `handle_message`, `handle_disconnect` and
//!   `handle_timeout`; `now` must never go backwards;
//! - after each call, drain `poll_output` until it returns `None`, in order: messages to
//!   one connection must be written in the order they were produced;
//! - sleep until `poll_timeout` (or the next input) and call `handle_timeout`.
//!
//! Peers are *registered* (waiting) or *accepted* (in the ring). Joint calls complete
//! when every live accepted peer has asked; a dead peer leaves every vote inside the call
//! that notices its death, and its group's epoch changes so every op it was part of fails
//! on all survivors (they abort ops of an older epoch when the new topology arrives).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::shared_state::{Decision, History, Report, elect};
use crate::topology::solver;
use crate::types::{PeerEntry, PeerId, SyncStrategy, Topology};
use crate::wire::{FailReason, FromMaster, TensorReport, ToMaster, VoteKind};

/// A connection, numbered by the driver.
pub type ConnId = u64;

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this message to the connection.
    Send(ConnId, FromMaster),
    /// Close the connection; the reason is logged.
    Close(ConnId, String),
}

#[derive(Debug)]
struct Conn {
    peer: PeerId,
    ip: IpAddr,
    last_seen: Instant,
    registered: bool,
}

#[derive(Debug)]
struct Peer {
    conn: ConnId,
    group: u32,
    p2p_addr: SocketAddr,
}

#[derive(Debug)]
struct Proposal {
    id: u64,
    topology: Topology,
    newcomers: Vec<PeerId>,
    ready: BTreeSet<PeerId>,
}

/// Votes of one op (group, tag) at one (epoch, seq).
#[derive(Debug)]
struct OpVote {
    epoch: u64,
    seq: u32,
    done: BTreeSet<PeerId>,
}

/// One group's shared-state sync in progress: reports until every live member has
/// reported, then transfers until every participant is done.
#[derive(Debug, Default)]
struct SyncRound {
    reports: BTreeMap<PeerId, Report>,
    transfer: Option<Transfer>,
}

#[derive(Debug)]
struct Transfer {
    revision: u64,
    participants: BTreeSet<PeerId>,
    done: BTreeSet<PeerId>,
    failed: Option<String>,
}

/// The master's whole state. See the module docs for the calling contract.
#[derive(Debug)]
pub struct MasterState {
    heartbeat_timeout: Duration,
    conns: BTreeMap<ConnId, Conn>,
    by_peer: BTreeMap<PeerId, ConnId>,
    peers: BTreeMap<PeerId, Peer>,
    /// Accepted peers in ring order.
    ring: Vec<PeerId>,
    /// Registered peers waiting to be accepted, in arrival order.
    pending: Vec<PeerId>,
    group_epochs: BTreeMap<u32, u64>,
    /// Source of epochs and proposal ids; strictly increasing.
    counter: u64,
    votes: BTreeMap<PeerId, VoteKind>,
    proposal: Option<Proposal>,
    ops: BTreeMap<(u32, u64), OpVote>,
    /// Verdicts given per (group, tag) in the group's current epoch.
    op_seq: BTreeMap<(u32, u64), u32>,
    syncs: BTreeMap<u32, SyncRound>,
    sync_history: BTreeMap<u32, History>,
    /// Measured throughput (bytes/s) from one peer to another.
    bandwidth: BTreeMap<(PeerId, PeerId), u64>,
    /// Peers whose bandwidth report an `optimize_topology` still waits for.
    measuring: Option<BTreeSet<PeerId>>,
    outputs: VecDeque<Output>,
}

impl MasterState {
    /// A master that declares a peer dead after `heartbeat_timeout` of silence.
    pub fn new(heartbeat_timeout: Duration) -> Self {
        Self {
            heartbeat_timeout,
            conns: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            peers: BTreeMap::new(),
            ring: Vec::new(),
            pending: Vec::new(),
            group_epochs: BTreeMap::new(),
            counter: 0,
            votes: BTreeMap::new(),
            proposal: None,
            ops: BTreeMap::new(),
            op_seq: BTreeMap::new(),
            syncs: BTreeMap::new(),
            sync_history: BTreeMap::new(),
            bandwidth: BTreeMap::new(),
            measuring: None,
            outputs: VecDeque::new(),
        }
    }

    // ---- getters -------------------------------------------------------------------

    /// Accepted peers in ring order.
    pub fn ring(&self) -> &[PeerId] {
        &self.ring
    }

    /// Registered peers waiting to be accepted.
    pub fn pending(&self) -> &[PeerId] {
        &self.pending
    }

    /// The topology in force, as sent to peers.
    pub fn topology(&self) -> Topology {
        self.topology_of(&self.ring, &self.group_epochs)
    }

    /// Whether a topology proposal is waiting for p2p connections.
    pub fn proposal_in_flight(&self) -> bool {
        self.proposal.is_some()
    }

    /// Peers that have voted in the open joint call.
    pub fn voters(&self) -> impl Iterator<Item = (&PeerId, &VoteKind)> {
        self.votes.iter()
    }

    /// Peers that have reported op (group, tag) done, with the op's (epoch, seq).
    pub fn op_votes(&self) -> impl Iterator<Item = ((u32, u64), (u64, u32), &BTreeSet<PeerId>)> {
        self.ops
            .iter()
            .map(|(k, v)| (*k, (v.epoch, v.seq), &v.done))
    }

    // ---- inputs --------------------------------------------------------------------

    /// A connection completed its handshake as `peer`.
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId, peer: PeerId, ip: IpAddr) {
        if self.by_peer.contains_key(&peer) {
            self.outputs.push_back(Output::Close(
                conn,
                format!("peer id {peer} is already connected"),
            ));
            return;
        }
        self.by_peer.insert(peer, conn);
        self.conns.insert(
            conn,
            Conn {
                peer,
                ip,
                last_seen: now,
                registered: false,
            },
        );
    }

    /// A message arrived on `conn`.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: ToMaster) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_seen = now;
        let peer = c.peer;
        match msg {
            ToMaster::Heartbeat => self.send(conn, FromMaster::HeartbeatAck),
            ToMaster::Register {
                group,
                p2p_port,
                advertise_ip,
            } => self.on_register(conn, peer, group, p2p_port, advertise_ip),
            ToMaster::Vote(kind) => self.on_vote(conn, peer, kind),
            ToMaster::P2pReady { proposal, ok } => self.on_p2p_ready(peer, proposal, ok),
            ToMaster::OpDone {
                tag,
                epoch,
                seq,
                failure,
            } => self.on_op_done(conn, peer, tag, epoch, seq, failure),
            ToMaster::SyncReport {
                revision,
                strategy,
                tensors,
            } => self.on_sync_report(conn, peer, revision, strategy, tensors),
            ToMaster::SyncDone { ok } => self.on_sync_done(conn, peer, ok),
            ToMaster::BandwidthReport { results } => self.on_bandwidth(peer, results),
        }
    }

    /// `conn` closed (or the driver gave up on it).
    pub fn handle_disconnect(&mut self, conn: ConnId, reason: &str) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.by_peer.remove(&c.peer);
        tracing::info!(peer = %c.peer, reason, "peer disconnected");
        self.remove_peer(c.peer);
    }

    /// Fires every deadline due at `now`: peers silent for the heartbeat timeout are dead.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_seen) >= self.heartbeat_timeout)
            .map(|(id, _)| *id)
            .collect();
        for conn in expired {
            let reason = format!("no heartbeat for {:?}", self.heartbeat_timeout);
            self.outputs.push_back(Output::Close(conn, reason.clone()));
            self.handle_disconnect(conn, &reason);
        }
    }

    // ---- outputs -------------------------------------------------------------------

    /// The earliest instant at which `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .map(|c| c.last_seen + self.heartbeat_timeout)
            .min()
    }

    /// The next thing the driver must do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ---- transitions ---------------------------------------------------------------

    fn on_register(
        &mut self,
        conn: ConnId,
        peer: PeerId,
        group: u32,
        p2p_port: u16,
        advertise_ip: Option<IpAddr>,
    ) {
        let c = self.conns.get_mut(&conn).expect("caller checked");
        if c.registered {
            return self.violation(conn, "registered twice");
        }
        c.registered = true;
        let ip = advertise_ip.unwrap_or(c.ip);
        self.peers.insert(
            peer,
            Peer {
                conn,
                group,
                p2p_addr: SocketAddr::new(ip, p2p_port),
            },
        );
        self.pending.push(peer);
        tracing::info!(%peer, group, "peer registered");
        self.admit_first_if_empty();
    }

    /// An empty run has nobody to vote newcomers in: the first waiting peer is accepted
    /// on its own (a ring of one needs no p2p connections).
    fn admit_first_if_empty(&mut self) {
        if !self.ring.is_empty() || self.proposal.is_some() || self.pending.is_empty() {
            return;
        }
        let peer = self.pending.remove(0);
        self.ring.push(peer);
        let group = self.peers[&peer].group;
        self.bump_epoch(group);
        tracing::info!(%peer, "first peer accepted");
        self.broadcast_commit();
    }

    fn on_vote(&mut self, conn: ConnId, peer: PeerId, kind: VoteKind) {
        if !self.ring.contains(&peer) {
            return self.violation(conn, "voted before being accepted");
        }
        if self.votes.insert(peer, kind).is_some() {
            return self.violation(conn, "voted twice in one joint call");
        }
        self.try_complete_vote();
    }

    /// Completes the joint call once every live accepted peer has asked.
    fn try_complete_vote(&mut self) {
        if self.proposal.is_some() || self.measuring.is_some() || self.ring.is_empty() {
            return;
        }
        if !self.ring.iter().all(|p| self.votes.contains_key(p)) {
            return;
        }
        let votes = std::mem::take(&mut self.votes);
        let first = votes.values().next().copied().expect("ring is not empty");
        if votes.values().any(|k| *k != first) {
            let why = "peers made different joint calls at the same time".to_string();
            for p in votes.keys() {
                self.send_peer(*p, FromMaster::VoteRejected(why.clone()));
            }
            return;
        }
        match first {
            VoteKind::ArePeersPending => {
                let pending = !self.pending.is_empty();
                for p in votes.keys() {
                    self.send_peer(*p, FromMaster::PeersPending(pending));
                }
            }
            VoteKind::UpdateTopology => self.propose(),
            VoteKind::OptimizeTopology => self.measure_missing(),
        }
    }

    /// Asks every peer to test the links to peers it has no figure for (DESIGN §7).
    fn measure_missing(&mut self) {
        let ring = self.ring.clone();
        let mut waiting = BTreeSet::new();
        for p in &ring {
            let group = self.peers[p].group;
            let targets: Vec<PeerId> = ring
                .iter()
                .filter(|q| *q != p && self.peers[*q].group == group)
                .filter(|q| !self.bandwidth.contains_key(&(*p, **q)))
                .copied()
                .collect();
            if !targets.is_empty() {
                waiting.insert(*p);
                self.send_peer(*p, FromMaster::MeasureBandwidth { targets });
            }
        }
        if waiting.is_empty() {
            self.reorder_ring();
        } else {
            self.measuring = Some(waiting);
        }
    }

    fn on_bandwidth(&mut self, peer: PeerId, results: Vec<(PeerId, u64)>) {
        let Some(waiting) = self.measuring.as_mut() else {
            return;
        };
        if !waiting.remove(&peer) {
            return;
        }
        for (to, bps) in results {
            if self.peers.contains_key(&to) {
                self.bandwidth.insert((peer, to), bps);
            }
        }
        if waiting.is_empty() {
            self.measuring = None;
            self.reorder_ring();
        }
    }

    /// Solves each group's ring for the best bottleneck and re-wires it if it improves.
    fn reorder_ring(&mut self) {
        let mut groups: Vec<u32> = Vec::new();
        for p in &self.ring {
            let g = self.peers[p].group;
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let mut ring = Vec::with_capacity(self.ring.len());
        let mut epochs = self.group_epochs.clone();
        for g in groups {
            let members = self.group_members(g);
            let bw = |a: usize, b: usize| {
                self.bandwidth
                    .get(&(members[a], members[b]))
                    .copied()
                    .unwrap_or(0) as f64
            };
            let current: Vec<usize> = (0..members.len()).collect();
            let order = solver::best_ring(&current, &bw);
            if order != current {
                self.counter += 1;
                epochs.insert(g, self.counter);
            }
            ring.extend(order.into_iter().map(|i| members[i]));
        }
        if epochs == self.group_epochs {
            tracing::info!("topology already optimal");
            for p in self.ring.clone() {
                self.send_peer(p, FromMaster::TopologyUpdated(Ok(())));
            }
            return;
        }
        tracing::info!("re-ordered ring proposed");
        self.start_proposal(&ring, &epochs, Vec::new());
    }

    /// Sends `ring` to everyone in it to dial, and waits for their `P2pReady`.
    fn start_proposal(
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
        self.proposal = Some(Proposal {
            id,
            topology,
            newcomers,
            ready: BTreeSet::new(),
        });
    }

    /// Starts admitting every waiting peer: all dial their new ring neighbour first.
    fn propose(&mut self) {
        if self.pending.is_empty() {
            for p in self.ring.clone() {
                self.send_peer(p, FromMaster::TopologyUpdated(Ok(())));
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

    fn on_p2p_ready(&mut self, peer: PeerId, proposal: u64, ok: bool) {
        let Some(p) = self.proposal.as_mut() else {
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

    fn commit_proposal(&mut self) {
        let p = self.proposal.take().expect("caller checked");
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
                self.send_peer(id, FromMaster::TopologyUpdated(Ok(())));
            }
        }
        self.try_complete_vote();
    }

    /// Gives up on the proposal: accepted peers get a retryable failure. Newcomers are
    /// turned away when the failure may be theirs (an unreachable newcomer must not block
    /// every later update); otherwise they wait for the next update.
    fn abort_proposal(&mut self, why: &str, kick_newcomers: bool) {
        let Some(p) = self.proposal.take() else {
            return;
        };
        tracing::warn!(proposal = p.id, why, "topology update failed");
        for id in self.ring.clone() {
            self.send_peer(id, FromMaster::TopologyUpdated(Err(why.to_string())));
        }
        for n in p.newcomers.into_iter().rev() {
            if !self.peers.contains_key(&n) {
                continue;
            }
            if kick_newcomers {
                let conn = self.peers[&n].conn;
                self.outputs
                    .push_back(Output::Close(conn, format!("not admitted: {why}")));
                self.handle_disconnect(conn, why);
            } else {
                self.pending.insert(0, n);
            }
        }
        self.try_complete_vote();
    }

    fn on_op_done(
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
    fn decide_op(&mut self, key: (u32, u64), failure: Option<FailReason>) {
        let vote = self.ops.remove(&key).expect("caller checked");
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

    fn on_sync_report(
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
        let round = self.syncs.entry(group).or_default();
        if round.transfer.is_some() || round.reports.contains_key(&peer) {
            return self.violation(conn, "reported twice in one shared-state sync");
        }
        tracing::debug!(%peer, group, revision, "shared-state report");
        round.reports.insert(
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
    fn try_elect(&mut self, group: u32) {
        let members = self.group_members(group);
        let Some(round) = self.syncs.get_mut(&group) else {
            return;
        };
        if round.transfer.is_some() || !members.iter().all(|m| round.reports.contains_key(m)) {
            return;
        }
        let history = self.sync_history.get(&group).cloned().unwrap_or_default();
        let decisions = elect(&round.reports, &history);
        tracing::debug!(group, peers = decisions.len(), "shared state elected");
        let mut participants = BTreeSet::new();
        let mut revision = 0;
        let mut msgs = Vec::new();
        for (peer, d) in decisions {
            match d {
                Decision::Plan { revision: r, fetch } => {
                    participants.insert(peer);
                    revision = r;
                    msgs.push((peer, FromMaster::SyncPlan { revision: r, fetch }));
                }
                Decision::Refuse(kind, reason) => {
                    msgs.push((peer, FromMaster::SyncRefused { kind, reason }));
                }
            }
        }
        if participants.is_empty() {
            self.syncs.remove(&group);
        } else {
            round.transfer = Some(Transfer {
                revision,
                participants,
                done: BTreeSet::new(),
                failed: None,
            });
        }
        for (peer, m) in msgs {
            self.send_peer(peer, m);
        }
    }

    fn on_sync_done(&mut self, conn: ConnId, peer: PeerId, ok: bool) {
        let group = self.peers.get(&peer).map(|p| p.group);
        let transfer = group
            .and_then(|g| self.syncs.get_mut(&g))
            .and_then(|r| r.transfer.as_mut())
            .filter(|t| t.participants.contains(&peer));
        let Some(t) = transfer else {
            return self.violation(conn, "reported a sync it is not part of");
        };
        t.done.insert(peer);
        if !ok {
            t.failed
                .get_or_insert_with(|| format!("peer {peer} could not fetch the shared state"));
        }
        self.try_finish_sync(group.expect("checked"));
    }

    /// Ends the sync once every live participant is done: the same result for all.
    fn try_finish_sync(&mut self, group: u32) {
        let Some(t) = self.syncs.get(&group).and_then(|r| r.transfer.as_ref()) else {
            return;
        };
        if !t.participants.iter().all(|p| t.done.contains(p)) {
            return;
        }
        let t = self
            .syncs
            .remove(&group)
            .and_then(|r| r.transfer)
            .expect("checked");
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
            self.send_peer(p, FromMaster::SyncResult(result.clone()));
        }
    }

    fn remove_peer(&mut self, peer: PeerId) {
        let Some(rec) = self.peers.remove(&peer) else {
            return;
        };
        self.bandwidth.retain(|(a, b), _| *a != peer && *b != peer);
        if self.measuring.is_some() && self.ring.contains(&peer) {
            // The measurements included the dead peer: give up; the old ring stays and the
            // call is retryable.
            self.measuring = None;
            let why = format!("peer {peer} died during the bandwidth tests");
            for p in self.ring.clone() {
                if p != peer {
                    self.send_peer(p, FromMaster::TopologyUpdated(Err(why.clone())));
                }
            }
        }
        if let Some(round) = self.syncs.get_mut(&rec.group) {
            round.reports.remove(&peer);
            if let Some(t) = round.transfer.as_mut() {
                t.participants.remove(&peer);
                t.done.remove(&peer);
            }
        }
        self.votes.remove(&peer);
        self.pending.retain(|p| *p != peer);
        if let Some(p) = &self.proposal {
            if p.newcomers.contains(&peer) {
                self.abort_proposal(&format!("newcomer {peer} left"), false);
            } else if p.topology.contains(peer) {
                self.abort_proposal(&format!("peer {peer} died"), false);
            }
        }
        if let Some(pos) = self.ring.iter().position(|p| *p == peer) {
            self.ring.remove(pos);
            if self.ring.iter().any(|p| self.peers[p].group == rec.group) {
                self.bump_epoch(rec.group);
            } else {
                self.group_epochs.remove(&rec.group);
                self.reset_group_ops(rec.group);
            }
            tracing::info!(%peer, world = self.ring.len(), "peer removed from the ring");
            self.broadcast_commit();
            self.try_complete_vote();
            self.try_elect(rec.group);
            self.try_finish_sync(rec.group);
        }
        self.admit_first_if_empty();
    }

    // ---- helpers -------------------------------------------------------------------

    fn bump_epoch(&mut self, group: u32) {
        self.counter += 1;
        self.group_epochs.insert(group, self.counter);
        self.reset_group_ops(group);
    }

    /// A new membership starts every op count of the group from zero; open votes belong
    /// to the old membership and their peers abort them on the new topology.
    fn reset_group_ops(&mut self, group: u32) {
        self.ops.retain(|(g, _), _| *g != group);
        self.op_seq.retain(|(g, _), _| *g != group);
    }

    fn group_members(&self, group: u32) -> Vec<PeerId> {
        self.ring
            .iter()
            .copied()
            .filter(|p| self.peers[p].group == group)
            .collect()
    }

    fn topology_of(&self, ring: &[PeerId], epochs: &BTreeMap<u32, u64>) -> Topology {
        Topology {
            ring: ring
                .iter()
                .map(|id| PeerEntry {
                    id: *id,
                    group: self.peers[id].group,
                    p2p_addr: self.peers[id].p2p_addr,
                })
                .collect(),
            group_epochs: epochs.iter().map(|(g, e)| (*g, *e)).collect(),
        }
    }

    fn broadcast_commit(&mut self) {
        let topology = self.topology();
        for p in self.ring.clone() {
            self.send_peer(
                p,
                FromMaster::Commit {
                    topology: topology.clone(),
                },
            );
        }
    }

    fn send(&mut self, conn: ConnId, msg: FromMaster) {
        self.outputs.push_back(Output::Send(conn, msg));
    }

    fn send_peer(&mut self, peer: PeerId, msg: FromMaster) {
        if let Some(p) = self.peers.get(&peer) {
            let conn = p.conn;
            self.send(conn, msg);
        }
    }

    /// A peer broke the protocol: drop it, as if it had died.
    fn violation(&mut self, conn: ConnId, what: &str) {
        let reason = format!("protocol violation: {what}");
        tracing::warn!(conn, %reason, "closing connection");
        self.outputs.push_back(Output::Close(conn, reason.clone()));
        self.handle_disconnect(conn, &reason);
    }
}
