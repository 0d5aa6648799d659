//! `pccl-peer`: a training-loop stand-in used by the demo, the churn tests and the stress
//! harness. Each step it agrees on the step number with its peers, all-reduces a tensor
//! whose values are a known function of (step, element), checks the result against the
//! expected sum, and prints one line:
//!
//! `step S world W crc C ok B ms T retries R`
//!
//! where C is the CRC32 of the result bytes, so a parent process can compare peers bit for
//! bit. Between steps it admits waiting peers (`are_peers_pending` → `update_topology`).
//!
//! With `--state-mb M` it also keeps an M MiB shared state that each step folds the
//! all-reduce result into (the same on every peer, so it stays bit-identical), syncs it at
//! the start of every step (newcomers receive it) and appends `state H rx N` to the line:
//! the state's hash and the bytes the sync received.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pccl::{
    Communicator, CommunicatorConfig, Error, ReduceOp, SharedState, SyncStrategy, TensorInfo,
};

const USAGE: &str = "usage: pccl-peer --master ADDR [--count N] [--steps S] [--pool P] [--group G]
                 [--bind IP] [--slice-bytes B] [--state-mb M]
The run secret comes from PCCL_RUN_SECRET or PCCL_RUN_SECRET_FILE, and PCCL_ENCRYPT=1
encrypts payloads (SECURITY.md section 6).";

struct Args {
    config: CommunicatorConfig,
    count: usize,
    steps: u64,
    state_mb: usize,
}

fn parse() -> Result<Args, String> {
    let mut master = None;
    let mut count = 1 << 20;
    let mut steps = u64::MAX;
    let mut pool = 1;
    let mut group = 0;
    let mut bind: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let mut slice = None;
    let mut state_mb = 0;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--master" => master = Some(val()?.parse().map_err(|e| format!("--master: {e}"))?),
            "--count" => count = val()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--steps" => steps = val()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--pool" => pool = val()?.parse().map_err(|e| format!("--pool: {e}"))?,
            "--group" => group = val()?.parse().map_err(|e| format!("--group: {e}"))?,
            "--bind" => bind = val()?.parse().map_err(|e| format!("--bind: {e}"))?,
            "--slice-bytes" => {
                slice = Some(val()?.parse().map_err(|e| format!("--slice-bytes: {e}"))?)
            }
            "--state-mb" => state_mb = val()?.parse().map_err(|e| format!("--state-mb: {e}"))?,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    let mut config = CommunicatorConfig::new(master.ok_or(USAGE)?);
    config.pool_size = pool;
    config.peer_group = group;
    config.bind_ip = bind;
    config.p2p_port = 0;
    if let Some(s) = slice {
        config.slice_bytes = s;
    }
    // The run secret and encryption, if any, come from PCCL_RUN_SECRET{,_FILE} and
    // PCCL_ENCRYPT (SECURITY.md §6), as pccl-demo --secret passes them.
    let security = pccl::secure::EnvSecurity::from_env().map_err(|e| e.to_string())?;
    (config.secret, config.encrypt) = (security.secret, security.encrypt);
    Ok(Args {
        config,
        count,
        steps,
        state_mb,
    })
}

/// The value every peer contributes at (step, element): small integers, so any
/// summation order gives the exact same float and the expected sum is known.
fn value(step: u64, i: usize) -> f32 {
    ((step.wrapping_mul(31) + i as u64) % 97) as f32
}

/// Retries an op while peers are lost; `None` when this peer is alone.
fn with_retry<T>(
    retries: &mut u32,
    mut op: impl FnMut() -> Result<T, Error>,
) -> Result<Option<T>, Error> {
    loop {
        match op() {
            Ok(v) => return Ok(Some(v)),
            Err(Error::RankConnectionLost { .. }) => *retries += 1,
            Err(Error::TooFewPeers) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

fn run(args: Args) -> Result<(), Error> {
    let comm = Communicator::new(args.config)?;
    comm.connect()?;
    eprintln!("peer {} accepted", comm.id());
    let mut out = std::io::stdout().lock();
    let mut step: u64 = 0;
    let mut send = vec![0f32; args.count];
    let mut recv = vec![0f32; args.count];
    let mut state = vec![0f32; args.state_mb << 18];
    let mut revision = 0u64;
    while step < args.steps {
        let t0 = Instant::now();
        let mut retries = 0;
        let mut synced = 0;
        if !state.is_empty() {
            // A failed sync leaves the revision as it was; retry it on the new ring.
            let info = loop {
                let mut st = SharedState {
                    revision,
                    tensors: vec![TensorInfo::new("state", &mut state)],
                };
                match comm.sync_shared_state(&mut st, SyncStrategy::EnforcePopular) {
                    Ok(info) => {
                        revision = st.revision;
                        break info;
                    }
                    Err(Error::RankConnectionLost { .. }) => retries += 1,
                    Err(e) => return Err(e),
                }
            };
            synced = info.rx_bytes;
        }
        // Agree on the step: a newcomer adopts the run's.
        let mut agreed = [0u64];
        if with_retry(&mut retries, || {
            comm.all_reduce(&[step], &mut agreed, ReduceOp::Max, 0)
        })?
        .is_some()
        {
            step = agreed[0];
        }
        for (i, v) in send.iter_mut().enumerate() {
            *v = value(step, i);
        }
        match with_retry(&mut retries, || {
            comm.all_reduce(&send, &mut recv, ReduceOp::Sum, 1)
        })? {
            Some(info) => {
                let w = info.local_world_size as f32;
                let ok = recv
                    .iter()
                    .enumerate()
                    .all(|(i, r)| *r == w * value(step, i));
                let crc = crc32fast::hash(bytemuck::cast_slice(&recv));
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                let mut line = format!(
                    "step {step} world {} crc {crc:08x} ok {ok} ms {ms:.2} retries {retries}",
                    info.local_world_size
                );
                if !state.is_empty() {
                    for (i, s) in state.iter_mut().enumerate() {
                        *s = *s * 0.5 + recv[i % recv.len()];
                    }
                    let h = pccl::tensor_hash(bytemuck::cast_slice(&state));
                    line += &format!(" state {:08x} rx {synced}", h as u32);
                }
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
                if !ok {
                    return Err(Error::Internal(format!(
                        "wrong all-reduce result at step {step}"
                    )));
                }
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
        step += 1;
        revision += 1;
        if comm.are_peers_pending()? {
            loop {
                match comm.update_topology() {
                    Ok(()) => break,
                    Err(Error::UpdateTopologyFailed(why)) => {
                        eprintln!("update failed, retrying: {why}")
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    pccl::init_logging();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pccl-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
