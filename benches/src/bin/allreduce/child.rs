//! What the worker kinds share, child side: their arguments, the link to the parent
//! (stdin: `EXIT` or EOF ends the process), the watchdog and, for the two TCP ring
//! ceilings, learning the ring successor's port.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::parse_list;

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

/// Ring ceilings: announces `PORT port` (this worker's listener), then waits (bounded)
/// for the parent's `PEERS p0 p1 ...` and returns the port of rank `rank + 1`.
pub(crate) fn ring_successor(stdin: &mpsc::Receiver<String>, a: &Args, port: u16) -> Result<u16> {
    let out = std::io::stdout();
    writeln!(out.lock(), "PORT {port}")?;
    out.lock().flush()?;
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
    Ok(ports[(a.rank + 1) % a.world])
}

/// After `DONE`: idle until the parent's `EXIT` (handled by the stdin thread).
pub(crate) fn park() -> ! {
    loop {
        thread::park();
    }
}
