//! The cluster simulator: drives [`MasterState`] as the tokio server does (virtual
//! clock, outputs drained after every input) and plays every peer with a small client
//! model that follows the protocol as `comm::control` and `collectives::registry` do. Messages
//! travel in per-connection FIFO queues, one per direction; a seeded RNG picks which
//! queue moves next, so deliveries interleave across peers but never reorder on one
//! connection. Its peers are in `peer_model` and `sync_model`, master crashes and the
//! peers' re-registration in `crash`, its invariant checks in `invariants`, the random
//! runs in `property`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::crash::Ledger;
use super::sync_model::SharedModel;
use super::{HB_INTERVAL, HB_TIMEOUT, Res};
use crate::comm::reconnect::Memory;
use crate::master::state::{ConnId, MasterState, Output};
use crate::types::{PeerId, Topology};
use crate::wire::{FromMaster, ToMaster, VoteKind};

/// Most peers one run ever connects (initial ones plus newcomers).
const MAX_PEERS_PER_RUN: usize = 12;
pub(super) const TAGS: u64 = 4;
pub(super) const GROUPS: u32 = 2;

/// A proposal as peers see it: its ring and its group epochs.
pub(super) type Proposed = (Vec<PeerId>, Vec<(u32, u64)>);

/// An op as peers name it: (tag, epoch, seq).
pub(super) type Key = (u64, u64, u32);

/// Where a simulated peer process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Life {
    /// Running and connected.
    Active,
    /// Partitioned: sends nothing and receives nothing, but its socket stays open, so only
    /// the master's heartbeat timeout can notice.
    Silent,
    /// The process is gone; the EOF is queued behind what it had already sent.
    Killed,
    /// The master has handled its death (EOF delivered, or the master closed it), or the
    /// master crashed while it was partitioned or exiting: it never comes back.
    Dead,
    /// The master it was connected to crashed: the process runs on (ops between peers go
    /// on, calls are recorded for its claim) and re-dials at this time since the start.
    Redialing(Duration),
}

impl Life {
    /// The process runs, connected or re-dialling: it acts, serves its shared state, and
    /// may still die.
    pub(super) fn runs(self) -> bool {
        matches!(self, Self::Active | Self::Redialing(_))
    }

    /// The process may still act on what it holds (it has not died nor been dropped).
    pub(super) fn alive(self) -> bool {
        matches!(self, Self::Active | Self::Silent | Self::Redialing(_))
    }
}

/// One blocking call of the user program: a joint call or a shared-state sync. Ops are
/// asynchronous and run beside them; a peer makes one blocking call at a time, and all
/// peers make them in the same order (a sync concerns only the peer's group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    Vote(VoteKind),
    Sync,
}

/// One op of one tag on a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// Started, not yet reported.
    Running(Key),
    /// Reported to the master (true: success); waiting for the verdict.
    Reported(Key, bool),
}

impl Op {
    pub(super) fn key(self) -> Key {
        match self {
            Self::Running(k) | Self::Reported(k, _) => k,
        }
    }
}

