//! Master restart benchmark (issue #13, ARCHITECTURE.md §14): how long the run pauses when
//! its master is killed with SIGKILL and a new one starts on the same address.
//!
//! ```text
//! cargo run --release -p benches --bin master_restart [-- --peers 4,16 --rounds 5
//!     --outage-ms 500 --big 16M --big-peers 4]
//! ```
//!
//! The master is this binary re-executed in the hidden `--master-proc ADDR` mode (a real
//! process, so the kill is a real SIGKILL); the peers are communicators in this process
//! over loopback TCP, each with its own runtime. Two figures:
//!
//! * **Restart to first op**: every peer loops small all-reduces (1 KiB); the master is
//!   killed, stays down `--outage-ms`, and is started again. Reported per round: the time
//!   from spawning the new master to the moment the last peer completes an all-reduce
//!   (max over peers of its first completion after the spawn), for each `--peers` count.
//! * **Pause in a 16 MiB loop**: `--big-peers` peers loop `--big` all-reduces; reported
//!   are the usual op time (median) and the longest gap between two completions on one
//!   peer around a kill, and that gap less the outage (what the restart costs on top).
//!
//! The child master exits when its stdin closes and is killed on every exit path.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use benches::{fmt_size, median, parse_size};
use pccl::{Communicator, Error, ReduceOp};

fn opt(args: &[String], key: &str) -> Option<String> {
    args.iter()
        .position(|a| a == key)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The child: a master on ADDR until stdin closes.
fn master_proc(addr: &str) -> Result<()> {
    let cfg = pccl::MasterConfig::new(addr.parse()?);
    let m = pccl::MasterNode::start(cfg)?;
    println!("READY");
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    m.interrupt();
    Ok(())
}

/// A master process on `addr`; SIGKILLed on drop.
struct Master(Child);

impl Master {
    /// Spawns it and waits (at most 10 s) until it listens.
    fn start(addr: SocketAddr) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--master-proc", &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = child.stdout.take().context("stdout")?;
        let m = Self(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10))?;
        ensure!(line.trim() == "READY", "the master did not start: {line:?}");
        Ok(m)
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every peer loops all-reduces of `elems` f32 (retrying failed ones) until `stop`; each
/// completion's instant is recorded per peer. Returns once `stop` is set.
fn looping(
    comms: &[Communicator],
    elems: usize,
    stop: &AtomicBool,
    done: &[Mutex<Vec<Instant>>],
) -> Result<()> {
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .iter()
            .zip(done)
            .map(|(c, d)| {
                s.spawn(move || -> Result<()> {
                    let mut send = vec![1f32; elems];
                    let mut recv = vec![0f32; elems];
                    loop {
                        // Element 0 carries "stop" to every peer, so all leave after the
                        // same op (a peer leaving alone would leave the others waiting).
                        send[0] = if stop.load(Ordering::Relaxed) {
                            1.0
                        } else {
                            0.0
                        };
                        match c.all_reduce(&send, &mut recv, ReduceOp::Sum, 1) {
                            Ok(_) if recv[0] > 0.0 => return Ok(()),
                            Ok(_) => d.lock().unwrap().push(Instant::now()),
                            Err(Error::RankConnectionLost { .. }) => {}
                            Err(e) => bail!("all-reduce: {e}"),
                        }
                    }
                })
            })
            .collect();
        hs.into_iter()
            .try_for_each(|h| h.join().expect("peer thread"))
    })
}

