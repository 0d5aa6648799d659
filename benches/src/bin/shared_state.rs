//! Shared-state benchmark: hash speed on one core, a newcomer receiving a large state
//! (beside one loopback TCP stream's throughput measured in the same run), and a sync that
//! moves nothing over 4 peers.
//!
//! `cargo run --release -p benches --bin shared_state [-- --quick]`
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

    let master = MasterNode::start(MasterConfig::new("127.0.0.1:0".parse()?))?;

    // 2. A newcomer receives the state from one holder.
    let ceiling = loopback_stream(size)?;
    let comms = cluster(&master, 2);
    let mut bufs = [data.clone(), vec![1u8; size]];
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
    ensure!(bufs[0] == bufs[1], "the newcomer's state differs");
    let (t, rx) = out[1];
    ensure!(rx == size as u64, "newcomer received {rx} bytes");
    println!(
        "newcomer receives {} MiB: {:.3} s, {:.2} GB/s (one loopback TCP stream, same run: {:.2} GB/s)",
        size >> 20,
        t.as_secs_f64(),
        gbps(size, t),
        gbps(size, ceiling)
    );
    drop(comms);

    // 3. A sync that moves nothing: 4 peers with equal state.
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
