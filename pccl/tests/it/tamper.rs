//! A man in the middle of authenticated runs (SECURITY.md §6, docs/PROTOCOL.md §1.3): a
//! TCP proxy that parses the sealed frames of every kind of connection and, once armed,
//! flips a bit of one frame, replays it, drops it or replaces it with a frame it captured
//! on another connection (a splice). Whatever it does, the receiver's key check fails, the
//! connection closes, and the run goes on with exact, bit-identical results:
//!
//! * ring data (`P2p`): the op fails on every peer with the same code; the retry works;
//! * control (peer ↔ master), either way: the tampered message is never acted on; the
//!   peer re-dials the master and re-registers (docs/ARCHITECTURE.md §14), the run goes on;
//! * shared state (holder → receiver): no tampered byte reaches a tensor; the sync fails
//!   the same way everywhere or succeeds with the holder's bytes; the retry works;
//! * bandwidth test: the measurement of that link fails, `optimize_topology` answers the
//!   same on every peer, the run goes on.
//!
//! Peer B listens on 127.0.0.2:P but advertises 127.0.0.1, where the proxy listens on the
//! same port P, so every peer dials B through the proxy; the proxy's connections come from
//! 127.0.0.1, the dialling peers' recorded address. Control connections are proxied by
//! giving peers the proxy's address as the master's.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pccl::secure::RunSecret;
use pccl::wire::{ConnectionKind, DATA_HEADER_LEN, HELLO_LEN, Hello};
use pccl::{Communicator, Error, MasterConfig, MasterNode, SharedState, SyncStrategy, TensorInfo};

use crate::common::{cluster_with, config};
use crate::secure::exact_sum;

const SECRET: &str = "6a0e4c2b8d1f3e5a7c9b0d2f4e6a8c1b";

/// Which way a frame travels through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Way {
    /// From the dialler to the acceptor.
    Up,
    /// From the acceptor to the dialler.
    Down,
}

/// What the proxy does to the first armed frame (a frame with a body); then it forwards
/// faithfully again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tamper {
    /// Flip one bit of the frame's body.
    Flip,
    /// Send the frame twice.
    Replay,
    /// Do not send the frame.
    Drop,
    /// Send, instead of the frame, the last one of the same kind and way seen on another
    /// connection.
    Splice,
}

/// Bytes in a frame tag (docs/PROTOCOL.md §1.3).
const TAG: usize = 16;
/// Byte offset of the payload length in a data header (docs/PROTOCOL.md §4).
const DATA_LEN_AT: usize = 1 + 8 + 8 + 4 + 8 + 1 + 1 + 1 + 2 + 4 + 8;
/// The largest shared-state piece, one sealed frame each (docs/PROTOCOL.md §5).
const PIECE: u64 = 8 << 20;

/// The last frame with a body per (kind, way), and the connection it came from.
type Captured = HashMap<(u8, Way), (u64, Vec<u8>)>;

#[derive(Default)]
struct ProxyState {
    stop: AtomicBool,
    armed: Mutex<Option<(ConnectionKind, Way, Tamper)>>,
    applied: Mutex<Vec<(ConnectionKind, Way, Tamper)>>,
    captured: Mutex<Captured>,
    next_conn: AtomicU64,
}

/// A TCP proxy from a listener to `to`; see the module header.
struct Proxy {
    state: Arc<ProxyState>,
    addr: SocketAddr,
}

