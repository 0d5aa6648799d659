//! Attacks on the shared-state sync by a fake peer that speaks the protocol itself over
//! raw sockets and joins the run as a member of the group (docs/ARCHITECTURE.md §6):
//!
//! - a lying holder announces the hashes of a good shared state and serves one of its
//!   tensors with a flipped bit. The receivers must detect it, fail the sync the same way
//!   everywhere, keep every tensor's bytes from before the sync (the verified ones too:
//!   all or nothing) and their revision, and be repaired by the next sync with an honest
//!   holder;
//! - an intruder that the master did not designate as anybody's receiver asks every
//!   other peer for a tensor during the sync. It must get no byte, and the sync of the
//!   others must succeed with bit-identical state.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pccl::wire::{
    ConnectionKind, FromMaster, HELLO_LEN, Hello, StateRequest, StateResponse, TensorReport,
    ToMaster,
};
use pccl::{
    Attribute, Communicator, DataType, Error, PeerId, SharedState, SyncStrategy, TensorInfo,
    Topology, tensor_hash,
};

use crate::common::{cluster, master, on_all};

/// The state of the test: a large tensor `w` (several transfer pieces) and a small `v`.
#[derive(Clone, Debug, PartialEq)]
struct State {
    w: Vec<u32>,
    v: Vec<u32>,
}

impl State {
    fn new(seed: u32) -> Self {
        Self {
            w: (0..(5 << 20) / 4)
                .map(|i: u32| i.wrapping_mul(2_654_435_761) ^ seed)
                .collect(),
            v: (0..4096).map(|i| i + seed).collect(),
        }
    }

    fn tensors(&mut self) -> Vec<TensorInfo<'_>> {
        vec![
            TensorInfo::new("w", &mut self.w),
            TensorInfo::new("v", &mut self.v),
        ]
    }

    fn bytes(&self) -> Vec<(String, Vec<u8>)> {
        vec![
            ("w".into(), bytemuck::cast_slice(&self.w).to_vec()),
            ("v".into(), bytemuck::cast_slice(&self.v).to_vec()),
        ]
    }
}

/// What the liar tells the master and what it serves.
struct Offer {
    /// Announced: the hash of these bytes.
    announced: Vec<(String, Vec<u8>)>,
    /// Served instead of the announced bytes.
    served: Vec<(String, Vec<u8>)>,
    /// The strategy it reports with.
    strategy: SyncStrategy,
}

/// Run by the fake peer when its plan arrives, before it tells the master it is done:
/// its own id and the topology it last saw committed.
type OnPlan = Box<dyn Fn(PeerId, &Topology) + Send + Sync>;

/// A fake peer: a control connection to the master and a p2p listener.
struct Liar {
    id: PeerId,
    stop: Arc<AtomicBool>,
    listen: SocketAddr,
    /// Tensor copies it served.
    served: Arc<AtomicUsize>,
    control: JoinHandle<Vec<Result<(), String>>>,
    listener: JoinHandle<()>,
}

/// Bound on every blocking read of the liar.
const READ_LIMIT: Duration = Duration::from_secs(20);

impl Liar {
    /// Joins the run at `master` and takes part, reporting `offer`, in `revisions.len()`
    /// syncs, reporting those revisions; `on_plan` runs whenever its plan arrives.
    fn start(master: SocketAddr, offer: Offer, revisions: Vec<u64>, on_plan: OnPlan) -> Self {
        let id = PeerId::random();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = l.local_addr().unwrap();
        let offer = Arc::new(offer);
        let listener = {
            let (stop, served, offer) = (stop.clone(), served.clone(), offer.clone());
            std::thread::spawn(move || {
                for s in l.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(s) = s else { continue };
                    let (served, offer) = (served.clone(), offer.clone());
                    std::thread::spawn(move || serve(s, id, &offer.served, &served));
                }
            })
        };
        let control = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                control(
                    master,
                    id,
                    listen.port(),
                    &offer,
                    revisions,
                    &stop,
                    &on_plan,
                )
            })
        };
        Self {
            id,
            stop,
            listen,
            served,
            control,
            listener,
        }
    }

    /// Waits (bounded) for the result of every sync it reported for, leaves the run, and
    /// returns those results.
    fn finish(self) -> Vec<Result<(), String>> {
        let results = self.control.join().unwrap();
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(self.listen);
        self.listener.join().unwrap();
        results
    }
}

