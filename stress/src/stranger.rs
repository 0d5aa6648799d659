//! Strangers: hosts that are not members of the run (no secret, no membership) attacking a
//! live peer's p2p listener or the master from raw sockets, at seeded moments during the
//! churn. Each attack runs on its own thread, is bounded in connections, bytes and time,
//! closes every socket it opened, and reports how each connection ended.
//!
//! Every socket is bound to the scenario's `strangers.from_ip` (a 127/8 address the peers
//! do not use), so a stranger claiming a member's id is refused by the gate's check of the
//! address the master recorded (docs/PROTOCOL.md §1.2). What a p2p listener owes a stranger
//! is nothing: no byte (not even the hello answer), and a close within its handshake
//! timeout; the master must close an unregistered connection within its registration
//! timeout. The harness judges the outcomes (`run/strangers.rs`).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pccl::wire::{ConnectionKind, DataHeader, Hello, StateRequest, ToMaster};
use pccl::{Collective, DataType, PeerId, ReduceOp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::scenario::Strangers;

/// A p2p listener closes an unadmitted connection after its handshake timeout (5 s).
const P2P_LIMIT: Duration = Duration::from_secs(5 + 6);
/// The master closes a connection that has not registered after 10 s.
const MASTER_LIMIT: Duration = Duration::from_secs(10 + 6);
/// A connection closed within this of being opened counts as closed at once.
const AT_ONCE: Duration = Duration::from_millis(500);

/// The attack kinds, in the order of `Strangers::weights`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Silent,
    Hello,
    Inject,
    State,
    Garbage,
    Burst,
    Master,
}

impl Kind {
    pub(crate) const ALL: [Self; 7] = [
        Self::Silent,
        Self::Hello,
        Self::Inject,
        Self::State,
        Self::Garbage,
        Self::Burst,
        Self::Master,
    ];
}

/// One planned attack: when, what, and the seed of its choices (target, bytes).
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    pub(crate) at_ms: u64,
    pub(crate) kind: Kind,
    pub(crate) seed: u64,
}

/// The attacks of a run, from the seed alone (a stream of its own, so the churn schedule
/// and its digest do not change). None starts in the last `quiet_ms` of the run, so every
/// attack has ended, and been judged, before the run does.
pub(crate) fn plan(st: &Strangers, duration_s: f64, seed: u64, quiet_ms: u64) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5712_a43e_5712_a43e);
    let w = st.weights();
    let total: u32 = w.iter().sum();
    let end = ((duration_s * 1000.0) as u64).saturating_sub(quiet_ms);
    let mut out = Vec::new();
    let mut t = 0u64;
    if total == 0 {
        return out;
    }
    loop {
        t += rng.gen_range(st.interval_ms[0]..=st.interval_ms[1]);
        if t >= end {
            return out;
        }
        let mut pick = rng.gen_range(0..total);
        let mut k = 0;
        while pick >= w[k] {
            pick -= w[k];
            k += 1;
        }
        out.push(Planned {
            at_ms: t,
            kind: Kind::ALL[k],
            seed: rng.r#gen(),
        });
    }
}

/// What the harness knows of a live peer (its `TOPO` line) when it aims at it.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) slot: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) id: PeerId,
    /// Its predecessor in the ring (whose frames it reads), if the ring has two peers.
    pub(crate) pred: Option<PeerId>,
    pub(crate) members: Vec<PeerId>,
    pub(crate) epoch: u64,
    /// Steps done since its ring's epoch began: roughly the seq of the next op of a tag.
    pub(crate) seq_hint: u32,
}

/// The run's settings an attack needs to look plausible.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) from: Ipv4Addr,
    pub(crate) master: SocketAddr,
    pub(crate) count: usize,
    pub(crate) concurrent: usize,
    pub(crate) state_elems: usize,
    pub(crate) quantize: bool,
    pub(crate) burst_connections: usize,
}

