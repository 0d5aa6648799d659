//! One world of the benchmark, parent side: starts the workers of the pccl all-reduce (with
//! a master in-process) or of a raw TCP ring (the two ceilings and the bare all-reduce), and reduces their
//! reports (`reports.rs`). The gloo world is in `gloo.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use pccl::secure::{ENCRYPT_VAR, RunSecret, SECRET_VAR};
use pccl::{MasterConfig, MasterNode};

use crate::reports::{Measured, Reports};
use crate::workers::Workers;
use crate::{Mode, Opts};

/// Common arguments of both worker kinds.
pub(crate) fn worker_args(o: &Opts, n: usize, rank: usize, deadline: Duration) -> Vec<String> {
    let sizes: Vec<String> = o.sizes.iter().map(ToString::to_string).collect();
    let mut a: Vec<String> = vec![
        "--rank".into(),
        rank.to_string(),
        "--world".into(),
        n.to_string(),
        "--sizes".into(),
        sizes.join(","),
        "--iters".into(),
        o.iters.to_string(),
        "--warmup".into(),
        o.warmup.to_string(),
        "--pool".into(),
        o.pool.to_string(),
        "--deadline-secs".into(),
        deadline.as_secs().to_string(),
    ];
    if let Some(t) = o.threads {
        a.extend(["--threads".into(), t.to_string()]);
    }
    if let Some(s) = o.slice {
        a.extend(["--slice".into(), s.to_string()]);
    }
    a
}

/// How long one world's run may take: generous (20 MB/s per process) plus fixed slack.
pub(crate) fn world_budget(o: &Opts, n: usize) -> Duration {
    let bytes: usize = o.sizes.iter().sum::<usize>() * (o.iters + o.warmup);
    let secs = 60 + (bytes as f64 * n as f64 / 20e6) as u64;
    Duration::from_secs(secs)
}

/// One world of the pccl all-reduce in `mode`: master in-process, `n` worker processes.
/// Authenticated and encrypted modes use `secret` (the master directly, the workers
/// through `PCCL_RUN_SECRET` and `PCCL_ENCRYPT`).
pub(crate) fn pccl_world(
    o: &Opts,
    n: usize,
    mode: Mode,
    secret: &str,
) -> Result<BTreeMap<usize, Measured>> {
    let mut mcfg = MasterConfig::new("127.0.0.1:0".parse().expect("literal address"));
    mcfg.heartbeat_timeout = Duration::from_secs(10);
    let mut env = Vec::new();
    if mode == Mode::Http {
        mcfg.http = Some("127.0.0.1:0".parse().expect("literal address"));
    }
    if matches!(mode, Mode::Authenticated | Mode::Encrypted) {
        mcfg.secret = Some(RunSecret::new(secret).context("run secret")?);
        mcfg.encrypt = mode == Mode::Encrypted;
        env.push((SECRET_VAR, secret.to_owned()));
        env.push((ENCRYPT_VAR, u8::from(mcfg.encrypt).to_string()));
    }
    let master = MasterNode::start(mcfg).context("start master")?;
    let addr = master.local_addr();
    // With --http, a dashboard's load or more: both endpoints scraped every `o.scrape`.
    let _scraper = master.http_addr().map(|at| Scraper::start(at, o.scrape));
    let budget = world_budget(o, n);
    let deadline = Instant::now() + budget;
    let mut workers = Workers::spawn(n, &env, |rank| {
        let mut a = vec!["--worker".into(), "--master".into(), addr.to_string()];
        a.extend(worker_args(o, n, rank, budget + Duration::from_secs(30)));
        a
    })?;
    let mut reports = Reports::new(n, o.iters);
    workers.collect(deadline, |w, line| reports.line(w, line))?;
    workers.finish(Duration::from_secs(10))?;
    drop(master);
    reports.summarize(&o.sizes, true)
}

/// Polls `/api/run` and `/metrics` every `interval` until dropped (the `http` mode).
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Scraper {
    fn start(at: std::net::SocketAddr, interval: Duration) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut answered = 0u64;
            while !flag.load(Ordering::Relaxed) {
                for path in ["/api/run", "/metrics"] {
                    let Ok(mut s) =
                        std::net::TcpStream::connect_timeout(&at, Duration::from_secs(1))
                    else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut body = Vec::new();
                    if write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").is_ok()
                        && s.read_to_end(&mut body).is_ok()
                        && body.windows(5).take(16).any(|w| w == b" 200 ")
                    {
                        answered += 1;
                    }
                }
                std::thread::sleep(interval);
            }
            answered
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let answered = t.join().unwrap_or(0);
            println!("      (http mode: {answered} scrapes answered during the world)");
        }
    }
}

/// Which raw TCP ring: a ceiling, or the bare all-reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ceiling {
    /// Blocking sender and receiver threads (`thread_worker.rs`), the yardstick.
    Threads,
    /// A tokio runtime like a pccl communicator's (`tcp_worker.rs`).
    Tokio,
    /// The hand-written blocking-thread ring all-reduce (`bare_worker.rs`), with or
    /// without pccl's checksums.
    Bare { checksums: bool },
}

/// One world of a raw TCP ring: `n` processes stream to their successor at once (the
/// bare all-reduce's report a result crc32, which must agree).
pub(crate) fn ceiling_world(
    o: &Opts,
    n: usize,
    kind: Ceiling,
) -> Result<BTreeMap<usize, Measured>> {
    let budget = world_budget(o, n);
    let deadline = Instant::now() + budget;
    let flags: &[&str] = match kind {
        Ceiling::Threads => &["--thread-worker"],
        Ceiling::Tokio => &["--tcp-worker"],
        Ceiling::Bare { checksums: false } => &["--bare-worker"],
        Ceiling::Bare { checksums: true } => &["--bare-worker", "--checksums"],
    };
    let mut workers = Workers::spawn(n, &[], |rank| {
        let mut a: Vec<String> = flags.iter().map(|f| (*f).into()).collect();
        a.extend(worker_args(o, n, rank, budget + Duration::from_secs(30)));
        a
    })?;
    // Every worker first announces its listening port; then all learn everyone's.
    let mut ports = vec![None; n];
    while ports.iter().any(Option::is_none) {
        let (w, line) = workers.next(deadline)?;
        let line = line.ok_or_else(|| anyhow!("tcp worker {w} exited before binding"))?;
        if let Some(p) = line.strip_prefix("PORT ") {
            ports[w] = Some(p.trim().parse::<u16>().context("PORT line")?);
        }
    }
    let ports: Vec<String> = ports
        .into_iter()
        .map(|p| p.expect("all set").to_string())
        .collect();
    workers.send_all(&format!("PEERS {}", ports.join(" ")))?;
    let mut reports = Reports::new(n, o.iters);
    workers.collect(deadline, |w, line| reports.line(w, line))?;
    workers.finish(Duration::from_secs(10))?;
    reports.summarize(&o.sizes, matches!(kind, Ceiling::Bare { .. }))
}
