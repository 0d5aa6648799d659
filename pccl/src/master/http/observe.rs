//! The observer: what the HTTP endpoints show, derived from what the master's driver
//! sees (docs/ARCHITECTURE.md §13). It is fed every input before the state machine
//! handles it and every output the state machine makes, and reads the ring and the
//! waiting peers from the state after each step; it never influences the run.
//!
//! Everything it keeps is bounded: one entry per connection the driver holds (itself
//! bounded), a fixed-size event ring and history, and peer summaries whose size the
//! protocol bounds (`wire::stats`). Summaries are peers' claims: counters are taken as
//! differences from the previous summary of the same connection, a decrease is ignored
//! and each step is capped, so a lying peer can skew its own figures but not make the
//! master allocate, or overflow a total.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::metrics::{Metrics, l1, l2};
use crate::master::state::{ConnId, MasterState, Output};
use crate::types::PeerId;
use crate::wire::{FailReason, FromMaster, PeerSummary, ToMaster};

/// Events kept for `/api/run` (the oldest go first).
pub(crate) const MAX_EVENTS: usize = 256;
/// History samples kept (one a second: ten minutes).
pub(crate) const MAX_SAMPLES: usize = 600;
/// Measured links kept, at most.
const MAX_LINKS: usize = 4096;
/// The most one summary may add to an op or retry counter…
const MAX_OPS_STEP: u64 = 1 << 20;
/// …and to a byte counter (1 TiB).
const MAX_BYTES_STEP: u64 = 1 << 40;
/// Bus bandwidths above this (10 TB/s) are not believed.
const MAX_BUSBW: u64 = 10_000_000_000_000;
/// A peer's throughput counts for the history while its last op is this recent.
const FRESH_SECS: f64 = 5.0;

/// One line of the event log.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Event {
    /// Seconds since the master started.
    pub(crate) t: f64,
    /// `join`, `accept`, `death`, `eviction`, `topology`, `sync`, `op_failed`.
    pub(crate) kind: &'static str,
    pub(crate) peer: Option<String>,
    pub(crate) detail: String,
}

/// One point of the world-size and throughput charts.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Sample {
    pub(crate) t: f64,
    pub(crate) world: usize,
    /// Mean bus bandwidth (bytes/s) of the accepted peers with a recent all-reduce.
    pub(crate) busbw: f64,
}

#[derive(Debug)]
struct ConnInfo {
    peer: PeerId,
    ip: IpAddr,
    /// Set by `Register`.
    group: Option<u32>,
    p2p_addr: Option<SocketAddr>,
    accepted: bool,
    last_seen: Instant,
    /// The previous summary's counters (the baseline for differences).
    last: PeerSummary,
    busbw: f64,
    /// When the latest summary with new ops arrived.
    last_op: Option<Instant>,
}

/// A sync in flight in one group, from its plans to its result.
#[derive(Debug, Default)]
struct SyncRun {
    /// Bytes per tensor name, from the latest report of the group.
    sizes: HashMap<String, u64>,
    revision: u64,
    holders: Vec<String>,
    bytes: u64,
}

/// The observer (see the module docs).
#[derive(Debug)]
pub(crate) struct Observer {
    started: Instant,
    started_unix_ms: u64,
    conns: HashMap<ConnId, ConnInfo>,
    ring: Vec<PeerId>,
    epochs: BTreeMap<u32, u64>,
    links: BTreeMap<(PeerId, PeerId), u64>,
    events: VecDeque<Event>,
    history: VecDeque<Sample>,
    last_sample: Option<Instant>,
    /// A group that lost a peer, since when, until its next successful op.
    recovering: BTreeMap<u32, Instant>,
    syncs: BTreeMap<u32, SyncRun>,
    /// Verdicts and sync results seen this step (each goes to every member).
    seen_verdicts: HashSet<(u32, u64, u64, u32)>,
    seen_results: HashSet<u32>,
    /// Something other than a heartbeat happened this step: re-read the ring.
    changed: bool,
    /// Op verdicts, all groups together.
    ops_ok: u64,
    ops_failed: u64,
    /// Recovery times observed (seconds), the latest 64, and how many in all.
    recoveries: VecDeque<f64>,
    recovery_count: u64,
    pub(crate) metrics: Metrics,
}