/// How one attack went.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) kind: Kind,
    /// The peer attacked (None: the master).
    pub(crate) slot: Option<u32>,
    pub(crate) variant: &'static str,
    pub(crate) started: Instant,
    pub(crate) ended: Instant,
    /// Connections opened, and connects that failed (refused or timed out).
    pub(crate) conns: u32,
    pub(crate) connect_failed: u32,
    /// Closed by the other side (EOF or reset) within the limit, and how many of them
    /// within `AT_ONCE`.
    pub(crate) closed: u32,
    pub(crate) closed_at_once: u32,
    /// Still open when the limit passed (the harness then closes them).
    pub(crate) still_open: u32,
    /// Bytes the other side sent us.
    pub(crate) bytes_read: u64,
    /// Bytes we got onto the wire (accepted by the kernel).
    pub(crate) bytes_sent: u64,
}

/// Starts one attack on its own thread. `target` is None for the master.
pub(crate) fn launch(
    kind: Kind,
    target: Option<Target>,
    ctx: Ctx,
    seed: u64,
) -> std::io::Result<JoinHandle<Outcome>> {
    std::thread::Builder::new()
        .name(format!("stranger-{kind:?}"))
        .spawn(move || attack(kind, target.as_ref(), &ctx, seed))
}

fn attack(kind: Kind, target: Option<&Target>, ctx: &Ctx, seed: u64) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut o = Outcome {
        kind,
        slot: target.map(|t| t.slot),
        variant: "",
        started: Instant::now(),
        ended: Instant::now(),
        conns: 0,
        connect_failed: 0,
        closed: 0,
        closed_at_once: 0,
        still_open: 0,
        bytes_read: 0,
        bytes_sent: 0,
    };
    let mut socks: Vec<(TcpStream, Instant)> = Vec::new();
    let mut heartbeat = false;
    let (to, limit) = match target {
        Some(t) => (t.addr, P2P_LIMIT),
        None => (ctx.master, MASTER_LIMIT),
    };
    let n = if kind == Kind::Burst {
        ctx.burst_connections
    } else {
        1
    };
    for i in 0..n {
        match dial(ctx.from, to) {
            Ok(s) => {
                o.conns += 1;
                socks.push((s, Instant::now()));
            }
            Err(_) => {
                o.connect_failed += 1;
                continue;
            }
        }
        let Some((s, _)) = socks.last_mut() else {
            continue;
        };
        let bytes = match (kind, target) {
            (Kind::Master, _) => {
                let (variant, bytes, beat) = master_bytes(&mut rng);
                o.variant = variant;
                heartbeat = beat;
                bytes
            }
            (_, None) => Vec::new(),
            (Kind::Silent, _) => {
                o.variant = "connect, then silence";
                Vec::new()
            }
            (Kind::Hello, Some(t)) => {
                o.variant = "hello, then silence";
                hello_bytes(&mut rng, t)
            }
            (Kind::Inject, Some(t)) => {
                o.variant = "hello as the predecessor, then ring data";
                inject_bytes(&mut rng, t, ctx)
            }
            (Kind::State, Some(t)) => {
                o.variant = "shared-state hello as a member, then tensor requests";
                state_bytes(&mut rng, t, ctx)
            }
            (Kind::Garbage, Some(t)) => {
                let (variant, bytes) = garbage_bytes(&mut rng, t);
                o.variant = variant;
                bytes
            }
            (Kind::Burst, Some(t)) => {
                o.variant = "many connections held open";
                // Half of them say a stranger's hello, half say nothing.
                if i % 2 == 0 {
                    hello_bytes(&mut rng, t)
                } else {
                    Vec::new()
                }
            }
        };
        o.bytes_sent += send(s, &bytes);
    }
    watch(&mut socks, limit, heartbeat, &mut o);
    // Dropping the sockets closes whatever the other side left open.
    drop(socks);
    o.ended = Instant::now();
    o
}

/// A connection from `from` (any 127/8 address is local on Linux) to `to`, bounded.
fn dial(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(2))?;
    let s: TcpStream = sock.into();
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(s)
}

