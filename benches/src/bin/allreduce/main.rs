//! Ring all-reduce benchmark on loopback, one OS process per rank.
//!
//! ```text
//! cargo run --release -p benches --bin allreduce [-- --worlds 2,3,4 --sizes 1M,16M,128M
//!     --iters 10 --warmup 2 --pool 1 --no-ceiling --quick
//!     --modes plain,authenticated,encrypted | --secret | --encrypt]
//! ```
//!
//! Modes (SECURITY.md §6): `plain` (no run secret), `authenticated` (a run secret: every
//! connection authenticated, every frame MACed) and `encrypted` (payloads encrypted too);
//! `http` is plain with the master's HTTP endpoints on and scraped (README, "Watching a
//! run"), to show they cost the data path nothing.
//! One secret is generated per run; each mode of a world gets a fresh master and workers,
//! and the table's `mode` column and `x plain` ratio put the modes side by side.
//!
//! The parent starts a [`MasterNode`](pccl::MasterNode) in-process on `127.0.0.1:0` and re-executes this
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
//!
//! This file is the command line and the table; `measure.rs` runs one world (the pccl
//! all-reduce or the TCP ring) and reduces the workers' timings, `workers.rs` owns the
//! child processes, and `child.rs`, `worker.rs` and `tcp_worker.rs` are the child side.

mod child;
mod measure;
mod tcp_worker;
mod worker;
mod workers;

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use benches::{busbw_factor, fmt_size, gbps, parse_size};

use measure::{ceiling_world, pccl_world};

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
  --modes      comma-separated: plain, authenticated (auth), encrypted (encrypt),
               http (plain, the master serving /metrics, /api/run and the dashboard,
               both endpoints scraped 4 times a second)     [plain]
  --secret     same as --modes authenticated
  --encrypt    same as --modes encrypted
  --quick      tiny run for CI: worlds 2,3, sizes 4K,256K, 3 iters, 1 warm-up
";

/// How the run is protected (SECURITY.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Plain,
    Authenticated,
    Encrypted,
    /// Plain, with the master's HTTP endpoints on and scraped 4 times a second.
    Http,
}

impl Mode {
    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "plain" => Some(Self::Plain),
            "auth" | "authenticated" => Some(Self::Authenticated),
            "encrypt" | "encrypted" => Some(Self::Encrypted),
            "http" => Some(Self::Http),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Authenticated => "auth",
            Self::Encrypted => "encrypt",
            Self::Http => "http",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) worlds: Vec<usize>,
    pub(crate) sizes: Vec<usize>,
    pub(crate) iters: usize,
    pub(crate) warmup: usize,
    pub(crate) pool: usize,
    pub(crate) threads: Option<usize>,
    pub(crate) slice: Option<usize>,
    pub(crate) ceiling: bool,
    pub(crate) modes: Vec<Mode>,
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
            modes: vec![Mode::Plain],
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

pub(crate) fn parse_list<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
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
            "--modes" => o.modes = parse_list(val()?, Mode::parse)?,
            "--secret" => o.modes = vec![Mode::Authenticated],
            "--encrypt" => o.modes = vec![Mode::Encrypted],
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
    ensure!(!o.modes.is_empty(), "--modes needs at least one mode");
    ensure!((1..=1024).contains(&o.pool), "--pool must be 1..=1024");
    Ok(o)
}

struct Row {
    world: usize,
    mode: Mode,
    /// This row's time over the plain mode's, same world and size (when measured).
    vs_plain: Option<f64>,
    bytes: usize,
    time: Duration,
    ceiling: Option<Duration>,
    crc: u32,
}

fn parent(args: &[String]) -> Result<()> {
    let o = parse_opts(args)?;
    pccl::init_logging();
    // One fresh secret for the authenticated and encrypted modes; never printed.
    let secret = pccl::secure::RunSecret::generate();
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
         tcp ring = per-stream GB/s with all n streams at once; x plain = busbw over the \
         plain mode's (same world and size); modes: {}",
        o.modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!();
    println!(
        "{:>5} {:>8} {:>9} {:>11} {:>11} {:>11} {:>8} | {:>13} {:>9} | {:>8}",
        "world",
        "mode",
        "bytes",
        "median ms",
        "algbw GB/s",
        "busbw GB/s",
        "x plain",
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
        let mut plain = std::collections::BTreeMap::new();
        for &mode in &o.modes {
            let res = pccl_world(&o, n, mode, &secret)
                .with_context(|| format!("all-reduce, world {n}, {}", mode.name()))?;
            for (bytes, (time, crc)) in res {
                if mode == Mode::Plain {
                    plain.insert(bytes, time);
                }
                let row = Row {
                    world: n,
                    mode,
                    // Bandwidth ratio: plain time over this time.
                    vs_plain: plain
                        .get(&bytes)
                        .map(|p: &Duration| p.as_secs_f64() / time.as_secs_f64()),
                    bytes,
                    time,
                    ceiling: ceiling.as_ref().and_then(|c| c.get(&bytes).copied()),
                    crc,
                };
                print_row(&row);
                rows.push(row);
            }
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
    let vs = r.vs_plain.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
    println!(
        "{:>5} {:>8} {:>9} {:>11.3} {:>11.3} {:>11.3} {:>8} | {:>13} {:>9} | {:08x}",
        r.world,
        r.mode.name(),
        fmt_size(r.bytes),
        r.time.as_secs_f64() * 1e3,
        alg,
        bus,
        vs,
        tcp,
        ratio,
        r.crc
    );
    let _ = std::io::stdout().flush();
}
