//! `pccl-master --listen ADDR [--secret-file PATH [--encrypt]] [--http ADDR]`: runs a pccl
//! master until interrupted.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str =
    "usage: pccl-master [--listen ADDR] [--secret-file PATH [--encrypt]] [--http ADDR] [OPTIONS]

Runs the master of a pccl run. Peers connect to it, are accepted into the ring,
and learn of each other's deaths through it. It carries no tensor data.

options:
  --listen ADDR               address to listen on (default 0.0.0.0:48148)
  --heartbeat-timeout-ms MS   a peer silent this long is dead (default 5000)
  --http ADDR                 serve the dashboard (/), /metrics (Prometheus) and /api/run
                              on ADDR, e.g. 127.0.0.1:9148 (default: off). Read-only and
                              unauthenticated: bind loopback or a private network

A peer that misses one of these bounds is evicted as if it had died; the others go on:
  --registration-timeout-ms MS         register this long after the hello (default 10000)
  --proposal-timeout-ms MS             answer a topology proposal (default 30000)
  --bandwidth-timeout-ms MS            report bandwidth tests (default 30000), plus
  --bandwidth-timeout-per-target-ms MS   this per link tested (default 1000)
  --sync-report-timeout-ms MS          join a shared-state sync after the first member
                                       (default 300000)
  --sync-transfer-timeout-ms MS        finish a shared-state sync (default 60000), plus
  --sync-transfer-min-rate BYTES_PER_S   the largest fetch at this rate (default 1048576)

After a restart (run it under a supervisor; README, Running the master):
  --recovery-window-ms MS              wait for the peers a re-registering peer names
                                       before rebuilding the run without the rest (5000)
  --startup-grace-ms MS                hold a lone first peer back this long after the
                                       start, so an old run's peers re-register first (1000)

  --max-unregistered-connections N     connections not yet registered, at most; beyond
                                       this new ones are closed at once (default 256)

Authenticated runs (SECURITY.md section 6):
  --secret-file PATH          file holding the run secret (at least 16 bytes, e.g. 64 hex
                              digits); only peers holding the same secret are admitted
  --encrypt                   encrypt payloads too (needs a secret; peers must match)
Without these flags the environment decides: PCCL_RUN_SECRET (the secret) or
PCCL_RUN_SECRET_FILE (a file holding it; not both), and PCCL_ENCRYPT=1. With no
secret at all the run is in PCCL-compatible plain mode: anyone reaching the master
can join. A peer with another secret fails to connect (pcclMasterConnectionFailed).

  -h, --help                  this text

Logs go to stderr; set PCCL_LOG (error, warn, info, debug, trace) to choose the level.";

fn main() -> ExitCode {
    pccl::init_logging();
    let listen: SocketAddr = ([0, 0, 0, 0], pccl::DEFAULT_MASTER_PORT).into();
    let mut config = pccl::MasterConfig::new(listen);
    let mut secret_file: Option<std::path::PathBuf> = None;
    let mut encrypt_flag = false;
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
            "--http" => args
                .next()
                .and_then(|v| v.parse().ok())
                .map(|v| c.http = Some(v)),
            "--registration-timeout-ms" => ms(&mut c.registration_timeout),
            "--proposal-timeout-ms" => ms(&mut c.proposal_timeout),
            "--bandwidth-timeout-ms" => ms(&mut c.bandwidth_timeout),
            "--bandwidth-timeout-per-target-ms" => ms(&mut c.bandwidth_timeout_per_target),
            "--sync-report-timeout-ms" => ms(&mut c.sync_report_timeout),
            "--sync-transfer-timeout-ms" => ms(&mut c.sync_transfer_timeout),
            "--recovery-window-ms" => ms(&mut c.recovery_window),
            "--startup-grace-ms" => ms(&mut c.startup_grace),
            "--sync-transfer-min-rate" => args
                .next()
                .and_then(|v| v.parse().ok())
                .map(|v| c.sync_transfer_min_rate = v),
            "--secret-file" => args.next().map(|v| secret_file = Some(v.into())),
            "--encrypt" => {
                encrypt_flag = true;
                Some(())
            }
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
    if let Err(e) = security(&mut config, secret_file.as_deref(), encrypt_flag) {
        eprintln!("pccl-master: {e}");
        return ExitCode::from(2);
    }
    let mode = match (&config.secret, config.encrypt) {
        (None, _) => "plain mode: no run secret",
        (Some(_), false) => "authenticated run",
        (Some(_), true) => "encrypted run",
    };
    let master = match pccl::MasterNode::start(config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("pccl-master: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("pccl-master listening on {} ({mode})", master.local_addr());
    if let Some(a) = master.http_addr() {
        eprintln!("pccl-master dashboard: http://{a}/ (metrics: http://{a}/metrics)");
    }
    exit_code(master.await_termination())
}

/// The run secret and encryption switch: `--secret-file` if given, else
/// `PCCL_RUN_SECRET` / `PCCL_RUN_SECRET_FILE`; `--encrypt` if given, else `PCCL_ENCRYPT`.
fn security(
    config: &mut pccl::MasterConfig,
    secret_file: Option<&std::path::Path>,
    encrypt_flag: bool,
) -> Result<(), String> {
    use pccl::secure::{RunSecret, encrypt_from_env};
    config.secret = match secret_file {
        Some(path) => Some(RunSecret::from_file(path).map_err(|e| e.to_string())?),
        None => RunSecret::from_env().map_err(|e| e.to_string())?,
    };
    config.encrypt = encrypt_flag || encrypt_from_env().map_err(|e| e.to_string())?;
    if config.encrypt && config.secret.is_none() {
        return Err(
            "--encrypt (or PCCL_ENCRYPT) needs a run secret: give --secret-file, \
                    PCCL_RUN_SECRET or PCCL_RUN_SECRET_FILE"
                .into(),
        );
    }
    Ok(())
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
    fn the_secret_file_flag_is_read_and_checked() {
        let path = std::env::temp_dir().join(format!("pccl-master-secret-{}", std::process::id()));
        let mut config = pccl::MasterConfig::new(([127, 0, 0, 1], 0).into());
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let good = security(&mut config, Some(&path), true);
        let (secret, encrypt) = (config.secret.is_some(), config.encrypt);
        std::fs::write(&path, "short").unwrap();
        let short = security(&mut config, Some(&path), false);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(good, Ok(()));
        assert!(secret && encrypt);
        let short = short.unwrap_err();
        assert!(short.contains("at least 16"), "{short}");
        let missing = security(&mut config, Some(&path), false).unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
    }

    #[test]
    fn an_interrupted_master_exits_cleanly() {
        let master = pccl::MasterNode::start(pccl::MasterConfig::new(([127, 0, 0, 1], 0).into()))
            .expect("master starts");
        master.interrupt();
        assert_eq!(exit_code(master.await_termination()), ExitCode::SUCCESS);
    }
}
