//! Tests of the master's state machine: a seeded cluster simulator with invariant checks
//! after every step (the property test), plus a few hand-written scenarios.
//!
//! The simulator drives [`MasterState`] the way the tokio server does (sans-IO: it feeds
//! events with a virtual `now` and drains `poll_output`) and plays every peer with a
//! small client model that follows the protocol as `comm::control` and `comm::ops` do.
//! Messages travel in per-connection FIFO queues, one per direction, and the simulator
//! picks at random which queue moves next, so deliveries interleave across peers but
//! never reorder on one connection.
//!
//! Replay: every run prints `master sim seed = N`; `PCCL_SEED=N` replays the same runs,
//! and a failure message names the seed that replays only the failing run
//! (`PCCL_SEED=M PCCL_SIM_RUNS=1`), with a trace of its last events.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::state::{ConnId, MasterState, Output};
use crate::types::{PeerId, Topology};
use crate::wire::{FailReason, FromMaster, ToMaster, VoteKind};

const HB_TIMEOUT: Duration = Duration::from_secs(1);
/// Peers heartbeat four times per timeout, as a real peer does with default settings.
const HB_INTERVAL: Duration = Duration::from_millis(250);
const RUNS: u64 = 3000;
const STEPS: usize = 300;
/// Most peers one run ever connects (initial ones plus newcomers).
const MAX_PEERS_PER_RUN: usize = 12;
const TAGS: u64 = 4;
const GROUPS: u32 = 2;

type Res = Result<(), String>;

/// Fails the current run with a formatted message (the run then reports seed and trace).
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// An op as peers name it: (tag, epoch, seq).
type Key = (u64, u64, u32);

/// Where a simulated peer process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Running and connected.
    Active,
    /// Partitioned: sends nothing and receives nothing, but its socket stays open, so only
    /// the master's heartbeat timeout can notice.
    Silent,
    /// The process is gone; the EOF is queued behind what it had already sent.
    Killed,
    /// The master has handled its death (EOF delivered, or the master closed it).
    Dead,
}

/// One op of one tag on a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Started, not yet reported.
    Running(Key),
    /// Reported to the master (true: success); waiting for the verdict.
    Reported(Key, bool),
}

/// Client model of one peer (see `comm::control` and `comm::ops` for the real thing).
#[derive(Debug)]
struct SimPeer {
    id: PeerId,
    conn: ConnId,
    group: u32,
    life: Life,
    /// Master -> peer, in flight.
    to_peer: VecDeque<FromMaster>,
    /// Peer -> master, in flight; `None` is the EOF of a killed peer.
    to_master: VecDeque<Option<ToMaster>>,
    /// Has received a Commit listing itself.
    accepted: bool,
    /// The simulator has given it its place in the user program (see `on_send`).
    admitted: bool,
    last_commit: Option<Topology>,
    /// Its group's epoch in the last Commit.
    epoch: u64,
    /// Verdicts seen per tag in the current epoch: the seq of the next op of the tag.
    seq: BTreeMap<u64, u32>,
    ops: BTreeMap<u64, Op>,
    /// Outstanding joint call: (position in the user program, kind).
    vote: Option<(usize, VoteKind)>,
    /// Position of its next joint call in the user program.
    pos: usize,
    /// Proposals it has been asked to dial for, not yet answered.
    proposals: VecDeque<u64>,
    next_hb: Duration,
    /// Ops whose successful OpDone the master has received from this peer.
    delivered_ok: BTreeSet<Key>,
}

/// Every action a step can take.
#[derive(Clone, Copy, Debug)]
enum Action {
    DeliverToMaster,
    DeliverToPeer,
    PeerAct,
    Tick,
    Kill,
    Silence,
    Spawn,
    IdleJump,
}

/// What the runs exercised, summed over runs: printed, and checked so that the property
/// test cannot silently become vacuous.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    steps: u64,
    admitted: u64,
    updates_ok: u64,
    updates_failed: u64,
    peers_pending_answers: u64,
    verdicts_ok: u64,
    verdicts_failed: u64,
    timeouts: u64,
    closes: u64,
}