fn hello(s: &mut TcpStream, kind: ConnectionKind, me: PeerId) -> Hello {
    s.write_all(&Hello { kind, peer: me }.encode()).unwrap();
    let mut buf = [0u8; HELLO_LEN];
    s.read_exact(&mut buf).unwrap();
    Hello::decode(&buf).unwrap()
}

fn send(s: &mut TcpStream, m: &ToMaster) {
    let mut body = Vec::new();
    m.encode(&mut body);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    s.write_all(&frame).unwrap();
}

/// The fake peer's control connection: registers, acknowledges every proposal,
/// heartbeats, and reports `offer` once accepted and after every sync result until
/// `revisions` run out; runs `on_plan` when a plan arrives, then says it is done. Ends
/// once every reported sync has its result.
fn control(
    master: SocketAddr,
    me: PeerId,
    p2p_port: u16,
    offer: &Offer,
    revisions: Vec<u64>,
    stop: &AtomicBool,
    on_plan: &OnPlan,
) -> Vec<Result<(), String>> {
    let mut s = TcpStream::connect(master).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(READ_LIMIT)).unwrap();
    assert_eq!(
        hello(&mut s, ConnectionKind::Control, me).kind,
        ConnectionKind::Control
    );
    send(
        &mut s,
        &ToMaster::Register {
            group: 0,
            p2p_port,
            advertise_ip: None,
        },
    );
    let report = |revision| ToMaster::SyncReport {
        revision,
        strategy: offer.strategy,
        tensors: offer
            .announced
            .iter()
            .map(|(name, b)| TensorReport {
                name: name.clone(),
                dtype: DataType::U32,
                count: b.len() as u64 / 4,
                hash: tensor_hash(b),
                allow_content_inequality: false,
            })
            .collect(),
    };
    // Short reads so heartbeats go out on time; frames are reassembled from `buf`.
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let total = revisions.len();
    let mut revisions = revisions.into_iter();
    let mut results = Vec::new();
    let mut reported = false;
    let mut buf = Vec::new();
    let mut beat = Instant::now();
    let mut heard = Instant::now();
    let mut topology = Topology::default();
    // Until every sync reported for has its result (each read is bounded by READ_LIMIT).
    while !stop.load(Ordering::SeqCst) && results.len() < total {
        if beat.elapsed() > Duration::from_millis(300) {
            send(&mut s, &ToMaster::Heartbeat);
            beat = Instant::now();
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => panic!("the master closed the liar's control connection"),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                heard = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(heard.elapsed() < READ_LIMIT, "the master went silent");
            }
            Err(e) => panic!("liar's control connection: {e}"),
        }
        while buf.len() >= 4 {
            let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
            if buf.len() < 4 + len {
                break;
            }
            let msg = FromMaster::decode(&buf[4..4 + len]).unwrap();
            buf.drain(..4 + len);
            match msg {
                FromMaster::Propose { proposal, .. } => {
                    send(&mut s, &ToMaster::P2pReady { proposal, ok: true })
                }
                FromMaster::Commit { topology: t, .. } => {
                    topology = t;
                    if topology.contains(me) && !reported {
                        reported = true;
                        if let Some(r) = revisions.next() {
                            send(&mut s, &report(r));
                        }
                    }
                }
                FromMaster::SyncPlan { fetch, .. } => {
                    assert!(
                        fetch.is_empty(),
                        "the fake peer was told to fetch {fetch:?}"
                    );
                    on_plan(me, &topology);
                    send(&mut s, &ToMaster::SyncDone { ok: true });
                }
                FromMaster::SyncRefused { reason, .. } => panic!("liar refused: {reason}"),
                FromMaster::SyncResult { result: r, .. } => {
                    results.push(r);
                    if let Some(r) = revisions.next() {
                        send(&mut s, &report(r));
                    }
                }
                _ => {}
            }
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    results
}

