//! The master's state machine (docs/ARCHITECTURE.md §3): the state, its inputs and outputs. Each kind
//! of work lives in a child module (`membership`, `joint_call`, `proposal`, `bandwidth`,
//! `ops`, `sync`); the phases and their allowed transitions are in `phase`; the bound on
//! every wait for one peer is in `deadlines`.
//!
//! Deterministic: no sockets, no clock, no unseeded randomness — the driver passes `now`
//! into every call and moves the messages.
//!
//! Calling contract:
//! - feed inputs with `handle_connect`, `handle_message`, `handle_disconnect` and
//!   `handle_timeout`; `now` must never go backwards;
//! - after each call, drain `poll_output` until it returns `None`, in order: messages to
//!   one connection must be written in the order they were produced;
//! - sleep until `poll_timeout` (or the next input) and call `handle_timeout`.
//!
//! Every wait on one particular peer has a deadline (`deadlines`): a peer that misses one
//! is evicted as if it had died. `handle_disconnect` carries no time: a deadline it arms
//! (a death can complete a joint call) counts from the latest `now` given to the others.
//!
//! Peers are *registered* (waiting) or *accepted* (in the ring). Joint calls complete
//! when every live accepted peer has asked; a dead peer leaves every vote inside the call
//! that notices its death, and its group's epoch changes so every op it was part of fails
//! on all survivors (they abort ops of an older epoch when the new topology arrives).

mod bandwidth;
mod deadlines;
mod joint_call;
mod membership;
mod ops;
mod phase;
mod proposal;
mod recovery;
mod sync;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use self::deadlines::Timeouts;
use self::ops::OpVote;
#[cfg(test)]
pub(crate) use self::phase::Observed;
pub use self::phase::{
    SYNC_TRANSITIONS, SyncPhaseKind, TOPOLOGY_TRANSITIONS, TopologyPhaseKind, Transition, allowed,
};
use self::phase::{SyncPhase, TopologyPhase};
use self::recovery::Recovery;
use super::election::History;
use crate::types::{PeerEntry, PeerId, Topology};
use crate::wire::{FromMaster, ToMaster, VoteKind};

/// How the reason of a close for silence begins (observers tell deaths from evictions by it).
pub const HEARTBEAT_DEATH: &str = "no heartbeat";

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
    /// The static key the peer proved in the control handshake (zeros in plain mode).
    static_key: [u8; 32],
    connected_at: Instant,
    last_seen: Instant,
    registered: bool,
    /// Registered with `Rejoin` (its messages wait while the run is being recovered).
    rejoined: bool,
}

#[derive(Debug)]
struct Peer {
    conn: ConnId,
    group: u32,
    p2p_addr: SocketAddr,
    static_key: [u8; 32],
}

/// The master's whole state. See the module docs for the calling contract.
#[derive(Debug)]
pub struct MasterState {
    timeouts: Timeouts,
    /// The latest `now` the driver passed in; deadlines are armed from it.
    clock: Option<Instant>,
    conns: BTreeMap<ConnId, Conn>,
    by_peer: BTreeMap<PeerId, ConnId>,
    peers: BTreeMap<PeerId, Peer>,
    /// Accepted peers in ring order.
    ring: Vec<PeerId>,
    /// Registered peers waiting to be accepted, in arrival order.
    pending: Vec<PeerId>,
    /// Newcomers a failed proposal turned away, and when they may be proposed again
    /// (`proposal::Backoff`): one that cannot get in must not fail every update.
    turned_away: BTreeMap<PeerId, proposal::Backoff>,
    group_epochs: BTreeMap<u32, u64>,
    /// Source of epochs and proposal ids; strictly increasing.
    counter: u64,
    /// Id of the last joint call completed (answers carry it); strictly increasing.
    calls: u64,
    /// Id of the last shared-state sync round elected; strictly increasing.
    rounds: u64,
    /// The first `now` the driver passed in: the master's start.
    started: Option<Instant>,
    /// The run being rebuilt from re-registering peers after a master restart.
    recovery: Option<Recovery>,
    /// The run's topology phase (see `phase`).
    topology_phase: TopologyPhase,
    /// Joint-call votes, kept across phases; the call completes in the `Idle` phase.
    votes: BTreeMap<PeerId, VoteKind>,
    ops: BTreeMap<(u32, u64), OpVote>,
    /// Verdicts given per (group, tag) in the group's current epoch.
    op_seq: BTreeMap<(u32, u64), u32>,
    /// Each group's sync phase; a group absent here is `SyncPhase::Idle`.
    syncs: BTreeMap<u32, SyncPhase>,
    sync_history: BTreeMap<u32, History>,
    /// Members whose sync a recovery ended (`recovery::rebuild_sync`) while their
    /// `SyncDone` was still to come: a receiver sends it once its fetch ends, even when
    /// the result got there first, so that one `SyncDone` is stale and ignored. A report
    /// clears the mark: the stale `SyncDone` is sent before the next report, if at all.
    stale_sync_done: BTreeSet<PeerId>,
    /// Measured throughput (bytes/s) from one peer to another.
    bandwidth: BTreeMap<(PeerId, PeerId), u64>,
    outputs: VecDeque<Output>,
    /// Every change of phase, for the tests to check against the transition tables.
    #[cfg(test)]
    observed: Vec<Observed>,
}

impl MasterState {
    /// A master that declares a peer dead after `heartbeat_timeout` of silence, with the
    /// default bound on every other wait.
    pub fn new(heartbeat_timeout: Duration) -> Self {
        Self::with_timeouts(Timeouts {
            heartbeat: heartbeat_timeout,
            ..Timeouts::default()
        })
    }

