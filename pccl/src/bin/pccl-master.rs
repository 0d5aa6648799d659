//! `pccl-master --listen ADDR`: runs a pccl master until interrupted.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: pccl-master [--listen ADDR] [--heartbeat-timeout-ms MS]

Runs the master of a pccl run. Peers connect to it, are accepted into the ring,
and learn of each other's deaths through it. It carries no tensor data.

options:
  --listen ADDR               address to listen on (default 0.0.0.0:48148)
  --heartbeat-timeout-ms MS   a peer silent this long is dead (default 5000)
  -h, --help                  this text

Logs go to stderr; set PCCL_LOG (error, warn, info, debug, trace) to choose the level.";

fn main() -> ExitCode {
    pccl::init_logging();
    let mut listen: SocketAddr = ([0, 0, 0, 0], pccl::DEFAULT_MASTER_PORT).into();
    let mut hb = Duration::from_secs(5);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let parsed = match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--listen" => args.next().and_then(|v| v.parse().ok()).map(|v| listen = v),
            "--heartbeat-timeout-ms" => args
                .next()
                .and_then(|v| v.parse().ok())
                .map(|ms| hb = Duration::from_millis(ms)),
            _ => None,
        };
        if parsed.is_none() {
            eprintln!("pccl-master: bad argument '{a}'\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let mut config = pccl::MasterConfig::new(listen);
    config.heartbeat_timeout = hb;
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
