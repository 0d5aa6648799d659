//! Attacks on the master's waits, on loopback with raw sockets speaking the control
//! protocol: a registered peer that keeps its connection alive with heartbeats but never
//! answers the topology proposal is evicted at the proposal deadline and the honest peers
//! go on; connections that heartbeat without ever registering are closed at the
//! registration deadline; beyond the bound on unregistered connections, new ones are
//! closed at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pccl::wire::{ConnectionKind, FromMaster, HELLO_LEN, Hello, ToMaster};
use pccl::{Communicator, MasterConfig, MasterNode, PeerId, ReduceOp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{cluster, config, connect_from, grow, on_all};

const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);
/// Scheduling slack on a loaded machine, on top of a configured bound.
const SLACK: Duration = Duration::from_secs(4);

fn master_with(f: impl FnOnce(&mut MasterConfig)) -> MasterNode {
    pccl::init_logging();
    let mut cfg = MasterConfig::new("127.0.0.1:0".parse().unwrap());
    f(&mut cfg);
    MasterNode::start(cfg).expect("master starts")
}

fn send(s: &mut TcpStream, msg: &ToMaster) -> std::io::Result<()> {
    let mut body = Vec::new();
    msg.encode(&mut body);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    s.write_all(&frame)
}

/// Reads one frame; `None` once the master has closed the connection.
fn recv(s: &mut TcpStream) -> Option<FromMaster> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(FromMaster::decode(&body).expect("the master sends valid frames"))
}

/// A control connection to the master, hello exchanged.
fn control(master: SocketAddr, me: PeerId) -> TcpStream {
    control_from("127.0.0.1", master, me)
}

/// [`control`] from source address `ip`.
fn control_from(ip: &str, master: SocketAddr, me: PeerId) -> TcpStream {
    let mut s = connect_from(ip, master);
    s.write_all(
        &Hello {
            kind: ConnectionKind::Control,
            peer: me,
        }
        .encode(),
    )
    .unwrap();
    let mut theirs = [0u8; HELLO_LEN];
    s.read_exact(&mut theirs).unwrap();
    s
}

/// What a raw connection saw until the master closed it.
struct Observed {
    /// When the master closed it (`None`: still open when the test stopped looking).
    closed_at: Option<Instant>,
    messages: Vec<FromMaster>,
}

/// Heartbeats on `s` every `HEARTBEAT_EVERY` and records what the master sends, until
/// the master closes it or `limit` passes. Runs on threads of its own.
fn heartbeat_until_closed(s: TcpStream, limit: Duration) -> mpsc::Receiver<Observed> {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let mut reader = s.try_clone().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let closed_r = closed.clone();
    let mut writer = s;
    std::thread::spawn(move || {
        while !closed.load(Ordering::Relaxed) && start.elapsed() < limit {
            if send(&mut writer, &ToMaster::Heartbeat).is_err() {
                break;
            }
            std::thread::sleep(HEARTBEAT_EVERY); // pacing, not synchronisation
        }
    });
    std::thread::spawn(move || {
        reader
            .set_read_timeout(Some(limit + Duration::from_secs(1)))
            .unwrap();
        let mut messages = Vec::new();
        while let Some(m) = recv(&mut reader) {
            messages.push(m);
        }
        let now = Instant::now();
        closed_r.store(true, Ordering::Relaxed);
        let _ = tx.send(Observed {
            closed_at: (now - start < limit).then_some(now),
            messages,
        });
    });
    rx
}

/// A p2p listener that completes every hello as `me` and then holds the connection
/// without reading: honest peers can dial it, but it never takes part.
fn fake_p2p_listener(me: PeerId) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let mut theirs = [0u8; HELLO_LEN];
            if s.read_exact(&mut theirs).is_ok() {
                let ours = Hello {
                    kind: ConnectionKind::P2p,
                    peer: me,
                };
                let _ = s.write_all(&ours.encode());
                held.push(s);
            }
        }
    });
    port
}