impl Observer {
    pub(crate) fn new(now: Instant) -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            started: now,
            started_unix_ms: unix,
            conns: HashMap::new(),
            ring: Vec::new(),
            epochs: BTreeMap::new(),
            links: BTreeMap::new(),
            events: VecDeque::new(),
            history: VecDeque::new(),
            last_sample: None,
            recovering: BTreeMap::new(),
            syncs: BTreeMap::new(),
            seen_verdicts: HashSet::new(),
            seen_results: HashSet::new(),
            changed: false,
            ops_ok: 0,
            ops_failed: 0,
            recoveries: VecDeque::new(),
            recovery_count: 0,
            metrics: Metrics::new(),
        }
    }

    fn secs(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.started).as_secs_f64()
    }

    fn event(&mut self, now: Instant, kind: &'static str, peer: Option<PeerId>, detail: String) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        let t = self.secs(now);
        self.events.push_back(Event {
            t,
            kind,
            peer: peer.map(|p| p.hex()),
            detail,
        });
    }

    // ---- inputs, as the driver sees them ---------------------------------------------

    /// A connection finished its handshake.
    pub(crate) fn on_connect(&mut self, now: Instant, conn: ConnId, peer: PeerId, ip: IpAddr) {
        self.conns.insert(
            conn,
            ConnInfo {
                peer,
                ip,
                group: None,
                p2p_addr: None,
                accepted: false,
                last_seen: now,
                last: PeerSummary::default(),
                busbw: 0.0,
                last_op: None,
            },
        );
    }

    /// A message arrived (called before the state machine handles it).
    pub(crate) fn on_message(&mut self, now: Instant, conn: ConnId, msg: &ToMaster) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_seen = now;
        let peer = c.peer;
        match msg {
            ToMaster::Heartbeat => {}
            ToMaster::HeartbeatStats(s) => self.on_summary(now, conn, s),
            ToMaster::Register {
                group,
                p2p_port,
                advertise_ip,
            } => {
                if c.group.is_some() {
                    return;
                }
                c.group = Some(*group);
                let addr = SocketAddr::new(advertise_ip.unwrap_or(c.ip), *p2p_port);
                c.p2p_addr = Some(addr);
                self.changed = true;
                self.event(now, "join", Some(peer), format!("group {group}, {addr}"));
            }
            // A peer of the run re-registering after a master restart
            // (docs/ARCHITECTURE.md §14).
            ToMaster::Rejoin(r) => {
                if c.group.is_some() {
                    return;
                }
                c.group = Some(r.group);
                let addr = SocketAddr::new(r.advertise_ip.unwrap_or(c.ip), r.p2p_port);
                c.p2p_addr = Some(addr);
                self.changed = true;
                self.event(
                    now,
                    "rejoin",
                    Some(peer),
                    format!("group {}, {addr}, epoch seen {}", r.group, r.max_seen),
                );
            }
            ToMaster::BandwidthReport { results } => {
                for (to, bps) in results {
                    if self.links.len() < MAX_LINKS || self.links.contains_key(&(peer, *to)) {
                        self.links.insert((peer, *to), *bps);
                    }
                }
            }
            ToMaster::SyncReport { tensors, .. } => {
                let Some(group) = c.group else { return };
                let sizes = tensors
                    .iter()
                    .map(|t| {
                        (
                            t.name.clone(),
                            t.count.saturating_mul(t.dtype.size() as u64),
                        )
                    })
                    .collect();
                self.syncs.entry(group).or_default().sizes = sizes;
            }
            ToMaster::Vote(_)
            | ToMaster::P2pReady { .. }
            | ToMaster::OpDone { .. }
            | ToMaster::SyncDone { .. } => self.changed = true,
        }
    }

    fn on_summary(&mut self, now: Instant, conn: ConnId, s: &PeerSummary) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let step = |new: u64, old: &mut u64, cap: u64| {
            let d = new.saturating_sub(*old).min(cap);
            *old = (*old).max(new);
            d
        };
        let last = &mut c.last;
        let ok = step(s.reduces_ok, &mut last.reduces_ok, MAX_OPS_STEP);
        step(s.reduces_failed, &mut last.reduces_failed, MAX_OPS_STEP);
        let retries = step(s.retries, &mut last.retries, MAX_OPS_STEP);
        let tx = step(s.tx_bytes, &mut last.tx_bytes, MAX_BYTES_STEP);
        let rx = step(s.rx_bytes, &mut last.rx_bytes, MAX_BYTES_STEP);
        step(s.syncs_ok, &mut last.syncs_ok, MAX_OPS_STEP);
        step(s.syncs_failed, &mut last.syncs_failed, MAX_OPS_STEP);
        step(s.sync_rx_bytes, &mut last.sync_rx_bytes, MAX_BYTES_STEP);
        step(s.sync_tx_bytes, &mut last.sync_tx_bytes, MAX_BYTES_STEP);
        if ok > 0 {
            c.busbw = s.busbw.min(MAX_BUSBW) as f64;
            c.last_op = Some(now);
        }
        let m = &self.metrics;
        m.retries.inc_by(retries);
        m.ring_bytes
            .get_or_create(&l1("direction", "tx"))
            .inc_by(tx);
        m.ring_bytes
            .get_or_create(&l1("direction", "rx"))
            .inc_by(rx);
        for micros in &s.recent_op_micros {
            m.op_duration.observe(f64::from(*micros) / 1e6);
        }
    }

    /// A connection closed (its reader ended).
    pub(crate) fn on_disconnect(&mut self, now: Instant, conn: ConnId, reason: &str) {
        self.lose(now, conn, "disconnected", reason);
    }

    /// The state machine asked for something; see what it means.
    pub(crate) fn on_output(&mut self, now: Instant, out: &Output) {
        match out {
            Output::Close(conn, why) => {
                let cause = if why.starts_with(crate::master::state::HEARTBEAT_DEATH) {
                    "heartbeat_timeout"
                } else {
                    "evicted"
                };
                self.lose(now, *conn, cause, why);
            }
            Output::Send(conn, msg) => self.on_sent(now, *conn, msg),
        }
    }

    fn on_sent(&mut self, now: Instant, conn: ConnId, msg: &FromMaster) {
        let Some(group) = self.conns.get(&conn).and_then(|c| c.group) else {
            return;
        };
        match msg {
            FromMaster::HeartbeatAck => {}
            FromMaster::OpVerdict {
                tag,
                epoch,
                seq,
                failure,
            } => {
                if !self.seen_verdicts.insert((group, *tag, *epoch, *seq)) {
                    return;
                }
                let outcome = if failure.is_some() {
                    self.ops_failed += 1;
                    "failed"
                } else {
                    self.ops_ok += 1;
                    "ok"
                };
                self.metrics
                    .ops
                    .get_or_create(&l2("group", group, "outcome", outcome))
                    .inc();
                match failure {
                    None => {
                        if let Some(t0) = self.recovering.remove(&group) {
                            let took = now.saturating_duration_since(t0).as_secs_f64();
                            self.metrics.recovery.observe(took);
                            self.recovery_count += 1;
                            if self.recoveries.len() == 64 {
                                self.recoveries.pop_front();
                            }
                            self.recoveries.push_back(took);
                        }
                    }
                    Some(f) => {
                        let why = match f {
                            FailReason::PeerLost => "peer_lost",
                            FailReason::Mismatch => "mismatch",
                            FailReason::Corrupt => "corrupt",
                        };
                        self.metrics
                            .op_failures
                            .get_or_create(&l1("reason", why))
                            .inc();
                        let detail = format!("group {group}, tag {tag}, epoch {epoch}: {why}");
                        self.event(now, "op_failed", None, detail);
                    }
                }
            }
            FromMaster::SyncPlan {
                revision, fetch, ..
            } => {
                let run = self.syncs.entry(group).or_default();
                run.revision = *revision;
                for f in fetch {
                    run.bytes = run
                        .bytes
                        .saturating_add(run.sizes.get(&f.name).copied().unwrap_or(0));
                    if let Some((holder, _)) = f.sources.first() {
                        let h = holder.hex();
                        if !run.holders.contains(&h) && run.holders.len() < 16 {
                            run.holders.push(h);
                        }
                    }
                }
            }
            FromMaster::SyncResult { result, .. } => {
                if !self.seen_results.insert(group) {
                    return;
                }
                let run = self.syncs.remove(&group).unwrap_or_default();
                let outcome = if result.is_ok() { "ok" } else { "failed" };
                self.metrics
                    .syncs
                    .get_or_create(&l1("outcome", outcome))
                    .inc();
                if result.is_ok() {
                    self.metrics.sync_bytes.inc_by(run.bytes);
                    self.metrics
                        .sync_revision
                        .get_or_create(&l1("group", group))
                        .set(i64::try_from(run.revision).unwrap_or(i64::MAX));
                }
                let holders = if run.holders.is_empty() {
                    "none (all equal)".to_string()
                } else {
                    run.holders.join(", ")
                };
                let detail = match result {
                    Ok(()) => format!(
                        "group {group}, revision {}: {} bytes from {holders}",
                        run.revision, run.bytes
                    ),
                    Err(why) => format!("group {group} failed: {why}"),
                };
                self.event(now, "sync", None, detail);
            }
            _ => self.changed = true,
        }
    }

    /// A registered peer is gone; `cause` names why for the metrics.
    fn lose(&mut self, now: Instant, conn: ConnId, cause: &'static str, why: &str) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.changed = true;
        let Some(group) = c.group else {
            return;
        };
        self.links.retain(|(a, b), _| *a != c.peer && *b != c.peer);
        let m = &self.metrics;
        m.peer_losses.get_or_create(&l1("cause", cause)).inc();
        match cause {
            "heartbeat_timeout" => m.heartbeats_missed.inc(),
            "evicted" => m.evictions.inc(),
            _ => 0,
        };
        if c.accepted {
            self.recovering.entry(group).or_insert(now);
        }
        let kind = if cause == "evicted" {
            "eviction"
        } else {
            "death"
        };
        self.event(now, kind, Some(c.peer), format!("{cause}: {why}"));
    }

    /// After the driver drained the outputs of one step: follow the ring, sample.
    pub(crate) fn after_step(&mut self, now: Instant, state: &MasterState) {
        self.seen_verdicts.clear();
        self.seen_results.clear();
        if std::mem::take(&mut self.changed) {
            self.follow_ring(now, state);
        }
        if self
            .last_sample
            .is_none_or(|t| now.saturating_duration_since(t).as_secs_f64() >= 1.0)
        {
            self.last_sample = Some(now);
            self.sample(now);
        }
    }

    fn follow_ring(&mut self, now: Instant, state: &MasterState) {
        let ring = state.ring().to_vec();
        let topology = state.topology();
        self.epochs = topology.group_epochs.iter().copied().collect();
        if ring == self.ring {
            return;
        }
        let in_ring: HashSet<PeerId> = ring.iter().copied().collect();
        let mut accepted = Vec::new();
        for c in self.conns.values_mut() {
            let now_in = in_ring.contains(&c.peer);
            if now_in && !c.accepted {
                accepted.push(c.peer);
            }
            c.accepted = now_in;
        }
        for p in accepted {
            self.event(now, "accept", Some(p), "into the ring".into());
        }
        let order: Vec<String> = ring.iter().map(|p| short(*p)).collect();
        let detail = format!("world {}: {}", ring.len(), order.join(" → "));
        self.ring = ring;
        self.event(now, "topology", None, detail);
    }

    fn sample(&mut self, now: Instant) {
        let fresh: Vec<f64> = self
            .conns
            .values()
            .filter(|c| c.accepted)
            .filter(|c| {
                c.last_op
                    .is_some_and(|t| now.saturating_duration_since(t).as_secs_f64() < FRESH_SECS)
            })
            .map(|c| c.busbw)
            .collect();
        let busbw = if fresh.is_empty() {
            0.0
        } else {
            fresh.iter().sum::<f64>() / fresh.len() as f64
        };
        if self.history.len() == MAX_SAMPLES {
            self.history.pop_front();
        }
        self.history.push_back(Sample {
            t: self.secs(now),
            world: self.ring.len(),
            busbw,
        });
    }

    // ---- outputs for the endpoints -------------------------------------------------

    /// The gauges describing the present, refilled from the tables; then the text.
    pub(crate) fn metrics_text(&self) -> String {
        let m = &self.metrics;
        m.peers.clear();
        m.world_size.clear();
        m.epoch.clear();
        m.link_bandwidth.clear();
        m.peer_busbw.clear();
        let registered = self.conns.values().filter(|c| c.group.is_some());
        let accepted = registered.clone().filter(|c| c.accepted).count();
        let waiting = registered.clone().count() - accepted;
        m.peers
            .get_or_create(&l1("state", "accepted"))
            .set(accepted as i64);
        m.peers
            .get_or_create(&l1("state", "waiting"))
            .set(waiting as i64);
        let mut worlds: BTreeMap<u32, i64> = BTreeMap::new();
        for c in registered.filter(|c| c.accepted) {
            if let Some(g) = c.group {
                *worlds.entry(g).or_default() += 1;
            }
            m.peer_busbw
                .get_or_create(&l1("peer", c.peer.hex()))
                .set(c.busbw);
        }
        for (g, n) in worlds {
            m.world_size.get_or_create(&l1("group", g)).set(n);
        }
        for (g, e) in &self.epochs {
            let e = i64::try_from(*e).unwrap_or(i64::MAX);
            m.epoch.get_or_create(&l1("group", g)).set(e);
        }
        for ((a, b), bps) in &self.links {
            m.link_bandwidth
                .get_or_create(&l2("from", a.hex(), "to", b.hex()))
                .set(*bps as f64);
        }
        m.encode()
    }

    /// The `/api/run` document.
    pub(crate) fn run_json(&self, now: Instant) -> serde_json::Value {
        let by_peer: HashMap<PeerId, &ConnInfo> =
            self.conns.values().map(|c| (c.peer, c)).collect();
        let mut peers: Vec<&ConnInfo> = self.conns.values().filter(|c| c.group.is_some()).collect();
        peers.sort_by_key(|c| {
            (
                !c.accepted,
                self.ring.iter().position(|p| *p == c.peer),
                c.peer,
            )
        });
        let peers: Vec<serde_json::Value> = peers
            .into_iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.peer.hex(),
                    "address": c.p2p_addr.map(|a| a.to_string()),
                    "group": c.group,
                    "state": if c.accepted { "accepted" } else { "waiting" },
                    "last_heartbeat_s": now.saturating_duration_since(c.last_seen).as_secs_f64(),
                    "busbw": c.busbw,
                    "reduces_ok": c.last.reduces_ok,
                    "reduces_failed": c.last.reduces_failed,
                    "retries": c.last.retries,
                    "tx_bytes": c.last.tx_bytes,
                    "rx_bytes": c.last.rx_bytes,
                })
            })
            .collect();
        // Each link of the ring, coloured by what its sender last achieved.
        let mut links = Vec::new();
        let mut groups: BTreeMap<u32, Vec<PeerId>> = BTreeMap::new();
        for p in &self.ring {
            if let Some(g) = by_peer.get(p).and_then(|c| c.group) {
                groups.entry(g).or_default().push(*p);
            }
        }
        for (g, members) in &groups {
            for (i, p) in members.iter().enumerate() {
                let next = members[(i + 1) % members.len()];
                if members.len() > 1 {
                    links.push(serde_json::json!({
                        "group": g,
                        "from": p.hex(),
                        "to": next.hex(),
                        "busbw": by_peer.get(p).map_or(0.0, |c| c.busbw),
                    }));
                }
            }
        }
        let m = &self.metrics;
        let bandwidth: Vec<serde_json::Value> = self
            .links
            .iter()
            .map(|((a, b), bps)| {
                serde_json::json!({"from": a.hex(), "to": b.hex(), "bytes_per_s": bps})
            })
            .collect();
        serde_json::json!({
            "started_unix_ms": self.started_unix_ms,
            "uptime_s": self.secs(now),
            "world_size": self.ring.len(),
            "ring": self.ring.iter().map(PeerId::hex).collect::<Vec<_>>(),
            "group_epochs": self.epochs,
            "links": links,
            "peers": peers,
            "bandwidth": bandwidth,
            "events": self.events,
            "history": self.history,
            "recovery_seconds": self.recoveries,
            "totals": {
                "ops_ok": self.ops_ok,
                "ops_failed": self.ops_failed,
                "retries": m.retries.get(),
                "heartbeats_missed": m.heartbeats_missed.get(),
                "evictions": m.evictions.get(),
                "recoveries": self.recovery_count,
                "shared_state_transfer_bytes": m.sync_bytes.get(),
            },
        })
    }
}

