//! Shared-state benchmark: hash speed on one core, a newcomer receiving a large state
//! (beside one loopback TCP stream's throughput measured in the same run), and a sync that
//! moves nothing over 4 peers.
//!
//! `cargo run --release -p benches --bin shared_state [-- --quick] [--modes plain,auth,encrypt]`
//!
//! `--modes` repeats the newcomer's transfer per mode (SECURITY.md §6): `plain` (no run
//! secret), `auth` (a run secret: every frame MACed) and `encrypt` (payloads encrypted
//! too), each with a fresh master, and prints the time the 2-peer run took to form (dials,
//! handshakes, the first topology update) beside it.
//!
//! Peers are communicators in this process talking over real loopback TCP; each has its own
//! runtime, so the transfer path is the same as between processes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use pccl::{
    Communicator, MasterConfig, MasterNode, SharedState, SyncStrategy, TensorInfo, tensor_hash,
};

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// One TCP stream over 127.0.0.1 carrying `bytes`, with the library's socket settings.
fn loopback_stream(bytes: usize) -> Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 8 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = s.read(&mut buf[..left.min(8 << 20)])?;
            ensure!(n > 0, "stream ended early");
            left -= n;
        }
        Ok(())
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let chunk = vec![7u8; 8 << 20];
    let t = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n])?;
        left -= n;
    }
    drop(s);
    reader.join().expect("reader thread")?;
    Ok(t.elapsed())
}

fn cluster(master: &MasterNode, n: usize) -> Vec<Communicator> {
    benches::loopback_cluster(master.local_addr(), n)
        .unwrap_or_else(|e| panic!("cannot form the cluster: {e}"))
}

/// Every peer syncs its own buffer; returns each peer's (elapsed, rx bytes).
fn sync_all(
    comms: &[Communicator],
    bufs: &mut [Vec<u8>],
    revision: u64,
) -> Result<Vec<(Duration, u64)>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .iter()
            .zip(bufs.iter_mut())
            .map(|(c, b)| {
                s.spawn(move || -> Result<(Duration, u64)> {
                    let mut st = SharedState {
                        revision,
                        tensors: vec![TensorInfo::new("weights", b.as_mut_slice())],
                    };
                    let t = Instant::now();
                    let info = c.sync_shared_state(&mut st, SyncStrategy::EnforcePopular)?;
                    Ok((t.elapsed(), info.rx_bytes))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("sync thread"))
            .collect()
    })
}

/// The `--modes` list (default: plain).
fn modes() -> Result<Vec<&'static str>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == "--modes") else {
        return Ok(vec!["plain"]);
    };
    let list = args.get(i + 1).context("--modes needs a list")?;
    list.split(',')
        .map(|m| match m.trim() {
            "plain" => Ok("plain"),
            "auth" | "authenticated" => Ok("auth"),
            "encrypt" | "encrypted" => Ok("encrypt"),
            other => anyhow::bail!("unknown mode {other:?} (plain, auth, encrypt)"),
        })
        .collect()
}

/// One holder (send-only) and one newcomer (receive-only) of `data` on a fresh master in
/// `mode`: the transfer's GB/s and how long the 2-peer run took to form.
fn newcomer(data: &[u8], mode: &'static str, secret: &str) -> Result<(f64, Duration)> {
    let size = data.len();
    let mut mcfg = MasterConfig::new("127.0.0.1:0".parse()?);
    let run_secret = match mode {
        "plain" => None,
        _ => Some(pccl::secure::RunSecret::new(secret).context("run secret")?),
    };
    let encrypt = mode == "encrypt";
    mcfg.secret = run_secret.clone();
    mcfg.encrypt = encrypt;
    let master = MasterNode::start(mcfg)?;
    let t = Instant::now();
    let comms = benches::loopback_cluster_with(master.local_addr(), 2, move |c| {
        c.secret = run_secret.clone();
        c.encrypt = encrypt;
    })?;
    let formed = t.elapsed();
    let mut bufs = [data.to_vec(), vec![1u8; size]];
    // The holder is send-only and the newcomer receive-only, so the holder's content is
    // the only candidate and all of it moves.
    let out = std::thread::scope(|s| -> Result<Vec<(Duration, u64)>> {
        let mut hs = Vec::new();
        for (i, (c, b)) in comms.iter().zip(bufs.iter_mut()).enumerate() {
            hs.push(s.spawn(move || -> Result<(Duration, u64)> {
                let mut st = SharedState {
                    revision: 1,
                    tensors: vec![TensorInfo::new("weights", b.as_mut_slice())],
                };
                let strategy = if i == 0 {
                    SyncStrategy::SendOnly
                } else {
                    SyncStrategy::ReceiveOnly
                };
                let t = Instant::now();
                let info = c.sync_shared_state(&mut st, strategy)?;
                Ok((t.elapsed(), info.rx_bytes))
            }));
        }
        hs.into_iter()
            .map(|h| h.join().expect("sync thread"))
            .collect()
    })?;
    ensure!(bufs[0] == bufs[1], "the newcomer's state differs ({mode})");
    let (t, rx) = out[1];
    ensure!(rx == size as u64, "newcomer received {rx} bytes ({mode})");
    Ok((gbps(size, t), formed))
}

fn main() -> Result<()> {
    pccl::init_logging();
    let quick = std::env::args().any(|a| a == "--quick" || a == "--test");
    let size: usize = if quick { 16 << 20 } else { 1 << 30 };
    println!("shared-state benchmark, state of {} MiB", size >> 20);

    // 1. Hash speed, one core.
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        std::hint::black_box(tensor_hash(std::hint::black_box(&data)));
        best = best.min(t.elapsed());
    }
    println!("hash (xxh3-128, one core): {:.1} GB/s", gbps(size, best));

    // 2. A newcomer receives the state from one holder, in each mode asked for.
    let ceiling = loopback_stream(size)?;
    let secret = pccl::secure::RunSecret::generate();
    let mut plain_rate = None;
    for mode in modes()? {
        let (gb, formed) = newcomer(&data, mode, &secret)?;
        let vs = plain_rate.map_or(String::new(), |p: f64| format!(", {:.2}x plain", gb / p));
        if mode == "plain" {
            plain_rate = Some(gb);
        }
        println!(
            "newcomer receives {} MiB ({mode}): {:.2} GB/s{vs} (one loopback TCP stream, same \
             run: {:.2} GB/s); the 2-peer run formed in {:.1} ms",
            size >> 20,
            gb,
            gbps(size, ceiling),
            formed.as_secs_f64() * 1e3
        );
    }

    // 3. A sync that moves nothing: 4 peers with equal state.
    let master = MasterNode::start(MasterConfig::new("127.0.0.1:0".parse()?))?;
    let comms = cluster(&master, 4);
    let mut bufs: Vec<Vec<u8>> = (0..4).map(|_| data.clone()).collect();
    let mut times = Vec::new();
    for rev in 1..=3 {
        let out = sync_all(&comms, &mut bufs, rev).context("no-op sync")?;
        ensure!(
            out.iter().all(|(_, rx)| *rx == 0),
            "a no-op sync moved bytes"
        );
        times.push(out.iter().map(|(t, _)| *t).max().expect("4 peers"));
    }
    times.sort();
    println!(
        "sync moving nothing, 4 peers x {} MiB: median {:.3} s (slowest peer)",
        size >> 20,
        times[1].as_secs_f64()
    );
    Ok(())
}
