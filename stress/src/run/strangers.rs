//! The harness's side of the strangers (`stress/src/stranger.rs`): launches the seeded
//! attacks at live peers (from their `TOPO` lines) or the master, judges every outcome and
//! counts it for the report.
//!
//! Violations: a p2p listener that sent a stranger any byte (not even a hello answer is
//! owed; a tensor or ring byte would be worse), and a connection the attacked side did not
//! close within its deadline (handshake timeout on a peer, registration timeout on the
//! master, plus slack) unless the peer was frozen, killed or leaving meanwhile. After the
//! last attack, no live peer and not the master may keep a socket whose remote end is the
//! strangers' address (`/proc/net/tcp`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pccl::PeerId;
use serde::Serialize;

use super::Harness;
use super::fates::Fate;
use crate::scenario::{Action, Strangers};
use crate::stranger::{self, Ctx, Kind, Outcome, Planned, Target};
use crate::worker::TopoLine;

/// How one kind of attack went, summed over the run.
#[derive(Debug, Default, Serialize)]
pub(super) struct KindTally {
    pub(super) attacks: u64,
    pub(super) conns: u64,
    pub(super) connect_failed: u64,
    pub(super) closed: u64,
    pub(super) closed_at_once: u64,
    /// Open past the deadline while the peer was frozen, killed or leaving: not judged.
    pub(super) excused_open: u64,
    pub(super) still_open: u64,
    pub(super) bytes_read: u64,
    pub(super) bytes_sent: u64,
}

/// The strangers' counters in the report.
#[derive(Debug, Default, Serialize)]
pub(crate) struct StrangerTally {
    pub(super) from_ip: String,
    pub(super) planned: u64,
    pub(super) launched: u64,
    pub(super) skipped_no_target: u64,
    pub(super) skipped_busy: u64,
    pub(super) kinds: BTreeMap<Kind, KindTally>,
    /// Attacks that read bytes from a peer (violations).
    pub(super) answered: u64,
    /// Attacks that left connections open past the deadline (violations).
    pub(super) not_closed: u64,
    /// Sockets from the strangers' address still held by a live peer or the master after
    /// the last attack (violations).
    pub(super) held_after: u64,
}

#[derive(Debug)]
struct Known {
    port: u16,
    id: PeerId,
    pred: Option<PeerId>,
    members: Vec<PeerId>,
    epoch: u64,
    epoch_step: u64,
    last_step: u64,
}

#[derive(Debug)]
pub(super) struct Runner {
    cfg: Strangers,
    plan: Vec<Planned>,
    next: usize,
    in_flight: Vec<JoinHandle<Outcome>>,
    known: BTreeMap<u32, Known>,
    /// (slot, from, until): the peer was frozen, killed, leaving or reset meanwhile.
    disrupted: Vec<(u32, Instant, Instant)>,
    pub(super) tally: StrangerTally,
}

/// No attack starts in the last 20 s of a run, so each has ended before the run does.
const QUIET_MS: u64 = 20_000;

impl Runner {
    pub(super) fn new(cfg: &Strangers, duration_s: f64, seed: u64) -> Self {
        let plan = stranger::plan(cfg, duration_s, seed, QUIET_MS);
        let tally = StrangerTally {
            from_ip: cfg.from_ip.to_string(),
            planned: plan.len() as u64,
            ..StrangerTally::default()
        };
        Self {
            cfg: cfg.clone(),
            plan,
            next: 0,
            in_flight: Vec::new(),
            known: BTreeMap::new(),
            disrupted: Vec::new(),
            tally,
        }
    }
}

fn parse_id(hex: &str) -> Option<PeerId> {
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(PeerId(id))
}

impl Harness {
    /// A worker's `TOPO` line: where its listener is and which ring it runs.
    pub(super) fn stranger_topo(&mut self, line: &str) {
        let Some(r) = self.strangers.as_mut() else {
            return;
        };
        let Ok(t) = serde_json::from_str::<TopoLine>(line) else {
            self.checker.violation(format!("bad TOPO line: {line}"));
            return;
        };
        let members: Option<Vec<PeerId>> = t.members.iter().map(|m| parse_id(m)).collect();
        let (Some(id), Some(members)) = (parse_id(&t.id), members) else {
            self.checker
                .violation(format!("bad id in TOPO line: {line}"));
            return;
        };
        r.known.insert(
            t.slot,
            Known {
                port: t.port,
                id,
                pred: t.pred.as_deref().and_then(parse_id),
                members,
                epoch: t.epoch,
                epoch_step: t.step,
                last_step: t.step,
            },
        );
    }

