//! Ring all-reduce benchmark on loopback, one OS process per rank.
//!
//! ```text
//! cargo run --release -p benches --bin allreduce [-- --worlds 2,3,4 --sizes 1M,16M,128M
//!     --iters 10 --warmup 2 --pool 1 --no-ceiling --quick]
//! ```
//!
//! The parent starts a [`MasterNode`] in-process on `127.0.0.1:0` and re-executes this
//! binary `n` times in the hidden `--worker` mode. Workers connect, grow the run until it
//! has `n` peers, then per size run warm-up all-reduces followed by the timed ones (f32,
//! sum). The all-reduce itself is the barrier between iterations. Each worker prints one
//! duration per timed iteration, then the crc32 of its result buffer.
//!
//! Reported time: for every iteration the **maximum over workers** (the op is done when the
//! slowest rank is done), then the **median over iterations**. `algbw = bytes / time`,
//! `busbw = algbw * 2(n-1)/n`.
//!
//! The ceiling is measured in the same run by `n` processes in the hidden `--tcp-worker`
//! mode: each streams `bytes` to its ring successor over one 127.0.0.1 TCP connection with
//! `TCP_NODELAY` (tokio, as in pccl) while receiving `bytes` from its predecessor, all `n`
//! at once. Reported: per-stream GB/s at the median (over iterations) of the slowest
//! worker's iteration time. A ring all-reduce's busbw cannot exceed it.
//!
//! Workers are killed and reaped on every exit path of the parent (a guard), exit on their
//! own when the parent goes away (stdin EOF) and carry a watchdog; every wait is bounded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use benches::{busbw_factor, fmt_size, gbps, median, parse_size};
use pccl::{Attribute, Communicator, CommunicatorConfig, MasterConfig, MasterNode, ReduceOp};

const USAGE: &str = "\
usage: allreduce [--worlds 2,3,4] [--sizes 1M,16M,128M] [--iters K] [--warmup W]
                 [--pool N] [--threads N] [--slice BYTES] [--no-ceiling] [--quick]

  --worlds     comma-separated world sizes (processes), each >= 2   [2,3,4]
  --sizes      comma-separated buffer sizes in bytes (K/M/G suffixes, multiple of 4)
                                                                    [1M,16M,128M]
  --iters      timed iterations per size                            [10]
  --warmup     untimed iterations per size before the timed ones    [2]
  --pool       p2p_connection_pool_size (TCP connections per ring neighbour) [1]
  --threads    worker_threads of each communicator's runtime     [pccl default: 2]
  --slice      slice_bytes, the pipeline slice size (K/M suffixes) [pccl default: 1M]
  --no-ceiling skip the raw TCP ring ceiling
  --quick      tiny run for CI: worlds 2,3, sizes 4K,256K, 3 iters, 1 warm-up
";

#[derive(Clone, Debug)]
struct Opts {
    worlds: Vec<usize>,
    sizes: Vec<usize>,
    iters: usize,
    warmup: usize,
    pool: usize,
    threads: Option<usize>,
    slice: Option<usize>,
    ceiling: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            worlds: vec![2, 3, 4],
            sizes: vec![1 << 20, 16 << 20, 128 << 20],
            iters: 10,
            warmup: 2,
            pool: 1,
            threads: None,
            slice: None,
            ceiling: true,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--worker") => worker::run(&args[1..]),
        Some("--tcp-worker") => tcp_worker::run(&args[1..]),
        _ => parent(&args),
    };
    if let Err(e) = result {
        eprintln!("allreduce: error: {e:#}");
        std::process::exit(1);
    }
}