/// Client model of one peer (see `comm::control` and `collectives::registry` for the real thing).
#[derive(Debug)]
pub(super) struct SimPeer {
    pub(super) id: PeerId,
    /// Its connection to the master in charge (a new one after each re-dial).
    pub(super) conn: ConnId,
    pub(super) group: u32,
    pub(super) life: Life,
    /// Master -> peer, in flight.
    pub(super) to_peer: VecDeque<FromMaster>,
    /// Peer -> master, in flight; `None` is the EOF of a killed peer.
    pub(super) to_master: VecDeque<Option<ToMaster>>,
    /// Has received a Commit listing itself.
    pub(super) accepted: bool,
    /// The simulator has given it its place in the user program (see `on_send`), at the
    /// first Commit of this master (counted by crashes) that listed it.
    pub(super) admitted: bool,
    pub(super) admitted_by: u64,
    /// The master (counted by crashes) its member's claim reached: while that master
    /// lasts, what the claim says it was told binds the run even after this peer dies.
    pub(super) claimed_in: Option<u64>,
    pub(super) last_commit: Option<Topology>,
    /// Its group's epoch in the last Commit.
    pub(super) epoch: u64,
    /// Verdicts seen per tag in the current epoch: the seq of the next op of the tag.
    pub(super) seq: BTreeMap<u64, u32>,
    pub(super) ops: BTreeMap<u64, Op>,
    /// Outstanding joint call: (position in the user program, kind).
    pub(super) vote: Option<(usize, VoteKind)>,
    /// Position of its next joint call in the user program.
    pub(super) pos: usize,
    /// Proposals it has been asked to dial for, not yet answered.
    pub(super) proposals: VecDeque<u64>,
    pub(super) next_hb: Duration,
    /// Ops whose successful OpDone the master has received from this peer (or that a
    /// claim it re-registered with reported done).
    pub(super) delivered_ok: BTreeSet<Key>,
    /// An adversary: sends any well-formed message at any time and ignores the master.
    pub(super) hostile: bool,
    /// What the peer remembers of the run for a `Rejoin`: the real peer's own record
    /// (`comm::reconnect::Memory`), fed exactly as `comm::control` feeds it.
    pub(super) memory: Memory,
    /// Its shared state and the sync call it is in (`sync_model`).
    pub(super) shared: SharedModel,
}

/// Every action a step can take.
#[derive(Clone, Copy, Debug)]
pub(super) enum Action {
    DeliverToMaster,
    DeliverToPeer,
    PeerAct,
    Tick,
    Kill,
    Silence,
    Spawn,
    SpawnHostile,
    IdleJump,
    Crash,
}

/// What the runs exercised, summed over runs: printed, and checked so that the property
/// test cannot silently become vacuous.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Stats {
    pub(super) steps: u64,
    pub(super) admitted: u64,
    pub(super) updates_ok: u64,
    pub(super) updates_failed: u64,
    pub(super) peers_pending_answers: u64,
    pub(super) verdicts_ok: u64,
    pub(super) verdicts_failed: u64,
    pub(super) timeouts: u64,
    pub(super) closes: u64,
    pub(super) phase_changes: u64,
    pub(super) outputs: u64,
    /// Messages the adversaries sent that the master handled.
    pub(super) hostile_messages: u64,
    /// Adversaries the master accepted into the ring (sent a Commit).
    pub(super) hostile_admitted: u64,
    /// Shared-state syncs that ended here, by result, and syncs refused.
    pub(super) syncs_ok: u64,
    pub(super) syncs_failed: u64,
    pub(super) syncs_refused: u64,
    /// Master crashes, and what was open at each (see `crash`).
    pub(super) crashes: u64,
    pub(super) crashes_mid_vote: u64,
    pub(super) crashes_mid_proposal: u64,
    pub(super) crashes_mid_sync: u64,
    pub(super) crashes_mid_op: u64,
    pub(super) crashes_mid_recovery: u64,
    /// Peers that re-registered as members, died while re-dialling, or registered with
    /// a recovering master as newcomers.
    pub(super) rejoins: u64,
    pub(super) deaths_in_outage: u64,
    pub(super) newcomers_in_recovery: u64,
    /// Runs rebuilt by a restarted master, and decisions it gave again (verdicts,
    /// joint-call answers and sync results some peer had missed).
    pub(super) recoveries: u64,
    pub(super) replays: u64,
}

impl Stats {
    /// Adds the counts of `o`.
    pub(super) fn add(&mut self, o: &Self) {
        let mine = self.fields_mut();
        for (a, b) in mine.into_iter().zip(o.fields()) {
            *a += b;
        }
    }

    fn fields(&self) -> [u64; 27] {
        let mut copy = *self;
        copy.fields_mut().map(|f| *f)
    }

