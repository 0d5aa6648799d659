//! `pccl-stress --master-proc`: the run's master in a process of its own, so that in WAN
//! mode it can live in the hub namespace. It prints `MASTER addr` once listening and stops
//! when its stdin closes (the harness is done or gone). The run secret, if any, comes in
//! `PCCL_RUN_SECRET` / `PCCL_ENCRYPT` (`run::security_env`).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::opt_parse;

/// `--master-proc --listen ADDR --heartbeat-ms N`: a master in its own process (so it can
/// live in the hub namespace); prints `MASTER addr`, exits on stdin EOF.
pub(crate) fn master_proc(args: &[String]) -> Result<()> {
    pccl::init_logging();
    let listen: SocketAddr = opt_parse(args, "--listen")?.context("--listen")?;
    let hb: u64 = opt_parse(args, "--heartbeat-ms")?.unwrap_or(2000);
    let mut cfg = pccl::MasterConfig::new(listen);
    cfg.heartbeat_timeout = Duration::from_millis(hb);
    // Authenticated / encrypted runs: the harness passes the run secret in the environment.
    let security = pccl::secure::EnvSecurity::from_env()?;
    (cfg.secret, cfg.encrypt) = (security.secret, security.encrypt);
    let m = pccl::MasterNode::start(cfg)?;
    println!("MASTER {}", m.local_addr());
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    m.interrupt();
    Ok(())
}