/// Answers one connection to the liar's listener: shared-state requests get `served`
/// bytes under an `Ok` header; anything else is read and dropped until it closes.
fn serve(mut s: TcpStream, me: PeerId, served: &[(String, Vec<u8>)], count: &AtomicUsize) {
    let _ = s.set_read_timeout(Some(READ_LIMIT));
    let mut buf = [0u8; HELLO_LEN];
    if s.read_exact(&mut buf).is_err() {
        return;
    }
    let Ok(theirs) = Hello::decode(&buf) else {
        return;
    };
    if s.write_all(
        &Hello {
            kind: theirs.kind,
            peer: me,
        }
        .encode(),
    )
    .is_err()
    {
        return;
    }
    if theirs.kind != ConnectionKind::SharedState {
        let _ = std::io::copy(&mut s, &mut std::io::sink());
        return;
    }
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let req = StateRequest::decode(&body).unwrap();
        let reply = served
            .iter()
            .find(|(n, b)| *n == req.name && b.len() as u64 == req.len);
        let ok = match reply {
            Some((_, b)) => s
                .write_all(&StateResponse::Ok(req.len).encode())
                .and_then(|()| s.write_all(b)),
            None => s.write_all(&StateResponse::Refused.encode()),
        };
        if ok.is_err() {
            return;
        }
        count.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs `f` on another thread and fails the test if it does not end within `limit`.
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the test did not end within {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the test body panicked"),
    }
}

/// The honest peers accept the fake peer into the run: a world of `n`.
fn admit(comms: &[Communicator], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    on_all(comms, |_, c| {
        while c.attribute(Attribute::GlobalWorldSize).unwrap() < n {
            assert!(
                Instant::now() < deadline,
                "the fake peer was not admitted in time"
            );
            match c.update_topology() {
                Ok(()) | Err(Error::UpdateTopologyFailed(_)) => {}
                Err(e) => panic!("update_topology: {e}"),
            }
        }
    });
}

/// One honest peer's sync: its result, revision after, and state after.
fn sync(
    c: &Communicator,
    mut st: State,
    rev: u64,
    s: SyncStrategy,
) -> (Result<(), Error>, u64, State) {
    let mut shared = SharedState {
        revision: rev,
        tensors: st.tensors(),
    };
    let r = c.sync_shared_state(&mut shared, s).map(drop);
    let rev = shared.revision;
    drop(shared);
    (r, rev, st)
}

#[test]
fn a_holder_serving_bytes_that_fail_their_hash_leaves_receivers_as_they_were() {
    bounded(Duration::from_secs(180), || {
        let m = master();
        let comms = cluster(&m, 2);
        let good = State::new(7);
        let mut bad = good.bytes();
        bad[0].1[(3 << 20) + 5] ^= 0x10; // one bit, in the fourth MiB of `w`
        let liar = Liar::start(
            m.local_addr(),
            Offer {
                announced: good.bytes(),
                served: bad,
                strategy: SyncStrategy::SendOnly,
            },
            vec![9, 10],
            Box::new(|_, _| {}),
        );
        let liar_id = liar.id;
        admit(&comms, 3);
        assert!(comms.iter().all(|c| c.id() != liar_id));

        // Sync 1: the liar is the only holder (both honest peers are receive-only), so its
        // revision 9 is elected; the honest peers present 5 and must keep it.
        let before = [State::new(1), State::new(2)];
        let out = on_all(&comms, |i, c| {
            sync(c, before[i].clone(), 5, SyncStrategy::ReceiveOnly)
        });
        for (i, (r, rev, st)) in out.iter().enumerate() {
            match r {
                Err(Error::RankConnectionLost { reason, .. }) => {
                    assert!(
                        reason.contains("verified copy of [\"w\"]"),
                        "peer {i}: {reason}"
                    )
                }
                other => panic!("peer {i}: the lying holder's sync ended {other:?}"),
            }
            assert_eq!(*rev, 5, "peer {i}'s revision moved");
            assert!(
                st.w == before[i].w,
                "peer {i}'s `w` is not what it was before the sync"
            );
            // `v` verified, but the sync failed: its verified copy was held back and
            // dropped, so it too is as it was (docs/ARCHITECTURE.md §6, all or nothing).
            assert!(
                st.v == before[i].v,
                "peer {i}'s `v` changed although the sync failed"
            );
            assert!(
                st.v != good.v,
                "the test needs `v` to differ from the elected one"
            );
        }
        assert_eq!(
            format!("{:?}", out[0].0),
            format!("{:?}", out[1].0),
            "the honest peers saw different outcomes"
        );
        assert!(
            liar.served.load(Ordering::SeqCst) >= 2,
            "the liar served nothing"
        );

        // Sync 2: peer 1 loaded the good state and holds it; peer 0 is repaired from it,
        // whichever of the two holders it is sent to first. The failed sync did not count
        // as the group's last one, so any revision is valid.
        let out = on_all(&comms, |i, c| {
            if i == 0 {
                sync(c, out[0].2.clone(), 5, SyncStrategy::ReceiveOnly)
            } else {
                sync(c, good.clone(), 10, SyncStrategy::EnforcePopular)
            }
        });
        for (i, (r, rev, st)) in out.iter().enumerate() {
            assert!(r.is_ok(), "peer {i}: {r:?}");
            assert_eq!(*rev, 10, "peer {i}");
            assert!(*st == good, "peer {i} was not repaired");
        }
        let seen = liar.finish();
        assert_eq!(seen.len(), 2, "the liar saw {seen:?}");
        assert!(seen[0].is_err() && seen[1].is_ok(), "the liar saw {seen:?}");
        drop(comms);
    });
}