/// The first 8 hex digits of an id, for one-line event texts.
fn short(p: PeerId) -> String {
    p.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::state::MasterState;
    use std::time::Duration;

    fn value(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_lying_peer_cannot_overflow_totals_or_grow_the_observer() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        let state = MasterState::new(Duration::from_secs(5));
        o.on_connect(t0, 1, PeerId([1; 16]), [127, 0, 0, 1].into());
        let reg = ToMaster::Register {
            group: 0,
            p2p_port: 1,
            advertise_ip: None,
        };
        o.on_message(t0, 1, &reg);
        // Counters that jump to the maximum, fall back to zero and jump again.
        for i in 0..1000u64 {
            let big = if i % 2 == 0 { u64::MAX } else { 0 };
            let s = PeerSummary {
                reduces_ok: big,
                retries: big,
                tx_bytes: big,
                busbw: big,
                recent_op_micros: vec![u32::MAX; crate::wire::MAX_RECENT_OPS],
                ..PeerSummary::default()
            };
            let now = t0 + Duration::from_millis(i);
            o.on_message(now, 1, &ToMaster::HeartbeatStats(s));
            o.after_step(now, &state);
        }
        let text = o.metrics_text();
        // One capped step counted, every later claim ignored (the baseline only grows).
        assert_eq!(
            value(&text, "pccl_retries_total"),
            Some(MAX_OPS_STEP as f64)
        );
        assert_eq!(
            value(&text, "pccl_ring_bytes_total{direction=\"tx\"}"),
            Some(MAX_BYTES_STEP as f64)
        );
        assert!(o.conns[&1].busbw <= MAX_BUSBW as f64);
        // Durations: bounded per message by the protocol, each a finite observation.
        let count = value(&text, "pccl_op_duration_seconds_count").unwrap();
        assert_eq!(count, 1000.0 * crate::wire::MAX_RECENT_OPS as f64);
        assert!(o.history.len() <= MAX_SAMPLES);
    }

    /// Connections 1, 2 and 3 register in group 0.
    fn join_three(o: &mut Observer, now: Instant) {
        for conn in 1..=3 {
            o.on_connect(now, conn, PeerId([conn as u8; 16]), [127, 0, 0, 1].into());
            let reg = ToMaster::Register {
                group: 0,
                p2p_port: 1,
                advertise_ip: None,
            };
            o.on_message(now, conn, &reg);
        }
    }

    #[test]
    fn closes_are_told_apart_by_their_reason() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        join_three(&mut o, t0);
        let silent = format!("{} for 5s", crate::master::state::HEARTBEAT_DEATH);
        o.on_output(t0, &Output::Close(1, silent));
        o.on_output(t0, &Output::Close(2, "missed the proposal deadline".into()));
        o.on_disconnect(t0, 3, "connection closed");
        // A second close of a connection already gone counts nothing.
        o.on_disconnect(t0, 3, "connection closed");
        let text = o.metrics_text();
        assert_eq!(value(&text, "pccl_heartbeats_missed_total"), Some(1.0));
        assert_eq!(value(&text, "pccl_evictions_total"), Some(1.0));
        for cause in ["heartbeat_timeout", "evicted", "disconnected"] {
            let line = format!("pccl_peer_losses_total{{cause=\"{cause}\"}}");
            assert_eq!(value(&text, &line), Some(1.0), "{cause}: {text}");
        }
        let kinds: Vec<&str> = o.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            ["join", "join", "join", "death", "eviction", "death"]
        );
    }

    #[test]
    fn a_verdict_counts_once_per_op_and_a_loss_times_the_recovery() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        let state = MasterState::new(Duration::from_secs(5));
        join_three(&mut o, t0);
        for c in o.conns.values_mut() {
            // Accepted (what `follow_ring` sets from the state's ring).
            c.accepted = true;
        }
        // The master tells every member the verdict of one op: it counts once.
        let verdict = |seq, failure| FromMaster::OpVerdict {
            tag: 9,
            epoch: 1,
            seq,
            failure,
        };
        for (seq, failure) in [(0, Some(FailReason::Mismatch)), (1, None)] {
            for conn in 1..=3 {
                o.on_output(t0, &Output::Send(conn, verdict(seq, failure)));
            }
            o.after_step(t0, &state);
        }
        // A peer dies; its group's next successful op, 2 s later, ends the recovery.
        o.on_disconnect(t0, 3, "connection closed");
        let t1 = t0 + Duration::from_secs(2);
        for conn in 1..=2 {
            o.on_output(
                t1,
                &Output::Send(conn, verdict(2, Some(FailReason::PeerLost))),
            );
        }
        o.after_step(t1, &state);
        let t2 = t0 + Duration::from_secs(4);
        for conn in 1..=2 {
            o.on_output(t2, &Output::Send(conn, verdict(3, None)));
        }
        o.after_step(t2, &state);
        let text = o.metrics_text();
        let ops = |outcome| {
            value(
                &text,
                &format!("pccl_ops_total{{group=\"0\",outcome=\"{outcome}\"}}"),
            )
        };
        assert_eq!(ops("ok"), Some(2.0), "{text}");
        assert_eq!(ops("failed"), Some(2.0), "{text}");
        for reason in ["mismatch", "peer_lost"] {
            let line = format!("pccl_op_failures_total{{reason=\"{reason}\"}}");
            assert_eq!(value(&text, &line), Some(1.0), "{reason}: {text}");
        }
        assert_eq!(value(&text, "pccl_recovery_seconds_count"), Some(1.0));
        assert_eq!(value(&text, "pccl_recovery_seconds_sum"), Some(4.0));
        let kinds: Vec<&str> = o.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "op_failed").count(), 2);
        let run = o.run_json(t2);
        assert_eq!(run["totals"]["ops_ok"], 2);
        assert_eq!(run["totals"]["ops_failed"], 2);
        assert_eq!(run["recovery_seconds"], serde_json::json!([4.0]));
    }

    #[test]
    fn events_and_links_stay_bounded_under_churn() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        for i in 0..2000u64 {
            let peer = PeerId(rand::random());
            o.on_connect(t0, i, peer, [127, 0, 0, 1].into());
            o.on_message(
                t0,
                i,
                &ToMaster::Register {
                    group: 0,
                    p2p_port: 1,
                    advertise_ip: None,
                },
            );
            let results = (0..100).map(|_| (PeerId(rand::random()), 5)).collect();
            o.on_message(t0, i, &ToMaster::BandwidthReport { results });
            if i % 2 == 0 {
                o.on_disconnect(t0, i, "gone");
            }
        }
        assert_eq!(o.events.len(), MAX_EVENTS);
        assert!(o.links.len() <= MAX_LINKS);
        assert_eq!(o.conns.len(), 1000, "one entry per open connection");
        let run = o.run_json(t0);
        assert_eq!(run["events"].as_array().unwrap().len(), MAX_EVENTS);
    }
}