/// Runs `f` on every communicator on threads of its own and collects the results, failing
/// if any has not returned within `limit` (a blocked call must fail the test, not hang it).
fn on_all_within<T: Send + 'static>(
    comms: &[Arc<Communicator>],
    limit: Duration,
    f: impl Fn(usize, &Communicator) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let (tx, rx) = mpsc::channel();
    for (i, c) in comms.iter().enumerate() {
        let (c, f, tx) = (c.clone(), f.clone(), tx.clone());
        std::thread::spawn(move || {
            let _ = tx.send((i, f(i, &c)));
        });
    }
    let end = Instant::now() + limit;
    let mut out: Vec<Option<T>> = comms.iter().map(|_| None).collect();
    for _ in 0..comms.len() {
        let left = end.saturating_duration_since(Instant::now());
        let (i, r) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("a call did not return within {limit:?}"));
        out[i] = Some(r);
    }
    out.into_iter().map(|r| r.expect("every result")).collect()
}

#[test]
fn a_peer_silent_on_the_proposal_is_evicted_and_the_honest_peers_go_on() {
    const PROPOSAL: Duration = Duration::from_millis(1500);
    let m = master_with(|c| c.proposal_timeout = PROPOSAL);
    let comms: Vec<Arc<Communicator>> = cluster(&m, 2).into_iter().map(Arc::new).collect();

    // The attacker registers with a p2p listener that answers hellos, and heartbeats.
    let me = PeerId([0xA7; 16]);
    let p2p_port = fake_p2p_listener(me);
    let mut s = control(m.local_addr(), me);
    send(
        &mut s,
        &ToMaster::Register {
            group: 0,
            p2p_port,
            advertise_ip: None,
        },
    )
    .unwrap();
    let attacker = heartbeat_until_closed(s, Duration::from_secs(60));
    // `are_peers_pending` is a joint call: both honest peers ask until the master has it.
    let end = Instant::now() + Duration::from_secs(10);
    while !on_all_within(&comms, SLACK, |_, c| c.are_peers_pending().unwrap())[0] {
        assert!(Instant::now() < end, "the attacker never registered");
    }

    // The update proposes a ring with the attacker; it never answers. Within the bound
    // every honest call returns: success without it or a retryable failure.
    let started = Instant::now();
    let first = on_all_within(&comms, PROPOSAL + SLACK, |_, c| c.update_topology());
    let took = started.elapsed();
    eprintln!("update_topology with a silent peer: {first:?} after {took:?}");
    for r in &first {
        assert!(
            matches!(r, Ok(()) | Err(pccl::Error::UpdateTopologyFailed(_))),
            "{r:?}"
        );
    }
    let seen = attacker
        .recv_timeout(SLACK)
        .expect("the attacker's connection is closed after the proposal deadline");
    let closed = seen.closed_at.expect("closed") - started;
    assert!(
        seen.messages
            .iter()
            .any(|m| matches!(m, FromMaster::Propose { .. })),
        "the attacker was part of the proposal: {:?}",
        seen.messages
    );
    assert!(
        closed >= PROPOSAL,
        "closed {closed:?} after the update started, before the deadline"
    );

    // The retry (if needed) succeeds without the attacker.
    let again = on_all_within(&comms, SLACK, |_, c| c.update_topology());
    assert!(again.iter().all(|r| r.is_ok()), "{again:?}");
    for c in &comms {
        assert_eq!(c.topology().unwrap().ring.len(), 2);
    }

    // And the honest peers all-reduce with bit parity.
    let seed: u64 = rand::random();
    eprintln!("all-reduce data seed = {seed}");
    let inputs: Vec<Vec<f32>> = (0..2)
        .map(|r| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(r));
            (0..10_000).map(|_| rng.gen_range(-1.0..1.0)).collect()
        })
        .collect();
    let shared = Arc::new(inputs.clone());
    let outs = on_all_within(&comms, Duration::from_secs(30), move |r, c| {
        let mut out = vec![0f32; 10_000];
        c.all_reduce(&shared[r], &mut out, ReduceOp::Sum, 0)
            .unwrap();
        out
    });
    for (i, (a, b)) in inputs[0].iter().zip(&inputs[1]).enumerate() {
        // Two addends: the sum is the same in either order.
        let want = (a + b).to_bits();
        assert_eq!(outs[0][i].to_bits(), want, "peer 0, element {i}");
        assert_eq!(outs[1][i].to_bits(), want, "peer 1, element {i}");
    }
}