/// Writes what the kernel takes within the write timeout; returns the bytes taken. A
/// listener that reads nothing past the hello fills the buffers, so most of a long
/// injection stays with us: that is the defence working, not an error.
fn send(s: &mut TcpStream, bytes: &[u8]) -> u64 {
    let mut done = 0;
    let end = Instant::now() + Duration::from_secs(2);
    while done < bytes.len() && Instant::now() < end {
        match s.write(&bytes[done..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => done += k,
        }
    }
    done as u64
}

/// Watches every socket until the other side closes it or `limit` passes, counting what it
/// sends. With `heartbeat`, sends a control heartbeat on each open socket every 300 ms.
fn watch(socks: &mut [(TcpStream, Instant)], limit: Duration, heartbeat: bool, o: &mut Outcome) {
    let mut open: Vec<bool> = socks
        .iter()
        .map(|(s, _)| s.set_nonblocking(true).is_ok())
        .collect();
    // A socket we could not switch to non-blocking is not watched: count it as open.
    o.still_open += open.iter().filter(|x| !**x).count() as u32;
    let beat = control_frame(|b| ToMaster::Heartbeat.encode(b));
    let mut next_beat = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let now = Instant::now();
        let send_beat = heartbeat && now >= next_beat;
        if send_beat {
            next_beat = now + Duration::from_millis(300);
        }
        for (i, (s, opened)) in socks.iter_mut().enumerate() {
            if !open[i] {
                continue;
            }
            if send_beat {
                // Non-blocking: a heartbeat that does not fit is simply not sent.
                let _ = s.write(&beat);
            }
            // Bounded: at most 16 reads per socket per round.
            for _ in 0..16 {
                match s.read(&mut buf) {
                    Ok(0) => {
                        open[i] = false;
                        o.closed += 1;
                        if opened.elapsed() <= AT_ONCE {
                            o.closed_at_once += 1;
                        }
                        break;
                    }
                    Ok(k) => o.bytes_read += k as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        // Reset (or another error ending the connection): closed.
                        open[i] = false;
                        o.closed += 1;
                        if opened.elapsed() <= AT_ONCE {
                            o.closed_at_once += 1;
                        }
                        break;
                    }
                }
            }
        }
        let any_open = open.iter().any(|x| *x);
        let oldest = socks.first().map(|(_, t)| *t).unwrap_or(now);
        if !any_open || oldest.elapsed() >= limit {
            o.still_open += open.iter().filter(|x| **x).count() as u32;
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `u32 length | body` as control frames travel.
fn control_frame(body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = Vec::new();
    body(&mut b);
    let mut out = (b.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

fn hello(kind: ConnectionKind, peer: PeerId) -> Vec<u8> {
    Hello { kind, peer }.encode().to_vec()
}

fn random_id(rng: &mut ChaCha8Rng) -> PeerId {
    PeerId(rng.r#gen())
}

/// A member's id other than the target's own (or a random one when alone).
fn member(rng: &mut ChaCha8Rng, t: &Target) -> PeerId {
    let others: Vec<PeerId> = t.members.iter().copied().filter(|m| *m != t.id).collect();
    if others.is_empty() {
        random_id(rng)
    } else {
        others[rng.gen_range(0..others.len())]
    }
}

/// (b) A hello of a random p2p kind, claiming a random id or a member's.
fn hello_bytes(rng: &mut ChaCha8Rng, t: &Target) -> Vec<u8> {
    let kinds = [
        ConnectionKind::P2p,
        ConnectionKind::Benchmark,
        ConnectionKind::SharedState,
    ];
    let kind = kinds[rng.gen_range(0..kinds.len())];
    let id = if rng.gen_bool(0.5) {
        member(rng, t)
    } else {
        random_id(rng)
    };
    hello(kind, id)
}

/// (c) The predecessor's id, then data frames with a valid CRC for this ring's tags, epoch
/// (and the next), seqs around the current one, ring steps 0..2, each a whole chunk of
/// values no sum of the run's inputs gives.
fn inject_bytes(rng: &mut ChaCha8Rng, t: &Target, ctx: &Ctx) -> Vec<u8> {
    let claim = t.pred.unwrap_or_else(|| member(rng, t));
    let mut out = hello(ConnectionKind::P2p, claim);
    let w = t.members.len().max(2);
    let base = ctx.count / w;
    let rem = ctx.count % w;
    for tag in 0..ctx.concurrent as u64 {
        // Quantized tags carry metadata before the codes: only plain ones are imitated.
        if ctx.quantize && tag % 2 == 1 {
            continue;
        }
        for epoch in [t.epoch, t.epoch + 1] {
            for seq in t.seq_hint..t.seq_hint + 3 {
                let step = rng.gen_range(0..2u16);
                let c = rng.gen_range(0..w);
                let start = c * base + c.min(rem);
                let n = (base + usize::from(c < rem)).min((1 << 20) / 4);
                let payload: Vec<u8> = (0..n).flat_map(|_| 1.0e9f32.to_le_bytes()).collect();
                let header = DataHeader {
                    tag,
                    epoch,
                    seq,
                    count: ctx.count as u64,
                    dtype: DataType::F32,
                    op: ReduceOp::Sum,
                    quant: None,
                    step,
                    slice: 0,
                    offset: (start * 4) as u64,
                    len: payload.len() as u32,
                    crc: crc32fast::hash(&payload),
                    kind: Collective::AllReduce,
                };
                header.encode(&mut out);
                out.extend_from_slice(&payload);
            }
        }
    }
    out
}

/// (d) A shared-state hello claiming a member, then requests for both of the run's tensors
/// at their exact lengths.
fn state_bytes(rng: &mut ChaCha8Rng, t: &Target, ctx: &Ctx) -> Vec<u8> {
    let mut out = hello(ConnectionKind::SharedState, member(rng, t));
    for (name, len) in [("weights", ctx.state_elems.max(1) * 4), ("step", 8)] {
        out.extend(control_frame(|b| {
            StateRequest {
                name: name.into(),
                len: len as u64,
            }
            .encode(b)
        }));
    }
    out
}

/// (e) Something a p2p listener must refuse without answering.
fn garbage_bytes(rng: &mut ChaCha8Rng, t: &Target) -> (&'static str, Vec<u8>) {
    match rng.gen_range(0..5) {
        0 => {
            let n = rng.gen_range(1..4096);
            let mut b: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
            b[0] = b'X';
            ("random bytes", b)
        }
        1 => {
            let mut b = hello(ConnectionKind::P2p, member(rng, t));
            b[4..6].copy_from_slice(&999u16.to_le_bytes());
            ("a hello of another protocol version", b)
        }
        2 => (
            "a control hello to a p2p listener",
            hello(ConnectionKind::Control, member(rng, t)),
        ),
        3 => {
            let mut b = hello(ConnectionKind::SharedState, member(rng, t));
            b.extend_from_slice(&u32::MAX.to_le_bytes());
            b.extend((0..1024).map(|_| rng.r#gen::<u8>()));
            ("a shared-state hello, then a 4 GiB length prefix", b)
        }
        _ => {
            let claim = t.pred.unwrap_or_else(|| member(rng, t));
            let mut b = hello(ConnectionKind::P2p, claim);
            // A data frame header announcing u32::MAX payload bytes, then noise.
            b.push(1);
            b.extend((0..45).map(|_| rng.r#gen::<u8>()));
            b.extend_from_slice(&u32::MAX.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend((0..4096).map(|_| rng.r#gen::<u8>()));
            ("a ring hello, then a frame of 4 GiB", b)
        }
    }
}

/// (g) What a stranger sends the master; the flag asks for heartbeats while it waits.
fn master_bytes(rng: &mut ChaCha8Rng) -> (&'static str, Vec<u8>, bool) {
    let me = random_id(rng);
    match rng.gen_range(0..5) {
        0 => (
            "hello, then heartbeats and never a register",
            hello(ConnectionKind::Control, me),
            true,
        ),
        1 => {
            let n = rng.gen_range(1..4096);
            let mut b: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
            b[0] = b'X';
            ("random bytes", b, false)
        }
        2 => {
            let mut b = hello(ConnectionKind::Control, me);
            b.extend_from_slice(&u32::MAX.to_le_bytes());
            b.extend((0..1024).map(|_| rng.r#gen::<u8>()));
            ("hello, then a 4 GiB length prefix", b, false)
        }
        3 => {
            let mut b = hello(ConnectionKind::Control, me);
            // Register { group 0, port 1 } with an address family that does not exist.
            let body = [1u8, 0, 0, 0, 0, 1, 0, 9, 127, 0, 0, 1];
            b.extend_from_slice(&(body.len() as u32).to_le_bytes());
            b.extend_from_slice(&body);
            ("a register with a bad address family", b, false)
        }
        _ => {
            let mut b = hello(ConnectionKind::Control, me);
            // A register frame that announces 64 bytes and stops after 5.
            b.extend_from_slice(&64u32.to_le_bytes());
            b.extend_from_slice(&[1u8, 0, 0, 0, 0]);
            ("a truncated register, then silence", b, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_follows_the_seed_and_stays_clear_of_the_end() {
        let st = Strangers::default();
        let a = plan(&st, 120.0, 7, 20_000);
        let b = plan(&st, 120.0, 7, 20_000);
        assert!(!a.is_empty());
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.at_ms == y.at_ms && x.kind == y.kind && x.seed == y.seed)
        );
        assert!(a.iter().all(|p| p.at_ms < 100_000));
        let mut only = Strangers::default();
        for w in [
            &mut only.silent,
            &mut only.hello,
            &mut only.state,
            &mut only.garbage,
            &mut only.burst,
            &mut only.master,
        ] {
            *w = 0;
        }
        assert!(
            plan(&only, 60.0, 1, 0)
                .iter()
                .all(|p| p.kind == Kind::Inject)
        );
    }

    #[test]
    fn injected_frames_decode_as_plausible_ring_data() {
        let t = Target {
            slot: 0,
            addr: "127.0.0.1:1".parse().expect("literal"),
            id: PeerId([1; 16]),
            pred: Some(PeerId([2; 16])),
            members: vec![PeerId([1; 16]), PeerId([2; 16]), PeerId([3; 16])],
            epoch: 9,
            seq_hint: 4,
        };
        let ctx = Ctx {
            from: Ipv4Addr::new(127, 0, 0, 77),
            master: "127.0.0.1:2".parse().expect("literal"),
            count: 1000,
            concurrent: 2,
            state_elems: 10,
            quantize: false,
            burst_connections: 1,
        };
        let b = inject_bytes(&mut ChaCha8Rng::seed_from_u64(1), &t, &ctx);
        let h = Hello::decode(b[..pccl::wire::HELLO_LEN].try_into().expect("len")).expect("hello");
        assert_eq!(h.peer, PeerId([2; 16]));
        assert_eq!(h.kind, ConnectionKind::P2p);
        let mut rest = &b[pccl::wire::HELLO_LEN..];
        let mut frames = 0;
        while !rest.is_empty() {
            let head: &[u8; pccl::wire::DATA_HEADER_LEN] =
                rest[..pccl::wire::DATA_HEADER_LEN].try_into().expect("len");
            let d = DataHeader::decode(head).expect("header");
            let body = &rest[pccl::wire::DATA_HEADER_LEN..][..d.len as usize];
            assert_eq!(crc32fast::hash(body), d.crc);
            assert!(d.epoch == 9 || d.epoch == 10);
            assert!((4..7).contains(&d.seq));
            assert!(d.offset + u64::from(d.len) <= 4000);
            rest = &rest[pccl::wire::DATA_HEADER_LEN + d.len as usize..];
            frames += 1;
        }
        assert_eq!(frames, 2 * 2 * 3);
    }
}
