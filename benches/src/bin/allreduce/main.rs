//! Ring all-reduce benchmark on loopback, one OS process per rank, beside gloo and a raw
//! TCP ring ceiling measured in the same run.
//!
//! ```text
//! cargo run --release -p benches --bin allreduce [-- --worlds 2,3,4 --sizes 1M,16M,128M
//!     --iters 10 --warmup 2 --pool 1 --no-ceiling --no-gloo --gloo --python PATH --quick
//!     --modes plain,authenticated,encrypted | --secret | --encrypt]
//! ```
//!
//! Modes (SECURITY.md §6): `plain` (no run secret), `authenticated` (a run secret: every
//! connection authenticated, every frame MACed) and `encrypted` (payloads encrypted too);
//! `http` is plain with the master's HTTP endpoints on and scraped (README, "Watching a
//! run"), to show they cost the data path nothing.
//! One secret is generated per run; each mode of a world gets a fresh master and workers,
//! and the table's `x plain` column puts the modes side by side.
//!
//! The parent starts a [`MasterNode`](pccl::MasterNode) in-process on `127.0.0.1:0` and re-executes this
//! binary `n` times in the hidden `--worker` mode. Workers connect, grow the run until it
//! has `n` peers, then per size run warm-up all-reduces followed by the timed ones (f32,
//! sum). The all-reduce itself is the barrier between iterations. Each worker reports per
//! size one duration per timed iteration, its CPU time over the timed iterations, its peak
//! RSS and the crc32 of its result buffer (`meter.rs`).
//!
//! Reported time: for every iteration the **maximum over workers** (the op is done when the
//! slowest rank is done), then the **median over iterations**. `algbw = bytes / time`,
//! `busbw = algbw * 2(n-1)/n`.
//!
//! In the same run, per world (issue #14's yardstick):
//! * `tcp ring (threads)`, the ceiling: `n` processes in the hidden `--thread-worker` mode,
//!   each with one blocking sender and one blocking receiver thread, streaming `bytes` to
//!   its ring successor over one 127.0.0.1 TCP connection with `TCP_NODELAY` in 4 MiB
//!   `send`/`recv` calls while receiving `bytes` from its predecessor, all `n` at once.
//!   Reported as per-stream GB/s; a ring all-reduce's busbw cannot exceed it.
//! * `tcp ring (tokio)`: the same ring on a tokio runtime shaped like a communicator's
//!   (`--tcp-worker`), to show what the runtime itself costs.
//! * `bare all-reduce` and `bare + crc32`: a hand-written ring all-reduce on blocking
//!   threads with nothing but the bytes and the additions (`--bare-worker`,
//!   `bare_worker.rs`), without and with checksums placed as pccl's: what a ring
//!   all-reduce over TCP reaches on this machine, so the distance to it is what pccl's own
//!   machinery costs.
//! * `gloo`: `n` Python processes running torch.distributed's gloo all-reduce on the same
//!   inputs (`gloo.rs`, `benches/gloo_worker.py`); skipped with a `SKIPPED: gloo:` line when
//!   the Python (`--python`, `$PCCL_BENCH_PYTHON`, the repository's `.venv`, `python3`)
//!   cannot import torch.
//!
//! Workers are killed and reaped on every exit path of the parent (a guard), exit on their
//! own when the parent goes away (stdin EOF) and carry a watchdog; every wait is bounded.
//!
//! This file is the command line and the order of the runs; `measure.rs` runs one world of
//! pccl or of a TCP ring, `gloo.rs` one of gloo, `reports.rs` reduces the workers' reports,
//! `table.rs` prints them, `workers.rs` owns the child processes, and `child.rs`,
//! `meter.rs`, `worker.rs`, `thread_worker.rs`, `tcp_worker.rs` and `bare_worker.rs` are
//! the child side.

mod bare_worker;
mod child;
mod gloo;
mod measure;
mod meter;
mod reports;
mod table;
mod tcp_worker;
mod thread_worker;
mod worker;
mod workers;

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use benches::{fmt_size, parse_size};

use measure::{Ceiling, ceiling_world, pccl_world};
use table::Impl;