    /// A master that waits for one peer at most as long as `timeouts` says.
    pub fn with_timeouts(timeouts: Timeouts) -> Self {
        Self {
            timeouts,
            clock: None,
            conns: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            peers: BTreeMap::new(),
            ring: Vec::new(),
            pending: Vec::new(),
            turned_away: BTreeMap::new(),
            group_epochs: BTreeMap::new(),
            counter: 0,
            calls: 0,
            rounds: 0,
            started: None,
            recovery: None,
            topology_phase: TopologyPhase::Idle,
            votes: BTreeMap::new(),
            ops: BTreeMap::new(),
            op_seq: BTreeMap::new(),
            syncs: BTreeMap::new(),
            sync_history: BTreeMap::new(),
            stale_sync_done: BTreeSet::new(),
            bandwidth: BTreeMap::new(),
            outputs: VecDeque::new(),
            #[cfg(test)]
            observed: Vec::new(),
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

    /// Whether connection `conn` has registered (it may be accepted or still waiting).
    pub fn is_registered(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.registered)
    }

    /// The topology in force, as sent to peers.
    pub fn topology(&self) -> Topology {
        self.topology_of(&self.ring, &self.group_epochs)
    }

    /// Whether the master is rebuilding a run from re-registering peers.
    pub fn recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// Whether a topology proposal is waiting for p2p connections.
    pub fn proposal_in_flight(&self) -> bool {
        self.topology_phase.kind() == TopologyPhaseKind::Proposing
    }

    /// The run's topology phase.
    pub fn topology_phase(&self) -> TopologyPhaseKind {
        self.topology_phase.kind()
    }

    /// Group `group`'s shared-state sync phase.
    pub fn sync_phase(&self, group: u32) -> SyncPhaseKind {
        self.syncs
            .get(&group)
            .map_or(SyncPhaseKind::Idle, SyncPhase::kind)
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

    /// The changes of phase made since the last call (test builds only).
    #[cfg(test)]
    pub(crate) fn take_observed(&mut self) -> Vec<Observed> {
        std::mem::take(&mut self.observed)
    }

    // ---- inputs --------------------------------------------------------------------

    /// A connection completed its handshake as `peer`.
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId, peer: PeerId, ip: IpAddr) {
        self.handle_connect_keyed(now, conn, peer, ip, [0; 32]);
    }

    /// [`handle_connect`](Self::handle_connect) in an authenticated run: `static_key` is
    /// the key the peer proved in the control handshake, listed for it in the topology.
    pub fn handle_connect_keyed(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: PeerId,
        ip: IpAddr,
        static_key: [u8; 32],
    ) {
        self.tick(now);
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
                static_key,
                connected_at: now,
                last_seen: now,
                registered: false,
                rejoined: false,
            },
        );
    }

    /// A message arrived on `conn`.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: ToMaster) {
        self.tick(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_seen = now;
        let peer = c.peer;
        if c.rejoined
            && self.recovery.is_some()
            && !matches!(msg, ToMaster::Heartbeat | ToMaster::HeartbeatStats(_))
        {
            // The run is not rebuilt yet: this waits until it is (`recovery`).
            return self.queue_during_recovery(conn, msg);
        }
        match msg {
            // The summary is for observers (the driver's `observe`), not for decisions.
            ToMaster::Heartbeat | ToMaster::HeartbeatStats(_) => {
                self.send(conn, FromMaster::HeartbeatAck)
            }
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
            ToMaster::Rejoin(claim) => self.on_rejoin(conn, peer, *claim),
        }
    }

    /// `conn` closed (or the driver gave up on it).
    pub fn handle_disconnect(&mut self, conn: ConnId, reason: &str) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.by_peer.remove(&c.peer);
        tracing::info!(peer = %c.peer, reason, "peer disconnected");
        self.remove_peer(c.peer, reason);
    }

    /// Fires every deadline due at `now` (see `deadlines`): a connection silent for the
    /// heartbeat timeout is dead, and a peer that missed any other wait is evicted.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        self.fire_due(now);
    }

    // ---- outputs -------------------------------------------------------------------

    /// The earliest instant at which `handle_timeout` has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline_table().into_iter().map(|(_, t)| t).min()
    }

    /// The next thing the driver must do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ---- phases --------------------------------------------------------------------

    /// Enters topology phase `next` and returns the phase left. The only place the
    /// topology phase changes (see `phase::TOPOLOGY_TRANSITIONS`).
    fn set_topology_phase(&mut self, next: TopologyPhase) -> TopologyPhase {
        let prev = std::mem::replace(&mut self.topology_phase, next);
        #[cfg(test)]
        self.observed
            .push(Observed::Topology(prev.kind(), self.topology_phase.kind()));
        prev
    }

    /// Enters sync phase `next` for `group` and returns the phase left. The only place
    /// a sync phase changes (see `phase::SYNC_TRANSITIONS`).
    fn set_sync_phase(&mut self, group: u32, next: SyncPhase) -> SyncPhase {
        #[cfg(test)]
        let to = next.kind();
        let prev = match next {
            SyncPhase::Idle => self.syncs.remove(&group),
            next => self.syncs.insert(group, next),
        }
        .unwrap_or_default();
        #[cfg(test)]
        self.observed.push(Observed::Sync(group, prev.kind(), to));
        prev
    }

    // ---- helpers -------------------------------------------------------------------

    /// Moves the clock to `now` (never back).
    fn tick(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
        self.started.get_or_insert(now);
    }

    fn bump_epoch(&mut self, group: u32) {
        self.counter += 1;
        self.group_epochs.insert(group, self.counter);
        self.reset_group_ops(group);
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
                    static_key: self.peers[id].static_key,
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
                    call: self.calls,
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
        self.close(conn, &reason);
    }
}