fn parse_list<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| f(p).ok_or_else(|| anyhow!("cannot parse {p:?}")))
        .collect()
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts::default();
    let mut it = args.iter();
    let mut quick = false;
    let (mut worlds, mut sizes, mut iters, mut warmup) = (None, None, None, None);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--worlds" => worlds = Some(parse_list(val()?, |s| s.trim().parse().ok())?),
            "--sizes" => sizes = Some(parse_list(val()?, parse_size)?),
            "--iters" => iters = Some(val()?.parse().context("--iters")?),
            "--warmup" => warmup = Some(val()?.parse().context("--warmup")?),
            "--pool" => o.pool = val()?.parse().context("--pool")?,
            "--threads" => o.threads = Some(val()?.parse().context("--threads")?),
            "--slice" => {
                o.slice = Some(parse_size(val()?).ok_or_else(|| anyhow!("bad --slice"))?);
            }
            "--no-ceiling" => o.ceiling = false,
            "--quick" => quick = true,
            // `cargo bench` / libtest-style flags: ignore so the binary can be driven the same way.
            "--bench" | "--test" | "--nocapture" => {}
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if quick {
        o.worlds = vec![2, 3];
        o.sizes = vec![4 << 10, 256 << 10];
        o.iters = 3;
        o.warmup = 1;
    }
    o.worlds = worlds.unwrap_or(o.worlds);
    o.sizes = sizes.unwrap_or(o.sizes);
    o.iters = iters.unwrap_or(o.iters);
    o.warmup = warmup.unwrap_or(o.warmup);
    ensure!(
        !o.worlds.is_empty() && !o.sizes.is_empty(),
        "nothing to run"
    );
    ensure!(
        o.worlds.iter().all(|&n| (2..=64).contains(&n)),
        "world sizes must be 2..=64"
    );
    ensure!(
        o.sizes.iter().all(|&s| s >= 4 && s % 4 == 0),
        "sizes must be positive multiples of 4 bytes (f32)"
    );
    ensure!(o.iters >= 1, "--iters must be at least 1");
    ensure!((1..=1024).contains(&o.pool), "--pool must be 1..=1024");
    Ok(o)
}