/// Asks the peer listening at `addr`, as `me`, for tensor `name` of `len` bytes over a
/// shared-state connection. Returns whether it answered our hello (the p2p gate admitted
/// us) and how many bytes it sent after the hello.
fn ask(addr: SocketAddr, me: PeerId, name: &str, len: u64) -> (bool, usize) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, READ_LIMIT) else {
        return (false, 0);
    };
    s.set_read_timeout(Some(READ_LIMIT)).unwrap();
    let hello = Hello {
        kind: ConnectionKind::SharedState,
        peer: me,
    };
    let mut theirs = [0u8; HELLO_LEN];
    if s.write_all(&hello.encode()).is_err() || s.read_exact(&mut theirs).is_err() {
        return (false, 0);
    }
    let mut body = Vec::new();
    StateRequest {
        name: name.into(),
        len,
    }
    .encode(&mut body);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    let _ = s.write_all(&frame);
    let want = pccl::wire::state::RESPONSE_LEN + len as usize;
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    while got < want {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    (true, got)
}

#[test]
fn a_member_not_designated_as_a_receiver_gets_no_shared_state() {
    bounded(Duration::from_secs(180), || {
        let m = master();
        let comms = cluster(&m, 3);
        let good = State::new(7);
        let w_len = good.bytes()[0].1.len() as u64;
        // The intruder reports the elected content, receive-only: it fetches nothing and
        // serves nothing, so the master designates it nobody's receiver. Once its plan
        // is in (and before it says it is done, so every honest peer is still in the
        // sync), it asks every other peer for `w`.
        let asked = Arc::new(AtomicUsize::new(0));
        let stolen = Arc::new(AtomicUsize::new(0));
        let (a, st) = (asked.clone(), stolen.clone());
        let intruder = Liar::start(
            m.local_addr(),
            Offer {
                announced: good.bytes(),
                served: Vec::new(),
                strategy: SyncStrategy::ReceiveOnly,
            },
            vec![1],
            Box::new(move |me, topology| {
                for p in topology.ring.iter().filter(|p| p.id != me) {
                    let (admitted, bytes) = ask(p.p2p_addr, me, "w", w_len);
                    a.fetch_add(admitted as usize, Ordering::SeqCst);
                    st.fetch_add(bytes, Ordering::SeqCst);
                }
            }),
        );
        admit(&comms, 4);

        // Peers 0 and 1 hold the good state; peer 2 receives it from them.
        let out = on_all(&comms, |i, c| {
            if i < 2 {
                sync(c, good.clone(), 1, SyncStrategy::EnforcePopular)
            } else {
                sync(c, State::new(3), 0, SyncStrategy::ReceiveOnly)
            }
        });
        assert_eq!(
            asked.load(Ordering::SeqCst),
            3,
            "the intruder did not reach every peer past the gate"
        );
        assert_eq!(
            stolen.load(Ordering::SeqCst),
            0,
            "an undesignated member received shared-state bytes"
        );
        for (i, (r, rev, st)) in out.iter().enumerate() {
            assert!(r.is_ok(), "peer {i}: {r:?}");
            assert_eq!(*rev, 1, "peer {i}");
            assert!(
                *st == good,
                "peer {i} does not hold the elected state bit for bit"
            );
        }
        assert_eq!(intruder.finish(), vec![Ok(())]);
        drop(comms);
    });
}