const USAGE: &str = "\
usage: allreduce [--worlds 2,3,4] [--sizes 1M,16M,128M] [--iters K] [--warmup W]
                 [--pool N] [--threads N] [--slice BYTES] [--no-ceiling]
                 [--gloo | --no-gloo] [--python PATH] [--quick]

  --worlds     comma-separated world sizes (processes), each >= 2   [2,3,4]
  --sizes      comma-separated buffer sizes in bytes (K/M/G suffixes, multiple of 4)
                                                                    [1M,16M,128M]
  --iters      timed iterations per size                            [10]
  --warmup     untimed iterations per size before the timed ones    [2]
  --pool       p2p_connection_pool_size (TCP connections per ring neighbour) [1]
  --threads    worker_threads of each communicator's runtime     [pccl default: 2]
  --slice      slice_bytes, the pipeline slice size (K/M suffixes) [pccl default: 1M]
  --no-ceiling skip the raw TCP rings (both ceilings and the bare all-reduce)
  --gloo       run gloo (the default except with --quick)
  --no-gloo    skip gloo
  --python     the Python whose torch runs gloo [$PCCL_BENCH_PYTHON, else the
               repository's .venv/bin/python, else python3]
  --modes      comma-separated: plain, authenticated (auth), encrypted (encrypt),
               http (plain, the master serving /metrics, /api/run and the dashboard,
               both endpoints scraped every --scrape-ms)     [plain]
  --scrape-ms  the http mode's scrape interval in ms (the dashboard polls every 1000) [250]
  --secret     same as --modes authenticated
  --encrypt    same as --modes encrypted
  --quick      tiny run for CI: worlds 2,3, sizes 4K,256K, 3 iters, 1 warm-up, no gloo
";

/// How the run is protected (SECURITY.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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
    /// The http mode's interval between two scrapes of both endpoints.
    pub(crate) scrape: Duration,
    pub(crate) gloo: bool,
    pub(crate) python: Option<String>,
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
            scrape: Duration::from_millis(250),
            gloo: true,
            python: None,
            modes: vec![Mode::Plain],
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--worker") => worker::run(&args[1..]),
        Some("--tcp-worker") => tcp_worker::run(&args[1..]),
        Some("--thread-worker") => thread_worker::run(&args[1..]),
        Some("--bare-worker") => bare_worker::run(&args[1..]),
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
    let mut gloo = None;
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
            "--scrape-ms" => {
                o.scrape = Duration::from_millis(val()?.parse().context("--scrape-ms")?)
            }
            "--gloo" => gloo = Some(true),
            "--no-gloo" => gloo = Some(false),
            "--python" => o.python = Some(val()?.clone()),
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
        // CI time must not grow: gloo only when asked for.
        o.gloo = false;
    }
    o.gloo = gloo.unwrap_or(o.gloo);
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

/// With two ranks each element is `a + b`, which rounds the same in either order, so
/// every all-reduce's result (pccl's, the bare ring's) must be bit-identical to gloo's: a
/// check of all of them and of the inputs.
fn same_as_gloo(n: usize, world: &table::World) -> Result<()> {
    let Some(gloo) = world.get(&Impl::Gloo).filter(|_| n == 2) else {
        return Ok(());
    };
    for (imp, per) in world.iter().filter(|(i, _)| **i != Impl::Gloo) {
        for (bytes, m) in per.iter().filter(|(_, m)| m.crc.is_some()) {
            let want = gloo.get(bytes).and_then(|g| g.crc);
            ensure!(
                m.crc == want,
                "PARITY FAILURE: world 2, {}: {imp:?} crc {:08x?} != gloo crc {want:08x?}",
                fmt_size(*bytes),
                m.crc
            );
        }
    }
    Ok(())
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
        "time = median over iterations of the slowest rank's time; GB/s = 1e9 B/s; modes: {}",
        o.modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    table::print_header();
    let python = gloo::python(o.python.as_deref());
    if !o.gloo {
        println!("gloo: off (--no-gloo, or --quick without --gloo)");
    }
    let gloo = o.gloo
        && match gloo::probe(&python) {
            Ok(()) => {
                println!("gloo: torch from {}", python.display());
                true
            }
            Err(why) => {
                println!("SKIPPED: gloo: {why}");
                false
            }
        };
    let mut checked = 0;
    for &n in &o.worlds {
        let mut world = table::World::new();
        if o.ceiling {
            for (kind, imp) in [
                (Ceiling::Threads, Impl::Threads),
                (Ceiling::Tokio, Impl::Tokio),
                (
                    Ceiling::Bare { checksums: false },
                    Impl::Bare { checksums: false },
                ),
                (
                    Ceiling::Bare { checksums: true },
                    Impl::Bare { checksums: true },
                ),
            ] {
                let res = ceiling_world(&o, n, kind)
                    .with_context(|| format!("{kind:?} tcp ceiling, world {n}"))?;
                world.insert(imp, res);
            }
        }
        if gloo {
            let res = gloo::gloo_world(&o, n, &python)
                .with_context(|| format!("gloo all-reduce, world {n}"))?;
            checked += res.len();
            world.insert(Impl::Gloo, res);
        }
        for (i, &mode) in o.modes.iter().enumerate() {
            let res = pccl_world(&o, n, mode, &secret)
                .with_context(|| format!("all-reduce, world {n}, {}", mode.name()))?;
            checked += res.len();
            let pass = o.modes[..i].iter().filter(|m| **m == mode).count();
            world.insert(Impl::Pccl { pass, mode }, res);
        }
        same_as_gloo(n, &world)?;
        table::print_world(n, &o.sizes, o.iters, &world, o.modes.len() > 1);
    }
    println!();
    let vs_gloo = if gloo && o.worlds.contains(&2) {
        "; at world 2 pccl's and the bare ring's are gloo's"
    } else {
        ""
    };
    println!(
        "parity ok ({checked} all-reduce configurations: every rank's result has the same \
         crc32{vs_gloo})"
    );
    Ok(())
}
