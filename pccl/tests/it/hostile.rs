//! Attacks on a peer's p2p listener from raw sockets (docs/PROTOCOL.md §1.2): idle and
//! unidentified connections are closed in bounded time, strangers and peers on the wrong
//! link are refused before their hello is answered or any payload read, early frames leave
//! with their connection, silent ring connections are closed at the idle deadline, and
//! the run's all-reduces stay exact and bit-identical.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pccl::wire::{ConnectionKind, DATA_HEADER_LEN, DataHeader, HELLO_LEN, Hello, StateRequest};
use pccl::{
    Collective, Communicator, CommunicatorConfig, DataType, PeerId, ReduceOp, SharedState,
    SyncStrategy, TensorInfo,
};

use crate::common::{cluster_with, config, connect_from, master, on_all};

const HANDSHAKE: Duration = Duration::from_secs(2);

fn hardened(m: &pccl::MasterNode) -> CommunicatorConfig {
    let mut c = config(m.local_addr());
    c.handshake_timeout = HANDSHAKE;
    c
}

fn hello(kind: ConnectionKind, peer: PeerId) -> [u8; HELLO_LEN] {
    Hello { kind, peer }.encode()
}

/// Reads `s` until the listener closes it (failing after `limit`); returns the bytes it sent.
fn drain_until_closed(s: &mut TcpStream, limit: Duration) -> usize {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut got = 0;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return got;
            }
            Err(_) => {}
        }
        assert!(
            Instant::now() < end,
            "the listener kept the connection open"
        );
    }
}

/// Every peer all-reduces `tag` with seeded i64 data; results must be exact and identical.
fn exact_everywhere(comms: &[Communicator], tag: u64, seed: u64) {
    let n = 1000;
    let data = |rank: usize| -> Vec<i64> {
        (0..n)
            .map(|i| ((seed ^ (rank as u64 * 7919)) as i64).wrapping_mul(i as i64 + 1) % 1_000_003)
            .collect()
    };
    let expected: Vec<i64> = (0..n)
        .map(|i| (0..comms.len()).map(|r| data(r)[i]).sum())
        .collect();
    let res = on_all(comms, |r, c| {
        let mut out = vec![0i64; n];
        c.all_reduce(&data(r), &mut out, ReduceOp::Sum, tag)
            .map(|_| out)
    });
    for (r, out) in res.into_iter().enumerate() {
        let out = out.unwrap_or_else(|e| panic!("rank {r}, tag {tag}: {e}"));
        assert!(out == expected, "rank {r}, tag {tag}: poisoned result");
    }
}

/// The peer at ring position 0, with its predecessor's and successor's ids.
fn target(comms: &[Communicator]) -> (usize, SocketAddr, PeerId, PeerId) {
    let ring = comms[0].topology().unwrap().ring.clone();
    let who = comms.iter().position(|c| c.id() == ring[0].id).unwrap();
    (who, ring[0].p2p_addr, ring[ring.len() - 1].id, ring[1].id)
}

/// (a) Connections that send a hello and then nothing are closed within the bound: a
/// stranger's without an answer, a member's idle bandwidth test without a result.
#[test]
fn idle_connections_after_a_hello_are_closed_and_never_served() {
    let seed = 0x1d1e;
    println!("seed {seed}");
    let m = master();
    let comms = cluster_with(2, |_| hardened(&m));
    let (_, addr, pred, _) = target(&comms);
    let kinds = [
        ConnectionKind::P2p,
        ConnectionKind::Benchmark,
        ConnectionKind::SharedState,
    ];
    let mut strangers: Vec<TcpStream> = (0..10u8)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&hello(kinds[i as usize % 3], PeerId([0xA0 + i; 16])))
                .unwrap();
            s
        })
        .collect();
    let mut members: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&hello(ConnectionKind::Benchmark, pred))
                .unwrap();
            s
        })
        .collect();
    exact_everywhere(&comms, 1, seed);
    for s in &mut strangers {
        assert_eq!(
            drain_until_closed(s, HANDSHAKE * 3),
            0,
            "a stranger was answered"
        );
    }
    for s in &mut members {
        // The hello answer, then nothing: an idle bandwidth test ends without a result.
        assert_eq!(drain_until_closed(s, Duration::from_secs(8)), HELLO_LEN);
    }
    exact_everywhere(&comms, 1, seed + 1);
}

