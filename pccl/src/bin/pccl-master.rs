//! `pccl-master --listen ADDR`: runs a pccl master until interrupted.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: pccl-master [--listen ADDR] [--heartbeat-timeout-ms MS] [OPTIONS]

Runs the master of a pccl run. Peers connect to it, are accepted into the ring,
and learn of each other's deaths through it. It carries no tensor data.

options:
  --listen ADDR               address to listen on (default 0.0.0.0:48148)
  --heartbeat-timeout-ms MS   a peer silent this long is dead (default 5000)

A peer that misses one of these bounds is evicted as if it had died; the others go on:
  --registration-timeout-ms MS         register this long after the hello (default 10000)
  --proposal-timeout-ms MS             answer a topology proposal (default 30000)
  --bandwidth-timeout-ms MS            report bandwidth tests (default 30000), plus
  --bandwidth-timeout-per-target-ms MS   this per link tested (default 1000)
  --sync-report-timeout-ms MS          join a shared-state sync after the first member
                                       (default 300000)
  --sync-transfer-timeout-ms MS        finish a shared-state sync (default 60000), plus
  --sync-transfer-min-rate BYTES_PER_S   the largest fetch at this rate (default 1048576)

  --max-unregistered-connections N     connections not yet registered, at most; beyond
                                       this new ones are closed at once (default 256)
  -h, --help                  this text

Logs go to stderr; set PCCL_LOG (error, warn, info, debug, trace) to choose the level.";

fn main() -> ExitCode {
    pccl::init_logging();
    let listen: SocketAddr = ([0, 0, 0, 0], pccl::DEFAULT_MASTER_PORT).into();
    let mut config = pccl::MasterConfig::new(listen);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let c = &mut config;
        let mut ms = |field: &mut Duration| {
            args.next()
                .and_then(|v| v.parse().ok())
                .map(|v| *field = Duration::from_millis(v))
        };
        let parsed = match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--listen" => args
                .next()
                .and_then(|v| v.parse().ok())
                .map(|v| c.listen = v),
            "--heartbeat-timeout-ms" => ms(&mut c.heartbeat_timeout),
            "--registration-timeout-ms" => ms(&mut c.registration_timeout),
            "--proposal-timeout-ms" => ms(&mut c.proposal_timeout),
            "--bandwidth-timeout-ms" => ms(&mut c.bandwidth_timeout),
            "--bandwidth-timeout-per-target-ms" => ms(&mut c.bandwidth_timeout_per_target),
            "--sync-report-timeout-ms" => ms(&mut c.sync_report_timeout),
            "--sync-transfer-timeout-ms" => ms(&mut c.sync_transfer_timeout),
            "--sync-transfer-min-rate" => args
                .next()
                .and_then(|v| v.parse().ok())
                .map(|v| c.sync_transfer_min_rate = v),
            "--max-unregistered-connections" => args
                .next()
                .and_then(|v| v.parse().ok())
                .map(|v| c.max_unregistered_connections = v),
            _ => None,
        };
        if parsed.is_none() {
            eprintln!("pccl-master: bad argument '{a}'\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let master = match pccl::MasterNode::start(config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("pccl-master: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("pccl-master listening on {}", master.local_addr());
    exit_code(master.await_termination())
}

/// How the master's end becomes the process status: a crashed master (its thread
/// panicked) must fail the process, so that a supervisor restarts it or a script notices.
fn exit_code(end: pccl::Result<()>) -> ExitCode {
    match end {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pccl-master: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crashed_master_fails_the_process() {
        let master = pccl::MasterNode::start(pccl::MasterConfig::new(([127, 0, 0, 1], 0).into()))
            .expect("master starts");
        master.crash_for_tests();
        assert_eq!(exit_code(master.await_termination()), ExitCode::FAILURE);
    }

    #[test]
    fn an_interrupted_master_exits_cleanly() {
        let master = pccl::MasterNode::start(pccl::MasterConfig::new(([127, 0, 0, 1], 0).into()))
            .expect("master starts");
        master.interrupt();
        assert_eq!(exit_code(master.await_termination()), ExitCode::SUCCESS);
    }
}
