//! Issue #13: the run outlives its master. A `pccl-master` process is killed with SIGKILL
//! while peers loop all-reduces (blocking and async, two tags) and shared-state syncs,
//! and a new one is started on the same port; every op either succeeds with the same bits
//! on every peer or fails and its retry succeeds, and the step counter goes on.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pccl::{
    Attribute, Communicator, CommunicatorConfig, DataType, Error, OwnedBuffers, ReduceDescriptor,
    ReduceOp, SharedState, SyncStrategy, TensorInfo,
};

use crate::common::{config, on_all};

/// A `pccl-master` process on a fixed loopback port; killed with SIGKILL on drop.
struct MasterProc {
    child: Child,
}

impl MasterProc {
    fn start(addr: SocketAddr, secret: Option<&str>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pccl-master"));
        cmd.args([
            "--listen",
            &addr.to_string(),
            "--recovery-window-ms",
            "3000",
        ])
        .env_remove("PCCL_RUN_SECRET_FILE")
        .env_remove("PCCL_ENCRYPT")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        match secret {
            Some(s) => cmd.env("PCCL_RUN_SECRET", s),
            None => cmd.env_remove("PCCL_RUN_SECRET"),
        };
        let child = cmd.spawn().expect("pccl-master starts");
        // Bounded wait until it listens (the same port as the last one: SO_REUSEADDR).
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the master did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child }
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

const SECRET: &str = "0123456789abcdef0123456789abcdef-restart";

fn peer_config(addr: SocketAddr, secret: bool, reconnect: Duration) -> CommunicatorConfig {
    let mut c = config(addr);
    c.master_reconnect_timeout = reconnect;
    c.connect_attempts = 20;
    if secret {
        c.secret = Some(pccl::secure::RunSecret::new(SECRET).unwrap());
    }
    c
}

fn cluster(addr: SocketAddr, n: usize, secret: bool) -> Vec<Communicator> {
    crate::common::cluster_with(n, |_| peer_config(addr, secret, Duration::from_secs(30)))
}

/// Retries `f` until it succeeds; a failure must be one a retry can heal.
fn retried<T>(what: &str, deadline: Instant, mut f: impl FnMut() -> pccl::Result<T>) -> (T, u32) {
    let mut failures = 0;
    loop {
        match f() {
            Ok(v) => return (v, failures),
            Err(Error::RankConnectionLost { .. } | Error::UpdateTopologyFailed(_)) => {
                failures += 1;
                assert!(
                    Instant::now() < deadline,
                    "{what}: still failing at the deadline"
                );
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// One peer's step: a blocking all-reduce (tag 1) with an async one (tag 2) in flight,
/// then a shared-state sync whose counter advances by one.
fn step(
    c: &Communicator,
    rank: usize,
    s: u64,
    counter: &mut Vec<u64>,
    deadline: Instant,
) -> Vec<u32> {
    let n = 4096;
    let send2: Vec<f32> = (0..n)
        .map(|i| (i as f32) * 0.25 + s as f32 - rank as f32)
        .collect();
    let mut out = Vec::new();
    let (r2, _) = retried("async all-reduce", deadline, || {
        let desc = ReduceDescriptor::new(n, DataType::F32, ReduceOp::Sum).with_tag(2);
        let h = c.all_reduce_async(OwnedBuffers::new(&send2), desc)?;
        let send1: Vec<f32> = (0..n)
            .map(|i| (i as f32).sin() * (rank + 1) as f32 + s as f32)
            .collect();
        let mut recv1 = vec![0f32; n];
        let r1 = c.all_reduce(&send1, &mut recv1, ReduceOp::Sum, 1);
        let (bufs, r2) = h.wait();
        // Both ops must end; a failed one is retried with its partner.
        r1?;
        r2?;
        out = recv1.iter().map(|v| v.to_bits()).collect();
        Ok(bufs.recv)
    });
    out.extend(
        r2.chunks(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap())),
    );
    let mut next = counter.clone();
    next[0] = s + 1;
    let rev = s + 1;
    retried("shared-state sync", deadline, || {
        let mut st = SharedState {
            revision: rev,
            tensors: vec![TensorInfo::new("counter", &mut next)],
        };
        c.sync_shared_state(&mut st, SyncStrategy::EnforcePopular)?;
        assert_eq!(st.revision, rev, "the revision goes on, never back");
        Ok(())
    });
    *counter = next;
    out
}

/// Four peers loop steps while the master is killed twice (back after 0.2 s, then after
/// 5 s); every step's results are bit-identical on every peer.
fn restarts_mid_run(secret: bool) {
    pccl::init_logging();
    let addr = free_addr();
    let secret_str = secret.then_some(SECRET);
    let mut master = Some(MasterProc::start(addr, secret_str));
    let comms = cluster(addr, 4, secret);
    let steps = 24u64;
    let done = AtomicUsize::new(0);
    let progress = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(90);
    let results = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            for (at, outage) in [
                (6, Duration::from_millis(200)),
                (14, Duration::from_secs(5)),
            ] {
                while progress.load(Ordering::SeqCst) < at * 4 && done.load(Ordering::SeqCst) < 4 {
                    assert!(Instant::now() < deadline, "peers stalled before a restart");
                    std::thread::sleep(Duration::from_millis(5));
                }
                master.take().expect("running").kill9();
                std::thread::sleep(outage);
                master = Some(MasterProc::start(addr, secret_str));
            }
            master
        });
        let r = on_all(&comms, |rank, c| {
            let mut counter = vec![0u64];
            let mut per_step = Vec::new();
            for st in 0..steps {
                per_step.push(step(c, rank, st, &mut counter, deadline));
                progress.fetch_add(1, Ordering::SeqCst);
            }
            done.fetch_add(1, Ordering::SeqCst);
            assert_eq!(counter[0], steps, "the step counter went on");
            (per_step, c.attribute(Attribute::GlobalWorldSize).unwrap())
        });
        drop(killer.join().unwrap());
        r
    });
    for (rank, (per_step, world)) in results.iter().enumerate() {
        assert_eq!(*world, 4, "rank {rank}: nobody was lost");
        for (st, bits) in per_step.iter().enumerate() {
            assert_eq!(bits, &results[0].0[st], "rank {rank} step {st}: bit parity");
        }
    }
}

