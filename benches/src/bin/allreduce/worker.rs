//! `--worker`: one rank of the pccl all-reduce. It connects, grows the run until it has
//! `world` peers, runs the warm-up and timed all-reduces per size, checks a sample of the
//! result, and prints per size its `T`, `CPU` and `RSS` lines (`meter.rs`) and `CRC bytes
//! crc`, then `DONE`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use benches::fmt_size;
use pccl::{Attribute, Communicator, CommunicatorConfig, Error, ReduceOp};

use crate::child;
use crate::meter::SizeMeter;

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

/// Rank `rank`'s input of `count` elements.
pub(crate) fn inputs(rank: usize, count: usize) -> Vec<f32> {
    (0..count).map(|i| value(rank, i)).collect()
}

/// Checks a sample of an all-reduce's result over `n` ranks' [`inputs`] (sums of `n`
/// values in [-1, 1): f32 error far below 1e-5) and returns the result's crc32.
pub(crate) fn check_result(n: usize, bytes: usize, result: &[f32]) -> Result<u32> {
    let count = result.len();
    let step = (count / 4096).max(1);
    for i in (0..count).step_by(step).chain([count - 1]) {
        let want: f64 = (0..n).map(|r| f64::from(value(r, i))).sum();
        let got = f64::from(result[i]);
        ensure!(
            (got - want).abs() <= 1e-5,
            "wrong result at element {i} of {}: got {got}, want {want}",
            fmt_size(bytes)
        );
    }
    Ok(crc32fast::hash(bytemuck::cast_slice(result)))
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
    // Authenticated / encrypted modes: the parent passes the run secret in the environment.
    let security = pccl::secure::EnvSecurity::from_env()?;
    (cfg.secret, cfg.encrypt) = (security.secret, security.encrypt);
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
        let mut meter = SizeMeter::start(bytes);
        let send = inputs(a.rank, bytes / 4);
        let mut recv = vec![0f32; send.len()];
        for _ in 0..a.warmup {
            comm.all_reduce(&send, &mut recv, ReduceOp::Sum, tag)
                .context("warm-up all-reduce")?;
            tag += 1;
        }
        for k in 0..a.iters {
            let mark = SizeMeter::begin();
            comm.all_reduce(&send, &mut recv, ReduceOp::Sum, tag)
                .context("timed all-reduce")?;
            meter.end(mark, k)?;
            tag += 1;
        }
        let crc = check_result(n, bytes, &recv)?;
        writeln!(out.lock(), "CRC {bytes} {crc:08x}")?;
        meter.finish()?;
    }
    writeln!(out.lock(), "DONE")?;
    out.lock().flush()?;
    // Keep `comm` alive (peers may still be finishing) until the parent says EXIT.
    let _keep = comm;
    child::park()
}
