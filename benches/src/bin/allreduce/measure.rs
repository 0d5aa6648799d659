//! One world of the benchmark, parent side: starts the workers of the pccl all-reduce (with
//! a master in-process) or of the raw TCP ring, collects their per-iteration times and
//! crc32s, and reduces them to the median over iterations of the slowest rank's time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use benches::{fmt_size, median};
use pccl::secure::{ENCRYPT_VAR, RunSecret, SECRET_VAR};
use pccl::{MasterConfig, MasterNode};

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
fn world_budget(o: &Opts, n: usize) -> Duration {
    let bytes: usize = o.sizes.iter().sum::<usize>() * (o.iters + o.warmup);
    let secs = 60 + (bytes as f64 * n as f64 / 20e6) as u64;
    Duration::from_secs(secs)
}

/// Per-iteration durations reported as `T <bytes> <iter> <nanos>`, keyed by bytes, one
/// vector of iterations per worker.
type Timings = BTreeMap<usize, Vec<Vec<Option<Duration>>>>;

fn record_time(t: &mut Timings, o: &Opts, n: usize, w: usize, line: &str) -> Result<()> {
    let mut p = line.split_whitespace().skip(1);
    let mut next = || -> Result<u64> {
        p.next()
            .ok_or_else(|| anyhow!("short line {line:?}"))?
            .parse()
            .with_context(|| format!("bad line {line:?}"))
    };
    let (bytes, iter, nanos) = (next()? as usize, next()? as usize, next()?);
    ensure!(iter < o.iters, "iteration {iter} out of range");
    let per = t
        .entry(bytes)
        .or_insert_with(|| vec![vec![None; o.iters]; n]);
    per[w][iter] = Some(Duration::from_nanos(nanos));
    Ok(())
}

/// Median over iterations of the max over workers, per size.
fn summarize(t: &Timings, o: &Opts) -> Result<BTreeMap<usize, Duration>> {
    let mut out = BTreeMap::new();
    for &bytes in &o.sizes {
        let per = t
            .get(&bytes)
            .ok_or_else(|| anyhow!("no timings for {}", fmt_size(bytes)))?;
        let mut worst = Vec::with_capacity(o.iters);
        for k in 0..o.iters {
            let mut m = Duration::ZERO;
            for (w, its) in per.iter().enumerate() {
                let d = its[k].ok_or_else(|| anyhow!("worker {w} missed iteration {k}"))?;
                m = m.max(d);
            }
            worst.push(m);
        }
        out.insert(bytes, median(&worst).expect("iters >= 1"));
    }
    Ok(out)
}

/// One world of the pccl all-reduce in `mode`: master in-process, `n` worker processes.
/// Authenticated and encrypted modes use `secret` (the master directly, the workers
/// through `PCCL_RUN_SECRET` and `PCCL_ENCRYPT`).
pub(crate) fn pccl_world(
    o: &Opts,
    n: usize,
    mode: Mode,
    secret: &str,
) -> Result<BTreeMap<usize, (Duration, u32)>> {
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
    // With --http, a dashboard's load and more: both endpoints scraped 4 times a second.
    let _scraper = master.http_addr().map(Scraper::start);
    let budget = world_budget(o, n);
    let deadline = Instant::now() + budget;
    let mut workers = Workers::spawn(n, &env, |rank| {
        let mut a = vec!["--worker".into(), "--master".into(), addr.to_string()];
        a.extend(worker_args(o, n, rank, budget + Duration::from_secs(30)));
        a
    })?;
    let mut timings = Timings::new();
    let mut crcs: BTreeMap<usize, Vec<Option<u32>>> = BTreeMap::new();
    workers.collect(deadline, |w, line| {
        match line.split_whitespace().next() {
            Some("T") => record_time(&mut timings, o, n, w, line)?,
            Some("CRC") => {
                let mut p = line.split_whitespace().skip(1);
                let bytes: usize = p.next().unwrap_or("").parse().context("CRC line")?;
                let crc = u32::from_str_radix(p.next().unwrap_or(""), 16).context("CRC line")?;
                crcs.entry(bytes).or_insert_with(|| vec![None; n])[w] = Some(crc);
            }
            _ => {}
        }
        Ok(())
    })?;
    workers.finish(Duration::from_secs(10))?;
    drop(master);
    let times = summarize(&timings, o)?;
    let mut out = BTreeMap::new();
    for (bytes, time) in times {
        let c = crcs
            .get(&bytes)
            .ok_or_else(|| anyhow!("no crc for {}", fmt_size(bytes)))?;
        let first = c[0].ok_or_else(|| anyhow!("worker 0 sent no crc"))?;
        for (w, x) in c.iter().enumerate() {
            let x = x.ok_or_else(|| anyhow!("worker {w} sent no crc"))?;
            ensure!(
                x == first,
                "PARITY FAILURE: world {n}, {}: worker {w} crc {x:08x} != worker 0 crc {first:08x}",
                fmt_size(bytes)
            );
        }
        out.insert(bytes, (time, first));
    }
    Ok(out)
}

/// Polls `/api/run` and `/metrics` every 250 ms until dropped (the `http` mode).
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Scraper {
    fn start(at: std::net::SocketAddr) -> Self {
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
                std::thread::sleep(Duration::from_millis(250));
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

/// One world of the raw TCP ring: `n` processes stream to their successor at once.
pub(crate) fn ceiling_world(o: &Opts, n: usize) -> Result<BTreeMap<usize, Duration>> {
    let budget = world_budget(o, n);
    let deadline = Instant::now() + budget;
    let mut workers = Workers::spawn(n, &[], |rank| {
        let mut a = vec!["--tcp-worker".into()];
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
    let mut timings = Timings::new();
    workers.collect(deadline, |w, line| {
        if line.starts_with("T ") {
            record_time(&mut timings, o, n, w, line)?;
        }
        Ok(())
    })?;
    workers.finish(Duration::from_secs(10))?;
    summarize(&timings, o)
}
