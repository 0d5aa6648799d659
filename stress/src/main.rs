//! `pccl-stress`: the harness that proves pccl under abuse.
//!
//! It starts a master and N peer processes (this same binary re-executed with `--worker`),
//! plays a seeded schedule of joins, kill -9, SIGSTOP/SIGCONT, graceful leaves and (in
//! WAN mode) resets and silent partitions, checks every step on every peer, and ends with
//! a summary, a JSON report and an exit status that is non-zero on any violation, stall
//! or leaked process. See `STRESS.md`.
//!
//! ```text
//! pccl-stress --scenario stress/scenarios/ci-loopback.toml [--seed N] [--duration S]
//!             [--steps N] [--report FILE] [--loopback] [--secret] [--encrypt]
//! pccl-stress --cleanup                # remove every namespace a crashed WAN run left
//! pccl-stress --lfp [--peers 2] [--rtt-ms 80] [--pools 1,4,16,32] [--mib 128 | --kib K] [--master-rtt-ms MS]
//!             [--rate-mbit R] [--iters 3] [--warmup 2] [--tcp-secs 5] [--cc bbr] [--ssai]
//! ```

mod check;
mod lfp;
mod master;
mod nfq;
mod pace;
mod procs;
mod run;
mod scenario;
mod stranger;
mod wan;
mod worker;

use std::process::ExitCode;

use anyhow::{Result, anyhow};

const USAGE: &str = "usage: pccl-stress --scenario FILE [--seed N] [--duration S] [--steps N]
                   [--report FILE] [--loopback] [--max-violations N]
                   [--secret] [--encrypt]   (authenticated / encrypted run, a fresh
                                             secret per run; also scenario keys)
       pccl-stress --cleanup
       pccl-stress --lfp [--peers N] [--rtt-ms MS] [--pools 1,4,16,32] [--mib M | --kib K] [--master-rtt-ms MS]
                   [--rate-mbit R] [--iters N] [--warmup N] [--tcp-secs S] [--cc CC]
                   [--ssai]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let first = args.first().map(String::as_str).unwrap_or("");
    let r = match first {
        "--worker" => {
            pccl::init_logging();
            worker::run(&args).map(|()| 0)
        }
        "--master-proc" => master::master_proc(&args).map(|()| 0),
        "--delayd" => nfq::daemon(&args).map(|()| 0),
        "--cleanup" => wan::cleanup_all().map(|()| 0),
        "--lfp" => lfp::run(&args),
        "-h" | "--help" => {
            println!("{USAGE}");
            Ok(0)
        }
        _ => run::harness(&args),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("pccl-stress: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `--key value` from an argument list.
pub(crate) fn opt(args: &[String], key: &str) -> Option<String> {
    args.iter()
        .position(|a| a == key)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Parses `--key value` when present.
pub(crate) fn opt_parse<T: std::str::FromStr>(args: &[String], key: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    opt(args, key)
        .map(|v| v.parse::<T>().map_err(|e| anyhow!("{key} {v}: {e}")))
        .transpose()
}