#[test]
fn connections_that_only_heartbeat_are_closed_at_the_registration_deadline() {
    const REGISTRATION: Duration = Duration::from_millis(1500);
    let m = master_with(|c| c.registration_timeout = REGISTRATION);
    let comms = cluster(&m, 2);
    let idle: Vec<_> = (0..10u8)
        .map(|i| {
            let s = control(m.local_addr(), PeerId([0xC0 + i; 16]));
            (
                Instant::now(),
                heartbeat_until_closed(s, Duration::from_secs(30)),
            )
        })
        .collect();
    for (hello_done, rx) in idle {
        let seen = rx
            .recv_timeout(REGISTRATION + SLACK)
            .expect("an unregistered connection is closed after the registration deadline");
        let closed = seen.closed_at.expect("closed") - hello_done;
        // Alive until then: its heartbeats were answered.
        assert!(
            seen.messages.contains(&FromMaster::HeartbeatAck),
            "{:?}",
            seen.messages
        );
        assert!(
            // (The master counts from its side of the hello, a hair before ours.)
            closed >= REGISTRATION - Duration::from_millis(100),
            "closed {closed:?} after its hello, before the deadline"
        );
    }
    // The registered peers were not touched, and the run goes on.
    let outs = on_all(&comms, |_, c| {
        let mut out = [0i64; 3];
        c.all_reduce(&[1i64, 2, 3], &mut out, ReduceOp::Sum, 0)
            .unwrap();
        out
    });
    assert!(outs.iter().all(|o| *o == [2, 4, 6]), "{outs:?}");
}

/// Polls `cond` every 20 ms until it holds, failing after `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every peer all-reduces i64 data made from `seed`; the sums must be exact everywhere.
fn exact_sums(comms: &[Communicator], tag: u64, seed: i64) {
    let n = comms.len() as i64;
    let outs = on_all(comms, |r, c| {
        let mine: Vec<i64> = (0..1000).map(|i| seed * (r as i64 + 1) + i).collect();
        let mut out = vec![0i64; 1000];
        c.all_reduce(&mine, &mut out, ReduceOp::Sum, tag)
            .map(|_| out)
    });
    let want: Vec<i64> = (0..1000).map(|i| seed * n * (n + 1) / 2 + n * i).collect();
    for (r, out) in outs.into_iter().enumerate() {
        assert_eq!(
            out.unwrap_or_else(|e| panic!("rank {r}: {e}")),
            want,
            "rank {r}"
        );
    }
}