struct Sim {
    stats: Stats,
    rng: ChaCha8Rng,
    master: MasterState,
    base: Instant,
    elapsed: Duration,
    /// Indexed by connection id.
    peers: Vec<SimPeer>,
    /// The user program every peer runs: its sequence of joint calls.
    script: Vec<VoteKind>,
    /// Connections whose death the master has handled.
    closed: BTreeSet<ConnId>,
    /// Verdict given per (group, key): true = success.
    verdicts: BTreeMap<(u32, Key), bool>,
    /// Ops for which the master received at least one failure report.
    failed_reports: BTreeSet<(u32, Key)>,
    trace: Option<Vec<String>>,
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Self {
        Self {
            stats: Stats::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            master: MasterState::new(HB_TIMEOUT),
            base: Instant::now(),
            elapsed: Duration::ZERO,
            peers: Vec::new(),
            script: Vec::new(),
            closed: BTreeSet::new(),
            verdicts: BTreeMap::new(),
            failed_reports: BTreeSet::new(),
            trace: trace.then(Vec::new),
        }
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Records an event when tracing (only in the replay of a failed run: formatting
    /// every event would slow the thousands of passing runs down).
    fn log(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let line = f();
            if line.ends_with("Heartbeat") || line.ends_with("HeartbeatAck") {
                return; // noise
            }
            let line = format!("[{:>8.3}s] {line}", self.elapsed.as_secs_f64());
            t.push(line);
        }
    }

    fn script_at(script: &mut Vec<VoteKind>, rng: &mut ChaCha8Rng, pos: usize) -> VoteKind {
        while script.len() <= pos {
            script.push(if rng.gen_bool(0.5) {
                VoteKind::UpdateTopology
            } else {
                VoteKind::ArePeersPending
            });
        }
        script[pos]
    }

    // ---- driving the master -----------------------------------------------------------

    /// Connects a new peer (handshake done) and queues its Register.
    fn spawn(&mut self) -> Res {
        let conn = self.peers.len() as ConnId;
        let id = PeerId(self.rng.r#gen());
        let group = self.rng.gen_range(0..GROUPS);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, conn as u8 + 1));
        let mut to_master = VecDeque::new();
        to_master.push_back(Some(ToMaster::Register {
            group,
            p2p_port: 48149 + conn as u16,
            advertise_ip: None,
        }));
        self.peers.push(SimPeer {
            id,
            conn,
            group,
            life: Life::Active,
            to_peer: VecDeque::new(),
            to_master,
            accepted: false,
            admitted: false,
            last_commit: None,
            epoch: 0,
            seq: BTreeMap::new(),
            ops: BTreeMap::new(),
            vote: None,
            pos: 0,
            proposals: VecDeque::new(),
            next_hb: self.elapsed + HB_INTERVAL,
            delivered_ok: BTreeSet::new(),
        });
        self.log(|| format!("spawn conn {conn} peer {id} group {group}"));
        let now = self.now();
        self.master.handle_connect(now, conn, id, ip);
        self.drain()
    }