    fn fields_mut(&mut self) -> [&mut u64; 27] {
        let Self {
            steps,
            admitted,
            updates_ok,
            updates_failed,
            peers_pending_answers,
            verdicts_ok,
            verdicts_failed,
            timeouts,
            closes,
            phase_changes,
            outputs,
            hostile_messages,
            hostile_admitted,
            syncs_ok,
            syncs_failed,
            syncs_refused,
            crashes,
            crashes_mid_vote,
            crashes_mid_proposal,
            crashes_mid_sync,
            crashes_mid_op,
            crashes_mid_recovery,
            rejoins,
            deaths_in_outage,
            newcomers_in_recovery,
            recoveries,
            replays,
        } = self;
        [
            steps,
            admitted,
            updates_ok,
            updates_failed,
            peers_pending_answers,
            verdicts_ok,
            verdicts_failed,
            timeouts,
            closes,
            phase_changes,
            outputs,
            hostile_messages,
            hostile_admitted,
            syncs_ok,
            syncs_failed,
            syncs_refused,
            crashes,
            crashes_mid_vote,
            crashes_mid_proposal,
            crashes_mid_sync,
            crashes_mid_op,
            crashes_mid_recovery,
            rejoins,
            deaths_in_outage,
            newcomers_in_recovery,
            recoveries,
            replays,
        ]
    }
}

pub(super) struct Sim {
    pub(super) stats: Stats,
    pub(super) rng: ChaCha8Rng,
    pub(super) master: MasterState,
    pub(super) base: Instant,
    pub(super) elapsed: Duration,
    pub(super) peers: Vec<SimPeer>,
    /// Which peer each connection (of any master) belongs to.
    pub(super) conns: BTreeMap<ConnId, usize>,
    pub(super) next_conn: ConnId,
    /// The user program every peer runs: its sequence of blocking calls.
    pub(super) script: Vec<Call>,
    /// Connections whose death the master has handled.
    pub(super) closed: BTreeSet<ConnId>,
    /// Verdicts peers received, per (group, key): true = success. One op, one verdict,
    /// for every peer that holds it (`crash::Ledger`).
    pub(super) verdicts: Ledger<(u32, Key), bool>,
    /// Ops for which the master received at least one failure report.
    pub(super) failed_reports: BTreeSet<(u32, Key)>,
    /// Per epoch, the group and ring order every Commit gave it, as peers received it.
    pub(super) epochs: Ledger<u64, (u32, Vec<PeerId>)>,
    /// Per epoch, the members the master in charge committed it with (the latest Commit).
    pub(super) sent_epochs: BTreeMap<u64, Vec<PeerId>>,
    /// Per sync round, the group and the state (revision, content) its success left each
    /// participant that received it (`None`: it failed).
    pub(super) rounds: Ledger<u64, (u32, Option<(u64, u128)>)>,
    /// Per proposal id, the ring proposed; per joint call, the answer peers received.
    pub(super) proposals: Ledger<u64, Proposed>,
    pub(super) answers: Ledger<u64, String>,
    pub(super) trace: Option<Vec<String>>,
    /// Whether adversaries may join this run (see `spawn_hostile`).
    pub(super) adversarial: bool,
    /// Whether the master may crash in this run (see `crash`).
    pub(super) crashes: bool,
}

impl Sim {
    pub(super) fn new(seed: u64, trace: bool) -> Self {
        Self {
            stats: Stats::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            master: MasterState::new(HB_TIMEOUT),
            base: Instant::now(),
            elapsed: Duration::ZERO,
            peers: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            script: Vec::new(),
            closed: BTreeSet::new(),
            verdicts: Ledger::default(),
            failed_reports: BTreeSet::new(),
            epochs: Ledger::default(),
            sent_epochs: BTreeMap::new(),
            rounds: Ledger::default(),
            proposals: Ledger::default(),
            answers: Ledger::default(),
            trace: trace.then(Vec::new),
            adversarial: false,
            crashes: false,
        }
    }

    pub(super) fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Records an event when tracing (only in the replay of a failed run: formatting
    /// every event would slow the thousands of passing runs down).
    pub(super) fn log(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let line = f();
            if line.ends_with("Heartbeat") || line.ends_with("HeartbeatAck") {
                return; // noise
            }
            let line = format!("[{:>8.3}s] {line}", self.elapsed.as_secs_f64());
            t.push(line);
        }
    }

    pub(super) fn script_at(script: &mut Vec<Call>, rng: &mut ChaCha8Rng, pos: usize) -> Call {
        while script.len() <= pos {
            script.push(match rng.gen_range(0..10) {
                0..4 => Call::Vote(VoteKind::UpdateTopology),
                4..8 => Call::Vote(VoteKind::ArePeersPending),
                _ => Call::Sync,
            });
        }
        script[pos]
    }