#[test]
fn issue_13_kill_9_master_mid_run_plain() {
    restarts_mid_run(false);
}

#[test]
fn issue_13_kill_9_master_mid_run_authenticated() {
    restarts_mid_run(true);
}

/// A peer that dies while the master is down is gone after the recovery window; a
/// newcomer then joins the rebuilt run.
#[test]
fn issue_13_death_during_outage_then_a_newcomer() {
    pccl::init_logging();
    let addr = free_addr();
    let master = MasterProc::start(addr, None);
    let mut comms = cluster(addr, 3, false);
    master.kill9();
    drop(comms.pop());
    std::thread::sleep(Duration::from_millis(300));
    let _master = MasterProc::start(addr, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let results = on_all(&comms, |rank, c| {
        let send = vec![rank as f32 + 1.0; 1000];
        let (out, _) = retried("all-reduce after recovery", deadline, || {
            let mut recv = vec![0f32; 1000];
            c.all_reduce(&send, &mut recv, ReduceOp::Sum, 7)?;
            Ok(recv)
        });
        (out, c.attribute(Attribute::GlobalWorldSize).unwrap())
    });
    for (out, world) in &results {
        assert_eq!(*world, 2, "the dead peer is gone");
        assert_eq!(out, &results[0].0);
        assert_eq!(out[0], 3.0);
    }
    let comms = crate::common::grow(comms, peer_config(addr, false, Duration::from_secs(30)));
    let results = on_all(&comms, |rank, c| {
        let send = vec![rank as f32; 100];
        let mut recv = vec![0f32; 100];
        retried("all-reduce with the newcomer", deadline, || {
            c.all_reduce(&send, &mut recv, ReduceOp::Sum, 8)
        });
        recv
    });
    assert!(results.iter().all(|r| r == &results[0] && r[0] == 3.0));
}

/// The master stays down past the timeout: every peer's call fails with
/// `MasterConnectionFailed` within the timeout plus a second; nothing hangs.
#[test]
fn issue_13_master_gone_for_good() {
    pccl::init_logging();
    let addr = free_addr();
    let master = MasterProc::start(addr, None);
    let comms =
        crate::common::cluster_with(3, |_| peer_config(addr, false, Duration::from_secs(2)));
    master.kill9();
    let killed = Instant::now();
    let outcomes = on_all(&comms, |_, c| {
        let send = vec![1f32; 64];
        let mut recv = vec![0f32; 64];
        let r = c.all_reduce(&send, &mut recv, ReduceOp::Sum, 3);
        (r.map(|_| ()), killed.elapsed())
    });
    for (r, took) in outcomes {
        assert!(matches!(r, Err(Error::MasterConnectionFailed(_))), "{r:?}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }
    // And every later call fails at once.
    assert!(matches!(
        comms[0].update_topology(),
        Err(Error::MasterConnectionFailed(_))
    ));
}