    pub(super) fn stranger_step(&mut self, slot: u32, step: u64) {
        if let Some(k) = self.strangers.as_mut().and_then(|r| r.known.get_mut(&slot)) {
            k.last_step = k.last_step.max(step + 1);
        }
    }

    /// Remembers that a schedule action disturbs `slot` for a while, so a connection it
    /// leaves open meanwhile is not blamed on its listener.
    pub(super) fn stranger_disruption(&mut self, a: &Action) {
        let Some(r) = self.strangers.as_mut() else {
            return;
        };
        let now = Instant::now();
        let long = Duration::from_secs(3600);
        let (slot, until) = match a {
            Action::Join(_) => return,
            Action::Kill(s) | Action::Leave(s) => (*s, now + long),
            Action::Reset(s) => (*s, now + Duration::from_secs(1)),
            Action::Freeze { slot, ms, .. } | Action::Partition { slot, ms, .. } => {
                (*slot, now + Duration::from_millis(*ms + 500))
            }
        };
        r.disrupted
            .retain(|(_, _, u)| now.saturating_duration_since(*u) < Duration::from_secs(120));
        r.disrupted.push((slot, now, until));
    }

    /// Launches the attacks that are due and judges those that ended.
    pub(super) fn strangers_tick(&mut self, start: Instant) {
        let Some(mut r) = self.strangers.take() else {
            return;
        };
        let now = Instant::now();
        while r.next < r.plan.len() && start + Duration::from_millis(r.plan[r.next].at_ms) <= now {
            let p = r.plan[r.next].clone();
            r.next += 1;
            self.launch(&mut r, &p);
        }
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut r.in_flight)
            .into_iter()
            .partition(|h| h.is_finished());
        r.in_flight = running;
        for h in done {
            self.judge(&mut r, h);
        }
        self.strangers = Some(r);
    }

    /// Waits for the attacks still running (each is bounded), then checks that nobody
    /// holds a stranger's socket.
    pub(super) fn strangers_finish(&mut self) {
        let Some(mut r) = self.strangers.take() else {
            return;
        };
        for h in std::mem::take(&mut r.in_flight) {
            self.judge(&mut r, h);
        }
        self.held_after(&mut r);
        self.strangers = Some(r);
    }

    fn launch(&mut self, r: &mut Runner, p: &Planned) {
        if r.in_flight.len() >= r.cfg.max_in_flight {
            r.tally.skipped_busy += 1;
            return;
        }
        let target = if p.kind == Kind::Master {
            None
        } else {
            // Live, accepted, not frozen peers whose ring we know.
            let live: Vec<u32> = self
                .peers
                .iter()
                .filter(|(s, peer)| {
                    peer.fate == Fate::Running
                        && peer.joined
                        && peer.frozen_until.is_none()
                        && r.known.contains_key(s)
                })
                .map(|(s, _)| *s)
                .collect();
            if live.is_empty() {
                r.tally.skipped_no_target += 1;
                return;
            }
            let slot = live[(p.seed % live.len() as u64) as usize];
            let k = &r.known[&slot];
            Some(Target {
                slot,
                addr: SocketAddr::new(self.master_addr.ip(), k.port),
                id: k.id,
                pred: k.pred,
                members: k.members.clone(),
                epoch: k.epoch,
                seq_hint: (k.last_step.saturating_sub(k.epoch_step)).min(u64::from(u32::MAX))
                    as u32,
            })
        };
        let o = &self.scenario.ops;
        let ctx = Ctx {
            from: r.cfg.from_ip,
            master: self.master_addr,
            count: o.count,
            concurrent: o.concurrent,
            state_elems: o.state_elems,
            quantize: o.quantize,
            burst_connections: r.cfg.burst_connections,
        };
        match stranger::launch(p.kind, target, ctx, p.seed) {
            Ok(h) => {
                r.tally.launched += 1;
                r.in_flight.push(h);
            }
            Err(e) => self
                .checker
                .violation(format!("harness error: starting a stranger: {e}")),
        }
    }

    fn judge(&mut self, r: &mut Runner, h: JoinHandle<Outcome>) {
        let Ok(o) = h.join() else {
            self.checker
                .violation("harness error: a stranger thread panicked".into());
            return;
        };
        let excused = o.slot.is_some_and(|s| {
            let disturbed = r
                .disrupted
                .iter()
                .any(|(d, from, until)| *d == s && *from < o.ended && *until > o.started);
            let now_not_running = self
                .peers
                .get(&s)
                .is_none_or(|p| p.fate != Fate::Running || p.frozen_until.is_some());
            disturbed || now_not_running
        });
        let k = r.tally.kinds.entry(o.kind).or_default();
        k.attacks += 1;
        k.conns += u64::from(o.conns);
        k.connect_failed += u64::from(o.connect_failed);
        k.closed += u64::from(o.closed);
        k.closed_at_once += u64::from(o.closed_at_once);
        k.bytes_read += o.bytes_read;
        k.bytes_sent += o.bytes_sent;
        let whom = match o.slot {
            Some(s) => format!("slot {s}"),
            None => "the master".to_string(),
        };
        if o.still_open > 0 {
            if excused {
                k.excused_open += u64::from(o.still_open);
            } else {
                k.still_open += u64::from(o.still_open);
                r.tally.not_closed += 1;
                let m = format!(
                    "stranger ({:?}: {}): {whom} left {} of {} connections open past its deadline",
                    o.kind, o.variant, o.still_open, o.conns
                );
                self.checker.violation(m);
            }
        }
        // A p2p listener owes a stranger nothing, not even its hello.
        if o.slot.is_some() && o.bytes_read > 0 {
            r.tally.answered += 1;
            let m = format!(
                "stranger ({:?}: {}): {whom} sent it {} bytes",
                o.kind, o.variant, o.bytes_read
            );
            self.checker.violation(m);
        }
    }

    /// After the last attack: sockets in live peers or the master whose remote end is the
    /// strangers' address, in a state other than closing on their own (ESTABLISHED or
    /// CLOSE_WAIT: the stranger hung up and the listener never closed its side).
    fn held_after(&mut self, r: &mut Runner) {
        let mut ports: Vec<u16> = self
            .peers
            .iter()
            .filter(|(_, p)| p.fate == Fate::Running && p.frozen_until.is_none())
            .filter_map(|(s, _)| r.known.get(s).map(|k| k.port))
            .collect();
        ports.push(self.master_addr.port());
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let held = held_sockets(r.cfg.from_ip, &ports);
            if held.is_empty() {
                return;
            }
            if Instant::now() >= end {
                r.tally.held_after = held.len() as u64;
                for (port, state) in held {
                    let m = format!(
                        "a socket from a stranger ({}) to port {port} is still {state} after the last attack",
                        r.cfg.from_ip
                    );
                    self.checker.violation(m);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// (local port, state) of `/proc/net/tcp` entries with remote address `from` on one of
/// `ports`, ESTABLISHED or CLOSE_WAIT.
fn held_sockets(from: Ipv4Addr, ports: &[u16]) -> Vec<(u16, &'static str)> {
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else {
        return Vec::new();
    };
    // The kernel prints the address as the host-order value of its network-order bytes.
    let want = format!("{:08X}", u32::from_ne_bytes(from.octets()));
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(st)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        let Some((rip, _)) = remote.split_once(':') else {
            continue;
        };
        let Some(port) = local
            .split_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        let state = match *st {
            "01" => "ESTABLISHED",
            "08" => "CLOSE_WAIT",
            _ => continue,
        };
        if rip == want && ports.contains(&port) {
            out.push((port, state));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex() {
        let id = PeerId([0xA5; 16]);
        assert_eq!(parse_id(&crate::worker::hex_id(id)), Some(id));
        assert_eq!(parse_id("zz"), None);
        assert_eq!(parse_id(&"g".repeat(32)), None);
    }

    /// A socket from the strangers' address that the listener never closes is seen.
    #[test]
    fn a_held_socket_is_found_in_proc() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let from = Ipv4Addr::new(127, 0, 0, 78);
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&SocketAddr::new(from.into(), 0).into())
            .expect("bind");
        sock.connect(&l.local_addr().expect("addr").into())
            .expect("connect");
        let (held, _) = l.accept().expect("accept");
        assert_eq!(held_sockets(from, &[port]), vec![(port, "ESTABLISHED")]);
        drop(sock);
        let end = Instant::now() + Duration::from_secs(2);
        while held_sockets(from, &[port]) != vec![(port, "CLOSE_WAIT")] {
            assert!(Instant::now() < end, "no CLOSE_WAIT seen");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(held);
        assert!(held_sockets(from, &[port]).is_empty());
        assert!(held_sockets(from, &[port.wrapping_add(1)]).is_empty());
    }
}