    /// Moves every output of the master into the connection queues, checking each.
    fn drain(&mut self) -> Res {
        while let Some(out) = self.master.poll_output() {
            match out {
                Output::Send(conn, msg) => self.on_send(conn, msg)?,
                Output::Close(conn, reason) => {
                    self.log(|| format!("master closes conn {conn}: {reason}"));
                    // Our peers follow the protocol, so the master must never see a
                    // violation from them.
                    ensure!(
                        !reason.starts_with("protocol violation"),
                        "conn {conn} closed for a protocol violation by a correct peer: {reason}"
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

    fn mark_dead(&mut self, conn: ConnId) {
        self.closed.insert(conn);
        let p = &mut self.peers[conn as usize];
        p.life = Life::Dead;
        p.to_peer.clear();
        p.to_master.clear();
    }

    /// One message from the master: checks that need the master's view, then queues it.
    fn on_send(&mut self, conn: ConnId, msg: FromMaster) -> Res {
        self.log(|| format!("master -> conn {conn}: {}", short(&msg)));
        // Invariant: nothing is sent on a connection after its death was handled.
        ensure!(
            !self.closed.contains(&conn),
            "master sent {msg:?} to conn {conn} after its death was handled"
        );
        let group = self.peers[conn as usize].group;
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
                // Invariant: every member gets the same verdict for one op.
                let first = *self.verdicts.entry((group, key)).or_insert(ok);
                ensure!(
                    first == ok,
                    "conflicting verdicts for group {group} op {key:?}: first {first}, now {ok} to conn {conn}"
                );
                // A failure must come from a failure report...
                ensure!(
                    ok || self.failed_reports.contains(&(group, key)),
                    "failure verdict for group {group} op {key:?} that nobody reported failed"
                );
                // ...and a success needs a success report from every live member.
                if ok {
                    for id in self.master.ring() {
                        let p = self.peer_by_id(*id);
                        ensure!(
                            p.group != group || p.delivered_ok.contains(&key),
                            "success verdict for group {group} op {key:?} although member {} (conn {}) never reported it done",
                            p.id,
                            p.conn
                        );
                    }
                }
            }
            FromMaster::Commit { topology } => {
                let p = &self.peers[conn as usize];
                ensure!(
                    topology.contains(p.id),
                    "Commit to conn {conn} that does not list it"
                );
                if !p.admitted {
                    self.admit(conn);
                }
            }
            FromMaster::Propose { topology, .. } => {
                ensure!(
                    topology.contains(self.peers[conn as usize].id),
                    "Propose to conn {conn} that does not list it"
                );
            }
            _ => {}
        }
        let p = &mut self.peers[conn as usize];
        // A silent peer is partitioned and a killed one has no process to read.
        if p.life == Life::Active {
            p.to_peer.push_back(msg);
        }
        Ok(())
    }

    /// The master accepts this peer now. Its `connect()` returns and its user program
    /// goes on from the joint call after the `update_topology` that admitted it: that is
    /// the call the old members are waiting on right now (they all voted for it, and
    /// their answer is produced after the Commit). The first peer of an empty run starts
    /// the program anywhere: it is alone.
    fn admit(&mut self, conn: ConnId) {
        let me = self.peers[conn as usize].id;
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
        self.stats.admitted += 1;
        let p = &mut self.peers[conn as usize];
        p.admitted = true;
        p.pos = pos;
    }

    fn peer_by_id(&self, id: PeerId) -> &SimPeer {
        self.peers
            .iter()
            .find(|p| p.id == id)
            .expect("the master only knows peers we connected")
    }

    /// Delivers the next message of `i` to the master.
    fn deliver_to_master(&mut self, i: usize) -> Res {
        let conn = i as ConnId;
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
                if let ToMaster::OpDone {
                    tag,
                    epoch,
                    seq,
                    failure,
                } = msg
                {
                    let p = &mut self.peers[i];
                    let key = (tag, epoch, seq);
                    if failure.is_some() {
                        self.failed_reports.insert((p.group, key));
                    } else {
                        p.delivered_ok.insert(key);
                    }
                }
                self.master.handle_message(now, conn, msg);
            }
        }
        self.drain()
    }

    fn send_to_master(&mut self, i: usize, msg: ToMaster) {
        self.peers[i].to_master.push_back(Some(msg));
    }

    // ---- the peer model ---------------------------------------------------------------

    /// Delivers the next message of the master to peer `i`, which reacts as a real peer.
    fn deliver_to_peer(&mut self, i: usize) -> Res {
        let Some(msg) = self.peers[i].to_peer.pop_front() else {
            return Ok(());
        };
        let conn = i;
        self.log(|| format!("conn {conn} receives {}", short(&msg)));
        match msg {
            FromMaster::HeartbeatAck => {}
            FromMaster::Propose { proposal, .. } => self.peers[i].proposals.push_back(proposal),
            FromMaster::Commit { topology } => self.on_commit(i, topology)?,
            FromMaster::PeersPending(_) => {
                self.stats.peers_pending_answers += 1;
                self.answer(i, VoteKind::ArePeersPending, true)?;
            }
            FromMaster::TopologyUpdated(res) => {
                if res.is_ok() {
                    self.stats.updates_ok += 1;
                } else {
                    self.stats.updates_failed += 1;
                }
                self.answer(i, VoteKind::UpdateTopology, res.is_ok())?;
            }
            FromMaster::VoteRejected(why) => {
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
            | FromMaster::SyncResult(_) => {
                // The simulated peers never sync shared state nor optimise the topology
                // (covered by the scenario, election and loopback tests).
                return Err(format!(
                    "conn {conn} got a message for a call it never made"
                ));
            }
        }
        Ok(())
    }

    fn on_commit(&mut self, i: usize, topology: Topology) -> Res {
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
    fn answer(&mut self, i: usize, kind: VoteKind, ok: bool) -> Res {
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

    fn on_verdict(&mut self, i: usize, key: Key, ok: bool) -> Res {
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
    fn peer_act(&mut self, i: usize) -> Res {
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

    fn report(&mut self, i: usize, key: Key, failure: Option<FailReason>) {
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

    // ---- time and adversity -----------------------------------------------------------

    /// Queues the heartbeats due by now; returns the peers that queued one.
    fn heartbeats(&mut self) -> Vec<usize> {
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
    fn fire_timer(&mut self) -> Res {
        if self.master.poll_timeout().is_some_and(|t| t <= self.now()) {
            self.log(|| "timer fires".to_string());
            let now = self.now();
            self.master.handle_timeout(now);
            self.drain()?;
        }
        Ok(())
    }

    /// A little time passes while messages are in flight.
    fn tick(&mut self) -> Res {
        self.elapsed += Duration::from_millis(self.rng.gen_range(5..150));
        self.heartbeats();
        self.fire_timer()
    }

    /// Nothing is in flight: jump to the master's next deadline. Live peers keep
    /// heartbeating meanwhile, and with nothing queued their heartbeats arrive at once.
    fn idle_jump(&mut self) -> Res {
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
            self.elapsed = self.elapsed.max(target);
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

    fn kill(&mut self, i: usize) -> Res {
        let conn = i as ConnId;
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

    fn silence(&mut self, i: usize) {
        self.log(|| format!("conn {i} goes silent"));
        let p = &mut self.peers[i];
        p.life = Life::Silent;
        p.to_peer.clear();
        p.to_master.clear();
    }

    fn in_flight(&self) -> bool {
        self.peers
            .iter()
            .any(|p| !p.to_master.is_empty() || !p.to_peer.is_empty())
    }

    /// One random step.
    fn step(&mut self) -> Res {
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
        if !active.is_empty() {
            actions.extend([
                (60, Action::PeerAct),
                (1, Action::Kill),
                (1, Action::Silence),
            ]);
        }
        if self.peers.len() < MAX_PEERS_PER_RUN {
            actions.push((3, Action::Spawn));
        }
        if !self.in_flight() {
            actions.push((6, Action::IdleJump));
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
                let i = pick(&mut self.rng, &active);
                self.peer_act(i)
            }
            Action::Tick => self.tick(),
            Action::Kill => {
                let i = pick(&mut self.rng, &active);
                self.kill(i)
            }
            Action::Silence => {
                let i = pick(&mut self.rng, &active);
                self.silence(i);
                Ok(())
            }
            Action::Spawn => self.spawn(),
            Action::IdleJump => self.idle_jump(),
        }
    }

    // ---- invariants -------------------------------------------------------------------

    /// Checked after every step.
    fn check(&self) -> Res {
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
            if p.life != Life::Active || !p.to_peer.is_empty() {
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
        Ok(())
    }

    /// Adversity stops and every peer does what it must for the open calls to finish;
    /// then every joint call, proposal and op vote must have completed.
    fn quiesce(&mut self) -> Res {
        for _ in 0..200 {
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
            // Quiet: only time can move things on, by timing silent peers out.
            if !self.peers.iter().any(|p| p.life == Life::Silent) {
                return self.check_quiet();
            }
            self.idle_jump()?;
            self.check()?;
        }
        Err("the cluster does not settle".into())
    }

    /// Peer `i` answers proposals, finishes its ops, and joins the ops and joint calls
    /// its group mates have started. Returns whether it did anything.
    fn finish_calls(&mut self, i: usize) -> bool {
        let p = &self.peers[i];
        if p.life != Life::Active {
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
        // Join a joint call another live accepted peer is waiting in.
        let p = &self.peers[i];
        let others_vote = self
            .peers
            .iter()
            .any(|q| q.conn != p.conn && q.life == Life::Active && q.accepted && q.vote.is_some());
        if p.vote.is_none() && others_vote {
            let pos = p.pos;
            let kind = Self::script_at(&mut self.script, &mut self.rng, pos);
            self.peers[i].vote = Some((pos, kind));
            self.send_to_master(i, ToMaster::Vote(kind));
            did = true;
        }
        did
    }

    /// After `quiesce`: nothing is left open.
    fn check_quiet(&self) -> Res {
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
        for p in &self.peers {
            if p.life == Life::Active && p.accepted {
                ensure!(
                    p.vote.is_none() && p.ops.is_empty(),
                    "conn {} still waits after the cluster settled: vote {:?}, ops {:?}",
                    p.conn,
                    p.vote,
                    p.ops
                );
            }
        }
        Ok(())
    }
}

/// A one-line rendering of a master message (topologies shortened to their ring).
fn short(msg: &FromMaster) -> String {
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
        FromMaster::Commit { topology } => format!("Commit {}", ring(topology)),
        other => format!("{other:?}"),
    }
}

/// One random run: 2..8 peers, up to `STEPS` steps with a check after each, then the
/// cluster settles and must have nothing left open.
fn run_once(seed: u64, trace: bool) -> (Res, Option<Vec<String>>, Stats) {
    let mut sim = Sim::new(seed, trace);
    let result = catch_unwind(AssertUnwindSafe(|| -> Res {
        let n = sim.rng.gen_range(2..=8);
        for _ in 0..n {
            sim.spawn()?;
        }
        let steps = sim.rng.gen_range(STEPS / 3..=STEPS);
        for _ in 0..steps {
            sim.stats.steps += 1;
            sim.step()?;
            sim.check()?;
        }
        sim.quiesce()
    }));
    let result = result.unwrap_or_else(|e| {
        let what = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("panic (master or simulator): {what}"))
    });
    if let Some(t) = &mut sim.trace {
        // A legend for the trace, which names peers by connection.
        for p in &sim.peers {
            t.push(format!(
                "legend: conn {} = peer {} group {} {:?}{}",
                p.conn,
                p.id,
                p.group,
                p.life,
                if p.accepted { " accepted" } else { "" }
            ));
        }
    }
    (result, sim.trace, sim.stats)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn random_clusters_keep_invariants() {
    let seed = env_u64("PCCL_SEED").unwrap_or_else(rand::random);
    let runs = env_u64("PCCL_SIM_RUNS").unwrap_or(RUNS);
    eprintln!("master sim seed = {seed}");
    let mut total = Stats::default();
    for run in 0..runs {
        let run_seed = seed.wrapping_add(run);
        let (res, _, s) = run_once(run_seed, false);
        total.steps += s.steps;
        total.admitted += s.admitted;
        total.updates_ok += s.updates_ok;
        total.updates_failed += s.updates_failed;
        total.peers_pending_answers += s.peers_pending_answers;
        total.verdicts_ok += s.verdicts_ok;
        total.verdicts_failed += s.verdicts_failed;
        total.timeouts += s.timeouts;
        total.closes += s.closes;
        if let Err(why) = res {
            // Replay the failing run with tracing on: deterministic, so it fails again.
            let (again, trace, _) = run_once(run_seed, true);
            let trace = trace.unwrap_or_default();
            let tail = trace[trace.len().saturating_sub(100)..].join("\n");
            panic!(
                "master sim failed (seed {seed}, run {run}): {why}\n\
                 replay: PCCL_SEED={seed}, or this run alone: PCCL_SEED={run_seed} PCCL_SIM_RUNS=1\n\
                 (replay {})\nlast events:\n{tail}",
                if again.is_err() {
                    "fails the same way"
                } else {
                    "did NOT fail: nondeterminism"
                }
            );
        }
    }
    eprintln!("master sim: {runs} runs, {total:?}");
    // Only meaningful over many runs (a single replayed run may exercise little).
    if runs >= 100 {
        let t = total;
        for (what, n) in [
            ("admissions", t.admitted),
            ("successful updates", t.updates_ok),
            ("failed updates", t.updates_failed),
            ("PeersPending answers", t.peers_pending_answers),
            ("success verdicts", t.verdicts_ok),
            ("failure verdicts", t.verdicts_failed),
            ("heartbeat timeouts", t.timeouts),
        ] {
            assert!(
                n >= runs / 20,
                "the simulation exercised too few {what}: {t:?}"
            );
        }
    }
}

// ---- deterministic scenarios ------------------------------------------------------------

/// A minimal driver for hand-written scenarios: messages arrive instantly and every
/// output is collected per connection.
struct Harness {
    m: MasterState,
    base: Instant,
    elapsed: Duration,
    ids: BTreeMap<ConnId, PeerId>,
    inbox: BTreeMap<ConnId, Vec<FromMaster>>,
    closed: Vec<(ConnId, String)>,
}

impl Harness {
    fn new() -> Self {
        Self {
            m: MasterState::new(HB_TIMEOUT),
            base: Instant::now(),
            elapsed: Duration::ZERO,
            ids: BTreeMap::new(),
            inbox: BTreeMap::new(),
            closed: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    fn drain(&mut self) {
        while let Some(o) = self.m.poll_output() {
            match o {
                Output::Send(c, msg) => {
                    assert!(
                        !self.closed.iter().any(|(d, _)| *d == c),
                        "sent {msg:?} to closed conn {c}"
                    );
                    self.inbox.entry(c).or_default().push(msg);
                }
                Output::Close(c, why) => self.closed.push((c, why)),
            }
        }
    }

    /// Connects and registers a peer in `group` on connection `conn`.
    fn join(&mut self, conn: ConnId, group: u32) -> PeerId {
        let id = PeerId([conn as u8 + 1; 16]);
        self.ids.insert(conn, id);
        let now = self.now();
        self.m
            .handle_connect(now, conn, id, IpAddr::V4(Ipv4Addr::LOCALHOST));
        self.msg(
            conn,
            ToMaster::Register {
                group,
                p2p_port: 48149 + conn as u16,
                advertise_ip: None,
            },
        );
        id
    }

    fn msg(&mut self, conn: ConnId, msg: ToMaster) {
        let now = self.now();
        self.m.handle_message(now, conn, msg);
        self.drain();
    }

    fn disconnect(&mut self, conn: ConnId) {
        self.m.handle_disconnect(conn, "test");
        self.closed.push((conn, "test".into()));
        self.drain();
    }

    fn take(&mut self, conn: ConnId) -> Vec<FromMaster> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    /// The messages of `conn` without heartbeat acks.
    fn take_quiet(&mut self, conn: ConnId) -> Vec<FromMaster> {
        self.take(conn)
            .into_iter()
            .filter(|m| *m != FromMaster::HeartbeatAck)
            .collect()
    }

    fn ring_ids(&self, conns: &[ConnId]) -> Vec<PeerId> {
        conns.iter().map(|c| self.ids[c]).collect()
    }

    /// Every peer in `conns` votes `kind`.
    fn vote_all(&mut self, conns: &[ConnId], kind: VoteKind) {
        for c in conns {
            self.msg(*c, ToMaster::Vote(kind));
        }
    }

    /// The proposal id in a batch of messages.
    fn proposal_in(msgs: &[FromMaster]) -> u64 {
        msgs.iter()
            .find_map(|m| match m {
                FromMaster::Propose { proposal, .. } => Some(*proposal),
                _ => None,
            })
            .expect("a Propose")
    }

    /// Brings `old` (accepted) and the waiting peers to a committed ring `old ++ new`.
    fn update(&mut self, old: &[ConnId], new: &[ConnId]) {
        self.vote_all(old, VoteKind::UpdateTopology);
        let all: Vec<ConnId> = old.iter().chain(new).copied().collect();
        let mut id = None;
        for c in &all {
            let msgs = self.take_quiet(*c);
            id = Some(Self::proposal_in(&msgs));
        }
        for c in &all {
            self.msg(
                *c,
                ToMaster::P2pReady {
                    proposal: id.expect("proposed"),
                    ok: true,
                },
            );
        }
        assert_eq!(self.m.ring(), self.ring_ids(&all).as_slice());
        for c in old {
            let msgs = self.take_quiet(*c);
            assert!(matches!(msgs[0], FromMaster::Commit { .. }), "{msgs:?}");
            assert_eq!(msgs[1], FromMaster::TopologyUpdated(Ok(())));
        }
        for c in new {
            let msgs = self.take_quiet(*c);
            assert!(matches!(&msgs[..], [FromMaster::Commit { .. }]), "{msgs:?}");
        }
    }

    fn commit_of(msgs: &[FromMaster]) -> Topology {
        msgs.iter()
            .rev()
            .find_map(|m| match m {
                FromMaster::Commit { topology } => Some(topology.clone()),
                _ => None,
            })
            .expect("a Commit")
    }
}

#[test]
fn two_peers_join_and_are_admitted() {
    let mut h = Harness::new();
    let a = h.join(0, 0);
    // The first peer is accepted alone.
    let t = Harness::commit_of(&h.take_quiet(0));
    assert_eq!(t.ring.len(), 1);
    assert_eq!(t.ring[0].id, a);
    let b = h.join(1, 0);
    assert_eq!(h.m.pending(), &[b]);
    assert!(h.take(1).is_empty(), "a waiting peer hears nothing yet");
    h.msg(0, ToMaster::Vote(VoteKind::ArePeersPending));
    assert_eq!(h.take_quiet(0), vec![FromMaster::PeersPending(true)]);
    h.update(&[0], &[1]);
    assert_eq!(h.m.ring(), &[a, b]);
    assert!(h.m.pending().is_empty());
    assert!(!h.m.proposal_in_flight());
    // Nobody waits any more.
    h.vote_all(&[0, 1], VoteKind::ArePeersPending);
    assert_eq!(h.take_quiet(0), vec![FromMaster::PeersPending(false)]);
    assert_eq!(h.take_quiet(1), vec![FromMaster::PeersPending(false)]);
}

#[test]
fn death_during_proposal_fails_the_update_then_it_succeeds() {
    let mut h = Harness::new();
    let a = h.join(0, 0);
    h.join(1, 0);
    h.update(&[0], &[1]);
    let c = h.join(2, 1);
    h.take(0);
    h.vote_all(&[0, 1], VoteKind::UpdateTopology);
    let id = Harness::proposal_in(&h.take_quiet(0));
    h.take(1);
    h.take(2);
    assert!(h.m.proposal_in_flight());
    h.msg(
        0,
        ToMaster::P2pReady {
            proposal: id,
            ok: true,
        },
    );
    h.msg(
        2,
        ToMaster::P2pReady {
            proposal: id,
            ok: true,
        },
    );
    h.disconnect(1);
    // The survivor's update fails (retryable) and it gets the ring without the dead peer.
    let msgs = h.take_quiet(0);
    assert!(
        msgs.contains(&FromMaster::TopologyUpdated(Err(format!(
            "peer {} died",
            h.ids[&1]
        )))),
        "{msgs:?}"
    );
    let t = Harness::commit_of(&msgs);
    assert_eq!(t.ring.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a]);
    assert!(!h.m.proposal_in_flight());
    // The newcomer was not at fault: it still waits, and the retry admits it.
    assert_eq!(h.m.pending(), &[c]);
    assert!(h.take(2).is_empty(), "the newcomer is not told anything");
    h.update(&[0], &[2]);
    assert_eq!(h.m.ring(), &[a, c]);
}

#[test]
fn silent_peer_dies_and_op_votes_complete_without_it() {
    let mut h = Harness::new();
    h.join(0, 0);
    h.join(1, 0);
    h.join(2, 0);
    h.update(&[0], &[1, 2]);
    let epoch = h.m.topology().group_epoch(0).expect("group 0");
    // Peers 0 and 1 finish op (tag 5, seq 0); peer 2 is silent from now on.
    for c in [0, 1] {
        h.msg(
            c,
            ToMaster::OpDone {
                tag: 5,
                epoch,
                seq: 0,
                failure: None,
            },
        );
    }
    assert_eq!(h.m.op_votes().count(), 1);
    // Time passes; the live peers keep heartbeating, the silent one does not.
    let mut dead = false;
    for _ in 0..20 {
        h.elapsed += HB_INTERVAL;
        h.msg(0, ToMaster::Heartbeat);
        h.msg(1, ToMaster::Heartbeat);
        if h.m.poll_timeout().is_some_and(|t| t <= h.now()) {
            let now = h.now();
            h.m.handle_timeout(now);
            h.drain();
        }
        if !h.closed.is_empty() {
            dead = true;
            break;
        }
    }
    assert!(dead, "the silent peer was never declared dead");
    assert_eq!(h.closed.len(), 1);
    assert_eq!(h.closed[0].0, 2);
    assert!(h.elapsed >= HB_TIMEOUT);
    assert_eq!(h.m.ring(), h.ring_ids(&[0, 1]).as_slice());
    // The op of the old membership is gone (survivors abort it on the new epoch)...
    assert_eq!(h.m.op_votes().count(), 0);
    let t = Harness::commit_of(&h.take_quiet(0));
    let new_epoch = t.group_epoch(0).expect("group 0");
    assert!(new_epoch > epoch);
    assert_eq!(Harness::commit_of(&h.take_quiet(1)), t);
    // ...and its retry completes with the survivors alone.
    for c in [0, 1] {
        h.msg(
            c,
            ToMaster::OpDone {
                tag: 5,
                epoch: new_epoch,
                seq: 0,
                failure: None,
            },
        );
    }
    let verdict = FromMaster::OpVerdict {
        tag: 5,
        epoch: new_epoch,
        seq: 0,
        failure: None,
    };
    assert_eq!(h.take_quiet(0), vec![verdict.clone()]);
    assert_eq!(h.take_quiet(1), vec![verdict]);
    assert!(h.take(2).is_empty(), "nothing goes to the dead peer");
}

#[test]
fn an_op_failure_fails_everyone_at_once() {
    let mut h = Harness::new();
    h.join(0, 1);
    h.join(1, 1);
    h.update(&[0], &[1]);
    let epoch = h.m.topology().group_epoch(1).expect("group 1");
    h.msg(
        1,
        ToMaster::OpDone {
            tag: 0,
            epoch,
            seq: 0,
            failure: Some(FailReason::Corrupt),
        },
    );
    let verdict = FromMaster::OpVerdict {
        tag: 0,
        epoch,
        seq: 0,
        failure: Some(FailReason::Corrupt),
    };
    assert_eq!(h.take_quiet(0), vec![verdict.clone()]);
    assert_eq!(h.take_quiet(1), vec![verdict]);
    // The late success report of the other peer is stale and ignored.
    h.msg(
        0,
        ToMaster::OpDone {
            tag: 0,
            epoch,
            seq: 0,
            failure: None,
        },
    );
    assert!(h.take(0).is_empty() && h.take(1).is_empty());
    assert!(h.closed.is_empty());
    assert_eq!(h.m.op_votes().count(), 0);
}

#[test]
fn mismatched_joint_calls_are_rejected_for_everybody() {
    let mut h = Harness::new();
    h.join(0, 0);
    h.join(1, 0);
    h.update(&[0], &[1]);
    h.msg(0, ToMaster::Vote(VoteKind::ArePeersPending));
    h.msg(1, ToMaster::Vote(VoteKind::UpdateTopology));
    for c in [0, 1] {
        let msgs = h.take_quiet(c);
        assert!(
            matches!(&msgs[..], [FromMaster::VoteRejected(_)]),
            "{msgs:?}"
        );
    }
    assert!(h.closed.is_empty());
    assert_eq!(h.m.voters().count(), 0);
    // The next matching call works.
    h.vote_all(&[0, 1], VoteKind::ArePeersPending);
    assert_eq!(h.take_quiet(0), vec![FromMaster::PeersPending(false)]);
    assert_eq!(h.take_quiet(1), vec![FromMaster::PeersPending(false)]);
}

#[test]
fn op_done_before_acceptance_closes_the_connection() {
    let mut h = Harness::new();
    let a = h.join(0, 0);
    h.join(1, 0);
    assert_eq!(h.m.pending().len(), 1);
    h.msg(
        1,
        ToMaster::OpDone {
            tag: 0,
            epoch: 1,
            seq: 0,
            failure: None,
        },
    );
    assert_eq!(h.closed.len(), 1);
    assert_eq!(h.closed[0].0, 1);
    assert!(
        h.closed[0].1.contains("protocol violation"),
        "{:?}",
        h.closed
    );
    assert!(h.m.pending().is_empty());
    assert_eq!(h.m.ring(), &[a]);
    // Its later messages are ignored and nothing is ever sent to it.
    h.msg(1, ToMaster::Heartbeat);
    assert!(h.take(1).is_empty());
}

#[test]
fn optimize_topology_measures_missing_links_and_rewires_for_the_bottleneck() {
    let mut h = Harness::new();
    h.join(0, 0);
    h.take(0);
    for c in 1..4 {
        h.join(c, 0);
    }
    h.update(&[0], &[1, 2, 3]);
    let ids = h.ring_ids(&[0, 1, 2, 3]);
    // Fast links only along 0 -> 2 -> 1 -> 3 -> 0.
    let fast = [(0, 2), (2, 1), (1, 3), (3, 0)];
    h.vote_all(&[0, 1, 2, 3], VoteKind::OptimizeTopology);
    for c in 0..4u64 {
        let msgs = h.take_quiet(c);
        let [FromMaster::MeasureBandwidth { targets }] = &msgs[..] else {
            panic!("{msgs:?}")
        };
        assert_eq!(targets.len(), 3);
        let results = targets
            .iter()
            .map(|t| {
                let to = ids.iter().position(|p| p == t).unwrap() as u64;
                (
                    *t,
                    if fast.contains(&(c, to)) {
                        1_000_000_000
                    } else {
                        10_000_000
                    },
                )
            })
            .collect();
        h.msg(c, ToMaster::BandwidthReport { results });
    }
    let mut id = None;
    for c in 0..4 {
        id = Some(Harness::proposal_in(&h.take_quiet(c)));
    }
    for c in 0..4 {
        h.msg(
            c,
            ToMaster::P2pReady {
                proposal: id.unwrap(),
                ok: true,
            },
        );
    }
    let want: Vec<PeerId> = [0, 2, 1, 3].iter().map(|i| ids[*i]).collect();
    assert_eq!(h.m.ring(), want.as_slice());
    for c in 0..4 {
        let msgs = h.take_quiet(c);
        assert_eq!(
            msgs.last(),
            Some(&FromMaster::TopologyUpdated(Ok(()))),
            "{msgs:?}"
        );
    }
    // Everything is measured now: a second call tests nothing and keeps the ring.
    h.vote_all(&[0, 1, 2, 3], VoteKind::OptimizeTopology);
    for c in 0..4 {
        assert_eq!(h.take_quiet(c), vec![FromMaster::TopologyUpdated(Ok(()))]);
    }
    assert_eq!(h.m.ring(), want.as_slice());
}

#[test]
fn a_death_during_bandwidth_tests_fails_the_optimisation_for_survivors() {
    let mut h = Harness::new();
    h.join(0, 0);
    h.take(0);
    h.join(1, 0);
    h.join(2, 0);
    h.update(&[0], &[1, 2]);
    h.vote_all(&[0, 1, 2], VoteKind::OptimizeTopology);
    for c in 0..3 {
        h.take_quiet(c);
    }
    h.disconnect(2);
    for c in 0..2 {
        let msgs = h.take_quiet(c);
        assert!(
            msgs.iter()
                .any(|m| matches!(m, FromMaster::TopologyUpdated(Err(_)))),
            "{msgs:?}"
        );
    }
    // The next joint call works.
    h.vote_all(&[0, 1], VoteKind::ArePeersPending);
    assert_eq!(h.take_quiet(0), vec![FromMaster::PeersPending(false)]);
}
