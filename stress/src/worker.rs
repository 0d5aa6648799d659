//! The peer worker (`pccl-stress --worker`): a DiLoCo-like loop on the pccl Rust API.
//!
//! Per step: admit pending peers (`are_peers_pending` → `update_topology`), sync the
//! shared state (the step number lives in it, so newcomers adopt the run's step), run
//! `concurrent` all-reduces at once with retry, check every result, fold one result into
//! the state and advance the revision. One `STEP {json}` line per step goes to stdout.
//!
//! Inputs (f32, small integers, so every summation order gives the same bits): for peer
//! slot `s`, element 0 is 1, element 1 is `s + 1`, element `e ≥ 2` is
//! `base(step, tag, e) + (s + 1)·m(e)`. The result is therefore `W` at 0, `K = Σ(s + 1)`
//! over the peers that took part at 1, and `W·base + K·m(e)` elsewhere: the worker checks
//! every element, the harness checks `W` and `K` against who took part.

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use pccl::{
    Attribute, Communicator, CommunicatorConfig, DataType, Error, OwnedBuffers, Quantization,
    QuantizationAlgorithm, ReduceDescriptor, ReduceOp, SharedState, SyncStrategy, TensorInfo,
};
use serde::{Deserialize, Serialize};

/// Worker settings, passed on the command line by the harness.
#[derive(Clone, Debug, Default)]
pub(crate) struct Args {
    pub(crate) master: Option<SocketAddr>,
    pub(crate) slot: u32,
    pub(crate) count: usize,
    pub(crate) concurrent: usize,
    pub(crate) state_elems: usize,
    pub(crate) pool: usize,
    pub(crate) api: String,
    pub(crate) bind: Option<IpAddr>,
    pub(crate) slice_bytes: usize,
    pub(crate) step_pause_ms: u64,
    /// Odd tags travel quantized (f16, zero-point-scale), see `weight`.
    pub(crate) quantize: bool,
    /// Loopback fallback cap of this peer, bytes/s (0: none), see `pace.rs`.
    pub(crate) pace: u64,
    /// Only so the harness can find us in /proc.
    pub(crate) run_id: String,
}

impl Args {
    pub(crate) fn parse(args: &[String]) -> Result<Self> {
        let mut a = Self {
            count: 1 << 16,
            concurrent: 4,
            pool: 1,
            api: "mixed".into(),
            ..Self::default()
        };
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let mut v = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| anyhow!("{k} needs a value"))
            };
            match k.as_str() {
                "--worker" => {}
                "--master" => a.master = Some(v()?.parse()?),
                "--slot" => a.slot = v()?.parse()?,
                "--count" => a.count = v()?.parse()?,
                "--concurrent" => a.concurrent = v()?.parse()?,
                "--state-elems" => a.state_elems = v()?.parse()?,
                "--pool" => a.pool = v()?.parse()?,
                "--api" => a.api = v()?,
                "--bind" => a.bind = Some(v()?.parse()?),
                "--slice-bytes" => a.slice_bytes = v()?.parse()?,
                "--step-pause-ms" => a.step_pause_ms = v()?.parse()?,
                "--pace" => a.pace = v()?.parse()?,
                "--quantize" => a.quantize = v()? == "true",
                "--run-id" => a.run_id = v()?,
                _ => bail!("worker: unknown argument {k}"),
            }
        }
        Ok(a)
    }

    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut v = vec!["--worker".to_string()];
        let mut kv = |k: &str, val: String| {
            v.push(k.into());
            v.push(val);
        };
        if let Some(m) = self.master {
            kv("--master", m.to_string());
        }
        kv("--slot", self.slot.to_string());
        kv("--count", self.count.to_string());
        kv("--concurrent", self.concurrent.to_string());
        kv("--state-elems", self.state_elems.to_string());
        kv("--pool", self.pool.to_string());
        kv("--api", self.api.clone());
        if let Some(b) = self.bind {
            kv("--bind", b.to_string());
        }
        kv("--slice-bytes", self.slice_bytes.to_string());
        kv("--step-pause-ms", self.step_pause_ms.to_string());
        kv("--pace", self.pace.to_string());
        kv("--quantize", self.quantize.to_string());
        kv("--run-id", self.run_id.clone());
        v
    }
}