/// (b) Beyond the bound on unidentified connections, new ones are closed at once.
#[test]
fn unidentified_connections_beyond_the_bound_are_closed_at_once() {
    let m = master();
    let comms = cluster_with(2, |_| {
        let mut c = hardened(&m);
        c.max_pending_connections = 4;
        c
    });
    let (_, addr, pred, _) = target(&comms);
    // The listener accepts in arrival order: these four hold every slot for the handshake
    // timeout, so the fifth finds none.
    let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let start = Instant::now();
    let mut fifth = TcpStream::connect(addr).unwrap();
    fifth
        .write_all(&hello(ConnectionKind::Benchmark, pred))
        .ok();
    assert_eq!(drain_until_closed(&mut fifth, HANDSHAKE / 2), 0);
    assert!(start.elapsed() < HANDSHAKE / 2, "not closed at once");
    exact_everywhere(&comms, 2, 7);
    // Once the silent ones time out, a member is served again.
    for mut s in silent {
        assert_eq!(drain_until_closed(&mut s, HANDSHAKE * 3), 0);
    }
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello(ConnectionKind::Benchmark, pred))
        .unwrap();
    s.set_read_timeout(Some(HANDSHAKE * 2)).unwrap();
    let mut theirs = [0u8; HELLO_LEN];
    s.read_exact(&mut theirs).expect("a member is served again");
}

/// (b') A flood of unidentified connections from one address cannot lock members out:
/// once it holds every slot, a member dialling from another address evicts the flood's
/// oldest connection and is served, while the flood's further connections are refused.
#[test]
fn a_flood_from_one_address_cannot_lock_members_out() {
    let m = master();
    let comms = cluster_with(2, |_| {
        let mut c = hardened(&m);
        c.max_pending_connections = 4;
        // Long enough that the flood outlasts the test if nothing evicts it.
        c.handshake_timeout = Duration::from_secs(30);
        c
    });
    let (_, addr, pred, _) = target(&comms);
    let mut flood: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.77", addr)).collect();
    // The listener takes connections in arrival order: once the fifth from the flooding
    // address is closed at once, the four before it hold every slot.
    let mut fifth = connect_from("127.0.0.77", addr);
    let start = Instant::now();
    assert_eq!(drain_until_closed(&mut fifth, Duration::from_secs(2)), 0);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "not closed at once"
    );
    // A member from another address is served at once...
    let start = Instant::now();
    let mut s = connect_from("127.0.0.1", addr);
    s.write_all(&hello(ConnectionKind::Benchmark, pred))
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut theirs = [0u8; HELLO_LEN];
    s.read_exact(&mut theirs)
        .expect("a member is served while the flood holds every slot");
    assert!(start.elapsed() < Duration::from_secs(2), "served late");
    // ...because the flood's oldest connection gave up its slot, and only that one.
    assert_eq!(drain_until_closed(&mut flood[0], Duration::from_secs(2)), 0);
    for f in &mut flood[1..] {
        f.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let r = f.read(&mut [0u8; 1]);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a younger flood connection was closed: {r:?}"
        );
    }
    exact_everywhere(&comms, 4, 0xf100d);
}

/// A data frame with a valid CRC: `len` bytes of `fill`.
fn frame(tag: u64, epoch: u64, seq: u32, step: u16, offset: u64, len: usize, fill: u8) -> Vec<u8> {
    let payload = vec![fill; len];
    let header = DataHeader {
        tag,
        epoch,
        seq,
        count: 1000,
        dtype: DataType::I64,
        op: ReduceOp::Sum,
        quant: None,
        step,
        slice: 0,
        offset,
        len: len as u32,
        crc: crc32fast::hash(&payload),
        kind: Collective::AllReduce,
    };
    let mut out = Vec::with_capacity(DATA_HEADER_LEN + len);
    header.encode(&mut out);
    out.extend_from_slice(&payload);
    out
}