impl Proxy {
    fn start(listener: TcpListener, to: SocketAddr) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState::default());
        listener.set_nonblocking(true).unwrap();
        let st = state.clone();
        std::thread::spawn(move || {
            while !st.stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                let conn = st.next_conn.fetch_add(1, Ordering::Relaxed);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (up, down) = (st.clone(), st.clone());
                std::thread::spawn(move || pump(conn, Way::Up, client, server, &up));
                std::thread::spawn(move || pump(conn, Way::Down, s2, c2, &down));
            }
        });
        Self { state, addr }
    }

    /// A proxy on 127.0.0.1 (any port) in front of `to`.
    fn in_front_of(to: SocketAddr) -> Self {
        Self::start(TcpListener::bind("127.0.0.1:0").unwrap(), to)
    }

    fn arm(&self, kind: ConnectionKind, way: Way, t: Tamper) {
        *self.state.armed.lock().unwrap() = Some((kind, way, t));
    }

    /// Waits (bounded) until the armed tamper was applied.
    fn wait_applied(&self, within: Duration) {
        let until = Instant::now() + within;
        while self.state.armed.lock().unwrap().is_some() {
            assert!(Instant::now() < until, "the proxy never applied its tamper");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn applied(&self) -> Vec<(ConnectionKind, Way, Tamper)> {
        self.state.applied.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies one direction of a connection, frame by frame once the handshake is over, and
/// applies the armed tamper to the first frame it fits.
fn pump(conn: u64, way: Way, mut from: TcpStream, mut to: TcpStream, st: &ProxyState) {
    let _ = (|| -> io::Result<()> {
        let mut hello = [0u8; HELLO_LEN];
        from.read_exact(&mut hello)?;
        to.write_all(&hello)?;
        let Ok((h, true)) = Hello::decode_flagged(&hello) else {
            io::copy(&mut from, &mut to)?;
            return Ok(());
        };
        // The Noise messages (docs/PROTOCOL.md §1.3): the dialler sends the first and
        // the third, the acceptor the second.
        for _ in 0..if way == Way::Up { 2 } else { 1 } {
            let mut len = [0u8; 2];
            from.read_exact(&mut len)?;
            let mut msg = vec![0u8; u16::from_le_bytes(len) as usize];
            from.read_exact(&mut msg)?;
            to.write_all(&len)?;
            to.write_all(&msg)?;
        }
        let mut framer = Framer::new(h.kind, way);
        while let Some(frame) = framer.next(&mut from)? {
            let body = frame.len() - framer.header_len - 2 * TAG;
            let key = (h.kind as u8, way);
            let mut tamper = None;
            if body > 0 {
                let mut armed = st.armed.lock().unwrap();
                if let Some((k, w, t)) = *armed
                    && k == h.kind
                    && w == way
                {
                    let spliceable = st
                        .captured
                        .lock()
                        .unwrap()
                        .get(&key)
                        .is_some_and(|(c, _)| *c != conn);
                    if t != Tamper::Splice || spliceable {
                        tamper = Some(t);
                        *armed = None;
                        st.applied.lock().unwrap().push((k, w, t));
                    }
                }
            }
            match tamper {
                None => to.write_all(&frame)?,
                Some(Tamper::Flip) => {
                    let mut bad = frame.clone();
                    bad[framer.header_len + TAG + body / 2] ^= 0x10;
                    to.write_all(&bad)?;
                }
                Some(Tamper::Replay) => {
                    to.write_all(&frame)?;
                    to.write_all(&frame)?;
                }
                Some(Tamper::Drop) => {}
                Some(Tamper::Splice) => {
                    let other = st.captured.lock().unwrap()[&key].1.clone();
                    to.write_all(&other)?;
                }
            }
            if body > 0 {
                st.captured.lock().unwrap().insert(key, (conn, frame));
            }
        }
        Ok(())
    })();
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Cuts one direction of a sealed connection into frames: `header | tag | body | tag`,
/// where the header's length and the body's depend on the connection kind and way (the
/// table in docs/PROTOCOL.md §1.3).
struct Framer {
    kind: ConnectionKind,
    way: Way,
    header_len: usize,
    /// Shared-state holder → receiver: tensor bytes still due as pieces.
    piece_bytes_due: u64,
}

impl Framer {
    fn new(kind: ConnectionKind, way: Way) -> Self {
        Self {
            kind,
            way,
            header_len: 0,
            piece_bytes_due: 0,
        }
    }

    /// The next whole frame, or `None` at the end of the stream.
    fn next(&mut self, from: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
        use ConnectionKind as K;
        self.header_len = match (self.kind, self.way) {
            (K::Control | K::SharedState | K::Benchmark, Way::Up) | (K::Control, Way::Down) => 4,
            (K::P2p, _) => DATA_HEADER_LEN,
            (K::SharedState, Way::Down) if self.piece_bytes_due > 0 => 0,
            (K::SharedState, Way::Down) => 9,
            (K::Benchmark, Way::Down) => 8,
        };
        let mut frame = vec![0u8; self.header_len + TAG];
        match from.read_exact(&mut frame[..1]) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            r => r?,
        }
        from.read_exact(&mut frame[1..])?;
        let h = &frame[..self.header_len];
        let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap()) as u64;
        let body = match (self.kind, self.way) {
            (K::P2p, _) => u32_at(DATA_LEN_AT),
            (K::SharedState, Way::Down) if self.header_len == 0 => {
                let piece = self.piece_bytes_due.min(PIECE);
                self.piece_bytes_due -= piece;
                piece
            }
            (K::SharedState, Way::Down) => {
                if h[0] == 1 {
                    self.piece_bytes_due = u64::from_le_bytes(h[1..9].try_into().unwrap());
                }
                0
            }
            (K::Benchmark, Way::Down) => 0,
            _ => u32_at(0),
        };
        let start = frame.len();
        frame.resize(start + body as usize + TAG, 0);
        from.read_exact(&mut frame[start..])?;
        Ok(Some(frame))
    }
}

fn master(encrypt: bool) -> MasterNode {
    pccl::init_logging();
    let mut cfg = MasterConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some(RunSecret::new(SECRET).unwrap());
    cfg.encrypt = encrypt;
    MasterNode::start(cfg).expect("master starts")
}

/// Three authenticated peers with `pool` connections per link; peer 1 ("B") is reached
/// through a proxy on its p2p port, and so are the control connections of the peers
/// `via_proxy_to_master` names (through a second proxy). Returns the peers (in connect
/// order, not ring order) and the two proxies.
fn run_with_proxies(
    m: &MasterNode,
    encrypt: bool,
    pool: usize,
    via_proxy_to_master: &[usize],
) -> (Vec<Communicator>, Proxy, Proxy) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let b = Proxy::start(listener, format!("127.0.0.2:{port}").parse().unwrap());
    let control = Proxy::in_front_of(m.local_addr());
    let comms = cluster_with(3, |i| {
        let addr = if via_proxy_to_master.contains(&i) {
            control.addr
        } else {
            m.local_addr()
        };
        let mut c = config(addr);
        c.secret = Some(RunSecret::new(SECRET).unwrap());
        c.encrypt = encrypt;
        c.pool_size = pool;
        c.slice_bytes = 64 << 10;
        c.master_reconnect_timeout = Duration::from_secs(20);
        if i == 1 {
            c.bind_ip = "127.0.0.2".parse().unwrap();
            c.p2p_port = port;
            c.advertise_ip = Some("127.0.0.1".parse().unwrap());
        }
        c
    });
    (comms, b, control)
}

/// Retries `exact_sum` (the same tag) for a bounded time until it succeeds.
fn exact_sum_soon(comms: &[Communicator], tag: u64, salt: u32, what: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match exact_sum(comms, 100_000, tag, salt) {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < until, "{what}: no retry succeeded: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on every peer at once; the codes of the errors (or `Ok`).
fn outcomes<T: Send>(
    comms: &[Communicator],
    f: impl Fn(&Communicator) -> Result<T, Error> + Sync,
) -> Vec<Result<(), i32>> {
    crate::common::on_all(comms, |_, c| f(c).map(|_| ()).map_err(|e| e.code() as i32))
}

const RING_COUNT: usize = 800_000;

#[test]
fn tampered_ring_frames_fail_the_op_everywhere_then_the_retry_works() {
    for encrypt in [false, true] {
        let m = master(encrypt);
        let (comms, b, _control) = run_with_proxies(&m, encrypt, 2, &[]);
        // 3.2 MB: 16 slices a chunk, enough to stripe over both connections
        // (`connections_for`), so a splice has a frame from the other one.
        exact_sum(&comms, RING_COUNT, 1, 1).unwrap();
        for (i, t) in [Tamper::Flip, Tamper::Replay, Tamper::Drop, Tamper::Splice]
            .into_iter()
            .enumerate()
        {
            let tag = 10 + i as u64;
            b.arm(ConnectionKind::P2p, Way::Up, t);
            let codes = outcomes(&comms, |c| {
                let send = vec![1.0f32; RING_COUNT];
                let mut recv = vec![0f32; RING_COUNT];
                c.all_reduce(&send, &mut recv, pccl::ReduceOp::Sum, tag)
            });
            assert_eq!(
                b.applied().last(),
                Some(&(ConnectionKind::P2p, Way::Up, t)),
                "the proxy applied {t:?}"
            );
            assert!(codes[0].is_err(), "{t:?}: the op failed ({codes:?})");
            assert!(codes.iter().all(|c| *c == codes[0]), "{t:?}: {codes:?}");
            // The retry runs on fresh, authenticated connections.
            exact_sum_soon(&comms, tag, 2, &format!("{t:?}"));
        }
    }
}

#[test]
fn tampered_control_frames_are_never_acted_on_and_the_run_goes_on() {
    for way in [Way::Up, Way::Down] {
        for t in [Tamper::Flip, Tamper::Replay, Tamper::Drop, Tamper::Splice] {
            let m = master(false);
            // Peers 0 and 2 reach the master through the proxy (two connections to
            // splice between).
            let (comms, _b, control) = run_with_proxies(&m, false, 1, &[0, 2]);
            exact_sum(&comms, 100_000, 1, 1).unwrap();
            control.arm(ConnectionKind::Control, way, t);
            // Heartbeats and their stats flow every 500 ms (docs/PROTOCOL.md §3.4).
            control.wait_applied(Duration::from_secs(10));
            // The receiver of the bad frame closed the connection: to the master that
            // peer is gone, as if it had died (docs/ARCHITECTURE.md §14: a live master does
            // not take back a peer it dropped). It gets an error; the others go on.
            let what = format!("control {way:?} {t:?}");
            let until = Instant::now() + Duration::from_secs(15);
            let out = loop {
                let sizes: Vec<_> = comms
                    .iter()
                    .map(|c| c.attribute(pccl::Attribute::GlobalWorldSize))
                    .collect();
                let gone: Vec<_> = (0..3).filter(|&i| sizes[i].is_err()).collect();
                if gone.len() == 1 && sizes.iter().flatten().all(|&n| n == 2) {
                    break gone[0];
                }
                assert!(Instant::now() < until, "{what}: world sizes {sizes:?}");
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(
                out != 1,
                "{what}: the dropped peer is one whose control link was hit"
            );
            let survivors: Vec<_> = comms
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i != out)
                .map(|(_, c)| c)
                .collect();
            exact_sum_soon(&survivors, 2, 2, &what);
            assert_eq!(control.applied(), vec![(ConnectionKind::Control, way, t)]);
        }
    }
}

/// Syncs a 20 MB tensor (3 sealed pieces) of which peer B alone holds the content the
/// sync enforces (the others receive only); returns each peer's result and bytes.
fn sync_from_b(comms: &[Communicator], revision: u64) -> Vec<(Result<(), i32>, Vec<u8>)> {
    crate::common::on_all(comms, |i, c| {
        let mut w: Vec<u32> = if i == 1 {
            (0..5_000_000u32)
                .map(|k| k.wrapping_mul(2_654_435_761) ^ revision as u32)
                .collect()
        } else {
            vec![7; 5_000_000]
        };
        let before = bytemuck::cast_slice::<u32, u8>(&w).to_vec();
        let mut st = SharedState {
            revision,
            tensors: vec![TensorInfo::new("w", &mut w)],
        };
        let strategy = if i == 1 {
            SyncStrategy::SendOnly
        } else {
            SyncStrategy::ReceiveOnly
        };
        let r = c.sync_shared_state(&mut st, strategy);
        let after = bytemuck::cast_slice::<u32, u8>(&w).to_vec();
        if r.is_err() {
            assert!(
                after == before,
                "peer {i}: a failed sync changed its tensor"
            );
        }
        (r.map(|_| ()).map_err(|e| e.code() as i32), after)
    })
}

#[test]
fn tampered_shared_state_bytes_never_reach_a_tensor() {
    for encrypt in [false, true] {
        let m = master(encrypt);
        let (comms, b, _control) = run_with_proxies(&m, encrypt, 1, &[]);
        let tampers = [Tamper::Flip, Tamper::Replay, Tamper::Drop, Tamper::Splice];
        for (revision, t) in (1..).zip(tampers) {
            b.arm(ConnectionKind::SharedState, Way::Down, t);
            let out = sync_from_b(&comms, revision);
            if t != Tamper::Splice {
                // A splice needs a piece from another receiver's connection first; it
                // may come in the retry below.
                assert_eq!(
                    b.applied().last(),
                    Some(&(ConnectionKind::SharedState, Way::Down, t))
                );
            }
            let codes: Vec<_> = out.iter().map(|o| o.0).collect();
            assert!(codes.iter().all(|c| *c == codes[0]), "{t:?}: {codes:?}");
            // Retry (the same revision) until it goes through: every peer then holds
            // B's bytes exactly.
            let until = Instant::now() + Duration::from_secs(30);
            let mut out = out;
            while out.iter().any(|o| o.0.is_err()) {
                assert!(
                    Instant::now() < until,
                    "{t:?}: no sync succeeded: {codes:?}"
                );
                out = sync_from_b(&comms, revision);
            }
            for (i, o) in out.iter().enumerate() {
                assert!(o.1 == out[1].1, "{t:?}: peer {i}'s bytes differ from B's");
            }
        }
        assert!(
            b.applied()
                .contains(&(ConnectionKind::SharedState, Way::Down, Tamper::Splice)),
            "a piece was spliced between the receivers' connections"
        );
        exact_sum(&comms, 100_000, 1, 3).unwrap();
    }
}

#[test]
fn tampered_bandwidth_tests_fail_that_measurement_and_the_run_goes_on() {
    for t in [Tamper::Flip, Tamper::Replay, Tamper::Drop, Tamper::Splice] {
        // A fresh run each time: a run measures each link once.
        let m = master(true);
        let (comms, b, _control) = run_with_proxies(&m, true, 1, &[]);
        b.arm(ConnectionKind::Benchmark, Way::Up, t);
        let codes = outcomes(&comms, |c| c.optimize_topology());
        assert!(codes.iter().all(|c| *c == codes[0]), "{t:?}: {codes:?}");
        assert_eq!(
            b.applied(),
            vec![(ConnectionKind::Benchmark, Way::Up, t)],
            "the proxy applied {t:?}"
        );
        exact_sum_soon(&comms, 2, 4, &format!("bandwidth {t:?}"));
        assert!(comms.iter().all(|c| c.topology().unwrap().ring.len() == 3));
    }
}