/// One op's outcome in a step line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct OpLine {
    pub(crate) tag: u64,
    /// Peers that took part (element 0 of the result).
    pub(crate) w: u32,
    /// Σ(slot + 1) over them (element 1).
    pub(crate) k: u64,
    pub(crate) crc: u32,
    /// The op travelled quantized (its K uses the quantized weights).
    #[serde(default)]
    pub(crate) q: bool,
}

/// The line a worker prints per completed step (`STEP {json}`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StepLine {
    pub(crate) slot: u32,
    pub(crate) step: u64,
    /// Group world size when the ops started.
    pub(crate) world: u32,
    pub(crate) ops: Vec<OpLine>,
    /// Hash of the shared state right after this step's sync.
    pub(crate) state: u64,
    pub(crate) revision: u64,
    /// Bytes the sync received (a newcomer gets the whole state).
    pub(crate) sync_rx: u64,
    pub(crate) api: String,
    /// Op attempts that failed (RankConnectionLost) and were retried.
    pub(crate) failed_ops: u32,
    /// Per recovered op: start of its first failed attempt to success, milliseconds.
    pub(crate) recovery_ms: Vec<f64>,
    /// Time of the op phase and of the whole step.
    pub(crate) ops_ms: f64,
    pub(crate) step_ms: f64,
    /// Every element matched its expected value.
    pub(crate) ok: bool,
}

fn base(step: u64, tag: u64, e: usize) -> f32 {
    ((step.wrapping_mul(31) + tag * 17 + e as u64) % 97) as f32
}

fn mult(e: usize) -> f32 {
    (1 + e % 5) as f32
}

/// A slot's weight in K. Quantized ops use `slot % 8 + 1`: then every partial sum of up to
/// 15 peers is an integer ≤ 2040, exact in f16, and zero-point-scale to f16 (a power-of-two
/// scale) is lossless, so the result is still known exactly.
pub(crate) fn weight(slot: u32, quantized: bool) -> u64 {
    if quantized {
        u64::from(slot % 8) + 1
    } else {
        u64::from(slot) + 1
    }
}

/// This peer's input for (step, tag).
pub(crate) fn input(step: u64, tag: u64, slot: u32, count: usize, quantized: bool) -> Vec<f32> {
    let s = weight(slot, quantized) as f32;
    (0..count)
        .map(|e| match e {
            0 => 1.0,
            1 => s,
            _ => base(step, tag, e) + s * mult(e),
        })
        .collect()
}

/// Checks a result; returns (W, K) when every element is what W and K imply.
pub(crate) fn verify(step: u64, tag: u64, r: &[f32]) -> (u32, u64, bool) {
    let (w, k) = (r[0], r[1]);
    let ok = w.fract() == 0.0
        && k.fract() == 0.0
        && w >= 1.0
        && r.iter()
            .enumerate()
            .skip(2)
            .all(|(e, x)| *x == w * base(step, tag, e) + k * mult(e));
    (w as u32, k as u64, ok)
}

/// Set by SIGTERM or a `leave` line on stdin: close at the next step boundary.
fn watch_parent(leave: Arc<AtomicBool>) {
    let l = leave.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(s) if s.trim() == "leave" => l.store(true, Ordering::SeqCst),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // The harness is gone: never outlive it.
        std::process::exit(3);
    });
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                term.recv().await;
                leave.store(true, Ordering::SeqCst);
            }
        });
    });
}

/// Retries `f` while it fails with a retryable error, at most `limit` long.
fn retry<T>(what: &str, limit: Duration, mut f: impl FnMut() -> pccl::Result<T>) -> Result<T> {
    let end = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e @ (Error::UpdateTopologyFailed(_) | Error::RankConnectionLost { .. }))
                if Instant::now() < end =>
            {
                eprintln!("{what} failed, retrying: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(anyhow!("{what}: {e}")),
        }
    }
}

struct OpsOutcome {
    results: Vec<Vec<u8>>,
    failed: u32,
    recovery_ms: Vec<f64>,
}