/// Runs `rounds` kill/restart rounds while the peers loop; returns, per round, the spawn
/// instant of the new master and the completions recorded.
fn rounds(
    n: usize,
    elems: usize,
    rounds: usize,
    outage: Duration,
) -> Result<(Vec<Instant>, Vec<Vec<Instant>>)> {
    let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut master = Some(Master::start(addr)?);
    let comms = benches::loopback_cluster(addr, n)?;
    let stop = AtomicBool::new(false);
    let done: Vec<Mutex<Vec<Instant>>> = (0..n).map(|_| Mutex::new(Vec::new())).collect();
    let mut driver = || -> Result<Vec<Instant>> {
        let mut restarts = Vec::new();
        for _ in 0..rounds {
            // Run a while (completions everywhere), then kill.
            std::thread::sleep(Duration::from_secs(2));
            drop(master.take());
            std::thread::sleep(outage);
            restarts.push(Instant::now());
            master = Some(Master::start(addr)?);
        }
        std::thread::sleep(Duration::from_secs(3));
        Ok(restarts)
    };
    let (restarts, looped) = std::thread::scope(|s| {
        let h = s.spawn(|| looping(&comms, elems, &stop, &done));
        let r = driver();
        stop.store(true, Ordering::Relaxed);
        (r, h.join().expect("loop"))
    });
    looped?;
    Ok((
        restarts?,
        done.into_iter().map(|d| d.into_inner().unwrap()).collect(),
    ))
}

/// Per round: the latest, over peers, of each peer's first completion after the restart.
fn restart_to_op(restarts: &[Instant], done: &[Vec<Instant>]) -> Result<Vec<Duration>> {
    restarts
        .iter()
        .map(|t0| {
            done.iter()
                .map(|d| {
                    d.iter()
                        .find(|t| *t > t0)
                        .map(|t| *t - *t0)
                        .context("a peer completed nothing after a restart")
                })
                .try_fold(Duration::ZERO, |m, d| d.map(|d| m.max(d)))
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--master-proc") {
        return master_proc(args.get(1).context("--master-proc ADDR")?);
    }
    let peers: Vec<usize> = opt(&args, "--peers")
        .unwrap_or_else(|| "4,16".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let n_rounds: usize = opt(&args, "--rounds").map_or(Ok(5), |v| v.parse())?;
    let outage = Duration::from_millis(opt(&args, "--outage-ms").map_or(Ok(500), |v| v.parse())?);
    let big = parse_size(&opt(&args, "--big").unwrap_or_else(|| "16M".into())).context("--big")?;
    let big_peers: usize = opt(&args, "--big-peers").map_or(Ok(4), |v| v.parse())?;
    ensure!(
        n_rounds > 0 && big % 4 == 0,
        "--rounds > 0, --big a multiple of 4"
    );

    println!(
        "restart to first all-reduce on every peer (1 KiB ops, outage {} ms):",
        ms(outage)
    );
    println!(
        "{:>6} {:>10} {:>10} {:>10}",
        "peers", "median ms", "min ms", "max ms"
    );
    for &n in &peers {
        let (restarts, done) = rounds(n, 256, n_rounds, outage)?;
        let t = restart_to_op(&restarts, &done)?;
        let (lo, hi) = (t.iter().min().unwrap(), t.iter().max().unwrap());
        println!(
            "{n:>6} {:>10.1} {:>10.1} {:>10.1}",
            ms(median(&t).unwrap()),
            ms(*lo),
            ms(*hi)
        );
    }

    println!(
        "\npause seen by a peer looping {} all-reduces ({big_peers} peers, outage {} ms):",
        fmt_size(big),
        ms(outage)
    );
    let (restarts, done) = rounds(big_peers, big / 4, n_rounds, outage)?;
    let gaps: Vec<Duration> = done
        .iter()
        .flat_map(|d| d.windows(2).map(|w| w[1] - w[0]))
        .collect();
    let mut pauses = Vec::new();
    for t0 in &restarts {
        // The longest gap on any peer that spans this restart.
        let p = done
            .iter()
            .flat_map(|d| d.windows(2).filter(|w| w[0] <= *t0 && w[1] > *t0))
            .map(|w| w[1] - w[0])
            .max()
            .context("no completion around a restart")?;
        pauses.push(p);
    }
    let typical = median(&gaps).unwrap_or_default();
    let pause = median(&pauses).unwrap();
    println!(
        "op time (median gap between completions): {:.1} ms",
        ms(typical)
    );
    println!(
        "pause around a restart: median {:.1} ms, max {:.1} ms; less the outage: median {:.1} ms",
        ms(pause),
        ms(*pauses.iter().max().unwrap()),
        ms(pause.saturating_sub(outage))
    );
    Ok(())
}