/// Common arguments of both worker kinds.
fn worker_args(o: &Opts, n: usize, rank: usize, deadline: Duration) -> Vec<String> {
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

struct Row {
    world: usize,
    bytes: usize,
    time: Duration,
    ceiling: Option<Duration>,
    crc: u32,
}

fn parent(args: &[String]) -> Result<()> {
    let o = parse_opts(args)?;
    pccl::init_logging();
    println!(
        "pccl ring all-reduce, f32 sum, loopback, one process per rank; pool={}, threads={}, \
         slice={}, warmup={}, iters={}",
        o.pool,
        o.threads
            .map_or_else(|| "default".into(), |t| t.to_string()),
        o.slice.map_or_else(|| "default".into(), fmt_size),
        o.warmup,
        o.iters
    );
    println!(
        "time = median over iterations of the slowest rank's time; GB/s = 1e9 B/s; \
         tcp ring = per-stream GB/s with all n streams at once"
    );
    println!();
    println!(
        "{:>5} {:>9} {:>11} {:>11} {:>11} | {:>13} {:>9} | {:>8}",
        "world",
        "bytes",
        "median ms",
        "algbw GB/s",
        "busbw GB/s",
        "tcp ring GB/s",
        "busbw/tcp",
        "crc32"
    );
    let mut rows = Vec::new();
    for &n in &o.worlds {
        let ceiling = if o.ceiling {
            Some(ceiling_world(&o, n).with_context(|| format!("tcp ceiling, world {n}"))?)
        } else {
            None
        };
        let res = pccl_world(&o, n).with_context(|| format!("all-reduce, world {n}"))?;
        for (bytes, (time, crc)) in res {
            let row = Row {
                world: n,
                bytes,
                time,
                ceiling: ceiling.as_ref().and_then(|c| c.get(&bytes).copied()),
                crc,
            };
            print_row(&row);
            rows.push(row);
        }
    }
    println!();
    println!(
        "parity ok ({} configurations: every rank's result has the same crc32)",
        rows.len()
    );
    Ok(())
}

fn print_row(r: &Row) {
    let alg = gbps(r.bytes, r.time);
    let bus = alg * busbw_factor(r.world);
    let (tcp, ratio) = match r.ceiling {
        Some(c) => {
            let t = gbps(r.bytes, c);
            (format!("{t:.3}"), format!("{:.2}", bus / t))
        }
        None => ("-".into(), "-".into()),
    };
    println!(
        "{:>5} {:>9} {:>11.3} {:>11.3} {:>11.3} | {:>13} {:>9} | {:08x}",
        r.world,
        fmt_size(r.bytes),
        r.time.as_secs_f64() * 1e3,
        alg,
        bus,
        tcp,
        ratio,
        r.crc
    );
    let _ = std::io::stdout().flush();
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

/// One world of the pccl all-reduce: master in-process, `n` worker processes.
fn pccl_world(o: &Opts, n: usize) -> Result<BTreeMap<usize, (Duration, u32)>> {
    let mut mcfg = MasterConfig::new("127.0.0.1:0".parse().expect("literal address"));
    mcfg.heartbeat_timeout = Duration::from_secs(10);
    let master = MasterNode::start(mcfg).context("start master")?;
    let addr = master.local_addr();
    let budget = world_budget(o, n);
    let deadline = Instant::now() + budget;
    let mut workers = Workers::spawn(n, |rank| {
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

/// One world of the raw TCP ring: `n` processes stream to their successor at once.
fn ceiling_world(o: &Opts, n: usize) -> Result<BTreeMap<usize, Duration>> {
    let budget = world_budget(o, n);
    let deadline = Instant::now() + budget;
    let mut workers = Workers::spawn(n, |rank| {
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

/// Child processes of one run. Dropping it kills and reaps every child still running.
struct Workers {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    lines: mpsc::Receiver<(usize, Option<String>)>,
    done: Vec<bool>,
}

impl Workers {
    fn spawn(n: usize, args: impl Fn(usize) -> Vec<String>) -> Result<Self> {
        let exe = std::env::current_exe().context("locate own executable")?;
        let (tx, rx) = mpsc::channel();
        let mut w = Self {
            children: Vec::with_capacity(n),
            stdins: Vec::with_capacity(n),
            lines: rx,
            done: vec![false; n],
        };
        for i in 0..n {
            let mut cmd = Command::new(&exe);
            cmd.args(args(i))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            if std::env::var_os("PCCL_LOG").is_none() {
                // Peers leaving at the end are expected; keep their warnings out of the table.
                cmd.env("PCCL_LOG", "error");
            }
            // On error `w` drops here and reaps the children spawned so far.
            let mut child = cmd.spawn().context("spawn worker")?;
            let stdout = child.stdout.take();
            w.stdins.push(child.stdin.take());
            w.children.push(child);
            let stdout = stdout.ok_or_else(|| anyhow!("worker stdout not piped"))?;
            let tx = tx.clone();
            thread::Builder::new()
                .name(format!("worker-{i}-stdout"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if tx.send((i, Some(line))).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send((i, None));
                })
                .context("spawn reader thread")?;
        }
        Ok(w)
    }

    /// The next stdout line of any worker (`None`: that worker closed its stdout).
    fn next(&self, deadline: Instant) -> Result<(usize, Option<String>)> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines
            .recv_timeout(left)
            .map_err(|_| anyhow!("timed out waiting for the workers"))
    }

    /// Feeds every line to `f` until all workers have printed `DONE`.
    fn collect(
        &mut self,
        deadline: Instant,
        mut f: impl FnMut(usize, &str) -> Result<()>,
    ) -> Result<()> {
        while self.done.iter().any(|d| !d) {
            let (w, line) = self.next(deadline)?;
            match line {
                Some(l) if l == "DONE" => self.done[w] = true,
                Some(l) => f(w, &l)?,
                None if !self.done[w] => {
                    let status = self.wait_one(w, Duration::from_secs(2));
                    bail!("worker {w} exited before finishing ({status}); see its stderr above");
                }
                None => {}
            }
        }
        Ok(())
    }

    fn send_all(&mut self, line: &str) -> Result<()> {
        for (i, s) in self.stdins.iter_mut().enumerate() {
            let s = s
                .as_mut()
                .ok_or_else(|| anyhow!("worker {i} stdin closed"))?;
            writeln!(s, "{line}")
                .and_then(|()| s.flush())
                .with_context(|| format!("write to worker {i}"))?;
        }
        Ok(())
    }

    /// Describes how worker `w` ended, waiting at most `timeout` for it.
    fn wait_one(&mut self, w: usize, timeout: Duration) -> String {
        match wait_timeout(&mut self.children[w], timeout) {
            Some(s) => s.to_string(),
            None => "still running".into(),
        }
    }

    /// Tells every worker to exit, then waits (bounded) for clean exits.
    fn finish(mut self, timeout: Duration) -> Result<()> {
        let _ = self.send_all("EXIT");
        self.stdins.clear();
        let deadline = Instant::now() + timeout;
        for (i, c) in self.children.iter_mut().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_timeout(c, left) {
                Some(s) if s.success() => {}
                Some(s) => bail!("worker {i} exited with {s}"),
                None => bail!("worker {i} did not exit within {timeout:?}"),
            }
        }
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            if !matches!(c.try_wait(), Ok(Some(_))) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Polls `c` until it exits or `timeout` passes.
fn wait_timeout(c: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match c.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// What both worker kinds share: argument parsing, the parent link and the watchdog.
mod child {
    use super::*;

    #[derive(Debug, Default)]
    pub(crate) struct Args {
        pub(crate) master: Option<SocketAddr>,
        pub(crate) rank: usize,
        pub(crate) world: usize,
        pub(crate) sizes: Vec<usize>,
        pub(crate) iters: usize,
        pub(crate) warmup: usize,
        pub(crate) pool: usize,
        pub(crate) threads: Option<usize>,
        pub(crate) slice: Option<usize>,
        pub(crate) deadline: Duration,
    }

    pub(crate) fn parse(args: &[String]) -> Result<Args> {
        let mut a = Args {
            pool: 1,
            deadline: Duration::from_secs(600),
            ..Args::default()
        };
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let v = it.next().ok_or_else(|| anyhow!("{k} needs a value"))?;
            match k.as_str() {
                "--master" => a.master = Some(v.parse().context("--master")?),
                "--rank" => a.rank = v.parse()?,
                "--world" => a.world = v.parse()?,
                "--sizes" => a.sizes = parse_list(v, |s| s.parse().ok())?,
                "--iters" => a.iters = v.parse()?,
                "--warmup" => a.warmup = v.parse()?,
                "--pool" => a.pool = v.parse()?,
                "--threads" => a.threads = Some(v.parse()?),
                "--slice" => a.slice = Some(v.parse()?),
                "--deadline-secs" => a.deadline = Duration::from_secs(v.parse()?),
                other => bail!("unknown worker argument {other:?}"),
            }
        }
        ensure!(a.world >= 2 && a.rank < a.world, "bad rank/world");
        Ok(a)
    }

    /// Watches stdin: `EXIT` or EOF (the parent is gone) ends the process; other lines are
    /// handed to the caller. Also arms a watchdog that ends the process after `deadline`.
    pub(crate) fn link(deadline: Duration) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line.trim() == "EXIT" {
                    let _ = std::io::stdout().flush();
                    std::process::exit(0);
                }
                let _ = tx.send(line);
            }
            // The parent closed our stdin without EXIT: it failed or was killed.
            std::process::exit(3);
        });
        thread::spawn(move || {
            thread::sleep(deadline);
            eprintln!("worker: watchdog expired after {deadline:?}");
            std::process::exit(4);
        });
        rx
    }

    /// After `DONE`: idle until the parent's `EXIT` (handled by the stdin thread).
    pub(crate) fn park() -> ! {
        loop {
            thread::park();
        }
    }
}

mod worker {
    use pccl::Error;

    use super::*;

    /// A deterministic value in [-1, 1) with a full 24-bit mantissa, so that reduction
    /// order would change the bits: this is what makes the crc comparison meaningful.
    fn value(rank: usize, i: usize) -> f32 {
        let mut z = (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64);
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 40) as f32) / (1u64 << 23) as f32 - 1.0
    }

    pub(crate) fn run(args: &[String]) -> Result<()> {
        let a = child::parse(args)?;
        let _stdin = child::link(a.deadline);
        pccl::init_logging();
        let master = a.master.ok_or_else(|| anyhow!("--master is required"))?;
        let n = a.world;

        let mut cfg = CommunicatorConfig::new(master);
        cfg.bind_ip = "127.0.0.1".parse().expect("literal address");
        cfg.p2p_port = 0;
        cfg.pool_size = a.pool;
        if let Some(t) = a.threads {
            cfg.worker_threads = t;
        }
        if let Some(s) = a.slice {
            cfg.slice_bytes = s;
        }
        let comm = Communicator::new(cfg)?;
        comm.connect()?;
        let form_deadline = Instant::now() + Duration::from_secs(60);
        while comm.attribute(Attribute::GlobalWorldSize)? < n {
            ensure!(
                Instant::now() < form_deadline,
                "cluster did not form within 60 s"
            );
            match comm.update_topology() {
                Ok(()) | Err(Error::UpdateTopologyFailed(_)) => {}
                Err(e) => return Err(e).context("update_topology"),
            }
        }

        let out = std::io::stdout();
        let mut tag = 0u64;
        for &bytes in &a.sizes {
            let count = bytes / 4;
            let send: Vec<f32> = (0..count).map(|i| value(a.rank, i)).collect();
            let mut recv = vec![0f32; count];
            for _ in 0..a.warmup {
                comm.all_reduce(&send, &mut recv, ReduceOp::Sum, tag)
                    .context("warm-up all-reduce")?;
                tag += 1;
            }
            for k in 0..a.iters {
                let t0 = Instant::now();
                comm.all_reduce(&send, &mut recv, ReduceOp::Sum, tag)
                    .context("timed all-reduce")?;
                let dt = t0.elapsed();
                tag += 1;
                writeln!(out.lock(), "T {bytes} {k} {}", dt.as_nanos())?;
            }
            // Correctness on a sample (sums of n values in [-1, 1): f32 error far below 1e-5).
            let step = (count / 4096).max(1);
            for i in (0..count).step_by(step).chain([count - 1]) {
                let want: f64 = (0..n).map(|r| f64::from(value(r, i))).sum();
                let got = f64::from(recv[i]);
                ensure!(
                    (got - want).abs() <= 1e-5,
                    "wrong result at element {i} of {}: got {got}, want {want}",
                    fmt_size(bytes)
                );
            }
            let crc = crc32fast::hash(bytemuck::cast_slice(&recv));
            writeln!(out.lock(), "CRC {bytes} {crc:08x}")?;
        }
        writeln!(out.lock(), "DONE")?;
        out.lock().flush()?;
        // Keep `comm` alive (peers may still be finishing) until the parent says EXIT.
        let _keep = comm;
        child::park()
    }
}

mod tcp_worker {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    pub(crate) fn run(args: &[String]) -> Result<()> {
        let a = child::parse(args)?;
        let stdin = child::link(a.deadline);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        println!("PORT {port}");
        let peers = stdin
            .recv_timeout(Duration::from_secs(60))
            .context("no PEERS line from the parent")?;
        let ports: Vec<u16> = peers
            .strip_prefix("PEERS ")
            .ok_or_else(|| anyhow!("expected PEERS, got {peers:?}"))?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("PEERS line")?;
        ensure!(ports.len() == a.world, "PEERS has {} ports", ports.len());
        let next = ports[(a.rank + 1) % a.world];

        // The same runtime shape as a pccl communicator (multi-thread, 2 workers by default).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads.unwrap_or(2))
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener)?;
            let dial = async {
                let until = Instant::now() + Duration::from_secs(30);
                loop {
                    match TcpStream::connect(("127.0.0.1", next)).await {
                        Ok(s) => return Ok::<_, anyhow::Error>(s),
                        Err(e) if Instant::now() >= until => return Err(e.into()),
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            };
            let accept = async { Ok::<_, anyhow::Error>(listener.accept().await?.0) };
            let (out, inc) = tokio::time::timeout(Duration::from_secs(30), async {
                tokio::try_join!(dial, accept)
            })
            .await
            .context("ring connect timed out")??;
            out.set_nodelay(true)?;
            inc.set_nodelay(true)?;
            let mut out = Some(out);
            let mut inc = inc;
            let stdout = std::io::stdout();
            for &bytes in &a.sizes {
                let mut sbuf = Some(vec![a.rank as u8; bytes]);
                let mut rbuf = vec![0u8; bytes];
                for k in 0..a.warmup + a.iters {
                    let t0 = Instant::now();
                    let (mut o, s) = (out.take().expect("present"), sbuf.take().expect("present"));
                    let send = tokio::spawn(async move {
                        let r = o.write_all(&s).await;
                        r.map(|()| (o, s))
                    });
                    inc.read_exact(&mut rbuf).await.context("ring receive")?;
                    let (o, s) = send.await?.context("ring send")?;
                    let dt = t0.elapsed();
                    out = Some(o);
                    sbuf = Some(s);
                    if k >= a.warmup {
                        writeln!(
                            stdout.lock(),
                            "T {bytes} {} {}",
                            k - a.warmup,
                            dt.as_nanos()
                        )?;
                    }
                }
            }
            writeln!(stdout.lock(), "DONE")?;
            stdout.lock().flush()?;
            Ok::<_, anyhow::Error>(())
        })?;
        child::park()
    }
}