/// `concurrent` async all-reduces; failed ones are retried together, in tag order, on
/// the new ring. `None`: fewer than two peers are left.
fn run_async(comm: &Communicator, inputs: &[Vec<f32>], q: bool) -> Result<Option<OpsOutcome>> {
    let mut results: Vec<Option<Vec<u8>>> = vec![None; inputs.len()];
    let mut first_fail: Vec<Option<Instant>> = vec![None; inputs.len()];
    let mut failed = 0;
    let mut recovery_ms = Vec::new();
    let end = Instant::now() + Duration::from_secs(600);
    loop {
        let todo: Vec<usize> = (0..inputs.len())
            .filter(|i| results[*i].is_none())
            .collect();
        if todo.is_empty() {
            break;
        }
        if Instant::now() > end {
            bail!("ops did not complete in 600 s");
        }
        let attempt = Instant::now();
        let mut handles = Vec::new();
        for &i in &todo {
            let d = desc(inputs[i].len(), i as u64, q);
            match comm.all_reduce_async(OwnedBuffers::new(&inputs[i]), d) {
                Ok(h) => handles.push((i, h)),
                Err(Error::TooFewPeers) => return Ok(None),
                Err(e) => bail!("starting op {i}: {e}"),
            }
        }
        let mut alone = false;
        for (i, h) in handles {
            let (bufs, r) = h.wait();
            match r {
                Ok(_) => {
                    if let Some(t) = first_fail[i] {
                        recovery_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    results[i] = Some(bufs.recv);
                }
                Err(Error::RankConnectionLost { .. }) => {
                    failed += 1;
                    // Recovery counts from the start of the failed attempt: it includes
                    // the time to notice the loss (a heartbeat timeout for a freeze).
                    first_fail[i].get_or_insert(attempt);
                }
                Err(Error::TooFewPeers) => alone = true,
                Err(e) => bail!("op {i}: {e}"),
            }
        }
        if alone {
            return Ok(None);
        }
        if comm.attribute(Attribute::PeerGroupWorldSize)? < 2 {
            return Ok(None);
        }
    }
    // The loop ends only when every op has its result; an empty stand-in would pass as a
    // result the checks then trip over, so a missing one is an error.
    let results = results.into_iter().collect::<Option<Vec<_>>>();
    Ok(Some(OpsOutcome {
        results: results.context("an op ended without a result")?,
        failed,
        recovery_ms,
    }))
}

/// The same ops through `all_reduce_multiple_with_retry` (retries are inside the library).
fn run_multiple(comm: &Communicator, inputs: &[Vec<f32>], q: bool) -> Result<Option<OpsOutcome>> {
    let mut ops: Vec<(OwnedBuffers, ReduceDescriptor)> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| (OwnedBuffers::new(x), desc(x.len(), i as u64, q)))
        .collect();
    match comm.all_reduce_multiple_with_retry(&mut ops, inputs.len()) {
        Ok(_) => Ok(Some(OpsOutcome {
            results: ops.into_iter().map(|(b, _)| b.recv).collect(),
            failed: 0,
            recovery_ms: Vec::new(),
        })),
        Err(Error::TooFewPeers) => Ok(None),
        Err(e) => bail!("all_reduce_multiple_with_retry: {e}"),
    }
}

/// The ring this peer runs on, as the harness's strangers aim at it: printed as a `TOPO`
/// line whenever the epoch or the ring changes (ids in full hex).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TopoLine {
    pub(crate) slot: u32,
    pub(crate) id: String,
    pub(crate) port: u16,
    pub(crate) epoch: u64,
    pub(crate) pred: Option<String>,
    pub(crate) members: Vec<String>,
    /// The step this peer was about to run when it saw this ring.
    pub(crate) step: u64,
}