    /// Peer `i`, in no blocking call, makes the next one of its program.
    pub(super) fn next_call(&mut self, i: usize) {
        let p = &self.peers[i];
        if p.vote.is_some() || p.shared.call.is_some() || !p.accepted {
            return;
        }
        let pos = p.pos;
        match Self::script_at(&mut self.script, &mut self.rng, pos) {
            Call::Vote(kind) => {
                self.peers[i].vote = Some((pos, kind));
                self.send_to_master(i, ToMaster::Vote(kind));
            }
            Call::Sync => self.start_sync(i),
        }
    }

    /// The peer on connection `conn`.
    pub(super) fn peer_of(&self, conn: ConnId) -> usize {
        self.conns[&conn]
    }

    /// A fresh connection number for peer `i` (the server never reuses one).
    pub(super) fn new_conn(&mut self, i: usize) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(conn, i);
        conn
    }

    pub(super) fn ip_of(i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
    }

    // ---- driving the master -----------------------------------------------------------

    /// Connects an adversary: a peer that sends random well-formed messages (see
    /// `peer_act`), registered or not, with an id that may collide with a live peer's.
    pub(super) fn spawn_hostile(&mut self) -> Res {
        self.spawn()?;
        let i = self.peers.len() - 1;
        let p = &mut self.peers[i];
        p.hostile = true;
        if self.rng.gen_bool(0.5) {
            p.to_master.clear();
        }
        self.log(|| format!("peer {i} is hostile"));
        Ok(())
    }

    /// Connects a new peer (handshake done) and queues its Register.
    pub(super) fn spawn(&mut self) -> Res {
        let i = self.peers.len();
        let conn = self.new_conn(i);
        let id = PeerId(self.rng.r#gen());
        let group = self.rng.gen_range(0..GROUPS);
        let p2p_port = 48149 + i as u16;
        let mut to_master = VecDeque::new();
        to_master.push_back(Some(ToMaster::Register {
            group,
            p2p_port,
            advertise_ip: None,
        }));
        let shared = SharedModel::fresh(&mut self.rng);
        self.peers.push(SimPeer {
            id,
            conn,
            group,
            life: Life::Active,
            to_peer: VecDeque::new(),
            to_master,
            accepted: false,
            admitted: false,
            admitted_by: 0,
            claimed_in: None,
            last_commit: None,
            epoch: 0,
            seq: BTreeMap::new(),
            ops: BTreeMap::new(),
            vote: None,
            pos: 0,
            proposals: VecDeque::new(),
            next_hb: self.elapsed + HB_INTERVAL,
            delivered_ok: BTreeSet::new(),
            hostile: false,
            memory: Memory::new(group, p2p_port, None),
            shared,
        });
        let outage = self
            .peers
            .iter()
            .any(|p| matches!(p.life, Life::Redialing(_)));
        if self.master.recovering() || outage {
            self.stats.newcomers_in_recovery += 1;
        }
        self.log(|| format!("spawn peer {i} (conn {conn}) id {id} group {group}"));
        let now = self.now();
        self.master.handle_connect(now, conn, id, Self::ip_of(i));
        self.drain()
    }

    /// Moves every output of the master into the connection queues, checking each.
    pub(super) fn drain(&mut self) -> Res {
        while let Some(out) = self.master.poll_output() {
            self.stats.outputs += 1;
            match out {
                Output::Send(conn, msg) => self.on_send(conn, msg)?,
                Output::Close(conn, reason) => {
                    self.log(|| format!("master closes conn {conn}: {reason}"));
                    let i = self.peer_of(conn);
                    // Our honest peers follow the protocol, so the master must never
                    // see a violation from them...
                    let hostile = self.peers[i].hostile;
                    ensure!(
                        hostile || !reason.starts_with("protocol violation"),
                        "peer {i} (conn {conn}) closed for a protocol violation by a correct peer: {reason}"
                    );
                    // ...and never turns away a member of the run it rebuilds: every
                    // honest peer that re-registers was a member or a newcomer when its
                    // master crashed, and is back within the recovery window.
                    ensure!(
                        hostile || !reason.starts_with("re-registration refused"),
                        "peer {i} (conn {conn}) was refused on re-registration: {reason}"
                    );
                    ensure!(
                        !self.closed.contains(&conn),
                        "conn {conn} closed twice ({reason})"
                    );
                    self.stats.closes += 1;
                    if reason.starts_with("no heartbeat") {
                        self.stats.timeouts += 1;
                    }
                    self.mark_dead(conn);
                }
            }
        }
        Ok(())
    }

    pub(super) fn mark_dead(&mut self, conn: ConnId) {
        self.closed.insert(conn);
        let i = self.peer_of(conn);
        let p = &mut self.peers[i];
        if p.conn != conn {
            return; // a connection to a master that crashed since
        }
        p.life = Life::Dead;
        p.to_peer.clear();
        p.to_master.clear();
    }

    /// One message from the master: checks that need the master's view, then queues it.
    pub(super) fn on_send(&mut self, conn: ConnId, msg: FromMaster) -> Res {
        self.log(|| format!("master -> conn {conn}: {}", short(&msg)));
        // Invariant: nothing is sent on a connection after its death was handled.
        ensure!(
            !self.closed.contains(&conn),
            "master sent {msg:?} to conn {conn} after its death was handled"
        );
        let i = self.peer_of(conn);
        let group = self.peers[i].group;
        // A decision some peer already holds is given again (by a restarted master).
        let replay = match &msg {
            FromMaster::OpVerdict {
                tag, epoch, seq, ..
            } => self.verdicts.contains(&(group, (*tag, *epoch, *seq))),
            FromMaster::PeersPending { call, .. }
            | FromMaster::TopologyUpdated { call, .. }
            | FromMaster::VoteRejected { call, .. } => self.answers.contains(call),
            FromMaster::SyncResult { round, .. } => self.rounds.contains(round),
            _ => false,
        };
        self.stats.replays += u64::from(replay);
        match &msg {
            FromMaster::OpVerdict {
                tag,
                epoch,
                seq,
                failure,
            } => {
                let key = (*tag, *epoch, *seq);
                let ok = failure.is_none();
                if ok {
                    self.stats.verdicts_ok += 1;
                } else {
                    self.stats.verdicts_failed += 1;
                }
                // A failure must come from a failure report...
                ensure!(
                    ok || self.failed_reports.contains(&(group, key)),
                    "failure verdict for group {group} op {key:?} that nobody reported failed"
                );
                // ...and a success needs a success report from every live member of the
                // op's epoch.
                if ok {
                    let Some(members) = self.sent_epochs.get(epoch) else {
                        return Err(format!(
                            "verdict for group {group} op {key:?}: epoch {epoch} was never committed"
                        ));
                    };
                    for id in self.master.ring() {
                        let p = self.peer_by_id(*id);
                        ensure!(
                            !members.contains(id) || p.delivered_ok.contains(&key),
                            "success verdict for group {group} op {key:?} although member {} (conn {}) never reported it done",
                            p.id,
                            p.conn
                        );
                    }
                }
            }
            FromMaster::Commit { topology, .. } => {
                let p = &self.peers[i];
                ensure!(
                    topology.contains(p.id),
                    "Commit to conn {conn} that does not list it"
                );
                for (g, e) in &topology.group_epochs {
                    let members = topology.group_ring(*g).iter().map(|e| e.id).collect();
                    self.sent_epochs.insert(*e, members);
                }
                if p.hostile && !p.admitted {
                    self.stats.hostile_admitted += 1;
                }
                // A Commit that never arrived does not admit: a later Commit of a new
                // master does (while it waits, no call can complete without it). A
                // later Commit of the same master (a death while the first is on its
                // way) does not: the first arrives, and by then the members that
                // admitted the peer may have had their answer, so their open votes no
                // longer tell its place.
                let master = self.stats.crashes;
                if !p.admitted || (!p.accepted && p.admitted_by != master) {
                    self.admit(i, master);
                }
            }
            FromMaster::Propose { topology, .. } => {
                ensure!(
                    topology.contains(self.peers[i].id),
                    "Propose to conn {conn} that does not list it"
                );
            }
            _ => {}
        }
        let p = &mut self.peers[i];
        // A silent peer is partitioned and a killed one has no process to read.
        if p.life == Life::Active && p.conn == conn {
            p.to_peer.push_back(msg);
        }
        Ok(())
    }

    /// The master accepts peer `i` now. Its `connect()` returns and its user program
    /// goes on from the joint call after the `update_topology` that admitted it: that is
    /// the call the old members are waiting on right now (they all voted for it, and
    /// their answer is produced after the Commit). The first peer of an empty run starts
    /// the program anywhere: it is alone.
    pub(super) fn admit(&mut self, i: usize, master: u64) {
        let me = self.peers[i].id;
        let pos = self
            .master
            .ring()
            .iter()
            .filter(|id| **id != me)
            .filter_map(|id| {
                let p = self.peer_by_id(*id);
                if p.admitted { p.vote } else { None }
            })
            .map(|(pos, _)| pos + 1)
            .max()
            .unwrap_or(0);
        let p = &mut self.peers[i];
        if !p.admitted {
            self.stats.admitted += 1;
        }
        p.admitted = true;
        p.admitted_by = master;
        p.pos = pos;
        self.log(|| format!("admit peer {i} by master {master} pos {pos}"));
    }

    pub(super) fn peer_by_id(&self, id: PeerId) -> &SimPeer {
        self.peers
            .iter()
            .find(|p| p.id == id)
            .expect("the master only knows peers we connected")
    }

    /// Delivers the next message of `i` to the master.
    pub(super) fn deliver_to_master(&mut self, i: usize) -> Res {
        let conn = self.peers[i].conn;
        let Some(msg) = self.peers[i].to_master.pop_front() else {
            return Ok(());
        };
        let now = self.now();
        match msg {
            None => {
                self.log(|| format!("conn {conn}: EOF"));
                self.mark_dead(conn);
                self.master.handle_disconnect(conn, "killed");
            }
            Some(msg) => {
                self.log(|| format!("conn {conn} -> master: {msg:?}"));
                if self.peers[i].hostile {
                    self.stats.hostile_messages += 1;
                }
                self.note_reports(i, &msg);
                let bound = crate::master::drive::output_bound(&self.master, self.peers.len());
                let claim = matches!(&msg, ToMaster::Rejoin(c) if c.accepted);
                let recovering = self.master.recovering() || claim;
                self.master.handle_message(now, conn, msg);
                if recovering && !self.master.recovering() {
                    self.stats.recoveries += 1;
                }
                let before = self.stats.outputs;
                self.drain()?;
                let queued = self.stats.outputs - before;
                ensure!(
                    queued <= bound as u64,
                    "one message from conn {conn} queued {queued} outputs (bound {bound})"
                );
                return Ok(());
            }
        }
        self.drain()
    }

    /// Records the op outcomes a message reports, for the verdict checks in `on_send`.
    fn note_reports(&mut self, i: usize, msg: &ToMaster) {
        let p = &mut self.peers[i];
        let mut note = |key: Key, failure: bool| {
            if failure {
                self.failed_reports.insert((p.group, key));
            } else {
                p.delivered_ok.insert(key);
            }
        };
        match msg {
            ToMaster::OpDone {
                tag,
                epoch,
                seq,
                failure,
            } => note((*tag, *epoch, *seq), failure.is_some()),
            ToMaster::Rejoin(claim) => {
                for op in &claim.ops {
                    if let Some(f) = op.done {
                        note((op.tag, op.epoch, op.seq), f.is_some());
                    }
                }
            }
            _ => {}
        }
    }

    /// Peer `i` sends `msg`, recording it first as `comm::control` does (`Control::on_cmd`):
    /// with its master gone the record is all that remains, and goes into its claim.
    pub(super) fn send_to_master(&mut self, i: usize, msg: ToMaster) {
        let p = &mut self.peers[i];
        let m = &mut p.memory;
        match &msg {
            ToMaster::Vote(kind) => m.vote = Some(*kind),
            ToMaster::SyncReport { .. } => m.sync_reported(&msg),
            ToMaster::SyncDone { ok } => m.sync_done(*ok),
            ToMaster::OpDone {
                tag,
                epoch,
                seq,
                failure,
            } => m.op_done(
                crate::collectives::registry::OpKey {
                    tag: *tag,
                    epoch: *epoch,
                    seq: *seq,
                },
                *failure,
            ),
            _ => {}
        }
        if p.life == Life::Active {
            p.to_master.push_back(Some(msg));
        }
    }

    // ---- time and adversity -----------------------------------------------------------

    /// Queues the heartbeats due by now; returns the peers that queued one.
    pub(super) fn heartbeats(&mut self) -> Vec<usize> {
        let now = self.elapsed;
        let mut due = Vec::new();
        for (i, p) in self.peers.iter_mut().enumerate() {
            if p.life == Life::Active && p.next_hb <= now {
                p.next_hb = now + HB_INTERVAL;
                p.to_master.push_back(Some(ToMaster::Heartbeat));
                due.push(i);
            }
        }
        due
    }

    /// Fires the master's timer if it is due.
    pub(super) fn fire_timer(&mut self) -> Res {
        if self.master.poll_timeout().is_some_and(|t| t <= self.now()) {
            self.log(|| "timer fires".to_string());
            let now = self.now();
            let recovering = self.master.recovering();
            self.master.handle_timeout(now);
            if recovering && !self.master.recovering() {
                self.stats.recoveries += 1;
            }
            self.drain()?;
        }
        Ok(())
    }

    /// A little time passes while messages are in flight.
    pub(super) fn tick(&mut self) -> Res {
        let to = self.elapsed + Duration::from_millis(self.rng.gen_range(5..150));
        self.advance_to(to)?;
        self.heartbeats();
        self.fire_timer()
    }

    /// Moves the clock to `to`, re-dialling on the way every peer due (in time order,
    /// each before any master deadline after it).
    pub(super) fn advance_to(&mut self, to: Duration) -> Res {
        while let Some((at, i)) = self.next_redial().filter(|(at, _)| *at <= to) {
            self.elapsed = self.elapsed.max(at);
            self.fire_timer()?;
            if self.peers[i].life == Life::Redialing(at) {
                self.redial(i)?;
            }
        }
        self.elapsed = self.elapsed.max(to);
        Ok(())
    }

    /// Nothing is in flight: jump to the master's next deadline. Live peers keep
    /// heartbeating meanwhile, and with nothing queued their heartbeats arrive at once.
    pub(super) fn idle_jump(&mut self) -> Res {
        let horizon = self.elapsed + 2 * HB_TIMEOUT;
        while let Some(deadline) = self.master.poll_timeout() {
            let deadline = deadline.saturating_duration_since(self.base);
            let next_hb = self
                .peers
                .iter()
                .filter(|p| p.life == Life::Active)
                .map(|p| p.next_hb)
                .min()
                .unwrap_or(deadline);
            let target = deadline.min(next_hb).min(horizon);
            self.advance_to(target)?;
            if self.elapsed >= deadline {
                return self.fire_timer();
            }
            if self.elapsed >= horizon {
                return Ok(());
            }
            for i in self.heartbeats() {
                if self.peers[i].to_master.len() == 1 {
                    self.deliver_to_master(i)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn kill(&mut self, i: usize) -> Res {
        let conn = self.peers[i].conn;
        if let Life::Redialing(_) = self.peers[i].life {
            // Dies while its master is gone: no master ever hears of it again.
            self.log(|| format!("peer {i} dies while re-dialling"));
            self.stats.deaths_in_outage += 1;
            let p = &mut self.peers[i];
            p.life = Life::Dead;
            p.to_peer.clear();
            return Ok(());
        }
        if self.rng.gen_bool(0.5) {
            // Crash with the socket reset: the master learns at once and what was in
            // flight is lost.
            self.log(|| format!("conn {conn} crashes"));
            self.mark_dead(conn);
            self.master.handle_disconnect(conn, "reset");
            self.drain()
        } else {
            // Clean exit: what it sent still arrives, then the EOF.
            self.log(|| format!("conn {conn} exits"));
            let p = &mut self.peers[i];
            p.life = Life::Killed;
            p.to_peer.clear();
            p.to_master.push_back(None);
            Ok(())
        }
    }

    pub(super) fn silence(&mut self, i: usize) {
        self.log(|| format!("peer {i} goes silent"));
        let p = &mut self.peers[i];
        p.life = Life::Silent;
        p.to_peer.clear();
        p.to_master.clear();
    }

    pub(super) fn in_flight(&self) -> bool {
        self.peers
            .iter()
            .any(|p| !p.to_master.is_empty() || !p.to_peer.is_empty())
    }

    /// One random step.
    pub(super) fn step(&mut self) -> Res {
        let running: Vec<usize> = (0..self.peers.len())
            .filter(|i| self.peers[*i].life.runs())
            .collect();
        let active: Vec<usize> = (0..self.peers.len())
            .filter(|i| self.peers[*i].life == Life::Active)
            .collect();
        let to_master: Vec<usize> = (0..self.peers.len())
            .filter(|i| !self.peers[*i].to_master.is_empty())
            .collect();
        let to_peer: Vec<usize> = (0..self.peers.len())
            .filter(|i| !self.peers[*i].to_peer.is_empty())
            .collect();
        let mut actions: Vec<(u32, Action)> = vec![(10, Action::Tick)];
        if !to_master.is_empty() {
            actions.push((60, Action::DeliverToMaster));
        }
        if !to_peer.is_empty() {
            actions.push((60, Action::DeliverToPeer));
        }
        // While a run is rebuilt, deaths and newcomers are likelier, so that recoveries
        // often meet both.
        let outage = self.master.recovering() || running.len() > active.len();
        if !running.is_empty() {
            actions.extend([
                (60, Action::PeerAct),
                (if outage { 2 } else { 1 }, Action::Kill),
            ]);
        }
        if !active.is_empty() {
            actions.push((1, Action::Silence));
        }
        if self.peers.len() < MAX_PEERS_PER_RUN {
            actions.push((if outage { 8 } else { 3 }, Action::Spawn));
            if self.adversarial {
                actions.push((3, Action::SpawnHostile));
            }
        }
        if !self.in_flight() {
            actions.push((6, Action::IdleJump));
        }
        if self.crashes {
            actions.push((self.crash_weight(), Action::Crash));
        }
        let total: u32 = actions.iter().map(|(w, _)| w).sum();
        let mut roll = self.rng.gen_range(0..total);
        let action = actions
            .iter()
            .find(|(w, _)| {
                if roll < *w {
                    true
                } else {
                    roll -= w;
                    false
                }
            })
            .map(|(_, a)| *a)
            .expect("roll < total");
        let pick = |rng: &mut ChaCha8Rng, v: &[usize]| v[rng.gen_range(0..v.len())];
        match action {
            Action::DeliverToMaster => {
                let i = pick(&mut self.rng, &to_master);
                self.deliver_to_master(i)
            }
            Action::DeliverToPeer => {
                let i = pick(&mut self.rng, &to_peer);
                self.deliver_to_peer(i)
            }
            Action::PeerAct => {
                let i = pick(&mut self.rng, &running);
                self.peer_act(i)
            }
            Action::Tick => self.tick(),
            Action::Kill => {
                let i = pick(&mut self.rng, &running);
                self.kill(i)
            }
            Action::Silence => {
                let i = pick(&mut self.rng, &active);
                self.silence(i);
                Ok(())
            }
            Action::Spawn => self.spawn(),
            Action::SpawnHostile => self.spawn_hostile(),
            Action::IdleJump => self.idle_jump(),
            Action::Crash => self.crash(),
        }
    }
}

/// A one-line rendering of a master message (topologies shortened to their ring).
pub(super) fn short(msg: &FromMaster) -> String {
    let ring = |t: &Topology| {
        let mut s = String::new();
        for e in &t.ring {
            let _ = write!(s, "{}:g{} ", e.id, e.group);
        }
        format!("[{}] epochs {:?}", s.trim_end(), t.group_epochs)
    };
    match msg {
        FromMaster::Propose { proposal, topology } => {
            format!("Propose #{proposal} {}", ring(topology))
        }
        FromMaster::Commit { topology, .. } => format!("Commit {}", ring(topology)),
        other => format!("{other:?}"),
    }
}