fn epoch(c: &Communicator) -> u64 {
    c.topology().unwrap().group_epoch(0).unwrap()
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (c) 4 × 8 MiB frames for a future epoch: a stranger's are never read; a member's are
/// held within the bounds and dropped when its connection closes.
#[test]
fn future_epoch_frames_never_pin_memory() {
    let m = master();
    let comms = cluster_with(2, |_| {
        let mut c = hardened(&m);
        c.slice_bytes = 8 << 20;
        c
    });
    let (who, addr, pred, _) = target(&comms);
    let future = epoch(&comms[who]) + 1000;
    let frames: Vec<u8> = (0..4)
        .flat_map(|i| frame(9, future, i, 0, 0, 8 << 20, 0xEE))
        .collect();

    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello(ConnectionKind::P2p, PeerId([0x55; 16])))
        .unwrap();
    let mut writer = s.try_clone().unwrap();
    let bytes = frames.clone();
    let push = std::thread::spawn(move || {
        writer
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = writer.write_all(&bytes);
    });
    let end = Instant::now() + HANDSHAKE;
    while Instant::now() < end {
        assert_eq!(
            comms[who].early_frames(),
            (0, 0),
            "a stranger's frames were read"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(drain_until_closed(&mut s, HANDSHAKE * 2), 0);
    push.join().unwrap();
    assert_eq!(comms[who].early_frames(), (0, 0));

    // On loopback a member's id from the member's address gets in (docs/PROTOCOL.md §1.2):
    // its frames are held, bounded, and go when it hangs up.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello(ConnectionKind::P2p, pred)).unwrap();
    let mut theirs = [0u8; HELLO_LEN];
    s.read_exact(&mut theirs).unwrap();
    s.write_all(&frames).unwrap();
    wait_for("4 frames held", Duration::from_secs(10), || {
        comms[who].early_frames().0 == 4
    });
    assert!(comms[who].early_frames().1 >= 32 << 20);
    drop(s);
    wait_for("the held frames to go", Duration::from_secs(5), || {
        comms[who].early_frames() == (0, 0)
    });
    exact_everywhere(&comms, 3, 11);
}

/// (d) A stranger, the successor's id, and the predecessor's id from another address
/// cannot inject ring data: refused unanswered, and the ops they aim at stay exact.
#[test]
fn ring_data_only_from_the_predecessor() {
    let seed = 0xd00d;
    println!("seed {seed}");
    let m = master();
    let comms = cluster_with(3, |_| hardened(&m));
    let (who, addr, pred, succ) = target(&comms);
    let e = epoch(&comms[who]);
    // Poison for every step and chunk of tags 10..13, seq 0 and 1 (chunks of 334/333/333).
    let chunks = [(0u64, 334usize), (334, 333), (667, 333)];
    let mut poison = Vec::new();
    for tag in 10..13u64 {
        for seq in 0..2u32 {
            for step in 0..4u16 {
                for (off, n) in chunks {
                    poison.extend(frame(tag, e, seq, step, off * 8, n * 8, 0x7F));
                }
            }
        }
    }
    let mut attackers = vec![
        TcpStream::connect(addr).unwrap(),
        TcpStream::connect(addr).unwrap(),
        connect_from("127.0.0.2", addr),
    ];
    let claims = [PeerId([0x66; 16]), succ, pred];
    for (s, claim) in attackers.iter_mut().zip(claims) {
        s.write_all(&hello(ConnectionKind::P2p, claim)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&poison);
    }
    for tag in 10..13 {
        exact_everywhere(&comms, tag, seed + tag);
    }
    for s in &mut attackers {
        assert_eq!(
            drain_until_closed(s, HANDSHAKE * 3),
            0,
            "an injector was answered"
        );
    }
    for tag in 10..13 {
        exact_everywhere(&comms, tag, seed + tag);
    }
}

/// (e) During a sync, a stranger asking a holder for a tensor by name reads nothing.
#[test]
fn a_stranger_reads_no_shared_state() {
    let m = master();
    let comms = cluster_with(2, |_| hardened(&m));
    let (who, addr, _, _) = target(&comms);
    let other = 1 - who;
    let secret: Vec<u64> = (0..(1u64 << 20)).map(|i| i * 0x9E37_79B9).collect();
    let mut mine = secret.clone();
    let mut theirs = vec![0u64; secret.len()];
    std::thread::scope(|sc| {
        let holder = sc.spawn(|| {
            let mut st = SharedState {
                revision: 5,
                tensors: vec![TensorInfo::new("w", &mut mine)],
            };
            comms[who].sync_shared_state(&mut st, SyncStrategy::SendOnly)
        });
        // Several tries spread out while the holder's sync waits for the other peer, so
        // some land while its door is open.
        let request = {
            let mut b = Vec::new();
            let mut body = Vec::new();
            StateRequest {
                name: "w".into(),
                len: (secret.len() * 8) as u64,
            }
            .encode(&mut body);
            b.extend_from_slice(&(body.len() as u32).to_le_bytes());
            b.extend_from_slice(&body);
            b
        };
        let mut tries: Vec<TcpStream> = (0..8u8)
            .map(|i| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&hello(ConnectionKind::SharedState, PeerId([0x70 + i; 16])))
                    .unwrap();
                s.write_all(&request).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                s
            })
            .collect();
        let mut st = SharedState {
            revision: 0,
            tensors: vec![TensorInfo::new("w", &mut theirs)],
        };
        comms[other]
            .sync_shared_state(&mut st, SyncStrategy::ReceiveOnly)
            .unwrap();
        holder.join().unwrap().unwrap();
        for s in &mut tries {
            assert_eq!(
                drain_until_closed(s, HANDSHAKE * 3),
                0,
                "a stranger read state"
            );
        }
    });
    assert!(theirs == secret, "the member received the state");
}