pub(crate) fn hex_id(id: pccl::PeerId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_topology(
    comm: &Communicator,
    slot: u32,
    step: u64,
    seen: &mut Option<(u64, Vec<pccl::PeerId>)>,
    out: &mut impl Write,
) -> Result<()> {
    let t = comm.topology()?;
    let me = comm.id();
    let Some(mine) = t.ring.iter().find(|p| p.id == me) else {
        return Ok(());
    };
    let ring: Vec<&pccl::PeerEntry> = t.group_ring(mine.group);
    let epoch = t.group_epoch(mine.group).unwrap_or(0);
    let ids: Vec<pccl::PeerId> = ring.iter().map(|p| p.id).collect();
    if seen.as_ref() == Some(&(epoch, ids.clone())) {
        return Ok(());
    }
    let pos = ids.iter().position(|i| *i == me).unwrap_or(0);
    let line = TopoLine {
        slot,
        id: hex_id(me),
        port: mine.p2p_addr.port(),
        epoch,
        pred: (ids.len() >= 2).then(|| hex_id(ids[(pos + ids.len() - 1) % ids.len()])),
        members: ids.iter().map(|i| hex_id(*i)).collect(),
        step,
    };
    writeln!(out, "TOPO {}", serde_json::to_string(&line)?)?;
    out.flush()?;
    *seen = Some((epoch, ids));
    Ok(())
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let a = Args::parse(args)?;
    let leave = Arc::new(AtomicBool::new(false));
    watch_parent(leave.clone());
    let mut cfg = CommunicatorConfig::new(a.master.context("--master is required")?);
    cfg.pool_size = a.pool;
    cfg.p2p_port = 0;
    if let Some(b) = a.bind {
        cfg.bind_ip = b;
    }
    if a.slice_bytes > 0 {
        cfg.slice_bytes = a.slice_bytes;
    }
    // Authenticated / encrypted runs: the harness passes the run secret in the environment.
    let security = pccl::secure::EnvSecurity::from_env()?;
    (cfg.secret, cfg.encrypt) = (security.secret, security.encrypt);
    let comm = Communicator::new(cfg)?;
    // A newcomer is turned away when its proposal aborts (docs/PROTOCOL.md §3.3): a member
    // died meanwhile, or one of the new ring's links could not be dialled (a stranger
    // holding a listener's pending slots). It asks again, as an application would.
    let mut tries = 1u32;
    let end = Instant::now() + Duration::from_secs(120);
    while let Err(e) = comm.connect() {
        if matches!(e, Error::InvalidUsage(_)) || Instant::now() >= end {
            return Err(anyhow!("connect: {e}"));
        }
        eprintln!("connect failed, asking again: {e}");
        tries += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "JOINED {{\"slot\":{},\"id\":\"{}\",\"tries\":{tries}}}",
        a.slot,
        comm.id()
    )?;
    out.flush()?;
    pace(&a);
    // Newcomers start from their own content (differs per slot), so they never out-vote
    // the run's state; the tie-break goes to the higher revision the run presents.
    let mut weights: Vec<f32> = vec![a.slot as f32; a.state_elems.max(1)];
    let mut stepv = [0u64];
    let mut revision = 0u64;
    let joint = Duration::from_secs(120);
    let mut ring_seen = None;
    loop {
        print_topology(&comm, a.slot, stepv[0], &mut ring_seen, &mut out)?;
        if leave.load(Ordering::SeqCst) {
            comm.close();
            writeln!(out, "LEFT {{\"slot\":{}}}", a.slot)?;
            out.flush()?;
            return Ok(());
        }
        let t0 = Instant::now();
        // A newcomer returns from `connect` where the accepted peers return from
        // `update_topology`: so the loop starts with the sync and admits at its end.
        let mut sync_failures = 0;
        let t_sync = Instant::now();
        let (rev, rx) = retry("sync_shared_state", joint, || {
            let mut st = SharedState {
                revision,
                tensors: vec![
                    TensorInfo::new("step", &mut stepv),
                    TensorInfo::new("weights", &mut weights),
                ],
            };
            let r = comm.sync_shared_state(&mut st, SyncStrategy::EnforcePopular);
            if r.is_err() {
                sync_failures += 1;
            }
            r.map(|info| (st.revision, info.rx_bytes))
        })?;
        revision = rev;
        // A failed sync is a failed op too: time it from its first attempt.
        let sync_recovery = (sync_failures > 0).then(|| t_sync.elapsed().as_secs_f64() * 1e3);
        let step = stepv[0];
        inject_fault(a.slot, step, None, &mut weights);
        let state = {
            let mut h = pccl::tensor_hash(bytemuck::cast_slice(&weights)) as u64;
            h ^= step.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h
        };
        let world = comm.attribute(Attribute::PeerGroupWorldSize)? as u32;
        let inputs: Vec<Vec<f32>> = (0..a.concurrent as u64)
            .map(|t| input(step, t, a.slot, a.count, quantized(&a, t)))
            .collect();
        let t_ops = Instant::now();
        let use_multiple = match a.api.as_str() {
            "multiple" => true,
            "async" => false,
            _ => step % 2 == 1,
        };
        let outcome = if world < 2 {
            None
        } else if use_multiple {
            run_multiple(&comm, &inputs, a.quantize)?
        } else {
            run_async(&comm, &inputs, a.quantize)?
        };
        let ops_ms = t_ops.elapsed().as_secs_f64() * 1e3;
        // Next sync presents last + 1 (the revision rule).
        revision += 1;
        let Some(mut o) = outcome else {
            std::thread::sleep(Duration::from_millis(50));
            admit(&comm, joint)?;
            pace(&a);
            continue;
        };
        inject_fault(a.slot, step, Some(&mut o.results), &mut []);
        let mut ok = true;
        let mut ops = Vec::new();
        for (t, bytes) in o.results.iter().enumerate() {
            let r: &[f32] = bytemuck::cast_slice(bytes);
            let (w, k, good) = verify(step, t as u64, r);
            ok &= good;
            ops.push(OpLine {
                tag: t as u64,
                w,
                k,
                crc: crc32fast::hash(bytes),
                q: quantized(&a, t as u64),
            });
        }
        let r0: &[f32] = bytemuck::cast_slice(&o.results[0]);
        for (e, x) in weights.iter_mut().enumerate() {
            *x = *x * 0.5 + r0[e % r0.len()];
        }
        stepv[0] = step + 1;
        let line = StepLine {
            slot: a.slot,
            step,
            world,
            ops,
            state,
            revision: rev,
            sync_rx: rx,
            api: if use_multiple { "multiple" } else { "async" }.into(),
            failed_ops: o.failed + sync_failures,
            recovery_ms: o.recovery_ms.into_iter().chain(sync_recovery).collect(),
            ops_ms,
            step_ms: t0.elapsed().as_secs_f64() * 1e3,
            ok,
        };
        writeln!(out, "STEP {}", serde_json::to_string(&line)?)?;
        out.flush()?;
        if !ok {
            bail!("wrong all-reduce result at step {step}");
        }
        if a.step_pause_ms > 0 {
            std::thread::sleep(Duration::from_millis(a.step_pause_ms));
        }
        admit(&comm, joint)?;
        pace(&a);
    }
}

/// Self-test of the checks: `PCCL_STRESS_FAULT=result` flips a bit of slot 1's result at
/// step 30, `=state` perturbs slot 1's shared state right after that step's sync (the next
/// sync repairs it: the popular content wins); the run must then fail.
fn inject_fault(slot: u32, step: u64, results: Option<&mut Vec<Vec<u8>>>, weights: &mut [f32]) {
    if slot != 1 || step != 30 {
        return;
    }
    match (std::env::var("PCCL_STRESS_FAULT").as_deref(), results) {
        (Ok("result"), Some(r)) => r[0][100] ^= 1,
        (Ok("state"), None) => weights[0] += 1.0,
        _ => {}
    }
}

fn quantized(a: &Args, tag: u64) -> bool {
    a.quantize && tag % 2 == 1
}

/// The descriptor of op `tag`.
fn desc(count: usize, tag: u64, quantize: bool) -> ReduceDescriptor {
    let d = ReduceDescriptor::new(count, DataType::F32, ReduceOp::Sum).with_tag(tag);
    if quantize && tag % 2 == 1 {
        d.with_quantization(Quantization::new(
            QuantizationAlgorithm::ZeroPointScale,
            DataType::F16,
        ))
    } else {
        d
    }
}

/// Re-applies the loopback cap to sockets opened since (pool connections per topology).
fn pace(a: &Args) {
    if a.pace > 0 {
        crate::pace::pace_all_sockets(a.pace / a.pool.max(1) as u64);
    }
}

/// Admits waiting peers (joint calls of every accepted peer).
fn admit(comm: &Communicator, limit: Duration) -> Result<()> {
    if retry("are_peers_pending", limit, || comm.are_peers_pending())? {
        retry("update_topology", limit, || comm.update_topology())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_sum_is_recognised() {
        let (step, tag, n) = (12, 3, 1000);
        let slots = [0u32, 4, 9];
        let mut sum = vec![0f32; n];
        for s in slots {
            for (a, b) in sum.iter_mut().zip(input(step, tag, s, n, false)) {
                *a += b;
            }
        }
        assert_eq!(verify(step, tag, &sum), (3, 1 + 5 + 10, true));
        sum[500] += 1.0;
        assert!(!verify(step, tag, &sum).2);
        // Another step's or tag's data is caught.
        let other: Vec<f32> = input(step + 1, tag, 0, n, false);
        assert!(!verify(step, tag, &other).2);
    }
}