#[test]
fn unregistered_connections_beyond_the_bound_are_closed_at_once() {
    const CAP: usize = 8;
    const REGISTRATION: Duration = Duration::from_millis(2000);
    let m = master_with(|c| {
        c.max_unregistered_connections = CAP;
        c.registration_timeout = REGISTRATION;
    });
    let comms = cluster(&m, 2);
    // Registered peers hold no slot, and neither does a connection whose hello failed.
    for _ in 0..2 * CAP {
        let mut s = TcpStream::connect(m.local_addr()).unwrap();
        s.write_all(b"not a pccl hello, but as long as one..")
            .unwrap();
        s.set_read_timeout(Some(SLACK)).unwrap();
        let _ = s.read(&mut [0u8; 1]);
    }
    wait_for("the count to settle", SLACK, || {
        m.unregistered_connections() == 0
    });

    // The attack: CAP connections say hello and heartbeat without registering...
    let holders: Vec<_> = (0..CAP as u8)
        .map(|i| {
            let s = control(m.local_addr(), PeerId([0xD0 + i; 16]));
            heartbeat_until_closed(s, Duration::from_secs(30))
        })
        .collect();
    wait_for("every slot to be held", SLACK, || {
        m.unregistered_connections() == CAP
    });
    // ...so the next ones are closed at once, their hello unanswered.
    for i in 0..4u8 {
        let started = Instant::now();
        let mut s = TcpStream::connect(m.local_addr()).unwrap();
        let _ = s.write_all(
            &Hello {
                kind: ConnectionKind::Control,
                peer: PeerId([0xE0 + i; 16]),
            }
            .encode(),
        );
        s.set_read_timeout(Some(SLACK)).unwrap();
        let mut buf = [0u8; HELLO_LEN];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a connection beyond the bound was served: {other:?}"),
        }
        assert!(started.elapsed() < SLACK, "not closed at once");
    }
    assert_eq!(m.unregistered_connections(), CAP);

    // The registered peers are not touched.
    exact_sums(&comms, 1, 17);

    // The registration deadline frees the slots; then a newcomer registers and joins.
    for rx in holders {
        let seen = rx
            .recv_timeout(REGISTRATION + SLACK)
            .expect("a slot holder is closed at the registration deadline");
        assert!(seen.closed_at.is_some());
    }
    wait_for("the count to return to 0", SLACK, || {
        m.unregistered_connections() == 0
    });
    let comms = grow(comms, config(m.local_addr()));
    exact_sums(&comms, 2, 23);
    assert_eq!(m.unregistered_connections(), 0);
}

/// Connections that say hello and never register, all from one address, cannot lock
/// newcomers out: once they hold every slot, a newcomer from another address evicts the
/// oldest of them and joins, while the flood's further connections are refused.
#[test]
fn a_flood_of_unregistered_connections_from_one_address_cannot_lock_newcomers_out() {
    const CAP: usize = 4;
    let m = master_with(|c| {
        c.max_unregistered_connections = CAP;
        // Long enough that the flood outlasts the test if nothing evicts it.
        c.registration_timeout = Duration::from_secs(60);
    });
    let comms = cluster(&m, 2);
    let holders: Vec<_> = (0..CAP as u8)
        .map(|i| {
            let s = control_from("127.0.0.77", m.local_addr(), PeerId([0xD0 + i; 16]));
            heartbeat_until_closed(s, Duration::from_secs(40))
        })
        .collect();
    wait_for("every slot to be held", SLACK, || {
        m.unregistered_connections() == CAP
    });
    // One more from the flooding address is closed at once, its hello unanswered.
    let mut s = connect_from("127.0.0.77", m.local_addr());
    let _ = s.write_all(
        &Hello {
            kind: ConnectionKind::Control,
            peer: PeerId([0xE0; 16]),
        }
        .encode(),
    );
    s.set_read_timeout(Some(SLACK)).unwrap();
    match s.read(&mut [0u8; HELLO_LEN]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a connection beyond the bound was served: {other:?}"),
    }
    // A newcomer from 127.0.0.1 joins while the flood holds every slot...
    let started = Instant::now();
    let comms = grow(comms, config(m.local_addr()));
    assert!(started.elapsed() < Duration::from_secs(20), "joined late");
    exact_sums(&comms, 3, 29);
    // ...because the flood's oldest connection gave up its slot, and only that one.
    let first = holders[0]
        .recv_timeout(SLACK)
        .expect("the oldest flood connection is closed");
    assert!(first.closed_at.is_some());
    for rx in &holders[1..] {
        assert!(
            rx.try_recv().is_err(),
            "a younger flood connection was closed"
        );
    }
    assert_eq!(m.unregistered_connections(), CAP - 1);
}