/// (f) A member's ring connection that falls silent is closed at the idle deadline, and the
/// early frames it pinned go with it, while one that sends keepalives, and the honest ring
/// links idle all along, stay open.
#[test]
fn silent_ring_connections_are_closed_and_keepalives_keep_them() {
    const IDLE: Duration = Duration::from_secs(3);
    let seed = 0x51e7;
    println!("seed {seed}");
    let m = master();
    let comms = cluster_with(2, |_| {
        let mut c = hardened(&m);
        c.p2p_idle_timeout = IDLE;
        c
    });
    let (who, addr, pred, _) = target(&comms);
    // On loopback the predecessor's id from its address is admitted (docs/PROTOCOL.md §1.2).
    let open = |s: &mut TcpStream| {
        s.write_all(&hello(ConnectionKind::P2p, pred)).unwrap();
        s.set_read_timeout(Some(HANDSHAKE * 2)).unwrap();
        let mut theirs = [0u8; HELLO_LEN];
        s.read_exact(&mut theirs).expect("admitted");
    };
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    open(&mut silent);
    // Frames for an epoch that never comes are held while their connection lives.
    let future = epoch(&comms[who]) + 1000;
    for seq in 0..4 {
        silent
            .write_all(&frame(9, future, seq, 0, 0, 1024, 0xEE))
            .unwrap();
    }
    wait_for("4 frames held", IDLE, || comms[who].early_frames().0 == 4);
    let mut alive = TcpStream::connect(addr).unwrap();
    open(&mut alive);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinger = {
        let mut w = alive.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if w.write_all(&pccl::wire::KEEPALIVE).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500)); // pacing
            }
        })
    };

    assert_eq!(drain_until_closed(&mut silent, IDLE * 3), 0);
    let closed = start.elapsed();
    assert!(
        closed >= IDLE,
        "closed after {closed:?}, before the idle deadline"
    );
    // Twice the deadline later, the keepalive sender and the honest (idle) links are open.
    while start.elapsed() < IDLE * 2 + Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(100)); // letting the deadline pass
    }
    alive
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    match alive.read(&mut [0u8; 1]) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a connection sending keepalives was closed: {other:?}"),
    }
    let closed_idle: Vec<u64> = comms
        .iter()
        .map(|c| c.idle_ring_connections_closed())
        .collect();
    let mut want = vec![0; comms.len()];
    want[who] = 1;
    assert_eq!(closed_idle, want, "an honest idle ring link was closed");
    exact_everywhere(&comms, 20, seed);

    // Once the keepalives stop, that connection goes too.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pinger.join().unwrap();
    assert_eq!(drain_until_closed(&mut alive, IDLE * 3), 0);
    assert_eq!(comms[who].idle_ring_connections_closed(), 2);
    exact_everywhere(&comms, 21, seed + 1);
}
