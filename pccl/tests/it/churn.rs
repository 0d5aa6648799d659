//! Multi-process churn: `pccl-peer` processes under kill -9, SIGSTOP and late joins.
//! Every process a test starts is killed and reaped by the test (the `Peer` guard).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::master_with;

/// One line of `pccl-peer` output.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    step: u64,
    pub(crate) world: u32,
    crc: String,
    ms: f64,
    retries: u32,
    /// With `--state-mb`: the shared state's hash and the bytes its sync received.
    state: Option<(String, u64)>,
}

fn parse(line: &str) -> Option<Step> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if !(f.len() == 12 || f.len() == 16) || f[0] != "step" || f[7] != "true" {
        return None;
    }
    let state = if f.len() == 16 {
        Some((f[13].to_string(), f[15].parse().ok()?))
    } else {
        None
    };
    Some(Step {
        step: f[1].parse().ok()?,
        world: f[3].parse().ok()?,
        crc: f[5].to_string(),
        ms: f[9].parse().ok()?,
        retries: f[11].parse().ok()?,
        state,
    })
}

pub(crate) struct Peer {
    child: Child,
    steps: Arc<Mutex<Vec<Step>>>,
    bad: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    pub(crate) fn start(master: SocketAddr) -> Self {
        Self::start_with(master, &[])
    }

    fn start_with(master: SocketAddr, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pccl-peer"))
            .args(["--master", &master.to_string(), "--count", "100000"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pccl-peer");
        let out = child.stdout.take().unwrap();
        let steps = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let (s, b) = (steps.clone(), bad.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match parse(&line) {
                    Some(step) => s.lock().unwrap().push(step),
                    None => b.lock().unwrap().push(line),
                }
            }
        });
        Self { child, steps, bad }
    }

    fn count(&self) -> usize {
        self.steps.lock().unwrap().len()
    }

    pub(crate) fn steps(&self) -> Vec<Step> {
        self.steps.lock().unwrap().clone()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Whether the process has exited (reaping it).
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `cond` holds, failing the test after `limit`.
pub(crate) fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every step reported by several peers has the same CRC on all of them.
pub(crate) fn check_parity(peers: &[&Peer]) -> usize {
    let mut by_step: HashMap<u64, (u32, String, Option<String>)> = HashMap::new();
    let mut compared = 0;
    for p in peers {
        assert!(
            p.bad.lock().unwrap().is_empty(),
            "bad output: {:?}",
            p.bad.lock().unwrap()
        );
        for s in p.steps() {
            let seen = (
                s.world,
                s.crc.clone(),
                s.state.as_ref().map(|x| x.0.clone()),
            );
            match by_step.get(&s.step) {
                Some(first) => {
                    assert_eq!(first, &seen, "parity broken at step {}", s.step);
                    compared += 1;
                }
                None => {
                    by_step.insert(s.step, seen);
                }
            }
        }
    }
    compared
}

#[test]
fn kill_9_survivors_recover_and_a_newcomer_joins() {
    let m = master_with(Duration::from_secs(2));
    let addr = m.local_addr();
    let mut peers: Vec<Peer> = (0..3).map(|_| Peer::start(addr)).collect();
    wait_until("3 peers stepping", Duration::from_secs(30), || {
        peers
            .iter()
            .all(|p| p.steps().iter().filter(|s| s.world == 3).count() >= 10)
    });
    let killed = peers.remove(1);
    killed.signal("-9");
    let before: Vec<usize> = peers.iter().map(Peer::count).collect();
    wait_until(
        "survivors stepping at world 2",
        Duration::from_secs(10),
        || {
            peers
                .iter()
                .all(|p| p.steps().iter().filter(|s| s.world == 2).count() >= 10)
        },
    );
    for (p, b) in peers.iter().zip(&before) {
        // The step in flight at the kill (if the kill hit an op rather than a joint call)
        // retried on the smaller ring, well within a second.
        let after = &p.steps()[*b..];
        let recovered = after.iter().find(|s| s.world == 2).unwrap();
        assert!(recovered.ms < 1000.0, "recovery took {} ms", recovered.ms);
        eprintln!(
            "recovered in {} ms after {} retries",
            recovered.ms, recovered.retries
        );
    }
    drop(killed);
    peers.push(Peer::start(addr));
    wait_until(
        "newcomer stepping at world 3",
        Duration::from_secs(20),
        || {
            peers
                .iter()
                .all(|p| p.steps().iter().filter(|s| s.world == 3).count() >= 25)
                && peers[2].count() >= 5
        },
    );
    let compared = check_parity(&peers.iter().collect::<Vec<_>>());
    assert!(compared > 50, "too few steps compared: {compared}");
}

#[test]
fn frozen_peer_is_declared_dead_and_the_rest_continue() {
    let hb = Duration::from_millis(1500);
    let m = master_with(hb);
    let addr = m.local_addr();
    let mut peers: Vec<Peer> = (0..3).map(|_| Peer::start(addr)).collect();
    wait_until("3 peers stepping", Duration::from_secs(30), || {
        peers
            .iter()
            .all(|p| p.steps().iter().filter(|s| s.world == 3).count() >= 10)
    });
    peers[2].signal("-STOP");
    let frozen_at = Instant::now();
    wait_until("survivors stepping at world 2", hb * 4, || {
        peers[..2]
            .iter()
            .all(|p| p.steps().iter().filter(|s| s.world == 2).count() >= 5)
    });
    let took = frozen_at.elapsed();
    assert!(took >= hb.mul_f32(0.9), "declared dead too early: {took:?}");
    peers[2].signal("-CONT");
    // The woken peer was removed from the run: its next call fails and it exits.
    wait_until("the frozen peer to exit", Duration::from_secs(15), || {
        peers[2].exited()
    });
    let compared = check_parity(&peers.iter().collect::<Vec<_>>());
    assert!(compared > 20, "too few steps compared: {compared}");
}

#[test]
fn shared_state_survives_a_kill_and_reaches_a_newcomer() {
    let m = master_with(Duration::from_secs(2));
    let addr = m.local_addr();
    let args = ["--state-mb", "32"];
    let mut peers: Vec<Peer> = (0..3).map(|_| Peer::start_with(addr, &args)).collect();
    let at_world = |p: &Peer, w: u32| p.steps().iter().filter(|s| s.world == w).count();
    wait_until("3 peers stepping", Duration::from_secs(30), || {
        peers.iter().all(|p| at_world(p, 3) >= 5)
    });
    let killed = peers.remove(0);
    killed.signal("-9");
    drop(killed);
    wait_until("survivors at world 2", Duration::from_secs(10), || {
        peers.iter().all(|p| at_world(p, 2) >= 5)
    });
    peers.push(Peer::start_with(addr, &args));
    wait_until(
        "newcomer stepping at world 3",
        Duration::from_secs(30),
        || peers.iter().all(|p| at_world(p, 3) >= 5) && peers[2].count() >= 5,
    );
    // The newcomer's first sync received the whole state; later syncs move nothing.
    let first = &peers[2].steps()[0];
    assert!(first.state.as_ref().unwrap().1 >= 32 << 20, "{first:?}");
    assert!(
        peers[2].steps()[2..]
            .iter()
            .all(|s| s.state.as_ref().unwrap().1 == 0)
    );
    let compared = check_parity(&peers.iter().collect::<Vec<_>>());
    assert!(compared > 10, "too few steps compared: {compared}");
}
